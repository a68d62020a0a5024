//! The alpha of 16-bit TGA files (A1R5G5B5), which the image crate's decoder drops: its
//! pixels come out as RGB whatever the header says of the top bit. The format does not say
//! which value of the bit is transparent; a set bit is, as GIMP and Pillow read it.

use crate::imageops::Planar;

/// Truecolour image types: uncompressed and run-length encoded.
const TRUECOLOUR: u8 = 2;
const TRUECOLOUR_RLE: u8 = 10;

/// The alpha plane of a TGA `file` whose header gives its 16-bit pixels one alpha bit,
/// upright as the image crate returns the colours; `None` for any other TGA, and where the
/// bit says nothing (every pixel alike: writers that declare the bit often leave it unset).
pub(super) fn one_bit_alpha(file: &[u8]) -> Option<Planar> {
    if !declares_one_bit_alpha(file) {
        return None;
    }
    let header = &file[..18];
    let word = |i: usize| usize::from(u16::from_le_bytes([header[i], header[i + 1]]));
    let (id_len, image_type, descriptor) = (header[0], header[2], header[17]);
    let (width, height) = (word(12), word(14));
    let map_bytes = if header[1] == 1 {
        word(5) * usize::from(header[7]).div_ceil(8)
    } else {
        0
    };
    let data = file.get(18 + usize::from(id_len) + map_bytes..)?;
    let pixels = pixels(data, width * height, image_type == TRUECOLOUR_RLE)?;
    let bit: Vec<bool> = pixels.iter().map(|p| p & 0x8000 != 0).collect();
    if bit.iter().all(|&b| b == bit[0]) {
        return None;
    }
    // Rows are stored bottom-up unless descriptor bit 5 says otherwise; bit 4 mirrors them.
    let (top_down, right_to_left) = (descriptor & 0x20 != 0, descriptor & 0x10 != 0);
    let data = (0..height)
        .flat_map(|y| {
            let row = if top_down { y } else { height - 1 - y };
            let bit = &bit;
            (0..width).map(move |x| {
                let col = if right_to_left { width - 1 - x } else { x };
                f32::from(u8::from(!bit[row * width + col]))
            })
        })
        .collect();
    Some(Planar::new(1, height, width, data))
}

/// Whether `head`, a TGA file's first bytes, declares 16-bit truecolour pixels with one
/// alpha bit: the files [`one_bit_alpha`] reads, told before the whole file is.
pub(super) fn declares_one_bit_alpha(head: &[u8]) -> bool {
    let Some(header) = head.get(..18) else {
        return false;
    };
    let (image_type, bits, descriptor) = (header[2], header[16], header[17]);
    matches!(image_type, TRUECOLOUR | TRUECOLOUR_RLE) && bits == 16 && descriptor & 0x0F == 1
}

/// `count` 16-bit pixels from `data`, run-length decoded if `rle`; `None` if it ends early.
fn pixels(data: &[u8], count: usize, rle: bool) -> Option<Vec<u16>> {
    let pixel = |i: usize| Some(u16::from_le_bytes([*data.get(i)?, *data.get(i + 1)?]));
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    while out.len() < count {
        if !rle {
            out.push(pixel(at)?);
            at += 2;
            continue;
        }
        let packet = *data.get(at)?;
        let n = usize::from(packet & 0x7F) + 1;
        at += 1;
        if packet & 0x80 != 0 {
            out.extend(std::iter::repeat_n(pixel(at)?, n));
            at += 2;
        } else {
            for _ in 0..n {
                out.push(pixel(at)?);
                at += 2;
            }
        }
    }
    out.truncate(count);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 A1R5G5B5 image: `descriptor` 1 alpha bit, stored bottom-up unless bit 5.
    fn tga(image_type: u8, descriptor: u8, data: &[u8]) -> Vec<u8> {
        let mut file = vec![0, 0, image_type, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 16];
        file.push(descriptor);
        file.extend_from_slice(data);
        file
    }

    #[test]
    fn the_alpha_bit_is_read_upright() {
        // Stored bottom row first: bit set (transparent), clear; then the top row: clear,
        // clear.
        let raw = [0x1F, 0x80, 0x1F, 0x00, 0x00, 0x00, 0xE0, 0x03];
        let a = one_bit_alpha(&tga(TRUECOLOUR, 1, &raw)).unwrap();
        assert_eq!((a.height, a.width), (2, 2));
        assert_eq!(a.data, [1.0, 1.0, 0.0, 1.0]);
        // Top-down and mirrored.
        let a = one_bit_alpha(&tga(TRUECOLOUR, 1 | 0x20 | 0x10, &raw)).unwrap();
        assert_eq!(a.data, [1.0, 0.0, 1.0, 1.0]);
        // Run-length encoded: a run of two pixels with the bit set, then two literal ones
        // without.
        let rle = [0x81, 0xFF, 0xFF, 0x01, 0, 0, 0, 0];
        let a = one_bit_alpha(&tga(TRUECOLOUR_RLE, 0x20, &rle));
        assert_eq!(a, None, "no alpha bit declared");
        let a = one_bit_alpha(&tga(TRUECOLOUR_RLE, 0x21, &rle)).unwrap();
        assert_eq!(a.data, [0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn an_alpha_bit_that_says_nothing_is_no_alpha() {
        let clear = [0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00, 0xE0, 0x03];
        assert_eq!(one_bit_alpha(&tga(TRUECOLOUR, 1, &clear)), None);
        // Truncated pixel data.
        assert_eq!(one_bit_alpha(&tga(TRUECOLOUR, 1, &clear[..5])), None);
    }
}
