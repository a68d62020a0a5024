//! The HEIF container (ISO/IEC 23008-12) as AVIF and HEIC use it: the items of a file's
//! `meta` box, their properties and their references. Only what reading a still image
//! needs is parsed. Written here because the crates that parse it leave out image grids,
//! Exif items or the clean aperture, all of which cameras and encoders write.

mod picture;
mod presentation;

use std::borrow::Cow;

pub(super) use picture::{find_alpha, Coding, Source};
pub(super) use presentation::{color_type, Codec, HeifDecoder, Presentation};

/// A box type or brand.
pub(super) type FourCc = [u8; 4];

/// A box type or brand as text, escaped (a damaged file may hold any bytes there).
pub(super) fn name(kind: &FourCc) -> String {
    kind.escape_ascii().to_string()
}

/// Why a file cannot be read: damaged, or using what is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeifError {
    Corrupt(String),
    Unsupported(String),
}

fn corrupt(what: impl Into<String>) -> HeifError {
    HeifError::Corrupt(what.into())
}

pub(super) type Result<T> = std::result::Result<T, HeifError>;

/// Big-endian reads over a box body; every read is bounds-checked, so a short box is an
/// error, never a panic.
struct Reader<'a> {
    data: &'a [u8],
    /// What is read, for errors: "the 'iloc' box".
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, what }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() {
            return Err(corrupt(format!(
                "{} ends early (truncated file?)",
                self.what
            )));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    /// An unsigned integer of `n` bytes (0 to 8; 0 reads as 0, as `iloc` defines).
    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .bytes(n)?
            .iter()
            .fold(0, |v, &b| (v << 8) | u64::from(b)))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(self.uint(2)? as u16)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(self.uint(4)? as u32)
    }

    fn fourcc(&mut self) -> Result<FourCc> {
        Ok(self.bytes(4)?.try_into().expect("four bytes"))
    }

    /// The version and flags of a full box.
    fn full_box(&mut self) -> Result<(u8, u32)> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0xff_ffff))
    }

    /// An item ID: 16 bits in version 0 boxes, 32 in later ones.
    fn item_id(&mut self, wide: bool) -> Result<u32> {
        if wide {
            self.u32()
        } else {
            Ok(u32::from(self.u16()?))
        }
    }

    /// The boxes that make up the rest of the data.
    fn boxes(self) -> Boxes<'a> {
        Boxes { data: self.data }
    }
}

/// The child boxes in a run of bytes, as (type, body).
struct Boxes<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Boxes<'a> {
    type Item = Result<(FourCc, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let mut r = Reader::new(self.data, "a box header");
        let parsed = (|| {
            let size = r.u32()?;
            let kind = r.fourcc()?;
            let (header, size) = match size {
                0 => (8, self.data.len() as u64),
                1 => (16, r.uint(8)?),
                n => (8, u64::from(n)),
            };
            let header = if &kind == b"uuid" {
                header + 16
            } else {
                header
            };
            if size < header as u64 || size > self.data.len() as u64 {
                let kind = name(&kind);
                return Err(corrupt(format!(
                    "the '{kind}' box runs past the end of its container (truncated file?)"
                )));
            }
            let body = &self.data[header..size as usize];
            self.data = &self.data[size as usize..];
            Ok((kind, body))
        })();
        if parsed.is_err() {
            self.data = &[];
        }
        Some(parsed)
    }
}

/// The brands of a file whose first bytes are `head`, from its `ftyp` box (as far as
/// `head` holds it): the major brand, then the compatible ones.
pub(super) fn brands(head: &[u8]) -> Vec<FourCc> {
    let Some(Ok((kind, body))) = (Boxes { data: head }).next() else {
        // The box runs past `head`: take what there is of it.
        return match head.get(4..8) {
            Some(b"ftyp") => ftyp_brands(&head[8..]),
            _ => Vec::new(),
        };
    };
    if &kind == b"ftyp" {
        ftyp_brands(body)
    } else {
        Vec::new()
    }
}

