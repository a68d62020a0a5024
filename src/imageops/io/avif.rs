//! AVIF: HEIF items holding AV1 pictures. The pictures are decoded by rav1d (a Rust port
//! of dav1d, built without its assembly so no assembler is needed) and turned into RGB
//! as libavif does: its matrices, ranges and bilinear chroma upsampling, then the clean
//! aperture; the rotation and mirroring the file asks for are its orientation. Image grids (how cameras store
//! large photos), alpha (also premultiplied), Exif items, ICC profiles and the H.273
//! colour description are read. rav1d aborts the process on some damaged data, so the
//! command-line tool decodes in a child process (see [`decode_avif_in_child_process`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

use image::error::{DecodingError, ImageFormatHint, UnsupportedError, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageError, ImageResult};
use png::{
    CodingIndependentCodePoints, ContentLightLevelInfo, MasteringDisplayColorVolume, ScaledFloat,
    SourceChromaticities,
};
use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::headers::{
    Dav1dSequenceHeader, DAV1D_PIXEL_LAYOUT_I400, DAV1D_PIXEL_LAYOUT_I420, DAV1D_PIXEL_LAYOUT_I422,
};
use rav1d::include::dav1d::picture::Dav1dPicture;
use rav1d::src::lib::{
    dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings, dav1d_get_picture,
    dav1d_open, dav1d_parse_sequence_header, dav1d_picture_unref, dav1d_send_data,
};

use super::heif::{
    name, Av1Config, CleanAperture, Colour, Grid, Heif, HeifError, MasteringDisplay, Nclx, Property,
};
use super::planes::{planes_to_image, with_alpha, ycbcr_to_rgb};
use super::png::PngColour;
use crate::imageops::Planar;

/// The `auxC` types that mark an auxiliary image as alpha (AVIF's, and the older HEVC one).
const ALPHA_URNS: [&str; 2] = [
    "urn:mpeg:mpegB:cicp:systems:auxiliary:alpha",
    "urn:mpeg:hevc:2015:auxid:1",
];

/// Where a picture comes from: one AV1 item, or a grid of them.
#[derive(Debug, Clone)]
enum Source {
    Single(u32),
    Grid(Grid),
}

/// An AVIF file, parsed but not yet decoded; decoding happens in `read_image`.
pub(super) struct AvifDecoder<'a> {
    heif: Heif<'a>,
    colour: Source,
    alpha: Option<Source>,
    premultiplied: bool,
    depth: u8,
    monochrome: bool,
    /// The stored size, before the clean aperture and rotation.
    stored: (usize, usize),
    crop: Option<(usize, usize, usize, usize)>,
    rotation: u8,
    mirror: Option<u8>,
    icc: Option<Vec<u8>>,
    nclx: Option<Nclx>,
    light: Option<(u16, u16)>,
    mastering: Option<MasteringDisplay>,
    exif: Option<Vec<u8>>,
    operating_point: u8,
    /// The most pixels an AV1 picture (an item or, in a grid, a tile) has by its `ispe`,
    /// so that a damaged sequence header cannot make the decoder allocate more.
    frame_limit: u32,
}

impl<'a> AvifDecoder<'a> {
    /// Reads the container of `file`; nothing is decoded yet.
    pub fn new(file: &'a [u8]) -> Result<Self, HeifError> {
        let heif = Heif::parse(file)?;
        let primary = heif.primary;
        let colour = source(&heif, primary)?;
        let config = av1_config(&heif, first_picture(&colour))?;
        let mut decoder = AvifDecoder {
            stored: stored_size(&heif, &colour)?,
            colour,
            alpha: None,
            premultiplied: false,
            depth: config.depth,
            monochrome: config.monochrome,
            crop: None,
            rotation: 0,
            mirror: None,
            icc: None,
            nclx: None,
            light: None,
            mastering: None,
            exif: None,
            operating_point: 0,
            frame_limit: 0,
            heif,
        };
        decoder.read_properties(primary)?;
        if let (Some(nclx), false) = (decoder.nclx, config.monochrome) {
            Matrix::of(nclx, Layout::of_config(&config))?;
        }
        decoder.find_alpha(primary)?;
        let mut pictures = vec![first_picture(&decoder.colour)];
        pictures.extend(decoder.alpha.as_ref().map(first_picture));
        for id in pictures {
            let (w, h) = stored_size(&decoder.heif, &Source::Single(id))?;
            let pixels = u32::try_from(w * h).unwrap_or(u32::MAX);
            decoder.frame_limit = decoder.frame_limit.max(pixels);
        }
        decoder.exif = decoder.find_exif(primary);
        Ok(decoder)
    }

