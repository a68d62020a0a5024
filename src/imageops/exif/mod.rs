//! Keeping a photo's EXIF metadata (camera, date, exposure, …) on its upscale. The pixels
//! change in two ways the metadata records: orientation (applied on decoding, so the tag
//! is reset to upright) and size (the pixel dimensions are rewritten). Everything else is
//! carried over byte for byte; a chunk that is not TIFF data at all is left out, since
//! it would make the output file invalid.

use image::metadata::Orientation;

use super::density::Density;

mod tags;

pub use tags::{ExifTags, Field, DESCRIPTIVE};

/// A decoded file's EXIF chunk (TIFF layout, as the `image` crate reads and writes it)
/// with its orientation reset to upright, whatever value it had: the pixels are written as
/// decoded, turned by a valid orientation and left as stored otherwise. A thumbnail stored
/// turned is unlinked: it would show sideways under the upright tag. `None` where the
/// chunk opens with no TIFF header or its first IFD lies outside it.
pub fn upright(mut chunk: Vec<u8>) -> Option<Vec<u8>> {
    let tiff = Tiff::new(&chunk)?;
    let ifd0 = tiff
        .u32_at(&chunk, 4)
        .filter(|&at| at >= 8 && tiff.u16_at(&chunk, at).is_some())?;
    let turned =
        Orientation::from_exif_chunk(&chunk).is_some_and(|o| o != Orientation::NoTransforms);
    for e in tiff.entries(&chunk, ifd0) {
        if tiff.u16_at(&chunk, e) == Some(ORIENTATION) {
            tiff.set_single(&mut chunk, e, SHORT, tiff.short_field(1));
        }
    }
    if turned {
        tiff.drop_thumbnail(&mut chunk, ifd0);
    }
    Some(chunk)
}

/// The chunk with its pixel dimensions (ImageWidth/ImageLength in the first IFD,
/// PixelXDimension/PixelYDimension in the Exif IFD) set to `width`×`height`.
pub fn with_dimensions(mut chunk: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
    let Some(tiff) = Tiff::new(&chunk) else {
        return chunk;
    };
    let Some(ifd0) = tiff.u32_at(&chunk, 4) else {
        return chunk;
    };
    tiff.set_sizes(&mut chunk, ifd0, (0x0100, 0x0101), width, height);
    if let Some(exif_ifd) = tiff
        .find(&chunk, ifd0, tags::EXIF_IFD)
        .and_then(|e| tiff.u32_at(&chunk, e + 8))
    {
        tiff.set_sizes(&mut chunk, exif_ifd, (0xA002, 0xA003), width, height);
    }
    chunk
}

/// The chunk with the first IFD's XResolution and YResolution (and ResolutionUnit) set to
/// `density`, where it has them: the density is written to the output's own fields too,
/// turned with the image, and the two should agree. Without a ResolutionUnit tag (inches,
/// by default) the density is written per inch; as an aspect ratio only, not at all.
pub fn with_density(mut chunk: Vec<u8>, density: Density) -> Vec<u8> {
    let Some(tiff) = Tiff::new(&chunk) else {
        return chunk;
    };
    let Some(ifd0) = tiff.u32_at(&chunk, 4) else {
        return chunk;
    };
    let unit_entry = tiff.short_entry(&chunk, ifd0, RESOLUTION_UNIT);
    let density = match unit_entry {
        Some(_) => density,
        None => match density.in_inches() {
            Some(d) => d,
            None => return chunk,
        },
    };
    let (unit, x, y) = density.to_tiff();
    let value_at = |tag| tiff.rational_at(&chunk, ifd0, tag);
    let (Some(x_at), Some(y_at)) = (value_at(X_RESOLUTION), value_at(Y_RESOLUTION)) else {
        return chunk;
    };
    for (at, value) in [(x_at, x), (y_at, y)] {
        chunk[at..at + 8].copy_from_slice(&tiff.rational(value));
    }
    if let Some(e) = unit_entry {
        tiff.set_single(&mut chunk, e, SHORT, tiff.short_field(unit));
    }
    chunk
}