/// The major brand, then the compatible ones, of an `ftyp` body. The minor version is
/// skipped, except under the low-overhead brand `mif3`, where that field names the
/// image's brand (`avif`, `heic`, ...).
fn ftyp_brands(body: &[u8]) -> Vec<FourCc> {
    let major = body.get(..4);
    let minor = body.get(4..8).filter(|_| major == Some(b"mif3"));
    let compatible = body.get(8..).unwrap_or_default().chunks_exact(4);
    major
        .into_iter()
        .chain(minor)
        .chain(compatible)
        .map(|b| b.try_into().expect("four bytes"))
        .collect()
}

/// `colr`: how the samples' colours are to be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Colour {
    Nclx(Nclx),
    Icc(Vec<u8>),
}

/// The H.273 colour description: code points of the primaries, transfer function and
/// YUV matrix, and whether samples use the full range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Nclx {
    pub primaries: u16,
    pub transfer: u16,
    pub matrix: u16,
    pub full_range: bool,
}

/// `clap`: the clean aperture, a centred crop given as fractions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CleanAperture {
    pub width: (u32, u32),
    pub height: (u32, u32),
    pub horizontal_offset: (i32, u32),
    pub vertical_offset: (i32, u32),
}

/// `mdcv`: the display an HDR image was mastered on (H.273/SMPTE ST 2086 units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MasteringDisplay {
    pub primaries: [(u16, u16); 3],
    pub white_point: (u16, u16),
    pub max_luminance: u32,
    pub min_luminance: u32,
}

/// What an `av1C` box says of the AV1 data of its item; the sequence header in the data
/// must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Av1Config {
    pub profile: u8,
    pub depth: u8,
    pub monochrome: bool,
    /// Horizontal and vertical chroma subsampling.
    pub subsampling: (bool, bool),
}

/// What an `hvcC` box says of the HEVC data of its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HevcConfig {
    pub depth: u8,
    pub monochrome: bool,
}

/// An item property this reader understands; others are kept by type only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Property {
    /// `av1C`: the AV1 codec configuration.
    Av1Config(Av1Config),
    /// `hvcC`: the HEVC codec configuration (its parameter sets are the HEVC decoder's).
    HevcConfig(HevcConfig),
    /// `ispe`: the item's width and height.
    Extents(u32, u32),
    /// `pixi`: bits per channel.
    PixelInfo(Vec<u8>),
    Colour(Colour),
    /// `irot`: anticlockwise rotation in quarter turns.
    Rotation(u8),
    /// `imir`: 0 exchanges top and bottom, 1 left and right.
    Mirror(u8),
    CleanAperture(CleanAperture),
    /// `auxC`: what an auxiliary image is (alpha, depth, ...).
    AuxType(String),
    /// `clli`: maximum content and frame-average light levels.
    LightLevel(u16, u16),
    MasteringDisplay(MasteringDisplay),
    /// `a1op`: the AV1 operating point to decode.
    OperatingPoint(u8),
    /// `lsel`: the layer to show (0xffff for all).
    LayerSelection(u16),
    Other(FourCc),
}

