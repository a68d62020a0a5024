//! Keeping a photo's EXIF metadata (camera, date, exposure, …) on its upscale. The pixels
//! change in two ways the metadata records: orientation (applied on decoding, so the tag
//! is reset to upright) and size (the pixel dimensions are rewritten). Everything else is
//! carried over byte for byte; a chunk this code cannot follow is carried over as is.

use image::metadata::Orientation;

/// A decoded file's EXIF chunk (TIFF layout, as the `image` crate reads and writes it)
/// with its orientation reset, since decoding has already applied it. A thumbnail stored
/// turned is unlinked: it would show sideways under the upright tag.
pub fn upright(mut chunk: Vec<u8>) -> Vec<u8> {
    let turned = Orientation::remove_from_exif_chunk(&mut chunk)
        .is_some_and(|o| o != Orientation::NoTransforms);
    if turned {
        drop_thumbnail(&mut chunk);
    }
    chunk
}

/// Ends the IFD chain after the first IFD, leaving out IFD1, which holds the thumbnail.
fn drop_thumbnail(chunk: &mut [u8]) {
    let Some(tiff) = Tiff::new(chunk) else {
        return;
    };
    let Some(ifd0) = tiff.u32_at(chunk, 4) else {
        return;
    };
    // Reading the count bounds `ifd0` by the chunk's length, so this cannot overflow.
    let Some(count) = tiff.u16_at(chunk, ifd0) else {
        return;
    };
    let next = ifd0 + 2 + 12 * usize::from(count);
    if let Some(pointer) = chunk.get_mut(next..next + 4) {
        pointer.fill(0);
    }
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
        .find(&chunk, ifd0, 0x8769)
        .and_then(|e| tiff.u32_at(&chunk, e + 8))
    {
        tiff.set_sizes(&mut chunk, exif_ifd, (0xA002, 0xA003), width, height);
    }
    chunk
}

const SHORT: u16 = 3;
const LONG: u16 = 4;

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

    /// The offset of the 12-byte entry for `tag` in the IFD at `ifd`.
    fn find(&self, chunk: &[u8], ifd: usize, tag: u16) -> Option<usize> {
        // Reading the count bounds `ifd` by the chunk's length, so no offset below overflows.
        let count = usize::from(self.u16_at(chunk, ifd)?);
        (0..count)
            .map(|i| ifd + 2 + 12 * i)
            .take_while(|&e| e + 12 <= chunk.len())
            .find(|&e| self.u16_at(chunk, e) == Some(tag))
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
            let mut field = [0; 4];
            let kind = match u16::try_from(value) {
                Ok(v) if kind == Some(SHORT) => {
                    field[..2].copy_from_slice(&self.word16(v));
                    SHORT
                }
                _ => {
                    field = self.word32(value);
                    LONG
                }
            };
            chunk[e + 2..e + 4].copy_from_slice(&self.word16(kind));
            chunk[e + 8..e + 12].copy_from_slice(&field);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF chunk: IFD0 with Orientation 6, ImageWidth (SHORT) and the Exif IFD pointer;
    /// the Exif IFD with PixelXDimension (SHORT) and PixelYDimension (LONG).
    fn chunk(big_endian: bool) -> Vec<u8> {
        let t = Tiff { big_endian };
        let mut c = if big_endian {
            b"MM\0\x2a".to_vec()
        } else {
            b"II\x2a\0".to_vec()
        };
        let entry = |c: &mut Vec<u8>, tag: u16, kind: u16, value: [u8; 4]| {
            c.extend(t.word16(tag));
            c.extend(t.word16(kind));
            c.extend(t.word32(1));
            c.extend(value);
        };
        let short = |v: u16| {
            let mut f = [0; 4];
            f[..2].copy_from_slice(&t.word16(v));
            f
        };
        c.extend(t.word32(8));
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
            let c = with_dimensions(upright(chunk(be)), 960, 70000);
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
        assert_eq!(next_ifd(&upright(turned)), Some(0));
        let mut straight = chunk(false);
        let _ = Orientation::remove_from_exif_chunk(&mut straight);
        assert_eq!(next_ifd(&upright(straight)), Some(4096));
    }

    #[test]
    fn chunks_it_cannot_follow_are_kept_as_they_are() {
        let whole = chunk(false);
        for cut in [0, 3, 9, 30, 50, whole.len() - 10] {
            let part = whole[..cut].to_vec();
            let out = with_dimensions(part.clone(), 1, 1);
            assert_eq!(out.len(), part.len());
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
            assert_eq!(with_dimensions(upright(c), 70000, 3).len(), n);
        }
        let junk = b"Exif\0\0not a tiff".to_vec();
        assert_eq!(with_dimensions(junk.clone(), 9, 9), junk);
        assert_eq!(upright(junk.clone()), junk);
    }
}
