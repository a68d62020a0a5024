//! EXIF tags apart from the TIFF structure that holds them, to move them between an EXIF
//! chunk and a TIFF file's own directories: a TIFF input's camera, date and GPS tags reach
//! the other formats' EXIF chunks, and an EXIF chunk reaches a TIFF output's directories.
//! Moving the tags moves their values, so a value whose meaning depends on where it lies in
//! the source (the maker note, whose inner offsets count from there) is left out.

use std::io::{Read, Seek, SeekFrom};

use super::{Tiff, RESOLUTION_UNIT, X_RESOLUTION, Y_RESOLUTION};

/// One directory entry: its tag, type and value bytes, in the structure's byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub tag: u16,
    pub kind: u16,
    pub data: Vec<u8>,
}

/// The tags that describe a photo, by the directory they belong in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExifTags {
    pub big_endian: bool,
    /// The first directory's tags of [`DESCRIPTIVE`] and the resolution tags.
    pub image: Vec<Field>,
    /// The Exif directory (exposure, lens, dates), less the interoperability pointer, the
    /// maker note and the tags about the source's compression.
    pub exif: Vec<Field>,
    /// The GPS directory.
    pub gps: Vec<Field>,
}

/// The first directory's tags that describe the photo rather than how its pixels are
/// stored: ImageDescription, Make, Model, Software, DateTime, Artist, HostComputer,
/// Copyright.
pub const DESCRIPTIVE: [u16; 8] = [
    0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x013C, 0x8298,
];
/// XResolution, YResolution, ResolutionUnit: the physical density, which TIFF files keep
/// among their own tags (see [`crate::imageops::density`]).
const RESOLUTION: [u16; 3] = [X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT];

pub(super) const EXIF_IFD: u16 = 0x8769;
const GPS_IFD: u16 = 0x8825;
const INTEROP_IFD: u16 = 0xA005;
const MAKER_NOTE: u16 = 0x927C;
/// The Exif directory's tags that are not moved: pointers, the maker note, and
/// ComponentsConfiguration and CompressedBitsPerPixel, which describe the source's JPEG
/// compression.
const LEFT_OUT: [u16; 6] = [EXIF_IFD, GPS_IFD, INTEROP_IFD, MAKER_NOTE, 0x9101, 0x9102];
/// The tags whose text may be UTF-16 in the structure's byte order, after an 8-byte
/// character code: UserComment, GPSProcessingMethod, GPSAreaInformation.
const CODED_TEXT: [u16; 3] = [0x9286, 0x001B, 0x001C];

/// Bounds on a value's size and a directory's entries, so that a damaged file cannot make
/// us allocate much.
const MAX_VALUE: usize = 1 << 20;
const MAX_ENTRIES: usize = 1024;

impl Field {
    pub fn new(tag: u16, kind: u16, data: &[u8]) -> Self {
        Self {
            tag,
            kind,
            data: data.to_vec(),
        }
    }

    /// The number of values, as the entry's count field gives it.
    pub fn count(&self) -> u32 {
        let size = type_size(self.kind).unwrap_or(1);
        u32::try_from(self.data.len() / size).unwrap_or(u32::MAX)
    }
}

impl ExifTags {
    /// The tags of an EXIF chunk (a TIFF structure in memory).
    pub fn from_chunk(chunk: &[u8]) -> Option<Self> {
        Self::read(|at, len| Some(chunk.get(at..at.checked_add(len)?)?.to_vec()))
    }

    /// The tags of a classic (not Big) TIFF file's first directory and its Exif and GPS
    /// directories. Leaves `file` wherever the last read did.
    pub fn from_file(file: &mut (impl Read + Seek)) -> Option<Self> {
        Self::read(|at, len| {
            file.seek(SeekFrom::Start(u64::try_from(at).ok()?)).ok()?;
            let mut bytes = vec![0; len];
            file.read_exact(&mut bytes).ok()?;
            Some(bytes)
        })
    }

    /// `None` where there is nothing but the resolution, which TIFF writers put in every
    /// file whatever the photo.
    fn read(mut read_at: impl FnMut(usize, usize) -> Option<Vec<u8>>) -> Option<Self> {
        let head = read_at(0, 8)?;
        let t = Tiff::new(&head)?;
        let ifd0 = t.u32_at(&head, 4)?;
        let first = directory(&t, &mut read_at, ifd0);
        let pointer = |tag| {
            let f = first.iter().find(|f| f.tag == tag && f.data.len() == 4)?;
            t.u32_at(&f.data, 0)
        };
        // A damaged file may point both at one directory, or back at the first.
        let (exif_at, gps_at) = (pointer(EXIF_IFD), pointer(GPS_IFD));
        let gps_at = gps_at.filter(|&at| at != ifd0 && Some(at) != exif_at);
        let exif_at = exif_at.filter(|&at| at != ifd0);
        let mut sub = |at: Option<usize>, keep: &dyn Fn(u16) -> bool| {
            let mut fields = at
                .map(|at| directory(&t, &mut read_at, at))
                .unwrap_or_default();
            fields.retain(|f| keep(f.tag));
            fields
        };
        // Exif tags lie at 0x8000 and above, GPS tags below 0x100: what else a directory
        // holds belongs elsewhere.
        let exif = sub(exif_at, &|tag| tag >= 0x8000 && !LEFT_OUT.contains(&tag));
        let gps = sub(gps_at, &|tag| tag < 0x100);
        let image: Vec<Field> = first
            .into_iter()
            .filter(|f| DESCRIPTIVE.contains(&f.tag) || RESOLUTION.contains(&f.tag))
            .collect();
        let describes = image.iter().any(|f| DESCRIPTIVE.contains(&f.tag));
        (describes || !exif.is_empty() || !gps.is_empty()).then_some(Self {
            big_endian: t.big_endian,
            image,
            exif,
            gps,
        })
    }