impl Property {
    fn parse(kind: FourCc, body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "an item property");
        Ok(match &kind {
            b"av1C" => {
                let b = r.bytes(4)?;
                if b[0] != 0x81 {
                    return Err(corrupt("the 'av1C' box has an unknown version"));
                }
                let bit = |mask: u8| b[2] & mask != 0;
                Self::Av1Config(Av1Config {
                    profile: b[1] >> 5,
                    depth: match (bit(0x40), bit(0x20)) {
                        (false, _) => 8,
                        (true, false) => 10,
                        (true, true) => 12,
                    },
                    monochrome: bit(0x10),
                    subsampling: (bit(0x08), bit(0x04)),
                })
            }
            b"ispe" => {
                r.full_box()?;
                Self::Extents(r.u32()?, r.u32()?)
            }
            b"pixi" => {
                r.full_box()?;
                let n = r.u8()?;
                Self::PixelInfo(r.bytes(n.into())?.to_vec())
            }
            b"colr" => match &r.fourcc()? {
                b"nclx" => Self::Colour(Colour::Nclx(Nclx {
                    primaries: r.u16()?,
                    transfer: r.u16()?,
                    matrix: r.u16()?,
                    full_range: r.u8()? & 0x80 != 0,
                })),
                b"prof" | b"rICC" => Self::Colour(Colour::Icc(r.data.to_vec())),
                _ => Self::Other(kind),
            },
            b"irot" => Self::Rotation(r.u8()? & 3),
            b"imir" => Self::Mirror(r.u8()? & 1),
            b"clap" => {
                let mut pair = || -> Result<(u32, u32)> { Ok((r.u32()?, r.u32()?)) };
                let (width, height) = (pair()?, pair()?);
                let (h, v) = (pair()?, pair()?);
                Self::CleanAperture(CleanAperture {
                    width,
                    height,
                    horizontal_offset: (h.0 as i32, h.1),
                    vertical_offset: (v.0 as i32, v.1),
                })
            }
            b"auxC" => {
                r.full_box()?;
                let text = r.data.split(|&b| b == 0).next().unwrap_or_default();
                Self::AuxType(String::from_utf8_lossy(text).into_owned())
            }
            b"clli" => Self::LightLevel(r.u16()?, r.u16()?),
            b"mdcv" => {
                let mut xy = || -> Result<(u16, u16)> { Ok((r.u16()?, r.u16()?)) };
                let primaries = [xy()?, xy()?, xy()?];
                let white_point = xy()?;
                Self::MasteringDisplay(MasteringDisplay {
                    primaries,
                    white_point,
                    max_luminance: r.u32()?,
                    min_luminance: r.u32()?,
                })
            }
            b"hvcC" => {
                let b = r.bytes(19)?;
                if b[0] != 1 {
                    return Err(corrupt("the 'hvcC' box has an unknown version"));
                }
                Self::HevcConfig(HevcConfig {
                    depth: 8 + (b[17] & 7),
                    monochrome: b[16] & 3 == 0,
                })
            }
            b"a1op" => Self::OperatingPoint(r.u8()?),
            b"lsel" => Self::LayerSelection(r.u16()?),
            _ => Self::Other(kind),
        })
    }
}

/// A `grid` item's description (ImageGrid) and tiles.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    /// The tiles (the items the grid refers to by `dimg`), row by row.
    pub tiles: Vec<u32>,
    pub columns: usize,
    /// The image's size: the tiles' joined, cut at the right and bottom.
    pub width: usize,
    pub height: usize,
}

/// Where an item's bytes are (`iloc`).
#[derive(Debug, Clone, Default)]
struct Location {
    /// 0: in the file; 1: in the `idat` box.
    method: u8,
    extents: Vec<(u64, u64)>,
}

/// Indices into the property container, with whether each is essential.
type PropertyRefs = Vec<(usize, bool)>;

/// One item of the `meta` box.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub id: u32,
    pub kind: FourCc,
    /// A `mime` item's content type (XMP is `application/rdf+xml`).
    pub content_type: Option<String>,
    location: Option<Location>,
    properties: PropertyRefs,
}

/// A typed reference between items (`iref`): `from` refers to each of `to` in order.
#[derive(Debug, Clone)]
struct Reference {
    kind: FourCc,
    from: u32,
    to: Vec<u32>,
}

/// The parsed `meta` box of a HEIF file, borrowing the file's bytes.
pub(super) struct Heif<'a> {
    file: &'a [u8],
    idat: &'a [u8],
    /// The item the file shows (`pitm`).
    pub primary: u32,
    items: Vec<Item>,
    properties: Vec<Property>,
    references: Vec<Reference>,
    /// Whether the file also holds a track (an image sequence).
    pub has_tracks: bool,
}