    fn read_properties(&mut self, primary: u32) -> Result<(), HeifError> {
        for (p, essential) in self.heif.properties(primary)? {
            match p {
                Property::Colour(Colour::Icc(icc)) if self.icc.is_none() => {
                    self.icc = Some(icc.clone())
                }
                &Property::Colour(Colour::Nclx(nclx)) if self.nclx.is_none() => {
                    self.nclx = Some(nclx)
                }
                &Property::Rotation(r) => self.rotation = r,
                &Property::Mirror(axis) => self.mirror = Some(axis),
                Property::CleanAperture(clap) => {
                    self.crop = Some(crop_rect(clap, self.stored)?);
                }
                &Property::LightLevel(max, average) => self.light = Some((max, average)),
                Property::MasteringDisplay(m) => self.mastering = Some(*m),
                &Property::OperatingPoint(op) => self.operating_point = op,
                &Property::LayerSelection(layer) if layer != 0xffff => {
                    return Err(HeifError::Unsupported(format!(
                        "a layered image shown at layer {layer} ('lsel')"
                    )));
                }
                Property::Other(kind) if essential => {
                    return Err(HeifError::Unsupported(format!(
                        "the essential property '{}'",
                        name(kind)
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The alpha item of the primary one, if any, and whether the colour is premultiplied
    /// by it.
    fn find_alpha(&mut self, primary: u32) -> Result<(), HeifError> {
        for id in self.heif.references_to(primary, b"auxl") {
            let is_alpha = self.heif.properties(id)?.iter().any(
                |(p, _)| matches!(p, Property::AuxType(t) if ALPHA_URNS.contains(&t.as_str())),
            );
            if !is_alpha {
                continue;
            }
            let alpha = source(&self.heif, id)?;
            if stored_size(&self.heif, &alpha)? != self.stored {
                return Err(HeifError::Corrupt(
                    "the alpha image's size differs from the colour image's".into(),
                ));
            }
            self.premultiplied = self.heif.references_from(primary, b"prem").contains(&id);
            self.alpha = Some(alpha);
            break;
        }
        Ok(())
    }

    /// The TIFF-headed Exif data of the first `Exif` item describing the primary one.
    fn find_exif(&self, primary: u32) -> Option<Vec<u8>> {
        let id = self
            .heif
            .references_to(primary, b"cdsc")
            .into_iter()
            .find(|&id| self.heif.item(id).is_ok_and(|i| &i.kind == b"Exif"))?;
        let data = self.heif.data(id).ok()?;
        let offset = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        data.get(4usize.checked_add(offset)?..).map(<[u8]>::to_vec)
    }

    /// The size after the clean aperture.
    fn cropped_size(&self) -> (usize, usize) {
        self.crop.map_or(self.stored, |(_, _, w, h)| (w, h))
    }

    /// The rotation (`irot`, quarter turns anticlockwise) then mirror (`imir`) that show
    /// the cropped picture upright, as the image crate's orientation: a clockwise turn,
    /// then perhaps a horizontal flip (a vertical one is a half turn more and a
    /// horizontal flip).
    fn shown_orientation(&self) -> Orientation {
        let clockwise = (4 - self.rotation) % 4;
        let (clockwise, flip) = match self.mirror {
            Some(0) => ((clockwise + 2) % 4, true),
            Some(_) => (clockwise, true),
            None => (clockwise, false),
        };
        match (clockwise, flip) {
            (1, false) => Orientation::Rotate90,
            (2, false) => Orientation::Rotate180,
            (3, false) => Orientation::Rotate270,
            (0, true) => Orientation::FlipHorizontal,
            (1, true) => Orientation::Rotate90FlipH,
            (2, true) => Orientation::FlipVertical,
            (3, true) => Orientation::Rotate270FlipH,
            _ => Orientation::NoTransforms,
        }
    }

    /// Whether the file also holds an image sequence or animation.
    pub fn is_sequence(&self) -> bool {
        self.heif.has_tracks
    }

    /// The colour description to carry to PNG outputs: the H.273 code points where no ICC
    /// profile is given (an ICC profile outranks them, as in libavif), and the HDR levels.
    pub fn png_colour(&self) -> PngColour {
        let srgb_like = |n: &Nclx| matches!(n.primaries, 1 | 2) && matches!(n.transfer, 2 | 13);
        let cicp = self
            .nclx
            .filter(|n| self.icc.is_none() && !srgb_like(n))
            .map(|n| CodingIndependentCodePoints {
                color_primaries: u8::try_from(n.primaries).unwrap_or(2),
                transfer_function: u8::try_from(n.transfer).unwrap_or(2),
                matrix_coefficients: 0,
                is_video_full_range_image: true,
            });
        PngColour {
            cicp,
            mastering_display: self.mastering.map(mastering_display),
            content_light: self.light.map(|(max, average)| ContentLightLevelInfo {
                max_content_light_level: u32::from(max) * 10_000,
                max_frame_average_light_level: u32::from(average) * 10_000,
            }),
            ..PngColour::default()
        }
    }

    /// Decodes and converts the picture(s), then applies the clean aperture (the first of
    /// the transforms MIAF orders; the caller turns the result by [`Self::orientation`]).
    fn decode_here(self) -> Result<DynamicImage, HeifError> {
        let mut av1 = Av1Decoder::new(self.frame_limit, self.operating_point)?;
        let mut decode = |source: &Source| {
            let yuv = decode_source(&self.heif, source, &mut av1)?;
            if (yuv.width, yuv.height) != self.stored {
                return Err(HeifError::Corrupt(format!(
                    "the image is {}x{} by its header but its AV1 picture is {}x{}",
                    self.stored.0, self.stored.1, yuv.width, yuv.height
                )));
            }
            Ok(yuv)
        };
        let yuv = decode(&self.colour)?;
        let mut rgb = yuv.to_rgb(self.nclx.unwrap_or(yuv.colour))?;
        let alpha = match &self.alpha {
            Some(source) => Some(decode(source)?.alpha()),
            None => None,
        };
        // Divided before rounding, which keeps what precision the samples have where
        // alpha is small. Fully transparent pixels get colour 0, as in libavif: lossy
        // coding leaves noise where the premultiplied colour was zero.
        if let (true, Some(a)) = (self.premultiplied, &alpha) {
            with_alpha(
                &mut rgb,
                a,
                |v, a| if a > 0.0 { (v / a).min(1.0) } else { 0.0 },
            );
        }
        let crop = |p: Planar| match self.crop {
            Some((x, y, w, h)) => p.crop_clamped(y as isize, x as isize, h, w),
            None => p,
        };
        let (rgb, alpha) = (crop(rgb), alpha.map(crop));
        Ok(planes_to_image(
            &rgb,
            alpha.as_ref(),
            self.depth > 8,
            self.monochrome,
        ))
    }
}

/// The picture an item shows: an AV1 item, or a grid of AV1 items.
fn source(heif: &Heif, id: u32) -> Result<Source, HeifError> {
    let item = heif.item(id)?;
    match &item.kind {
        b"av01" => Ok(Source::Single(id)),
        b"grid" => {
            let grid = heif.grid(id)?;
            for &t in &grid.tiles {
                if &heif.item(t)?.kind != b"av01" {
                    return Err(HeifError::Unsupported("a grid of non-AV1 tiles".into()));
                }
            }
            Ok(Source::Grid(grid))
        }
        kind => Err(HeifError::Unsupported(format!(
            "a primary image of type '{}'",
            name(kind).trim_end_matches(' ')
        ))),
    }
}

/// The `av1C` of an AV1 item.
fn av1_config(heif: &Heif, id: u32) -> Result<Av1Config, HeifError> {
    heif.properties(id)?
        .into_iter()
        .find_map(|(p, _)| match p {
            Property::Av1Config(c) => Some(*c),
            _ => None,
        })
        .ok_or_else(|| HeifError::Corrupt("an image has no AV1 configuration ('av1C')".into()))
}

fn first_picture(source: &Source) -> u32 {
    match source {
        Source::Single(id) => *id,
        Source::Grid(grid) => grid.tiles[0],
    }
}

/// The size of a source as stored (`ispe` of an item; a grid's own size).
fn stored_size(heif: &Heif, source: &Source) -> Result<(usize, usize), HeifError> {
    let (w, h) = match source {
        Source::Single(id) => heif
            .properties(*id)?
            .into_iter()
            .find_map(|(p, _)| match *p {
                Property::Extents(w, h) => Some((w as usize, h as usize)),
                _ => None,
            })
            .ok_or_else(|| HeifError::Corrupt("the image has no size ('ispe')".into()))?,
        Source::Grid(grid) => (grid.width, grid.height),
    };
    if w == 0 || h == 0 {
        return Err(HeifError::Corrupt(format!("the image is {w}x{h}")));
    }
    Ok((w, h))
}

/// The clean aperture as a pixel rectangle (x, y, width, height) of a `size` image;
/// MIAF requires it to be whole pixels inside the image.
fn crop_rect(
    clap: &CleanAperture,
    (w, h): (usize, usize),
) -> Result<(usize, usize, usize, usize), HeifError> {
    let bad = || {
        HeifError::Corrupt(
            "the clean aperture ('clap') is not a whole-pixel crop of the image".into(),
        )
    };
    // Origin = (size - aperture) / 2 + offset, in exact fractions.
    let axis = |size: usize, (n, d): (u32, u32), (on, od): (i32, u32)| {
        let (n, d, on, od, size) = (
            i128::from(n),
            i128::from(d),
            i128::from(on),
            i128::from(od),
            size as i128,
        );
        if d == 0 || od == 0 || n % d != 0 {
            return Err(bad());
        }
        let extent = n / d;
        let num = (size - extent) * od + 2 * on;
        let den = 2 * od;
        if num % den != 0 {
            return Err(bad());
        }
        let origin = num / den;
        if extent <= 0 || origin < 0 || origin + extent > size {
            return Err(bad());
        }
        Ok((origin as usize, extent as usize))
    };
    let (x, cw) = axis(w, clap.width, clap.horizontal_offset)?;
    let (y, ch) = axis(h, clap.height, clap.vertical_offset)?;
    Ok((x, y, cw, ch))
}

/// An `mdcv` box as PNG's mDCV: primaries told apart by position (the box should list
/// green, blue, red, but writers differ), all in 0.00002 units.
fn mastering_display(m: MasteringDisplay) -> MasteringDisplayColorVolume {
    let mut p = m.primaries;
    p.sort_by_key(|&(x, _)| std::cmp::Reverse(x));
    let red = p[0];
    let (green, blue) = if p[1].1 >= p[2].1 {
        (p[1], p[2])
    } else {
        (p[2], p[1])
    };
    let xy = |(x, y): (u16, u16)| {
        (
            ScaledFloat::from_scaled(u32::from(x) * 2),
            ScaledFloat::from_scaled(u32::from(y) * 2),
        )
    };
    MasteringDisplayColorVolume {
        chromaticities: SourceChromaticities {
            white: xy(m.white_point),
            red: xy(red),
            green: xy(green),
            blue: xy(blue),
        },
        max_luminance: m.max_luminance,
        min_luminance: m.min_luminance,
    }
}

/// How the chroma planes are subsampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    I400,
    I420,
    I422,
    I444,
}

impl Layout {
    /// The layout of a rav1d picture or sequence header.
    fn of_dav1d(layout: u32) -> Self {
        match layout {
            DAV1D_PIXEL_LAYOUT_I400 => Self::I400,
            DAV1D_PIXEL_LAYOUT_I420 => Self::I420,
            DAV1D_PIXEL_LAYOUT_I422 => Self::I422,
            _ => Self::I444,
        }
    }

    /// The layout an `av1C` box declares.
    fn of_config(config: &Av1Config) -> Self {
        match (config.monochrome, config.subsampling) {
            (true, _) => Self::I400,
            (false, (true, true)) => Self::I420,
            (false, (true, false)) => Self::I422,
            _ => Self::I444,
        }
    }

    /// The horizontal and vertical subsampling shifts of the chroma planes.
    fn shifts(self) -> (usize, usize) {
        match self {
            Self::I420 => (1, 1),
            Self::I422 => (1, 0),
            Self::I400 | Self::I444 => (0, 0),
        }
    }
}

/// A decoded picture: luma and chroma samples (chroma empty for monochrome) and the AV1
/// sequence header's colour description.
#[derive(Debug, Clone)]
struct Yuv {
    width: usize,
    height: usize,
    depth: u8,
    layout: Layout,
    planes: [Vec<u16>; 3],
    /// The AV1 sequence header's colour description.
    colour: Nclx,
}

impl Yuv {
    fn chroma_size(&self) -> (usize, usize) {
        let (sx, sy) = self.layout.shifts();
        ((self.width + sx) >> sx, (self.height + sy) >> sy)
    }

    fn plane_size(&self, plane: usize) -> (usize, usize) {
        if plane == 0 {
            (self.width, self.height)
        } else {
            self.chroma_size()
        }
    }

    /// A blank picture of this one's kind and another size.
    fn blank(&self, width: usize, height: usize) -> Yuv {
        let mut out = Yuv {
            width,
            height,
            planes: Default::default(),
            ..self.clone()
        };
        for p in 0..self.plane_count() {
            let (w, h) = out.plane_size(p);
            out.planes[p] = vec![0; w * h];
        }
        out
    }

    fn plane_count(&self) -> usize {
        if self.layout == Layout::I400 {
            1
        } else {
            3
        }
    }

    /// Copies `tile` in with its top-left corner at (x, y) (chroma-aligned), clipped.
    fn paste(&mut self, tile: &Yuv, x: usize, y: usize) {
        let (sx, sy) = self.layout.shifts();
        for p in 0..self.plane_count() {
            let (ox, oy) = if p == 0 { (x, y) } else { (x >> sx, y >> sy) };
            let (w, h) = self.plane_size(p);
            let (tw, th) = tile.plane_size(p);
            let cols = tw.min(w.saturating_sub(ox));
            for row in 0..th.min(h.saturating_sub(oy)) {
                let dst = (oy + row) * w + ox;
                self.planes[p][dst..dst + cols]
                    .copy_from_slice(&tile.planes[p][row * tw..row * tw + cols]);
            }
        }
    }

    /// The luma plane as alpha in [0, 1] (alpha is full range, as libavif takes it).
    fn alpha(&self) -> Planar {
        let max = f32::from((1u16 << self.depth) - 1);
        let a = self.planes[0].iter().map(|&v| f32::from(v) / max).collect();
        Planar::new(1, self.height, self.width, a)
    }

    /// RGB in [0, 1] by the matrix and range of `colour` (luma in all three planes for a
    /// monochrome picture).
    fn to_rgb(&self, colour: Nclx) -> Result<Planar, HeifError> {
        let full_range = colour.full_range;
        let depth = i32::from(self.depth);
        let max = ((1 << depth) - 1) as f32;
        let (y_bias, y_range, uv_range) = if full_range {
            (0.0, max, max)
        } else {
            let s = (1 << (depth - 8)) as f32;
            (16.0 * s, 219.0 * s, 224.0 * s)
        };
        let uv_bias = (1 << (depth - 1)) as f32;
        let luma = |v: u16| (f32::from(v) - y_bias) / y_range;
        let (w, h) = (self.width, self.height);
        if self.layout == Layout::I400 {
            let gray: Vec<f32> = self.planes[0]
                .iter()
                .map(|&v| luma(v).clamp(0.0, 1.0))
                .collect();
            return Ok(Planar::new(3, h, w, gray.repeat(3)));
        }
        let kind = Matrix::of(colour, self.layout)?;
        // GBR stores each colour like luma; Y'CbCr chroma is centred on zero.
        let chroma = |v: f32| {
            if kind == Matrix::Identity {
                (v - y_bias) / y_range
            } else {
                (v - uv_bias) / uv_range
            }
        };
        let (sx, sy) = self.layout.shifts();
        let (cw, ch) = self.chroma_size();
        let n = w * h;
        let mut out = vec![0.0; 3 * n];
        for y in 0..h {
            // Bilinear chroma: 3/4 of the nearest chroma row or column, 1/4 of the next
            // one on the side of this luma sample (itself at the edges).
            let (cy, cy2) = neighbours(y, sy, ch);
            for x in 0..w {
                let (cx, cx2) = neighbours(x, sx, cw);
                let sample = |p: usize| {
                    let at = |r: usize, c: usize| f32::from(self.planes[p][r * cw + c]);
                    let v = match (sx, sy) {
                        (0, 0) => at(cy, cx),
                        (1, 0) => 0.75 * at(cy, cx) + 0.25 * at(cy, cx2),
                        _ => {
                            0.5625 * at(cy, cx)
                                + 0.1875 * (at(cy, cx2) + at(cy2, cx))
                                + 0.0625 * at(cy2, cx2)
                        }
                    };
                    chroma(v)
                };
                let yv = luma(self.planes[0][y * w + x]);
                let (cb, cr) = (sample(1), sample(2));
                let rgb = match kind {
                    Matrix::Identity => [cr, yv, cb],
                    Matrix::YCgCo => {
                        let t = yv - cb;
                        [t + cr, yv + cb, t - cr]
                    }
                    Matrix::Kr(kr, kb) => ycbcr_to_rgb(yv, cb, cr, [kr, 1.0 - kr - kb, kb]),
                };
                for (c, v) in rgb.into_iter().enumerate() {
                    out[c * n + y * w + x] = v.clamp(0.0, 1.0);
                }
            }
        }
        Ok(Planar::new(3, h, w, out))
    }
}

/// The chroma index of luma index `i` (subsampled by `shift`) and its bilinear neighbour.
fn neighbours(i: usize, shift: usize, len: usize) -> (usize, usize) {
    let c = i >> shift;
    if shift == 0 {
        return (c, c);
    }
    let other = if i % 2 == 1 {
        (c + 1).min(len - 1)
    } else {
        c.saturating_sub(1)
    };
    (c, other)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Matrix {
    Identity,
    YCgCo,
    /// Kr and Kb of a Y'CbCr matrix.
    Kr(f32, f32),
}

impl Matrix {
    /// The conversion of `colour`'s H.273 matrix for colour samples of this layout; those
    /// libavif does not convert either are refused by name.
    fn of(colour: Nclx, layout: Layout) -> Result<Self, HeifError> {
        let refuse = |what: &str| Err(HeifError::Unsupported(format!("the {what} YUV matrix")));
        Ok(match colour.matrix {
            0 if layout != Layout::I444 => return refuse("identity (GBR) with subsampled chroma,"),
            0 => Self::Identity,
            1 => Self::Kr(0.2126, 0.0722),
            2 | 5 | 6 => Self::Kr(0.299, 0.114),
            4 => Self::Kr(0.30, 0.11),
            7 => Self::Kr(0.212, 0.087),
            8 => Self::YCgCo,
            9 => Self::Kr(0.2627, 0.0593),
            12 => {
                let (kr, kb) = luma_weights(colour.primaries);
                Self::Kr(kr, kb)
            }
            10 => return refuse("BT.2020 constant-luminance"),
            11 => return refuse("SMPTE ST 2085"),
            13 => return refuse("chromaticity-derived constant-luminance"),
            14 => return refuse("ICtCp"),
            m => return refuse(&format!("reserved ({m})")),
        })
    }
}

/// Kr and Kb derived from H.273 colour primaries (its equations 39 and 40), for the
/// chromaticity-derived matrix; unknown primaries are taken as BT.709's, as libavif does.
fn luma_weights(primaries: u16) -> (f32, f32) {
    // Red, green, blue and white (x, y).
    let [r, g, b, w]: [(f64, f64); 4] = match primaries {
        4 => [(0.67, 0.33), (0.21, 0.71), (0.14, 0.08), (0.310, 0.316)],
        5 => [(0.64, 0.33), (0.29, 0.60), (0.15, 0.06), (0.3127, 0.3290)],
        6 | 7 => [
            (0.630, 0.340),
            (0.310, 0.595),
            (0.155, 0.070),
            (0.3127, 0.3290),
        ],
        8 => [
            (0.681, 0.319),
            (0.243, 0.692),
            (0.145, 0.049),
            (0.310, 0.316),
        ],
        9 => [
            (0.708, 0.292),
            (0.170, 0.797),
            (0.131, 0.046),
            (0.3127, 0.3290),
        ],
        10 => [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (1.0 / 3.0, 1.0 / 3.0)],
        11 => [
            (0.680, 0.320),
            (0.265, 0.690),
            (0.150, 0.060),
            (0.314, 0.351),
        ],
        12 => [
            (0.680, 0.320),
            (0.265, 0.690),
            (0.150, 0.060),
            (0.3127, 0.3290),
        ],
        22 => [
            (0.630, 0.340),
            (0.295, 0.605),
            (0.155, 0.077),
            (0.3127, 0.3290),
        ],
        _ => [(0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290)],
    };
    let z = |(x, y): (f64, f64)| 1.0 - x - y;
    let (rz, gz, bz, wz) = (z(r), z(g), z(b), z(w));
    let denom =
        r.0 * (g.1 * bz - b.1 * gz) + g.0 * (b.1 * rz - r.1 * bz) + b.0 * (r.1 * gz - g.1 * rz);
    let kr = r.1
        * (w.0 * (g.1 * bz - b.1 * gz)
            + w.1 * (b.0 * gz - g.0 * bz)
            + wz * (g.0 * b.1 - b.0 * g.1))
        / (w.1 * denom);
    let kb = b.1
        * (w.0 * (r.1 * gz - g.1 * rz)
            + w.1 * (g.0 * rz - r.0 * gz)
            + wz * (r.0 * g.1 - g.0 * r.1))
        / (w.1 * denom);
    (kr as f32, kb as f32)
}

/// Decodes a source: one picture, or a grid's tiles joined and cut to the grid's size.
fn decode_source(heif: &Heif, source: &Source, av1: &mut Av1Decoder) -> Result<Yuv, HeifError> {
    match source {
        Source::Single(id) => av1.decode(&heif.data(*id)?, &av1_config(heif, *id)?),
        Source::Grid(grid) => {
            let mut canvas = Canvas {
                yuv: None,
                tile: (0, 0),
                columns: grid.columns,
                rows: grid.tiles.len() / grid.columns,
                size: (grid.width, grid.height),
            };
            for (i, &id) in grid.tiles.iter().enumerate() {
                canvas.place(i, av1.decode(&heif.data(id)?, &av1_config(heif, id)?)?)?;
            }
            canvas
                .yuv
                .ok_or_else(|| HeifError::Corrupt("the image grid has no tiles".into()))
        }
    }
}

/// A grid's picture, assembled from its tiles as they are decoded.
struct Canvas {
    yuv: Option<Yuv>,
    /// The size every tile must have: the first one's.
    tile: (usize, usize),
    columns: usize,
    rows: usize,
    size: (usize, usize),
}

impl Canvas {
    /// Pastes tile `i` (row-major); all tiles must be alike, whole chroma samples in size
    /// (MIAF), and cover the image.
    fn place(&mut self, i: usize, tile: Yuv) -> Result<(), HeifError> {
        let (w, h) = self.size;
        let yuv = self.yuv.get_or_insert_with(|| {
            self.tile = (tile.width, tile.height);
            tile.blank(w, h)
        });
        let (tw, th) = self.tile;
        let bad = |what: &str| Err(HeifError::Corrupt(format!("the grid's tiles {what}")));
        if tile.layout != yuv.layout
            || tile.depth != yuv.depth
            || (tile.width, tile.height) != (tw, th)
        {
            return bad("differ in kind or size");
        }
        let (sx, sy) = tile.layout.shifts();
        if tw % (1 << sx) != 0 || th % (1 << sy) != 0 {
            return bad("are not whole chroma samples wide and high");
        }
        if tw * self.columns < w || th * self.rows < h {
            return bad("do not cover the image");
        }
        yuv.paste(&tile, (i % self.columns) * tw, (i / self.columns) * th);
        Ok(())
    }
}

/// One rav1d decoding context.
struct Av1Decoder {
    context: Option<Dav1dContext>,
}

/// A picture rav1d handed out; released when dropped.
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture was filled in by `dav1d_get_picture` (or is the default,
        // empty one, which unref accepts) and is released only here.
        unsafe { dav1d_picture_unref(Some(NonNull::from(&mut self.0))) };
    }
}

/// A rav1d failure (a negated errno) in words.
fn av1_error(what: &str, code: i32) -> HeifError {
    let cause = match code.unsigned_abs() {
        12 => "out of memory".to_string(),
        22 => "invalid AV1 data".to_string(),
        34 => "a frame larger than the image declares".to_string(),
        92 => "an AV1 feature that is not supported".to_string(),
        n => format!("error {n}"),
    };
    HeifError::Corrupt(format!("AV1 {what} failed: {cause}"))
}

impl Av1Decoder {
    fn new(frame_limit: u32, operating_point: u8) -> Result<Self, HeifError> {
        let mut settings = std::mem::MaybeUninit::<Dav1dSettings>::uninit();
        // SAFETY: `dav1d_default_settings` writes every field of the settings it is given.
        let settings = unsafe {
            dav1d_default_settings(NonNull::from(&mut settings).cast());
            settings.assume_init_mut()
        };
        // One thread: still images gain little from more, and with several rav1d panics on
        // more kinds of damaged data (see `decode_avif_in_child_process`).
        settings.n_threads = 1;
        // Still images: one frame in flight, only the highest spatial layer shown.
        settings.max_frame_delay = 1;
        settings.all_layers = 0;
        settings.operating_point = operating_point.into();
        settings.frame_size_limit = frame_limit;
        // SAFETY: a logger of two null options is rav1d's "no logger"; damaged data is
        // reported through the errors returned, not printed.
        settings.logger = unsafe { std::mem::zeroed() };
        let mut context = None;
        // SAFETY: both pointers are to live locals; `settings` was initialised above.
        let res = unsafe {
            dav1d_open(
                Some(NonNull::from(&mut context)),
                Some(NonNull::from(&*settings)),
            )
        };
        if res.0 != 0 {
            return Err(av1_error("decoder setup", res.0));
        }
        Ok(Self { context })
    }

    /// Decodes one item: a temporal unit holding one frame (or the layers of one), whose
    /// sequence header must agree with its `av1C` (checked first: a damaged sequence
    /// header is a common way into rav1d's panics).
    fn decode(&mut self, bytes: &[u8], config: &Av1Config) -> Result<Yuv, HeifError> {
        if bytes.is_empty() {
            return Err(HeifError::Corrupt("an AV1 item is empty".into()));
        }
        check_sequence_header(bytes, config)?;
        let context = self.context;
        let mut data = Dav1dData::default();
        // SAFETY: `data` is a live, empty `Dav1dData`; the buffer returned holds
        // `bytes.len()` bytes and is owned by `data` until unref.
        let buffer = unsafe { dav1d_data_create(Some(NonNull::from(&mut data)), bytes.len()) };
        let Some(buffer) = NonNull::new(buffer) else {
            return Err(HeifError::Corrupt("an empty or oversized AV1 item".into()));
        };
        // SAFETY: `buffer` has room for `bytes.len()` bytes and does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.as_ptr(), bytes.len()) };
        let mut last: Option<Picture> = None;
        let sent = loop {
            // SAFETY: `context` is open; `data` is live.
            let res = unsafe { dav1d_send_data(context, Some(NonNull::from(&mut data))) };
            if res.0 == 0 || data.sz == 0 {
                break Ok(());
            }
            match self.next_picture() {
                Some(p) => last = Some(p),
                None => break Err(av1_error("decoding", res.0)),
            }
        };
        // SAFETY: `data` is live; unref releases what the decoder did not take.
        unsafe { dav1d_data_unref(Some(NonNull::from(&mut data))) };
        sent?;
        while let Some(p) = self.next_picture() {
            last = Some(p);
        }
        let picture = last.ok_or_else(|| {
            HeifError::Corrupt("the AV1 data holds no picture (truncated?)".into())
        })?;
        Ok(copy_planes(&picture.0))
    }

    fn next_picture(&mut self) -> Option<Picture> {
        let mut picture = Picture(Dav1dPicture::default());
        // SAFETY: `context` is open; the picture is a live default one to be filled in.
        let res = unsafe { dav1d_get_picture(self.context, Some(NonNull::from(&mut picture.0))) };
        (res.0 == 0).then_some(picture)
    }
}

impl Drop for Av1Decoder {
    fn drop(&mut self) {
        // SAFETY: the context came from `dav1d_open` and is closed only here.
        unsafe { dav1d_close(Some(NonNull::from(&mut self.context))) };
    }
}

/// Parses the sequence header in `bytes` and compares it with the item's `av1C`.
fn check_sequence_header(bytes: &[u8], config: &Av1Config) -> Result<(), HeifError> {
    let mut header = std::mem::MaybeUninit::<Dav1dSequenceHeader>::uninit();
    // SAFETY: `header` may be written to; the data pointer and length are of `bytes`,
    // which the function only reads.
    let res = unsafe {
        dav1d_parse_sequence_header(
            Some(NonNull::from(&mut header).cast()),
            NonNull::new(bytes.as_ptr().cast_mut()),
            bytes.len(),
        )
    };
    if res.0 != 0 {
        return Err(HeifError::Corrupt(
            "the AV1 data has no valid sequence header".into(),
        ));
    }
    // SAFETY: a successful parse wrote the whole header.
    let header = unsafe { header.assume_init() };
    if header.profile != config.profile
        || 8 + 2 * header.hbd != config.depth
        || Layout::of_dav1d(header.layout) != Layout::of_config(config)
    {
        return Err(HeifError::Corrupt(
            "the AV1 sequence header does not match the configuration ('av1C')".into(),
        ));
    }
    Ok(())
}

/// The samples and colour description of a rav1d picture.
fn copy_planes(p: &Dav1dPicture) -> Yuv {
    // SAFETY: a picture handed out by the decoder points at its sequence header.
    let header = p.seq_hdr.map(|h| unsafe { h.as_ref() });
    let mut yuv = Yuv {
        width: p.p.w as usize,
        height: p.p.h as usize,
        depth: p.p.bpc as u8,
        layout: Layout::of_dav1d(p.p.layout),
        planes: Default::default(),
        colour: Nclx {
            primaries: header.map_or(2, |h| h.pri as u16),
            transfer: header.map_or(2, |h| h.trc as u16),
            matrix: header.map_or(2, |h| h.mtrx as u16),
            full_range: header.is_some_and(|h| h.color_range != 0),
        },
    };
    let wide = yuv.depth > 8;
    for plane in 0..yuv.plane_count() {
        let (w, h) = yuv.plane_size(plane);
        let stride = p.stride[usize::from(plane > 0)] as usize;
        let Some(base) = p.data[plane] else { continue };
        let mut out = Vec::with_capacity(w * h);
        for row in 0..h {
            // SAFETY: rav1d allocates `stride` bytes per row for `h` rows of this plane,
            // and each row holds `w` samples of 1 (8-bit) or 2 bytes.
            unsafe {
                let start = base.as_ptr().cast::<u8>().add(row * stride);
                if wide {
                    let samples = std::slice::from_raw_parts(start.cast::<u16>(), w);
                    out.extend_from_slice(samples);
                } else {
                    out.extend(
                        std::slice::from_raw_parts(start, w)
                            .iter()
                            .map(|&v| u16::from(v)),
                    );
                }
            }
        }
        yuv.planes[plane] = out;
    }
    yuv
}

/// The program that decodes AVIF files in a child process, if one was set.
static CHILD_DECODER: OnceLock<PathBuf> = OnceLock::new();

/// The hidden subcommand of `program` that runs [`avif_child_main`].
pub const AVIF_CHILD_COMMAND: &str = "decode-avif";

/// Makes AVIF files be decoded by `program decode-avif FILE` in a child process. rav1d
/// panics on some damaged AV1 data, and a panic inside its C-ABI functions aborts the
/// process; in a child that is the one file's error. The command-line tool sets this to
/// itself; without it files are decoded in this process.
pub fn decode_avif_in_child_process(program: PathBuf) {
    let _ = CHILD_DECODER.set(program);
}

/// The child's side of [`decode_avif_in_child_process`]: decodes the AVIF `file` and writes its
/// samples, as `read_image` fills its buffer, to standard output. An error is one line on
/// standard error, "corrupt: …" or "unsupported: …", and exit status 1.
pub fn avif_child_main(file: &Path) -> std::process::ExitCode {
    let result = std::fs::read(file)
        .map_err(|e| HeifError::Corrupt(format!("cannot read the file: {e}")))
        .and_then(|data| AvifDecoder::new(&data)?.decode_here())
        .and_then(|img| {
            std::io::stdout()
                .lock()
                .write_all(img.as_bytes())
                .map_err(|e| HeifError::Corrupt(format!("cannot hand over the image: {e}")))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(HeifError::Corrupt(e)) => {
            eprintln!("corrupt: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(HeifError::Unsupported(e)) => {
            eprintln!("unsupported: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs [`avif_child_main`] in `program` on a temporary copy of `file`; returns the samples.
fn decode_in_child(program: &Path, file: &[u8]) -> Result<Vec<u8>, HeifError> {
    let failed = |what: String| HeifError::Corrupt(format!("AVIF decoding failed: {what}"));
    let mut copy = crate::fsutil::scratch_file().map_err(|e| failed(e.to_string()))?;
    copy.as_file_mut()
        .write_all(file)
        .map_err(|e| failed(e.to_string()))?;
    let out = std::process::Command::new(program)
        .arg(AVIF_CHILD_COMMAND)
        .arg(copy.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", program.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let message = String::from_utf8_lossy(&out.stderr);
    let line = message.lines().last().unwrap_or_default();
    Err(match (line.split_once(": "), out.status.code()) {
        (Some(("corrupt", e)), Some(1)) => HeifError::Corrupt(e.into()),
        (Some(("unsupported", e)), Some(1)) => HeifError::Unsupported(e.into()),
        _ => HeifError::Corrupt("the AV1 decoder failed on damaged data".into()),
    })
}

fn image_error(e: HeifError) -> ImageError {
    let hint = || ImageFormatHint::Name("AVIF".into());
    match e {
        HeifError::Corrupt(detail) => ImageError::Decoding(DecodingError::new(hint(), detail)),
        HeifError::Unsupported(detail) => {
            ImageError::Unsupported(UnsupportedError::from_format_and_kind(
                hint(),
                UnsupportedErrorKind::GenericFeature(detail),
            ))
        }
    }
}

impl ImageDecoder for AvifDecoder<'_> {
    fn dimensions(&self) -> (u32, u32) {
        let (w, h) = self.cropped_size();
        (
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
        )
    }

    fn color_type(&self) -> ColorType {
        match (self.depth > 8, self.monochrome, self.alpha.is_some()) {
            (false, true, false) => ColorType::L8,
            (false, true, true) => ColorType::La8,
            (false, false, false) => ColorType::Rgb8,
            (false, false, true) => ColorType::Rgba8,
            (true, true, false) => ColorType::L16,
            (true, true, true) => ColorType::La16,
            (true, false, false) => ColorType::Rgb16,
            (true, false, true) => ColorType::Rgba16,
        }
    }

    fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.icc.clone())
    }

    fn exif_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.exif.clone())
    }

    /// The file's rotation and mirror, which AVIF readers obey rather than an Exif
    /// Orientation.
    fn orientation(&mut self) -> ImageResult<Orientation> {
        Ok(self.shown_orientation())
    }

    fn set_limits(&mut self, limits: image::Limits) -> ImageResult<()> {
        limits.check_support(&image::LimitSupport::default())?;
        let (w, h) = self.dimensions();
        limits.check_dimensions(w, h)
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        let decoded;
        let bytes = match CHILD_DECODER.get() {
            Some(program) => {
                decoded = decode_in_child(program, self.heif.file()).map_err(image_error)?;
                &decoded[..]
            }
            None => {
                decoded = self.decode_here().map_err(image_error)?.into_bytes();
                &decoded[..]
            }
        };
        if bytes.len() != buf.len() {
            return Err(image_error(HeifError::Corrupt(
                "the decoded picture's size differs from the one the file states".into(),
            )));
        }
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{format_fixture, limits};
    use crate::imageops::io::{decode_file, peek_file, DecodedImage, InputFormat};

    fn avif(name: &str) -> DecodedImage {
        decode_file(&format_fixture(&format!("avif/{name}")), &limits()).unwrap()
    }

    /// The largest difference of colour and of alpha, in 8-bit levels.
    fn max_diff(got: &DecodedImage, want: &DecodedImage) -> (f32, f32) {
        let alpha = match (&got.alpha, &want.alpha) {
            (Some(a), Some(b)) => a.max_abs_diff(b),
            (None, None) => 0.0,
            _ => panic!("alpha in one image only"),
        };
        (got.rgb.max_abs_diff(&want.rgb) * 255.0, alpha * 255.0)
    }

    /// Each file against libavif's decode of it. 8-bit references made by libavif's own
    /// floating-point conversion (16-bit PNGs, lossless files) are met within rounding;
    /// those made through libyuv's fixed-point code (8-bit PNGs of lossy files) within
    /// its known error: one level, two with bilinear chroma.
    #[test]
    fn decodes_as_libavif_does() {
        let cases = [
            ("rgb8_444", "rgb8_444.png", 1.01, false),
            ("rgb8_420", "rgb8_420.bilinear.d16.png", 0.51, false),
            ("rgb8_422", "rgb8_422.bilinear.d16.png", 0.51, false),
            ("gray8_400", "gray8_400.png", 0.0, false),
            ("rgb10_444", "rgb10_444.png", 0.01, true),
            ("rgb12_420", "rgb12_420.bilinear.png", 0.01, true),
            ("rgba8_444", "rgba8_444.png", 1.01, false),
            (
                "rgba8_premultiplied",
                "rgba8_premultiplied.d16.png",
                1.01,
                false,
            ),
            ("lossless_identity", "lossless_identity.png", 0.0, false),
            ("grid_2x2", "grid_2x2.bilinear.png", 2.01, false),
            ("bt2020_pq", "bt2020_pq.bilinear.png", 0.01, true),
            ("p3_derived_420", "p3_derived_420.bilinear.png", 0.01, true),
            ("anim", "anim.frame0.png", 1.01, false),
        ];
        for (name, reference, tolerance, sixteen) in cases {
            let got = avif(&format!("{name}.avif"));
            let want = avif(reference);
            let (colour, alpha) = max_diff(&got, &want);
            assert!(colour <= tolerance, "{name}: colour off by {colour} levels");
            assert_eq!(alpha, 0.0, "{name}: alpha");
            assert_eq!(got.sixteen_bit, sixteen, "{name}");
            assert_eq!(got.grayscale, name.starts_with("gray"), "{name}");
            assert_eq!(got.format, InputFormat::Avif);
        }
    }

    /// Clean aperture, rotation and mirroring, against the stored image with them applied.
    #[test]
    fn crop_rotation_and_mirror_are_applied() {
        for name in [
            "irot1",
            "imir0",
            "imir1",
            "irot1_imir0",
            "irot3_imir1",
            "clap",
            "exif",
            "exif_irot0",
        ] {
            let got = avif(&format!("{name}.avif"));
            let want = avif(&format!("{name}.oriented.png"));
            let tolerance = if name.starts_with("exif") { 1.01 } else { 0.0 };
            let (colour, _) = max_diff(&got, &want);
            assert!(colour <= tolerance, "{name}: off by {colour} levels");
            let peeked = peek_file(&format_fixture(&format!("avif/{name}.avif"))).unwrap();
            assert_eq!(peeked.format, InputFormat::Avif);
            assert_eq!(peeked.size, Some((got.rgb.height, got.rgb.width)), "{name}");
        }
    }

    #[test]
    fn metadata_is_kept() {
        // The profile is the one the PNG of the same image carries.
        let icc = avif("icc.avif").icc_profile.unwrap();
        assert_eq!(Some(icc), avif("icc.png").icc_profile);
        // Exif comes with its TIFF header, its orientation reset (irot has turned it).
        let exif = avif("exif.avif").exif.unwrap();
        assert!(exif.starts_with(b"MM\0*") || exif.starts_with(b"II*\0"));
        assert_eq!(crate::imageops::exif::upright(exif.clone()), Some(exif));
        // HDR: the H.273 code points go to PNG's cICP; sRGB-like ones are left out.
        let cicp = avif("bt2020_pq.avif").png_colour.cicp.unwrap();
        assert_eq!((cicp.color_primaries, cicp.transfer_function), (9, 16));
        assert_eq!(avif("rgb8_444.avif").png_colour, Default::default());
        assert!(avif("icc.avif").png_colour.cicp.is_none());
    }

    #[test]
    fn truncated_files_are_refused() {
        for name in ["truncated.avif", "truncated_mdat.avif"] {
            let e = decode_file(&format_fixture(&format!("avif/{name}")), &limits())
                .unwrap_err()
                .to_string();
            assert!(e.contains("truncated"), "{name}: {e}");
        }
    }

    #[test]
    fn clean_aperture_must_be_whole_pixels_inside() {
        let clap = |w: u32, h: u32, dx: (i32, u32), dy: (i32, u32)| CleanAperture {
            width: (w, 1),
            height: (h, 1),
            horizontal_offset: dx,
            vertical_offset: dy,
        };
        // Centred: (37 - 30) / 2 - 1/2 = 3.
        assert_eq!(
            crop_rect(&clap(30, 18, (-1, 2), (-1, 2)), (37, 23)),
            Ok((3, 2, 30, 18))
        );
        assert_eq!(
            crop_rect(&clap(37, 23, (0, 1), (0, 1)), (37, 23)),
            Ok((0, 0, 37, 23))
        );
        // Half a pixel off, outside the image, zero denominators.
        assert!(crop_rect(&clap(30, 18, (0, 1), (0, 1)), (37, 23)).is_err());
        assert!(crop_rect(&clap(30, 18, (4, 1), (0, 1)), (36, 18)).is_err());
        assert!(crop_rect(&clap(30, 18, (0, 0), (0, 1)), (30, 18)).is_err());
    }

    /// The chromaticity-derived matrix of BT.709 and BT.2020 primaries is their own.
    #[test]
    fn luma_weights_follow_the_primaries() {
        for (primaries, want) in [(1, (0.2126, 0.0722)), (9, (0.2627, 0.0593))] {
            let (kr, kb) = luma_weights(primaries);
            assert!(
                (kr - want.0).abs() < 5e-4 && (kb - want.1).abs() < 5e-4,
                "{kr} {kb}"
            );
        }
        let nclx = |matrix| Nclx {
            primaries: 9,
            transfer: 16,
            matrix,
            full_range: false,
        };
        assert!(matches!(
            Matrix::of(nclx(12), Layout::I420),
            Ok(Matrix::Kr(..))
        ));
        let refused = |matrix, layout| match Matrix::of(nclx(matrix), layout) {
            Err(HeifError::Unsupported(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(14, Layout::I444), "the ICtCp YUV matrix");
        assert!(refused(0, Layout::I420).contains("identity (GBR)"));
    }

    fn tile(width: usize, height: usize, layout: Layout) -> Yuv {
        let blank = Yuv {
            width: 0,
            height: 0,
            depth: 8,
            layout,
            planes: Default::default(),
            colour: Nclx {
                primaries: 1,
                transfer: 13,
                matrix: 1,
                full_range: true,
            },
        };
        let mut t = blank.blank(width, height);
        t.planes[0].fill(7);
        t
    }

    /// Grid tiles must match the first in size, be whole chroma samples, and cover the
    /// image; what they cover beyond it is cut off.
    #[test]
    fn grid_tiles_are_checked_and_placed() {
        let canvas = |columns, rows, size| Canvas {
            yuv: None,
            tile: (0, 0),
            columns,
            rows,
            size,
        };
        let mut c = canvas(2, 1, (7, 4));
        c.place(0, tile(4, 4, Layout::I420)).unwrap();
        c.place(1, tile(4, 4, Layout::I420)).unwrap();
        let yuv = c.yuv.unwrap();
        assert_eq!((yuv.width, yuv.height, yuv.chroma_size()), (7, 4, (4, 2)));
        assert!(yuv.planes[0].iter().all(|&v| v == 7));
        let error = |columns, rows, size, tiles: &[Yuv]| {
            let mut c = canvas(columns, rows, size);
            tiles
                .iter()
                .enumerate()
                .try_for_each(|(i, t)| c.place(i, t.clone()))
                .unwrap_err()
        };
        let e = error(
            2,
            1,
            (8, 4),
            &[tile(4, 4, Layout::I420), tile(5, 4, Layout::I420)],
        );
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("differ")),
            "{e:?}"
        );
        let e = error(2, 1, (10, 4), &[tile(5, 4, Layout::I420)]);
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("chroma")),
            "{e:?}"
        );
        let e = error(2, 1, (9, 4), &[tile(4, 4, Layout::I444)]);
        assert!(
            matches!(e, HeifError::Corrupt(ref m) if m.contains("cover")),
            "{e:?}"
        );
        // Odd tiles are fine without subsampling.
        let mut c = canvas(2, 1, (10, 3));
        c.place(0, tile(5, 3, Layout::I444)).unwrap();
    }

    #[test]
    fn bilinear_neighbours_stay_inside() {
        // Luma 0 and the last odd column use their own chroma sample twice.
        assert_eq!(neighbours(0, 1, 3), (0, 0));
        assert_eq!(neighbours(1, 1, 3), (0, 1));
        assert_eq!(neighbours(2, 1, 3), (1, 0));
        assert_eq!(neighbours(5, 1, 3), (2, 2));
        assert_eq!(neighbours(4, 0, 5), (4, 4));
    }
}