    /// The tags in the byte order `big_endian`.
    pub fn in_byte_order(mut self, big_endian: bool) -> Self {
        if big_endian != self.big_endian {
            for f in self.fields_mut() {
                let width = element_width(f.kind);
                for element in f.data.chunks_exact_mut(width) {
                    element.reverse();
                }
                if CODED_TEXT.contains(&f.tag) && f.data.starts_with(b"UNICODE\0") {
                    for unit in f.data[8..].chunks_exact_mut(2) {
                        unit.reverse();
                    }
                }
            }
            self.big_endian = big_endian;
        }
        self
    }

    fn fields_mut(&mut self) -> impl Iterator<Item = &mut Field> {
        self.image
            .iter_mut()
            .chain(&mut self.exif)
            .chain(&mut self.gps)
    }

    /// An EXIF chunk holding the tags: the first directory, then the Exif and GPS
    /// directories it points to, then the values too long for their entries.
    pub fn to_chunk(&self) -> Vec<u8> {
        let t = Tiff {
            big_endian: self.big_endian,
        };
        let size = |n: usize| 2 + 12 * n + 4;
        let subs = [(EXIF_IFD, &self.exif), (GPS_IFD, &self.gps)];
        let subs: Vec<_> = subs.into_iter().filter(|(_, f)| !f.is_empty()).collect();
        let mut at = 8 + size(self.image.len() + subs.len());
        let mut first = self.image.clone();
        let mut directories = Vec::new();
        for (tag, fields) in &subs {
            first.push(Field::new(*tag, LONG, &t.word32(at as u32)));
            directories.push((*fields).clone());
            at += size(fields.len());
        }
        directories.insert(0, first);
        let mut chunk = t.header();
        let mut values = Vec::new();
        for fields in &mut directories {
            fields.sort_by_key(|f| f.tag);
            chunk.extend(t.word16(fields.len() as u16));
            for f in fields.iter() {
                chunk.extend(t.word16(f.tag));
                chunk.extend(t.word16(f.kind));
                chunk.extend(t.word32(f.count()));
                if f.data.len() <= 4 {
                    let mut field = [0; 4];
                    field[..f.data.len()].copy_from_slice(&f.data);
                    chunk.extend(field);
                } else {
                    chunk.extend(t.word32((at + values.len()) as u32));
                    values.extend(&f.data);
                    if values.len() % 2 == 1 {
                        values.push(0);
                    }
                }
            }
            chunk.extend(t.word32(0));
        }
        chunk.extend(values);
        chunk
    }
}

const LONG: u16 = 4;

/// The directory at `at`: its entries of known types with their values (those that lie
/// outside the structure, are too large or hold nothing are passed over).
fn directory(
    t: &Tiff,
    read_at: &mut impl FnMut(usize, usize) -> Option<Vec<u8>>,
    at: usize,
) -> Vec<Field> {
    let Some(count) = read_at(at, 2).and_then(|b| t.u16_at(&b, 0)) else {
        return Vec::new();
    };
    let count = usize::from(count).min(MAX_ENTRIES);
    let Some(entries) = read_at(at + 2, 12 * count) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for e in entries.chunks_exact(12) {
        let (Some(tag), Some(kind), Some(n)) = (t.u16_at(e, 0), t.u16_at(e, 2), t.u32_at(e, 4))
        else {
            continue;
        };
        let Some(len) = type_size(kind).and_then(|s| s.checked_mul(n)) else {
            continue;
        };
        let data = match len {
            0 => None,
            1..=4 => Some(e[8..8 + len].to_vec()),
            5..=MAX_VALUE => t.u32_at(e, 8).and_then(|offset| read_at(offset, len)),
            _ => None,
        };
        if let Some(data) = data {
            fields.push(Field { tag, kind, data });
        }
    }
    fields
}

/// The size of one value of TIFF type `kind`.
fn type_size(kind: u16) -> Option<usize> {
    match kind {
        1 | 2 | 6 | 7 => Some(1),
        3 | 8 => Some(2),
        4 | 9 | 11 | 13 => Some(4),
        5 | 10 | 12 => Some(8),
        _ => None,
    }
}