impl<'a> Heif<'a> {
    /// Parses the top-level boxes and the `meta` box of `file`.
    pub fn parse(file: &'a [u8]) -> Result<Self> {
        let mut heif = Heif {
            file,
            idat: &[],
            primary: 0,
            items: Vec::new(),
            properties: Vec::new(),
            references: Vec::new(),
            has_tracks: false,
        };
        let mut meta = None;
        let mut mini = false;
        for b in Reader::new(file, "the file").boxes() {
            // A file cut short (or only its head, read to learn its size) can still be
            // parsed; the missing item data is reported when it is read.
            let (kind, body) = match b {
                Ok(b) => b,
                Err(_) if meta.is_some() => break,
                Err(e) => return Err(e),
            };
            match &kind {
                b"meta" if meta.is_none() => meta = Some(body),
                b"moov" => heif.has_tracks = true,
                b"mini" => mini = true,
                _ => {}
            }
        }
        let Some(meta) = meta else {
            return Err(if heif.has_tracks {
                HeifError::Unsupported("an image sequence without a still image".into())
            } else if mini {
                HeifError::Unsupported("the low-overhead form of HEIF (a 'mini' box)".into())
            } else {
                corrupt("the file has no 'meta' box (truncated?)")
            });
        };
        heif.parse_meta(meta)?;
        Ok(heif)
    }

    fn parse_meta(&mut self, body: &'a [u8]) -> Result<()> {
        let mut r = Reader::new(body, "the 'meta' box");
        r.full_box()?;
        let mut primary = None;
        let mut locations = Vec::new();
        let mut associations = Vec::new();
        for b in r.boxes() {
            let (kind, body) = b?;
            match &kind {
                b"hdlr" => {
                    let mut r = Reader::new(body, "the 'hdlr' box");
                    r.full_box()?;
                    r.u32()?;
                    if &r.fourcc()? != b"pict" {
                        return Err(HeifError::Unsupported(
                            "a 'meta' box that is not of pictures".into(),
                        ));
                    }
                }
                b"pitm" => {
                    let mut r = Reader::new(body, "the 'pitm' box");
                    let (version, _) = r.full_box()?;
                    primary = Some(r.item_id(version > 0)?);
                }
                b"iinf" => self.parse_item_info(body)?,
                b"iloc" => locations = parse_locations(body)?,
                b"idat" => self.idat = body,
                b"iref" => self.parse_references(body)?,
                b"iprp" => associations = self.parse_properties(body)?,
                _ => {}
            }
        }
        self.primary = primary.ok_or_else(|| corrupt("the file names no primary item ('pitm')"))?;
        for (id, location) in locations {
            if let Some(item) = self.items.iter_mut().find(|i| i.id == id) {
                item.location = Some(location);
            }
        }
        for (id, properties) in associations {
            if let Some(item) = self.items.iter_mut().find(|i| i.id == id) {
                item.properties.extend(properties);
            }
        }
        Ok(())
    }

    fn parse_item_info(&mut self, body: &[u8]) -> Result<()> {
        let mut r = Reader::new(body, "the 'iinf' box");
        let (version, _) = r.full_box()?;
        r.uint(if version == 0 { 2 } else { 4 })?;
        for b in r.boxes() {
            let (kind, body) = b?;
            if &kind != b"infe" {
                continue;
            }
            let mut r = Reader::new(body, "the 'infe' box");
            let (version, _) = r.full_box()?;
            if version < 2 {
                // Versions 0 and 1 name no item type; HEIF requires 2 or later.
                continue;
            }
            let id = r.item_id(version > 2)?;
            r.u16()?;
            let kind = r.fourcc()?;
            let content_type = (&kind == b"mime").then(|| {
                // item_name, then content_type: null-terminated strings.
                let mut strings = r.data.split(|&b| b == 0);
                strings.next();
                String::from_utf8_lossy(strings.next().unwrap_or_default()).into_owned()
            });
            self.items.push(Item {
                id,
                kind,
                content_type,
                location: None,
                properties: Vec::new(),
            });
        }
        Ok(())
    }