/// An EXIF chunk holding only the resolution tags, for a format whose one place for the
/// density is EXIF (WebP) when the source had no EXIF to carry it.
pub fn of_density(density: Density) -> Vec<u8> {
    let (unit, x, y) = density.to_tiff();
    let t = Tiff { big_endian: false };
    ExifTags {
        big_endian: t.big_endian,
        image: vec![
            Field::new(X_RESOLUTION, RATIONAL, &t.rational(x)),
            Field::new(Y_RESOLUTION, RATIONAL, &t.rational(y)),
            Field::new(RESOLUTION_UNIT, SHORT, &t.word16(unit)),
        ],
        exif: Vec::new(),
        gps: Vec::new(),
    }
    .to_chunk()
}

/// The image's physical density, from the first IFD's XResolution, YResolution and
/// ResolutionUnit tags.
pub fn density(chunk: &[u8]) -> Option<Density> {
    let tiff = Tiff::new(chunk)?;
    let ifd0 = tiff.u32_at(chunk, 4)?;
    let rational = |tag| {
        let at = tiff.rational_at(chunk, ifd0, tag)?;
        Some(tiff.u32_at(chunk, at)? as f64 / tiff.u32_at(chunk, at + 4)? as f64)
    };
    let unit = tiff
        .short_entry(chunk, ifd0, RESOLUTION_UNIT)
        .and_then(|e| tiff.u16_at(chunk, e + 8));
    Density::from_tiff(rational(X_RESOLUTION)?, rational(Y_RESOLUTION), unit)
}

const SHORT: u16 = 3;
const LONG: u16 = 4;
const RATIONAL: u16 = 5;
const X_RESOLUTION: u16 = 0x011A;
const Y_RESOLUTION: u16 = 0x011B;
const RESOLUTION_UNIT: u16 = 0x0128;
const ORIENTATION: u16 = 0x0112;

/// The byte order of a TIFF structure.
struct Tiff {
    big_endian: bool,
}

impl Tiff {
    fn new(chunk: &[u8]) -> Option<Self> {
        match chunk.get(..4)? {
            [b'I', b'I', 42, 0] => Some(Self { big_endian: false }),
            [b'M', b'M', 0, 42] => Some(Self { big_endian: true }),
            _ => None,
        }
    }