/// The width of the numbers a value of type `kind` is made of, which a change of byte
/// order reverses: a RATIONAL is two LONGs.
fn element_width(kind: u16) -> usize {
    match kind {
        5 | 10 => 4,
        _ => type_size(kind).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Camera tags, a long and a short value, a rational, and a GPS directory.
    fn sample() -> ExifTags {
        ExifTags {
            big_endian: true,
            image: vec![
                Field::new(0x010F, 2, b"Camera Maker\0"),
                Field::new(0x011A, 5, &[0, 0, 1, 44, 0, 0, 0, 1]),
            ],
            exif: vec![
                Field::new(0x829A, 5, &[0, 0, 0, 1, 0, 0, 0, 125]),
                Field::new(0x8827, 3, &[0, 200]),
                Field::new(0x9003, 2, b"2026:11:28 10:00:00\0"),
            ],
            gps: vec![Field::new(0x0000, 1, &[2, 3, 0, 0])],
        }
    }

    #[test]
    fn tags_survive_a_chunk_in_both_byte_orders() {
        let tags = sample();
        assert_eq!(ExifTags::from_chunk(&tags.to_chunk()), Some(tags.clone()));
        let little = tags.clone().in_byte_order(false);
        assert_eq!(little.exif[1].data, [200, 0]);
        assert_eq!(little.image[1].data, [44, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(little.exif[2].data, tags.exif[2].data, "text is not turned");
        assert_eq!(
            ExifTags::from_chunk(&little.to_chunk()),
            Some(little.clone())
        );
        assert_eq!(little.in_byte_order(true), tags);
        // The chunk is one the rest of the EXIF handling reads.
        let d = crate::imageops::exif::density(&sample().to_chunk()).unwrap();
        assert_eq!(d.x, 300.0);
    }

    #[test]
    fn structure_and_location_dependent_tags_are_left_out() {
        let mut tags = sample();
        tags.exif
            .push(Field::new(MAKER_NOTE, 7, b"opaque maker data"));
        tags.exif.push(Field::new(INTEROP_IFD, LONG, &[0, 0, 0, 8]));
        tags.image.push(Field::new(0x0112, 3, &[0, 6]));
        let read = ExifTags::from_chunk(&tags.to_chunk()).unwrap();
        assert_eq!(read, sample());
        // Only a resolution, as every TIFF writer puts there, is nothing to carry.
        let bare = ExifTags {
            image: vec![Field::new(0x011A, 5, &[0, 0, 0, 1, 0, 0, 0, 1])],
            exif: vec![],
            gps: vec![],
            ..sample()
        };
        assert_eq!(ExifTags::from_chunk(&bare.to_chunk()), None);
    }

    /// Directories that point back at the first or at each other, and pointers or tags of
    /// the wrong directory, are not moved.
    #[test]
    fn looped_and_misplaced_directories_are_left_out() {
        let mut chunk = sample().to_chunk();
        let t = Tiff { big_endian: true };
        let entry = |chunk: &[u8], tag: u16| {
            let ifd0 = t.u32_at(chunk, 4).unwrap();
            t.entries(chunk, ifd0)
                .find(|&e| t.u16_at(chunk, e) == Some(tag))
                .unwrap()
        };
        let (exif, gps) = (entry(&chunk, EXIF_IFD), entry(&chunk, GPS_IFD));
        let exif_at = chunk[exif + 8..exif + 12].to_vec();
        chunk[gps + 8..gps + 12].copy_from_slice(&exif_at);
        let read = ExifTags::from_chunk(&chunk).unwrap();
        assert_eq!((read.exif, read.gps), (sample().exif, vec![]));
        chunk[exif + 8..exif + 12].copy_from_slice(&t.word32(8));
        chunk[gps + 8..gps + 12].copy_from_slice(&t.word32(8));
        let read = ExifTags::from_chunk(&chunk).unwrap();
        assert_eq!((read.exif, read.gps), (vec![], vec![]));
        // Tags of other directories inside the Exif and GPS ones.
        let mut tags = sample();
        tags.exif.push(Field::new(GPS_IFD, LONG, &[0, 0, 0, 8]));
        tags.exif.push(Field::new(0x0111, LONG, &[0, 0, 0, 8]));
        tags.gps.push(Field::new(0x8298, 2, b"(c)\0"));
        assert_eq!(ExifTags::from_chunk(&tags.to_chunk()), Some(sample()));
    }

    #[test]
    fn damaged_structures_give_what_can_be_read() {
        let chunk = sample().to_chunk();
        for cut in 0..chunk.len() {
            let _ = ExifTags::from_chunk(&chunk[..cut]);
        }
        // A value pointing past the end is passed over; the rest is kept.
        let mut tags = sample();
        tags.exif.truncate(1);
        let mut chunk = tags.to_chunk();
        let end = chunk.len();
        chunk.truncate(end - 4);
        let read = ExifTags::from_chunk(&chunk).unwrap();
        assert!(read.exif.is_empty() && read.image.len() == 2);
        assert_eq!(ExifTags::from_chunk(b"II*\0\xff\xff\xff\xff"), None);
    }
}