    fn parse_references(&mut self, body: &[u8]) -> Result<()> {
        let mut r = Reader::new(body, "the 'iref' box");
        let (version, _) = r.full_box()?;
        let wide = version > 0;
        for b in r.boxes() {
            let (kind, body) = b?;
            let mut r = Reader::new(body, "the 'iref' box");
            let from = r.item_id(wide)?;
            let n = r.u16()?;
            let to = (0..n).map(|_| r.item_id(wide)).collect::<Result<_>>()?;
            self.references.push(Reference { kind, from, to });
        }
        Ok(())
    }

    /// Reads `ipco` into `self.properties` and returns `ipma`'s associations.
    fn parse_properties(&mut self, body: &[u8]) -> Result<Vec<(u32, PropertyRefs)>> {
        let mut associations = Vec::new();
        for b in Reader::new(body, "the 'iprp' box").boxes() {
            let (kind, body) = b?;
            match &kind {
                b"ipco" => {
                    for p in Reader::new(body, "the 'ipco' box").boxes() {
                        let (kind, body) = p?;
                        self.properties.push(Property::parse(kind, body)?);
                    }
                }
                b"ipma" => {
                    let mut r = Reader::new(body, "the 'ipma' box");
                    let (version, flags) = r.full_box()?;
                    let entries = r.u32()?;
                    for _ in 0..entries {
                        let id = r.item_id(version > 0)?;
                        let n = r.u8()?;
                        let mut list = Vec::with_capacity(n.into());
                        for _ in 0..n {
                            let (essential, index) = if flags & 1 != 0 {
                                let v = r.u16()?;
                                (v & 0x8000 != 0, usize::from(v & 0x7fff))
                            } else {
                                let v = r.u8()?;
                                (v & 0x80 != 0, usize::from(v & 0x7f))
                            };
                            // Index 0 means "no property".
                            if index > 0 {
                                list.push((index - 1, essential));
                            }
                        }
                        associations.push((id, list));
                    }
                }
                _ => {}
            }
        }
        Ok(associations)
    }