    fn u16_at(&self, chunk: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = chunk.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(&self, chunk: &[u8], at: usize) -> Option<usize> {
        let b: [u8; 4] = chunk.get(at..at.checked_add(4)?)?.try_into().ok()?;
        let v = if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        usize::try_from(v).ok()
    }

    /// The offsets of the 12-byte entries of the IFD at `ifd` that lie in the chunk.
    fn entries(&self, chunk: &[u8], ifd: usize) -> impl Iterator<Item = usize> {
        // Reading the count bounds `ifd` by the chunk's length, so no offset below overflows.
        let count = self.u16_at(chunk, ifd).map_or(0, usize::from);
        let len = chunk.len();
        (0..count)
            .map(move |i| ifd + 2 + 12 * i)
            .take_while(move |&e| e + 12 <= len)
    }

    /// The offset of the 12-byte entry for `tag` in the IFD at `ifd`.
    fn find(&self, chunk: &[u8], ifd: usize, tag: u16) -> Option<usize> {
        self.entries(chunk, ifd)
            .find(|&e| self.u16_at(chunk, e) == Some(tag))
    }

    /// The entry for `tag` in the IFD at `ifd`, where its type is SHORT.
    fn short_entry(&self, chunk: &[u8], ifd: usize, tag: u16) -> Option<usize> {
        self.find(chunk, ifd, tag)
            .filter(|&e| self.u16_at(chunk, e + 2) == Some(SHORT))
    }

    /// Where the 8-byte value of `tag` lies, for a single RATIONAL in the IFD at `ifd`
    /// whose value is inside the chunk.
    fn rational_at(&self, chunk: &[u8], ifd: usize, tag: u16) -> Option<usize> {
        let e = self.find(chunk, ifd, tag)?;
        let single = self.u16_at(chunk, e + 2)? == RATIONAL && self.u32_at(chunk, e + 4)? == 1;
        let at = self.u32_at(chunk, e + 8).filter(|_| single)?;
        (at.checked_add(8)? <= chunk.len()).then_some(at)
    }

    /// A TIFF header in this byte order, pointing at a first IFD right after it.
    fn header(&self) -> Vec<u8> {
        let mut header = if self.big_endian {
            b"MM\0\x2a".to_vec()
        } else {
            b"II\x2a\0".to_vec()
        };
        header.extend(self.word32(8));
        header
    }

    /// Ends the IFD chain after the first IFD (at `ifd0`), leaving out IFD1, which holds
    /// the thumbnail.
    fn drop_thumbnail(&self, chunk: &mut [u8], ifd0: usize) {
        // Reading the count bounds `ifd0` by the chunk's length, so this cannot overflow.
        let Some(count) = self.u16_at(chunk, ifd0) else {
            return;
        };
        let next = ifd0 + 2 + 12 * usize::from(count);
        if let Some(pointer) = chunk.get_mut(next..next + 4) {
            pointer.fill(0);
        }
    }

    /// Sets the single SHORT or LONG values of the width and height tags of an IFD, where
    /// present. A value too large for a SHORT turns the entry into a LONG (the value field
    /// holds four bytes either way).
    fn set_sizes(&self, chunk: &mut [u8], ifd: usize, tags: (u16, u16), width: u32, height: u32) {
        for (tag, value) in [(tags.0, width), (tags.1, height)] {
            let Some(e) = self.find(chunk, ifd, tag) else {
                continue;
            };
            let kind = self.u16_at(chunk, e + 2);
            if !matches!(kind, Some(SHORT | LONG)) || self.u32_at(chunk, e + 4) != Some(1) {
                continue;
            }
            let (kind, field) = match u16::try_from(value) {
                Ok(v) if kind == Some(SHORT) => (SHORT, self.short_field(v)),
                _ => (LONG, self.word32(value)),
            };
            self.set_single(chunk, e, kind, field);
        }
    }

    /// Makes the entry at `e` hold a single value of type `kind`, `field` its value field.
    fn set_single(&self, chunk: &mut [u8], e: usize, kind: u16, field: [u8; 4]) {
        chunk[e + 2..e + 4].copy_from_slice(&self.word16(kind));
        chunk[e + 4..e + 8].copy_from_slice(&self.word32(1));
        chunk[e + 8..e + 12].copy_from_slice(&field);
    }

    /// The value field of a single SHORT: the value, then padding.
    fn short_field(&self, v: u16) -> [u8; 4] {
        let mut field = [0; 4];
        field[..2].copy_from_slice(&self.word16(v));
        field
    }

    fn word16(&self, v: u16) -> [u8; 2] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn word32(&self, v: u32) -> [u8; 4] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// A RATIONAL value, numerator then denominator.
    fn rational(&self, (n, d): (u32, u32)) -> [u8; 8] {
        let mut value = [0; 8];
        value[..4].copy_from_slice(&self.word32(n));
        value[4..].copy_from_slice(&self.word32(d));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF chunk: IFD0 with Orientation 6, ImageWidth (SHORT) and the Exif IFD pointer;
    /// the Exif IFD with PixelXDimension (SHORT) and PixelYDimension (LONG).
    fn chunk(big_endian: bool) -> Vec<u8> {
        let t = Tiff { big_endian };
        let mut c = t.header();
        let entry = |c: &mut Vec<u8>, tag: u16, kind: u16, value: [u8; 4]| {
            c.extend(t.word16(tag));
            c.extend(t.word16(kind));
            c.extend(t.word32(1));
            c.extend(value);
        };
        let short = |v| t.short_field(v);
        c.extend(t.word16(3));
        entry(&mut c, 0x0100, SHORT, short(240));
        entry(&mut c, 0x0112, SHORT, short(6));
        let exif_ifd = 8 + 2 + 3 * 12 + 4;
        entry(&mut c, 0x8769, LONG, t.word32(exif_ifd));
        // The next IFD (a thumbnail's), past the end here: only the pointer matters.
        c.extend(t.word32(4096));
        c.extend(t.word16(2));
        entry(&mut c, 0xA002, SHORT, short(240));
        entry(&mut c, 0xA003, LONG, t.word32(135));
        c.extend(t.word32(0));
        c
    }

    fn value(c: &[u8], big_endian: bool, at: usize) -> (u16, usize) {
        let t = Tiff { big_endian };
        let kind = t.u16_at(c, at + 2).unwrap();
        let v = if kind == SHORT {
            usize::from(t.u16_at(c, at + 8).unwrap())
        } else {
            t.u32_at(c, at + 8).unwrap()
        };
        (kind, v)
    }

    #[test]
    fn orientation_is_reset_and_sizes_rewritten_in_both_byte_orders() {
        for be in [false, true] {
            let c = with_dimensions(upright(chunk(be)).unwrap(), 960, 70000);
            assert_eq!(
                Orientation::from_exif_chunk(&c),
                Some(Orientation::NoTransforms)
            );
            let (ifd0, exif) = (10, 8 + 2 + 3 * 12 + 4 + 2);
            assert_eq!(value(&c, be, ifd0), (SHORT, 960), "ImageWidth");
            assert_eq!(value(&c, be, exif), (SHORT, 960), "PixelXDimension");
            assert_eq!(value(&c, be, exif + 12), (LONG, 70000), "PixelYDimension");
            let c = with_dimensions(chunk(be), 70000, 5);
            assert_eq!(
                value(&c, be, ifd0),
                (LONG, 70000),
                "a SHORT grows into a LONG"
            );
            assert_eq!(value(&c, be, exif + 12), (LONG, 5));
            assert_eq!(c.len(), chunk(be).len());
        }
    }

    /// The thumbnail IFD is unlinked when the image was turned upright, kept otherwise.
    #[test]
    fn a_turned_thumbnail_is_dropped() {
        let next_ifd = |c: &[u8]| Tiff { big_endian: false }.u32_at(c, 8 + 2 + 3 * 12);
        let turned = chunk(false);
        assert_eq!(next_ifd(&turned), Some(4096));
        assert_eq!(next_ifd(&upright(turned).unwrap()), Some(0));
        let mut straight = chunk(false);
        let _ = Orientation::remove_from_exif_chunk(&mut straight);
        assert_eq!(next_ifd(&upright(straight).unwrap()), Some(4096));
    }

    /// Any Orientation, valid or not and of any type, is written as 1 (upright): the pixels
    /// are written as decoded. Only a valid one turned them, so only then is the thumbnail
    /// dropped.
    #[test]
    fn every_orientation_is_reset() {
        const AT: usize = 8 + 2 + 12; // the Orientation entry
        for be in [false, true] {
            let t = Tiff { big_endian: be };
            for (kind, v, turned) in [
                (SHORT, 0, false),
                (SHORT, 9, false),
                (SHORT, 1, false),
                (SHORT, 3, true),
                (LONG, 6, false),
            ] {
                let mut c = chunk(be);
                let field = if kind == SHORT {
                    t.short_field(v)
                } else {
                    t.word32(u32::from(v))
                };
                t.set_single(&mut c, AT, kind, field);
                let c = upright(c).unwrap();
                assert_eq!(value(&c, be, AT), (SHORT, 1), "{kind} {v}");
                let next = t.u32_at(&c, 8 + 2 + 3 * 12);
                assert_eq!(next == Some(0), turned, "{kind} {v}");
            }
        }
    }

    /// A chunk that is not TIFF data (no TIFF header, or the first IFD outside it or over
    /// the header) is left out; one that is, however damaged past that, is kept.
    /// A one-pixel TIFF whose first IFD holds a resolution, as EXIF does.
    fn with_resolution(unit: tiff::tags::ResolutionUnit, x: (u32, u32)) -> Vec<u8> {
        let mut file = std::io::Cursor::new(Vec::new());
        let mut tiff = tiff::encoder::TiffEncoder::new(&mut file).unwrap();
        let mut image = tiff
            .new_image::<tiff::encoder::colortype::Gray8>(1, 1)
            .unwrap();
        image.resolution(unit, tiff::encoder::Rational { n: x.0, d: x.1 });
        image.write_data(&[0]).unwrap();
        file.into_inner()
    }

    #[test]
    fn the_density_is_read_from_the_first_ifd() {
        use tiff::tags::ResolutionUnit;
        let d = density(&with_resolution(ResolutionUnit::Centimeter, (11811, 100))).unwrap();
        assert_eq!((d.x, d.y), (118.11, 118.11));
        assert_eq!(d.unit, crate::imageops::density::DensityUnit::Centimetre);
        let d = density(&with_resolution(ResolutionUnit::Inch, (300, 1))).unwrap();
        assert_eq!(
            (d.x, d.unit),
            (300.0, crate::imageops::density::DensityUnit::Inch)
        );
        // What the tiff crate writes by default: 1/1 without a unit, which says nothing.
        assert_eq!(
            density(&with_resolution(ResolutionUnit::None, (1, 1))),
            None
        );
        assert_eq!(
            density(&with_resolution(ResolutionUnit::Inch, (300, 0))),
            None
        );
        assert_eq!(density(&chunk(true)), None);
        assert_eq!(density(b"II*\0\xff\xff\xff\xff"), None);
    }

    /// The resolution tags are set to the output's density, in the chunk's unit.
    #[test]
    fn the_density_is_written_where_the_chunk_has_resolution_tags() {
        use crate::imageops::density::DensityUnit;
        use tiff::tags::ResolutionUnit;
        let stored = with_resolution(ResolutionUnit::Inch, (300, 1));
        let turned = Density::new(150.0, 300.0, DensityUnit::Inch).unwrap();
        assert_eq!(density(&with_density(stored.clone(), turned)), Some(turned));
        let cm = Density::new(40.0, 40.0, DensityUnit::Centimetre).unwrap();
        assert_eq!(density(&with_density(stored.clone(), cm)), Some(cm));
        // Aspect ratios are written only where a ResolutionUnit tag can say so.
        let aspect = Density::new(2.0, 1.0, DensityUnit::None).unwrap();
        assert_eq!(density(&with_density(stored.clone(), aspect)), Some(aspect));
        let mut no_unit = stored.clone();
        let ifd0 = Tiff::new(&no_unit).unwrap().u32_at(&no_unit, 4).unwrap();
        let t = Tiff { big_endian: false };
        let unit = t.find(&no_unit, ifd0, RESOLUTION_UNIT).unwrap();
        no_unit[unit..unit + 2].copy_from_slice(&t.word16(0x0129));
        assert_eq!(with_density(no_unit.clone(), aspect), no_unit);
        let per_inch = density(&with_density(no_unit, cm)).unwrap();
        assert_eq!((per_inch.x, per_inch.unit), (101.6, DensityUnit::Inch));
        // A chunk without resolution tags is left as it is.
        assert_eq!(with_density(chunk(false), turned), chunk(false));
    }

    #[test]
    fn chunks_that_are_not_tiff_data_are_left_out() {
        let junk = b"Exif\0\0not a tiff".to_vec();
        assert_eq!(upright(junk.clone()), None);
        assert_eq!(with_dimensions(junk.clone(), 9, 9), junk);
        let whole = chunk(false);
        for cut in [0, 3, 8, 9] {
            assert_eq!(upright(whole[..cut].to_vec()), None, "cut at {cut}");
        }
        for ifd0 in [0u32, 4, 7, whole.len() as u32 - 1, u32::MAX] {
            let mut c = whole.clone();
            c[4..8].copy_from_slice(&ifd0.to_le_bytes());
            assert_eq!(upright(c), None, "IFD0 at {ifd0}");
        }
        for cut in [10, 30, 50, whole.len() - 10] {
            let part = whole[..cut].to_vec();
            assert_eq!(upright(part.clone()).map(|c| c.len()), Some(cut));
            assert_eq!(with_dimensions(part, 1, 1).len(), cut);
        }
        // Damaged chunks (any byte changed to any value) never panic or change length.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..5000 {
            let mut c = chunk(rng.gen());
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..c.len());
                c[i] = rng.gen();
            }
            let n = c.len();
            if let Some(c) = upright(c) {
                assert_eq!(with_dimensions(c, 70000, 3).len(), n);
            }
        }
    }
}