    /// The whole file.
    pub fn file(&self) -> &'a [u8] {
        self.file
    }

    /// The item with this ID.
    pub fn item(&self, id: u32) -> Result<&Item> {
        self.items
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| corrupt(format!("item {id} is referred to but not declared")))
    }

    /// The properties of an item, each with whether it is essential.
    pub fn properties(&self, id: u32) -> Result<Vec<(&Property, bool)>> {
        self.item(id)?
            .properties
            .iter()
            .map(|&(index, essential)| {
                self.properties
                    .get(index)
                    .map(|p| (p, essential))
                    .ok_or_else(|| corrupt(format!("item {id} has a property that does not exist")))
            })
            .collect()
    }

    /// The `grid` item `id`.
    pub fn grid(&self, id: u32) -> Result<Grid> {
        let data = self.data(id)?;
        let mut r = Reader::new(&data, "the image grid's description");
        let flags = r.bytes(2)?[1];
        let rows = usize::from(r.u8()?) + 1;
        let columns = usize::from(r.u8()?) + 1;
        let field = if flags & 1 != 0 { 4 } else { 2 };
        let (width, height) = (r.uint(field)? as usize, r.uint(field)? as usize);
        let tiles = self.references_from(id, b"dimg");
        if tiles.len() != rows * columns {
            return Err(corrupt(format!(
                "the {columns}x{rows} image grid has {} tiles",
                tiles.len()
            )));
        }
        Ok(Grid {
            tiles,
            columns,
            width,
            height,
        })
    }

    /// The items `from` refers to by a reference of this kind, in order.
    pub fn references_from(&self, from: u32, kind: &FourCc) -> Vec<u32> {
        self.references
            .iter()
            .filter(|r| r.from == from && &r.kind == kind)
            .flat_map(|r| r.to.iter().copied())
            .collect()
    }

    /// The items that refer to `to` by a reference of this kind.
    pub fn references_to(&self, to: u32, kind: &FourCc) -> Vec<u32> {
        self.references
            .iter()
            .filter(|r| &r.kind == kind && r.to.contains(&to))
            .map(|r| r.from)
            .collect()
    }

    /// An item's bytes: its extents joined (borrowed where there is one).
    pub fn data(&self, id: u32) -> Result<Cow<'a, [u8]>> {
        let location = self
            .item(id)?
            .location
            .as_ref()
            .ok_or_else(|| corrupt(format!("item {id} has no location ('iloc')")))?;
        let source = match location.method {
            0 => self.file,
            1 => self.idat,
            m => {
                return Err(HeifError::Unsupported(format!(
                    "item data located by construction method {m}"
                )))
            }
        };
        let extent = |&(offset, length): &(u64, u64)| {
            let end = offset
                .checked_add(length)
                .filter(|&e| e <= source.len() as u64);
            end.map(|end| &source[offset as usize..end as usize])
                .ok_or_else(|| {
                    corrupt(format!(
                        "the data of item {id} lies past the end of the file (truncated?)"
                    ))
                })
        };
        match &location.extents[..] {
            [one] => Ok(Cow::Borrowed(extent(one)?)),
            many => {
                let mut joined = Vec::new();
                for e in many {
                    joined.extend_from_slice(extent(e)?);
                }
                Ok(Cow::Owned(joined))
            }
        }
    }
}

/// `iloc`: each item's construction method and extents (base offset folded in).
fn parse_locations(body: &[u8]) -> Result<Vec<(u32, Location)>> {
    let mut r = Reader::new(body, "the 'iloc' box");
    let (version, _) = r.full_box()?;
    if version > 2 {
        return Err(HeifError::Unsupported(format!("'iloc' version {version}")));
    }
    let sizes = r.u16()?;
    let nibble = |shift: u16| usize::from((sizes >> shift) & 0xf);
    let (offset_size, length_size, base_size) = (nibble(12), nibble(8), nibble(4));
    let index_size = if version > 0 { nibble(0) } else { 0 };
    let count = if version < 2 {
        u32::from(r.u16()?)
    } else {
        r.u32()?
    };
    let mut out = Vec::new();
    for _ in 0..count {
        let id = r.item_id(version == 2)?;
        let method = if version > 0 {
            (r.u16()? & 0xf) as u8
        } else {
            0
        };
        if r.u16()? != 0 {
            return Err(HeifError::Unsupported("item data in another file".into()));
        }
        let base = r.uint(base_size)?;
        let extents = r.u16()?;
        let mut location = Location {
            method,
            extents: Vec::with_capacity(extents.into()),
        };
        for _ in 0..extents {
            r.uint(index_size)?;
            let offset = base
                .checked_add(r.uint(offset_size)?)
                .ok_or_else(|| corrupt("an item offset overflows"))?;
            location.extents.push((offset, r.uint(length_size)?));
        }
        out.push((id, location));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn full(kind: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![version, 0, 0, 0];
        b.extend_from_slice(body);
        boxed(kind, &b)
    }

    /// A file with two items: 1 (`av1 `, four bytes in the file, two extents) and 2
    /// (`Exif`, in `idat`), an `ispe` and an essential `irot` on item 1, and a `cdsc`
    /// reference from 2 to 1.
    fn sample() -> Vec<u8> {
        let ftyp = boxed(b"ftyp", b"avif\0\0\0\0mif1miaf");
        let mut hdlr = vec![0; 4];
        hdlr.extend_from_slice(b"pict");
        hdlr.extend_from_slice(&[0; 13]);
        let infe = |id: u8, kind: &[u8; 4]| {
            let mut b = vec![0, id, 0, 0];
            b.extend_from_slice(kind);
            b.push(0);
            full(b"infe", 2, &b)
        };
        let mut iinf = vec![0, 2];
        iinf.extend(infe(1, b"av1 "));
        iinf.extend(infe(2, b"Exif"));
        let ispe = full(b"ispe", 0, &[0, 0, 0, 7, 0, 0, 0, 5]);
        let irot = boxed(b"irot", &[3]);
        let ipco = boxed(b"ipco", &[ispe, irot].concat());
        let ipma = full(b"ipma", 0, &[0, 0, 0, 1, 0, 1, 2, 0x01, 0x82]);
        let iprp = boxed(b"iprp", &[ipco, ipma].concat());
        let iref = full(b"iref", 0, &boxed(b"cdsc", &[0, 2, 0, 1, 0, 1]));
        let idat = boxed(b"idat", b"EXIFDATA");
        let meta_without_iloc = |iloc: &[u8]| {
            full(
                b"meta",
                0,
                &[
                    full(b"hdlr", 0, &hdlr),
                    full(b"pitm", 0, &[0, 1]),
                    full(b"iinf", 0, &iinf),
                    iloc.to_vec(),
                    iprp.clone(),
                    iref.clone(),
                    idat.clone(),
                ]
                .concat(),
            )
        };
        // Sizes: offset 4 bytes, length 4, base 0; version 1 adds the construction method.
        let iloc_for = |mdat_at: u32| {
            let mut b = vec![0x44, 0x00, 0, 2];
            b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 2]);
            b.extend_from_slice(&mdat_at.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 2]);
            b.extend_from_slice(&(mdat_at + 3).to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 2]);
            b.extend_from_slice(&[0, 2, 0, 1, 0, 0, 0, 1]);
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 8]);
            full(b"iloc", 1, &b)
        };
        let head = ftyp.len() + meta_without_iloc(&iloc_for(0)).len() + 8;
        let mut file = ftyp.clone();
        file.extend(meta_without_iloc(&iloc_for(head as u32)));
        file.extend(boxed(b"mdat", b"ab_cd"));
        file
    }

    #[test]
    fn reads_items_properties_references_and_data() {
        let file = sample();
        let heif = Heif::parse(&file).unwrap();
        assert_eq!(brands(&file), [*b"avif", *b"mif1", *b"miaf"]);
        assert_eq!(brands(&file[..18]), [*b"avif"]);
        assert!(brands(b"\x89PNG\r\n\x1a\n").is_empty());
        assert_eq!(heif.primary, 1);
        assert_eq!(&heif.item(1).unwrap().kind, b"av1 ");
        assert_eq!(
            heif.properties(1).unwrap(),
            [
                (&Property::Extents(7, 5), false),
                (&Property::Rotation(3), true)
            ]
        );
        assert_eq!(&*heif.data(1).unwrap(), b"abcd");
        assert_eq!(&*heif.data(2).unwrap(), b"EXIFDATA");
        assert_eq!(heif.references_to(1, b"cdsc"), [2]);
        assert_eq!(heif.references_from(2, b"cdsc"), [1]);
        assert!(heif.references_to(1, b"auxl").is_empty());
        assert!(!heif.has_tracks);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let file = sample();
        // Every truncation either fails to parse or fails to find the item data.
        for n in 0..file.len() - 1 {
            let cut = &file[..n];
            if let Ok(heif) = Heif::parse(cut) {
                assert!(heif.data(1).is_err() || heif.data(2).is_err(), "cut at {n}");
            }
        }
        // Every single flipped byte is survived.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0xff;
            if let Ok(heif) = Heif::parse(&bad) {
                let _ = heif.data(1);
                let _ = heif.properties(1);
            }
        }
    }
}
