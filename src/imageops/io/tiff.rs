//! TIFF through the tiff crate, where the `image` crate reads or writes it wrongly or not at
//! all: the layouts it refuses, the facts it misses, and alpha tagged as such on writing.

use std::io::{self, BufRead, Cursor, Read, Seek, Write};

use image::ExtendedColorType;

use super::decode::upright_xmp;
use super::encode::Encoded;
use super::format::InputFormat;
use super::planes::{split, unpremultiply, ycbcr_to_rgb};
use super::{DecodeLimits, DecodedImage};
use crate::imageops::density::Density;
use crate::imageops::exif::{ExifTags, Field, DESCRIPTIVE};
use crate::imageops::iptc::Iptc;
use crate::imageops::{Dihedral, Planar};

/// Decodes a TIFF with the tiff crate: gray, gray+alpha, RGB and RGBA in 8 or 16 bits
/// or floats, gray in 2 or 4 bits, CMYK with alpha in 8 or 16 bits, YCbCr
/// (JPEG-compressed above all) and colour-mapped, in
/// whatever compression it reads. For the layouts the image crate refuses; the reason is
/// returned for anything else.
/// Why the tiff crate's path could not read a file.
#[derive(Debug)]
pub(super) enum Failure {
    /// A layout it does not read, named.
    Unsupported(String),
    /// Data that is damaged or cut short.
    Corrupt(String),
}

impl From<String> for Failure {
    fn from(layout: String) -> Self {
        Self::Unsupported(layout)
    }
}

impl From<&str> for Failure {
    fn from(layout: &str) -> Self {
        Self::Unsupported(layout.into())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Corrupt(match e.kind() {
            io::ErrorKind::UnexpectedEof => super::ENDS_EARLY.into(),
            _ => e.to_string(),
        })
    }
}

impl From<tiff::TiffError> for Failure {
    fn from(e: tiff::TiffError) -> Self {
        match e {
            tiff::TiffError::UnsupportedError(e) => Self::Unsupported(e.to_string()),
            tiff::TiffError::IoError(e) => e.into(),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

/// A colour type as the refusal names it (the tiff crate's Debug form is a structure).
fn colour_type_name(colour: tiff::ColorType) -> String {
    use tiff::ColorType as C;
    match colour {
        C::Multiband {
            bit_depth,
            num_samples,
        } => format!("{num_samples} samples of {bit_depth} bits with no colour model"),
        C::Gray(b) => format!("{b}-bit gray"),
        C::GrayA(b) => format!("{b}-bit gray with alpha"),
        C::RGB(b) => format!("{b}-bit RGB"),
        C::RGBA(b) => format!("{b}-bit RGBA"),
        C::CMYK(b) => format!("{b}-bit CMYK"),
        C::CMYKA(b) => format!("{b}-bit CMYK with alpha"),
        C::YCbCr(b) => format!("{b}-bit YCbCr"),
        C::Palette(b) => format!("{b}-bit palette"),
        other => format!("colour type {other:?}"),
    }
}

fn decode_tiff(
    mut reader: impl Read + Seek,
    limits: &DecodeLimits,
) -> Result<DecodedImage, Failure> {
    use tiff::decoder::DecodingResult;
    use tiff::tags::Tag;
    use tiff::ColorType;
    let mut d = open(&mut reader, limits)?;
    // 0: WhiteIsZero, 1: BlackIsZero, 2: RGB, 3: palette, 6: YCbCr.
    let photometric = d
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .ok()
        .flatten();
    if photometric == Some(3) {
        let map = ColourMap::read(&mut d)?;
        let mut file = Vec::new();
        reader
            .seek(io::SeekFrom::Start(0))
            .and_then(|_| reader.read_to_end(&mut file))?;
        set_photometric(&mut file, 1)?;
        return map.decode(open(Cursor::new(file), limits)?);
    }
    let (channels, bits, gray) = match (d.colortype()?, photometric) {
        (ColorType::Gray(b), _) => (1, b, true),
        (ColorType::GrayA(b), _) => (2, b, true),
        (ColorType::RGB(b), _) => (3, b, false),
        (ColorType::RGBA(b), _) => (4, b, false),
        (ColorType::YCbCr(8), _) => (3, 8, false),
        (ColorType::CMYKA(b @ (8 | 16)), _) => (5, b, false),
        // Gray or RGB with one extra sample, taken as alpha.
        (
            ColorType::Multiband {
                bit_depth,
                num_samples: 2,
            },
            Some(0 | 1),
        ) => (2, bit_depth, true),
        (
            ColorType::Multiband {
                bit_depth,
                num_samples: 4,
            },
            Some(2),
        ) => (4, bit_depth, false),
        (other, _) => return Err(colour_type_name(other).into()),
    };
    let ycbcr = match photometric {
        Some(6) => Some(YCbCr::read(&mut d)?),
        _ => None,
    };
    let (w, h) = d.dimensions()?;
    let (h, w) = (h as usize, w as usize);
    let planar = is_planar(&mut d);
    let mut samples = DecodingResult::U8(Vec::new());
    if planar && is_tiled(&mut d) {
        samples = read_tiled_planes(&mut d, channels, (h, w), limits)?;
    } else {
        // All planes of a planar image (`read_image` reads only the first).
        d.read_image_to_buffer(&mut samples)?;
    }
    if planar {
        samples = interleave(samples, channels, h * w)?;
    }
    if channels == 5 {
        samples = cmyka_to_rgba(samples)?;
    }
    let channels = channels.min(4);
    let planes = |v: &[f32], max| split(v, channels, h, w, max);
    // The tiff crate has already inverted WhiteIsZero samples.
    let (rgb, alpha) = match samples {
        DecodingResult::U8(v) if bits < 8 => {
            split(&unpack(&v, bits, w), 1, h, w, f32::from((1u8 << bits) - 1))
        }
        DecodingResult::U8(v) => split(&v, channels, h, w, 255.0),
        DecodingResult::U16(v) => split(&v, channels, h, w, 65535.0),
        DecodingResult::F16(v) => planes(&v.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), 1.0),
        DecodingResult::F32(v) => planes(&v, 1.0),
        DecodingResult::F64(v) => planes(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1.0),
        _ => return Err("integer samples wider than 16 bits or signed".into()),
    };
    Ok(DecodedImage {
        rgb: match ycbcr {
            Some(m) => m.to_rgb(rgb),
            None => rgb,
        },
        alpha,
        sixteen_bit: bits > 8,
        grayscale: gray,
        icc_profile: None,
        png_colour: Default::default(),
        exif: None,
        xmp: None,
        iptc: None,
        density: None,
        format: InputFormat::Tiff,
    })
}

/// CMYK samples with alpha as RGBA, by the naive conversion the image crate applies to
/// CMYK without it, `(1 − c)(1 − k)` and so on: the inks' profile is not applied (a CMYK
/// ICC profile is not kept on RGB output either).
fn cmyka_to_rgba(
    samples: tiff::decoder::DecodingResult,
) -> Result<tiff::decoder::DecodingResult, Failure> {
    use tiff::decoder::DecodingResult as R;
    fn go<T: Copy + Into<f32>>(v: &[T], max: f32) -> Vec<f32> {
        v.chunks_exact(5)
            .flat_map(|p| {
                let [c, m, y, k, a] = [0, 1, 2, 3, 4].map(|i| p[i].into() / max);
                let white = 1.0 - k;
                [(1.0 - c) * white, (1.0 - m) * white, (1.0 - y) * white, a]
            })
            .collect()
    }
    match samples {
        R::U8(v) => Ok(R::F32(go(&v, 255.0))),
        R::U16(v) => Ok(R::F32(go(&v, 65535.0))),
        _ => Err("CMYK with alpha in other than 8 or 16 bits".into()),
    }
}

/// The tiff crate's decoder for the TIFF `reader` holds, within `limits`.
fn open<R: Read + Seek>(
    reader: R,
    limits: &DecodeLimits,
) -> Result<tiff::decoder::Decoder<R>, Failure> {
    let budget = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let mut tiff_limits = tiff::decoder::Limits::default();
    tiff_limits.decoding_buffer_size = budget;
    tiff_limits.intermediate_buffer_size = budget;
    let mut d = tiff::decoder::Decoder::new(reader)?.with_limits(tiff_limits);
    let (w, h) = d.dimensions()?;
    if w == 0 || h == 0 || w > limits.max_width || h > limits.max_height {
        return Err(format!("a {w}x{h} image").into());
    }
    Ok(d)
}

/// Samples of `bits` bits (1, 2, 4 or 8) packed from the high bit down, `w` to a row and
/// rows padded to whole bytes (as the tiff crate returns them), one to a byte.
fn unpack(packed: &[u8], bits: u8, w: usize) -> Vec<u8> {
    let bits = usize::from(bits);
    let mask = ((1u16 << bits) - 1) as u8;
    packed
        .chunks_exact((w * bits).div_ceil(8))
        .flat_map(|row| {
            (0..w).map(move |x| (row[x * bits / 8] >> (8 - bits - x * bits % 8)) & mask)
        })
        .collect()
}

/// A palette image's ColorMap: 2^bits reds, then as many greens and blues, in 0..=65535.
struct ColourMap {
    bits: u8,
    entries: Vec<u16>,
}

impl ColourMap {
    /// Reads and checks the map of the image `d` is at.
    fn read<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> Result<Self, Failure> {
        use tiff::tags::Tag;
        let tag = |d: &mut tiff::decoder::Decoder<R>, tag| {
            d.find_tag_unsigned_vec::<u16>(tag).map_err(Failure::from)
        };
        if tag(d, Tag::SamplesPerPixel)?.is_some_and(|n| n != [1]) {
            return Err("palette with extra samples (alpha)".into());
        }
        let bits = match tag(d, Tag::BitsPerSample)?.as_deref() {
            None => 1,
            Some(&[b @ (1 | 2 | 4 | 8)]) => b as u8,
            Some(b) => return Err(format!("palette with {b:?}-bit indices").into()),
        };
        let entries = tag(d, Tag::ColorMap)?.ok_or("palette without a ColorMap")?;
        if entries.len() != 3 << bits {
            return Err(format!(
                "a ColorMap of {} entries for {bits}-bit indices (expected {})",
                entries.len(),
                3 << bits
            )
            .into());
        }
        Ok(Self { bits, entries })
    }

    /// Maps the indices that `d` reads as gray (see [`set_photometric`]) to colours. The
    /// image is 8-bit where the map holds 8-bit colours: stored as v·257 (the spec's scaling,
    /// which libtiff, ImageMagick and GIMP use), as v·256 (Pillow), which is read as
    /// libtiff and Pillow read it, v = entry >> 8, or as v itself (writers that ignore the
    /// spec's 16-bit range; libtiff, finding no entry above 255, reads them so too). It is
    /// RGB even where the map is gray; the caller decides on that as for the other
    /// colour-mapped formats.
    fn decode<R: Read + Seek>(
        &self,
        mut d: tiff::decoder::Decoder<R>,
    ) -> Result<DecodedImage, Failure> {
        use tiff::decoder::DecodingResult;
        let (w, h) = d.dimensions()?;
        let (h, w) = (h as usize, w as usize);
        let DecodingResult::U8(packed) = d.read_image()? else {
            return Err("palette indices that are not unsigned integers".into());
        };
        let indices = unpack(&packed, self.bits, w);
        let times_257 = self.entries.iter().all(|v| v % 257 == 0);
        let times_256 = !times_257 && self.entries.iter().all(|v| v % 256 == 0);
        let times_1 = !times_257 && self.entries.iter().all(|&v| v < 256);
        let colours: Vec<f32> = self
            .entries
            .iter()
            .map(|&v| match (times_256, times_1) {
                (true, _) => f32::from(v >> 8) / 255.0,
                (_, true) => f32::from(v) / 255.0,
                _ => f32::from(v) / 65535.0,
            })
            .collect();
        let n = 1 << self.bits;
        let mut data = Vec::with_capacity(3 * h * w);
        for channel in colours.chunks_exact(n) {
            data.extend(indices.iter().map(|&i| channel[usize::from(i)]));
        }
        Ok(DecodedImage {
            rgb: Planar::new(3, h, w, data),
            grayscale: false,
            alpha: None,
            sixteen_bit: !(times_257 || times_256 || times_1),
            icc_profile: None,
            png_colour: Default::default(),
            exif: None,
            xmp: None,
            iptc: None,
            density: None,
            format: InputFormat::Tiff,
        })
    }
}

/// Whether the image has several samples per pixel stored plane by plane
/// (PlanarConfiguration 2).
fn is_planar<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> bool {
    use tiff::tags::Tag;
    let samples = d.find_tag_unsigned::<u16>(Tag::SamplesPerPixel);
    let planar = d.find_tag_unsigned::<u16>(Tag::PlanarConfiguration);
    samples.ok().flatten().is_some_and(|n| n > 1) && planar.ok().flatten() == Some(2)
}

/// Whether the image is stored in tiles rather than strips.
fn is_tiled<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> bool {
    d.find_tag(tiff::tags::Tag::TileWidth)
        .ok()
        .flatten()
        .is_some()
}

/// The samples of a tiled planar `(h, w)` image, plane after plane, read tile by tile.
/// The tiff crate's whole-image read tells a tile's row from its index as if there were
/// one plane, so it takes the edge tiles of later planes for whole ones; each tile read
/// alone comes back as wide as it says, and only its part inside the image is kept.
fn read_tiled_planes<R: Read + Seek>(
    d: &mut tiff::decoder::Decoder<R>,
    channels: usize,
    (h, w): (usize, usize),
    limits: &DecodeLimits,
) -> Result<tiff::decoder::DecodingResult, Failure> {
    use tiff::decoder::DecodingResult as R;
    let (tw, th) = d.chunk_dimensions();
    let (tw, th) = (tw as usize, th as usize);
    if tw == 0 || th == 0 {
        return Err("tiles of no size".into());
    }
    let (across, down) = (w.div_ceil(tw), h.div_ceil(th));
    let n = channels * h * w;
    if n.saturating_mul(8) as u64 > limits.max_alloc {
        return Err("planar samples beyond the decoding limits".into());
    }
    let mut out: Option<R> = None;
    for i in 0..channels * across * down {
        let index = u32::try_from(i).map_err(|_| "too many tiles")?;
        let tile = d.read_chunk(index)?;
        let stride = d.chunk_data_dimensions(index).0 as usize;
        let (plane, j) = (i / (across * down), i % (across * down));
        let (x, y) = (j % across * tw, j / across * th);
        let (cols, rows) = (tw.min(w - x), th.min(h - y));
        let at = plane * h * w + y * w + x;
        let out = out.get_or_insert_with(|| match tile {
            R::U8(_) => R::U8(vec![0; n]),
            R::U16(_) => R::U16(vec![0; n]),
            R::F16(_) => R::F16(vec![half::f16::ZERO; n]),
            R::F32(_) => R::F32(vec![0.0; n]),
            R::F64(_) => R::F64(vec![0.0; n]),
            _ => R::U32(Vec::new()),
        });
        fn paste<T: Copy>(
            out: &mut [T],
            tile: &[T],
            (at, w): (usize, usize),
            (rows, cols, stride): (usize, usize, usize),
        ) -> Result<(), Failure> {
            if stride < cols || tile.len() < (rows - 1) * stride + cols {
                return Err("a tile is smaller than its place in the image".into());
            }
            for r in 0..rows {
                out[at + r * w..][..cols].copy_from_slice(&tile[r * stride..][..cols]);
            }
            Ok(())
        }
        let place = ((at, w), (rows, cols, stride));
        match (out, &tile) {
            (R::U8(o), R::U8(t)) => paste(o, t, place.0, place.1),
            (R::U16(o), R::U16(t)) => paste(o, t, place.0, place.1),
            (R::F16(o), R::F16(t)) => paste(o, t, place.0, place.1),
            (R::F32(o), R::F32(t)) => paste(o, t, place.0, place.1),
            (R::F64(o), R::F64(t)) => paste(o, t, place.0, place.1),
            _ => Err("planar tiles of samples this decoder does not read".into()),
        }?;
    }
    out.ok_or_else(|| "an image without tiles".into())
}

/// The samples of a planar image (`channels` planes of `n` samples each, as the tiff crate
/// reads them) interleaved pixel by pixel, as the rest of the decoder takes them.
fn interleave(
    samples: tiff::decoder::DecodingResult,
    channels: usize,
    n: usize,
) -> Result<tiff::decoder::DecodingResult, Failure> {
    use tiff::decoder::DecodingResult as R;
    fn go<T: Copy>(v: Vec<T>, channels: usize, n: usize) -> Result<Vec<T>, Failure> {
        // The crate reads only the first plane when all of them exceed its buffer limit.
        if v.len() != channels * n {
            return Err("planar samples beyond the decoding limits".into());
        }
        Ok((0..n)
            .flat_map(|i| (0..channels).map(move |c| (c, i)))
            .map(|(c, i)| v[c * n + i])
            .collect())
    }
    Ok(match samples {
        R::U8(v) => R::U8(go(v, channels, n)?),
        R::U16(v) => R::U16(go(v, channels, n)?),
        R::F16(v) => R::F16(go(v, channels, n)?),
        R::F32(v) => R::F32(go(v, channels, n)?),
        R::F64(v) => R::F64(go(v, channels, n)?),
        other => other,
    })
}

/// Sets the first image's PhotometricInterpretation in the TIFF `file` to `value`. With 1
/// (BlackIsZero) the tiff crate, which refuses colour-mapped images, reads a palette image's
/// indices as gray samples, uncompressed and unpacked as any gray image's.
fn set_photometric(file: &mut [u8], value: u8) -> Result<(), Failure> {
    const PHOTOMETRIC: u64 = 262;
    let little = match file.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err("not a TIFF header".into()),
    };
    let uint = |file: &[u8], at: u64, len: usize| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let bytes = file.get(at..at.checked_add(len)?)?;
        let fold = |v: u64, &b: &u8| v << 8 | u64::from(b);
        Some(match little {
            true => bytes.iter().rev().fold(0, fold),
            false => bytes.iter().fold(0, fold),
        })
    };
    // Classic TIFF: 2-byte entry count, 12-byte entries whose value starts at byte 8;
    // BigTIFF: 8-byte count, 20-byte entries, value at byte 12.
    let (ifd, count_len, entry_len, value_at) = match uint(file, 2, 2) {
        Some(42) => (uint(file, 4, 4), 2, 12, 8),
        Some(43) => (uint(file, 8, 8), 8, 20, 12),
        _ => return Err("not a TIFF header".into()),
    };
    let damaged = || Failure::Corrupt("a damaged first image directory".into());
    let ifd = ifd.ok_or_else(damaged)?;
    let count = uint(file, ifd, count_len).ok_or_else(damaged)?;
    for k in 0..count {
        let entry = ifd + count_len as u64 + k * entry_len;
        if uint(file, entry, 2).ok_or_else(damaged)? != PHOTOMETRIC {
            continue;
        }
        // The value's width by its type: BYTE, SHORT, LONG, LONG8.
        let width = match uint(file, entry + 2, 2) {
            Some(1) => 1,
            Some(3) => 2,
            Some(4) => 4,
            Some(16) => 8,
            _ => return Err("a PhotometricInterpretation of an unusual type".into()),
        };
        let at = usize::try_from(entry + value_at).map_err(|_| damaged())?;
        let field = file.get_mut(at..at + width).ok_or_else(damaged)?;
        field.fill(0);
        field[if little { 0 } else { width - 1 }] = value;
        return Ok(());
    }
    Err(damaged())
}

/// The TIFF 6 (section 21) conversion of YCbCr samples to RGB. Computed in float and
/// clamped to [0, 1], with nothing rounded until the output is written.
struct YCbCr {
    /// LumaRed, LumaGreen, LumaBlue (YCbCrCoefficients).
    luma: [f32; 3],
    /// Black and white codes of Y, Cb and Cr (ReferenceBlackWhite).
    black_white: [f32; 6],
}

impl YCbCr {
    /// Reads the conversion's tags (with their defaults) from the image `d` is at.
    fn read<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> Result<Self, Failure> {
        use tiff::decoder::ifd::Value;
        use tiff::tags::{CompressionMethod, Tag};
        let compression = d.find_tag_unsigned::<u16>(Tag::Compression);
        let jpeg = compression.ok().flatten() == Some(CompressionMethod::ModernJPEG.to_u16());
        // Subsampled chroma is upsampled by the JPEG decoder, and by nothing otherwise.
        let subsampling = d.find_tag_unsigned_vec::<u16>(Tag::ChromaSubsampling);
        let subsampling = subsampling.ok().flatten().unwrap_or(vec![2, 2]);
        if !jpeg && subsampling != [1, 1] {
            return Err(format!(
                "YCbCr with {subsampling:?} chroma subsampling and no JPEG compression"
            )
            .into());
        }
        if d.find_tag(Tag::ExtraSamples).ok().flatten().is_some() {
            return Err("YCbCr with extra samples (alpha)".into());
        }
        let mut reals = |tag, default: &[f32]| -> Result<Vec<f32>, Failure> {
            let Some(v) = d.find_tag(Tag::from_u16_exhaustive(tag))? else {
                return Ok(default.to_vec());
            };
            let values = match v {
                Value::List(values) => values,
                v => vec![v],
            };
            let real = |v| match v {
                Value::Rational(n, d) if d != 0 => Some(n as f32 / d as f32),
                Value::Float(v) => Some(v),
                Value::Double(v) => Some(v as f32),
                v => v.into_u32().ok().map(|v| v as f32),
            };
            values
                .into_iter()
                .map(real)
                .collect::<Option<Vec<_>>>()
                .filter(|v| v.len() == default.len())
                .ok_or_else(|| format!("an unreadable tag {tag}").into())
        };
        let luma = reals(529, &[0.299, 0.587, 0.114])?;
        let black_white = reals(532, &[0.0, 255.0, 128.0, 255.0, 128.0, 255.0])?;
        if luma[1] == 0.0 || black_white.chunks(2).any(|p| p[0] == p[1]) {
            return Err("YCbCr with degenerate coefficients or reference black and white".into());
        }
        Ok(Self {
            luma: [luma[0], luma[1], luma[2]],
            black_white: std::array::from_fn(|i| black_white[i]),
        })
    }

    /// RGB from planes holding Y, Cb and Cr codes divided by 255. ReferenceBlackWhite maps
    /// Y's black and white codes to 0 and 255, and Cb's and Cr's to 0 and 127; then the
    /// luma weights (YCbCrCoefficients) give RGB.
    fn to_rgb(&self, ycbcr: Planar) -> Planar {
        let bw = self.black_white;
        let full = |v: f32, c: usize, range: f32| {
            (v * 255.0 - bw[2 * c]) * range / (bw[2 * c + 1] - bw[2 * c]) / 255.0
        };
        let n = ycbcr.height * ycbcr.width;
        let mut rgb = vec![0.0; 3 * n];
        for i in 0..n {
            let y = full(ycbcr.data[i], 0, 255.0);
            let cb = full(ycbcr.data[n + i], 1, 127.0);
            let cr = full(ycbcr.data[2 * n + i], 2, 127.0);
            for (c, v) in ycbcr_to_rgb(y, cb, cr, self.luma).into_iter().enumerate() {
                rgb[c * n + i] = v.clamp(0.0, 1.0);
            }
        }
        Planar::new(3, ycbcr.height, ycbcr.width, rgb)
    }
}

/// The name of compression scheme `value` where the tiff crate does not decode it: all
/// but none, LZW, JPEG, Deflate, PackBits, CCITT Group 4, ZSTD and WebP.
fn unsupported_compression(value: u16) -> Option<String> {
    let name = match value {
        1 | 4 | 5 | 7 | 8 | 32773 | 32946 | 50000 | 50001 => return None,
        2 => "CCITT modified Huffman (RLE)",
        3 => "CCITT Group 3 fax",
        6 => "old-style JPEG",
        32809 => "ThunderScan",
        34676 | 34677 => "SGI LogLuv",
        34712 => "JPEG 2000",
        34887 => "LERC",
        34892 => "DNG lossy JPEG",
        34925 => "LZMA",
        52546 => "JPEG XL",
        other => return Some(format!("compression scheme {other}")),
    };
    Some(format!("{name} compression"))
}

/// Bytes written with TIFF's UNDEFINED type, which the ICC profile tag takes (the tiff
/// crate writes a byte slice as BYTE, which readers such as exiftool flag).
struct Undefined<'a>(&'a [u8]);

impl tiff::encoder::TiffValue for Undefined<'_> {
    const BYTE_LEN: u8 = 1;
    const FIELD_TYPE: tiff::tags::Type = tiff::tags::Type::UNDEFINED;

    fn count(&self) -> usize {
        self.0.len()
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.0)
    }
}

/// The TIFF tag of an XMP packet.
const XML_PACKET: u16 = 700;

/// What the image crate's TIFF decoder gets wrong, read with the tiff crate.
#[derive(Default)]
pub(super) struct TiffFacts {
    /// 32-bit samples stored as integers. The image crate takes 32-bit samples without a
    /// SampleFormat tag (which means unsigned integers) for floats and decodes them to
    /// black, so these files are refused instead.
    pub(super) wide_integer_samples: bool,
    /// The name of a compression scheme the tiff crate does not decode.
    pub(super) unsupported_compression: Option<String>,
    /// The ICC profile, which the image crate does not read from TIFF (the tag's type is
    /// UNDEFINED, not BYTE).
    pub(super) icc_profile: Option<Vec<u8>>,
    /// The XMP packet (XMLPacket tag), which the image crate does not read where its type
    /// is UNDEFINED either.
    pub(super) xmp: Option<Vec<u8>>,
    /// More pages follow the first.
    pub(super) pages: bool,
    /// The extra sample is associated (premultiplied) alpha, which the image crate
    /// passes on as if it were straight.
    pub(super) associated_alpha: bool,
    /// The turn the Orientation tag asks for (the image crate applies it to the files it
    /// reads; the files the tiff crate reads need it applied here).
    pub(super) orientation: Option<Dihedral>,
    /// The samples are indices into a colour map (PhotometricInterpretation 3).
    pub(super) colour_mapped: bool,
    /// The resolution tags, as stored (not turned by the orientation).
    pub(super) density: Option<Density>,
    /// The camera, date and GPS tags of the first directory and its Exif and GPS
    /// directories, as an EXIF chunk (classic TIFF only), which the image crate does not
    /// read.
    pub(super) exif: Option<Vec<u8>>,
    /// The IPTC-IIM record, which the image crate does not read either.
    pub(super) iptc: Option<Iptc>,
    /// The camera raw format the file is, told by its content (the DNGVersion tag or the
    /// CR2 signature): its first image is not the photo.
    pub(super) camera_raw: Option<&'static str>,
    /// The first image is marked as a reduced-resolution one (NewSubFileType bit 0) and
    /// sub-images (SubIFDs) lie beside it: a preview, as other makers' raw files keep it,
    /// with the full image elsewhere.
    pub(super) preview_first: bool,
    /// Several samples per pixel, stored plane by plane in tiles: the tiff crate's
    /// whole-image read (which the image crate uses) takes the edge tiles of every plane
    /// after the first for whole ones and panics, so [`decode_tiff`] reads them tile by tile.
    pub(super) tiled_planar: bool,
}

/// The flip or rotation that shows an image stored with the TIFF/EXIF Orientation `value`
/// upright; `None` for upright (1) and undefined values.
fn upright(value: u16) -> Option<Dihedral> {
    let (flip_x, flip_y, transpose) = match value {
        2 => (true, false, false),
        3 => (true, true, false),
        4 => (false, true, false),
        5 => (false, false, true),
        6 => (false, true, true),
        7 => (true, true, true),
        8 => (true, false, true),
        _ => return None,
    };
    Some(Dihedral {
        flip_x,
        flip_y,
        transpose,
    })
}

impl TiffFacts {
    /// Reads the facts from the TIFF `reader` opens, and leaves it at the start.
    pub(super) fn read(reader: &mut (impl BufRead + Seek)) -> Self {
        use tiff::tags::{SampleFormat, Tag};
        let facts = tiff::decoder::Decoder::new(&mut *reader).map_or_else(
            |_| Self::default(),
            |mut d| {
                let bits = d.find_tag_unsigned_vec::<u16>(Tag::BitsPerSample);
                let formats = d.find_tag_unsigned_vec::<u16>(Tag::SampleFormat);
                let float = formats.ok().flatten().is_some_and(|f| {
                    f.iter()
                        .all(|&f| SampleFormat::from_u16(f) == Some(SampleFormat::IEEEFP))
                });
                let mut bytes = |tag| {
                    d.find_tag(tag)
                        .ok()
                        .flatten()
                        .and_then(|v| v.into_u8_vec().ok())
                };
                let icc_profile = bytes(Tag::IccProfile);
                let xmp = bytes(Tag::Unknown(XML_PACKET));
                let extra = d.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples);
                Self {
                    wide_integer_samples: bits.ok().flatten().is_some_and(|b| b.contains(&32))
                        && !float,
                    unsupported_compression: d
                        .find_tag_unsigned::<u16>(Tag::Compression)
                        .ok()
                        .flatten()
                        .and_then(unsupported_compression),
                    icc_profile,
                    xmp,
                    pages: d.more_images(),
                    associated_alpha: extra.ok().flatten().is_some_and(|e| e.first() == Some(&1)),
                    orientation: d
                        .find_tag_unsigned::<u16>(Tag::Orientation)
                        .ok()
                        .flatten()
                        .and_then(upright),
                    colour_mapped: d
                        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
                        .ok()
                        .flatten()
                        == Some(3),
                    density: density(&mut d),
                    exif: None,
                    iptc: iptc(&mut d),
                    tiled_planar: is_tiled(&mut d) && is_planar(&mut d),
                    camera_raw: d
                        .find_tag(Tag::Unknown(DNG_VERSION))
                        .ok()
                        .flatten()
                        .map(|_| "DNG"),
                    preview_first: preview_first(&mut d),
                }
            },
        );
        let exif = ExifTags::from_file(reader).map(|tags| tags.to_chunk());
        let mut head = [0u8; 10];
        let cr2 = reader.seek(io::SeekFrom::Start(0)).is_ok()
            && reader.read_exact(&mut head).is_ok()
            && &head[8..] == b"CR";
        let _ = reader.seek(io::SeekFrom::Start(0));
        let camera_raw = facts.camera_raw.or(cr2.then_some("CR2"));
        Self {
            exif,
            camera_raw,
            ..facts
        }
    }
}

impl TiffFacts {
    /// Why the file is refused before any decoding, if it is.
    pub(super) fn refusal(&self) -> Option<String> {
        if let Some(kind) = self.camera_raw {
            return Some(super::format::camera_raw_refusal(kind));
        }
        if self.preview_first {
            return Some(
                "TIFF whose first image is a reduced-resolution preview, the full image lying \
                 in a sub-image (as camera raw files keep it); develop or export it to TIFF, \
                 PNG or JPEG and upscale that"
                    .into(),
            );
        }
        if let Some(compression) = &self.unsupported_compression {
            return Some(format!(
                "TIFF with {compression} is not supported; convert it to PNG, or to an \
                 uncompressed, LZW, Deflate or ZSTD TIFF"
            ));
        }
        self.wide_integer_samples.then(|| {
            "TIFF with 32-bit integer samples (convert it to 16-bit or floating point)".into()
        })
    }

    /// Decodes a layout the image crate does not read with [`decode_tiff`], and turns it
    /// upright as the image crate would have, `density` with it.
    pub(super) fn decode(
        &self,
        reader: impl BufRead + Seek,
        density: Option<Density>,
        limits: &DecodeLimits,
    ) -> Result<DecodedImage, Failure> {
        let mut decoded = decode_tiff(reader, limits)?;
        decoded.density = density;
        if let Some(t) = self.orientation {
            decoded.rgb = decoded.rgb.dihedral(t);
            decoded.alpha = decoded.alpha.map(|a| a.dihedral(t));
            decoded.density = decoded.density.map(|d| d.turned(t.transpose));
        }
        Ok(decoded)
    }

    /// Completes a decoded image with what only these facts know: the metadata the image
    /// crate misses, and straight alpha where the file's is premultiplied.
    pub(super) fn amend(self, decoded: &mut DecodedImage) {
        decoded.icc_profile = decoded.icc_profile.take().or(self.icc_profile);
        decoded.exif = decoded.exif.take().or(self.exif);
        decoded.iptc = self.iptc;
        decoded.xmp = match self.orientation {
            Some(_) => self.xmp.map(upright_xmp),
            None => self.xmp,
        };
        if let Some(alpha) = decoded.alpha.as_ref().filter(|_| self.associated_alpha) {
            unpremultiply(&mut decoded.rgb, alpha);
        }
    }
}

/// The tag that makes a TIFF a DNG.
const DNG_VERSION: u16 = 50706;

/// Whether the first directory is a reduced-resolution image (NewSubFileType bit 0) with
/// sub-images (SubIFDs) beside it.
fn preview_first<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> bool {
    use tiff::tags::Tag;
    let reduced = d
        .find_tag_unsigned::<u32>(Tag::NewSubfileType)
        .ok()
        .flatten()
        .is_some_and(|v| v & 1 == 1);
    reduced && d.find_tag(Tag::SubIfd).ok().flatten().is_some()
}

/// The XResolution, YResolution and ResolutionUnit tags of the decoder's current IFD.
fn density<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> Option<Density> {
    use tiff::decoder::ifd::Value;
    use tiff::tags::Tag;
    // RATIONAL, as TIFF defines it; some writers use other numeric types.
    let mut resolution = |tag| match d.find_tag(tag).ok()?? {
        Value::Rational(n, d) => Some(f64::from(n) / f64::from(d)),
        Value::Double(v) => Some(v),
        Value::Float(v) => Some(f64::from(v)),
        v => v.into_u32().ok().map(f64::from),
    };
    let (x, y) = (resolution(Tag::XResolution)?, resolution(Tag::YResolution));
    let unit = d
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten();
    Density::from_tiff(x, y, unit)
}

/// Adds EXIF fields, in the machine's byte order, to a directory being written.
fn add_fields<'a, W: Write + Seek>(
    directory: &mut tiff::encoder::DirectoryEncoder<'_, W, tiff::encoder::TiffKindStandard>,
    fields: impl Iterator<Item = &'a Field>,
) -> tiff::TiffResult<()> {
    let mut entries = tiff::Directory::empty();
    for f in fields {
        let Some(kind) = tiff::tags::Type::from_u16(f.kind) else {
            continue;
        };
        let entry = directory.write_entry_bytes(kind, &f.data)?;
        if f.data.len() > 4 && f.data.len() % 2 == 1 {
            // Values start on word boundaries, as TIFF asks.
            directory.write_data(&[0u8][..])?;
        }
        entries.extend([(tiff::tags::Tag::from_u16_exhaustive(f.tag), entry)]);
    }
    directory.extend_from(&entries);
    Ok(())
}

/// The TIFF tags of an IPTC-IIM record and of Photoshop's image resources.
const IPTC: u16 = 33723;
const PHOTOSHOP: u16 = 34377;

/// The IPTC-IIM record of the decoder's current IFD: the IPTC tag's (which writers type
/// LONG, BYTE or UNDEFINED), else the one among the Photoshop tag's image resources.
fn iptc<R: Read + Seek>(d: &mut tiff::decoder::Decoder<R>) -> Option<Iptc> {
    use tiff::tags::{ByteOrder, Tag};
    let big_endian = d.byte_order() == ByteOrder::BigEndian;
    let mut find = |tag| d.find_tag(Tag::Unknown(tag)).ok().flatten();
    let record = find(IPTC).and_then(|v| {
        use tiff::decoder::ifd::Value;
        let long = |v: &Value| matches!(v, Value::Unsigned(_));
        match v {
            // LONGs hold the record's bytes in the file's order.
            Value::List(ref items) if items.first().is_some_and(long) => Some(
                v.into_u32_vec()
                    .ok()?
                    .into_iter()
                    .flat_map(|v| {
                        if big_endian {
                            v.to_be_bytes()
                        } else {
                            v.to_le_bytes()
                        }
                    })
                    .collect(),
            ),
            v => v.into_u8_vec().ok(),
        }
    });
    // The tiff crate reads BYTE values up to 1 MiB; LONGs are held to the same.
    let record = record.filter(|r| r.len() <= 1 << 20);
    let resources = find(PHOTOSHOP).and_then(|v| v.into_u8_vec().ok());
    Iptc::from_tiff(record.as_deref(), resources.as_deref())
}

/// `$name`: a colour type the tiff crate's encoder lacks, `$samples` samples of `$bits`-bit
/// `$inner`s under the PhotometricInterpretation `$photometric`, written without a predictor.
macro_rules! colour_type {
    ($name:ident, $inner:ty, $bits:literal, $photometric:ident, $samples:literal) => {
        struct $name;
        impl tiff::encoder::colortype::ColorType for $name {
            type Inner = $inner;
            const TIFF_VALUE: tiff::tags::PhotometricInterpretation =
                tiff::tags::PhotometricInterpretation::$photometric;
            const BITS_PER_SAMPLE: &'static [u16] = &[$bits; $samples];
            const SAMPLE_FORMAT: &'static [tiff::tags::SampleFormat] =
                &[tiff::tags::SampleFormat::Uint; $samples];
            fn horizontal_predict(_: &[$inner], _: &mut Vec<$inner>) {
                unreachable!("written without a predictor")
            }
        }
    };
}

colour_type!(GrayAlpha8, u8, 8, BlackIsZero, 2);
colour_type!(GrayAlpha16, u16, 16, BlackIsZero, 2);

impl Encoded<'_> {
    /// TIFF through the tiff crate, which (unlike the `image` crate's encoder) can say
    /// that the last sample is alpha (ExtraSamples) and writes gray with alpha. Gray+alpha
    /// stays so rather than becoming RGBA, which would drop a gray profile: libtiff-based
    /// readers take it, though Pillow (which has no 16-bit gray+alpha mode) opens only
    /// the 8-bit kind.
    pub(super) fn encode_tiff(&self, mut w: impl Write) -> tiff::TiffResult<()> {
        // The tiff crate writes the image's directory right after the strips, which LZW
        // leaves at an odd offset half the time; TIFF asks for a word boundary, so such a
        // file is written again with one byte more before the strips.
        let file = self.tiff_file(false)?;
        let ifd: [u8; 4] = file[4..8].try_into().expect("a TIFF header");
        let ifd = match &file[..2] {
            b"MM" => u32::from_be_bytes(ifd),
            _ => u32::from_le_bytes(ifd),
        };
        let file = if ifd % 2 == 1 {
            self.tiff_file(true)?
        } else {
            file
        };
        w.write_all(&file)?;
        Ok(())
    }

    /// The TIFF file, with a byte before the strips where `pad`.
    fn tiff_file(&self, pad: bool) -> tiff::TiffResult<Vec<u8>> {
        use tiff::encoder::colortype::{Gray16, Gray8, RGB16, RGB8, RGBA16, RGBA8};
        use tiff::encoder::{Compression, Predictor};
        // LZW, which every TIFF reader takes, after horizontal differencing (the tiff crate
        // has none for the gray+alpha types added here): about half the uncompressed size
        // for photos, for a second or so per 10 megapixels.
        let predictor = match self.color {
            ExtendedColorType::La8 | ExtendedColorType::La16 => Predictor::None,
            _ => Predictor::Horizontal,
        };
        let mut file = Cursor::new(Vec::new());
        let mut tiff = tiff::encoder::TiffEncoder::new(&mut file)?
            .with_compression(Compression::Lzw)
            .with_predictor(predictor);
        let wide = || -> Vec<u16> {
            self.buf
                .chunks_exact(2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .collect()
        };
        let t = &mut tiff;
        match self.color {
            ExtendedColorType::L8 => self.tiff_image::<Gray8, _>(t, &self.buf, pad),
            ExtendedColorType::La8 => self.tiff_image::<GrayAlpha8, _>(t, &self.buf, pad),
            ExtendedColorType::Rgb8 => self.tiff_image::<RGB8, _>(t, &self.buf, pad),
            ExtendedColorType::Rgba8 => self.tiff_image::<RGBA8, _>(t, &self.buf, pad),
            ExtendedColorType::L16 => self.tiff_image::<Gray16, _>(t, &wide(), pad),
            ExtendedColorType::La16 => self.tiff_image::<GrayAlpha16, _>(t, &wide(), pad),
            ExtendedColorType::Rgb16 => self.tiff_image::<RGB16, _>(t, &wide(), pad),
            ExtendedColorType::Rgba16 => self.tiff_image::<RGBA16, _>(t, &wide(), pad),
            other => unreachable!("quantise_planes gives no {other:?}"),
        }?;
        Ok(file.into_inner())
    }

    fn tiff_image<C, W>(
        &self,
        tiff: &mut tiff::encoder::TiffEncoder<W>,
        samples: &[C::Inner],
        pad: bool,
    ) -> tiff::TiffResult<()>
    where
        C: tiff::encoder::colortype::ColorType,
        W: Write + Seek,
        [C::Inner]: tiff::encoder::TiffValue,
    {
        use tiff::tags::Tag;
        // The tiff crate writes in the machine's byte order.
        let exif = self
            .exif()
            .and_then(|chunk| ExifTags::from_chunk(&chunk))
            .map(|tags| tags.in_byte_order(cfg!(target_endian = "big")));
        let mut pointers = Vec::new();
        if let Some(tags) = &exif {
            for (tag, fields) in [
                (Tag::ExifDirectory, &tags.exif),
                (Tag::GpsDirectory, &tags.gps),
            ] {
                // PixelXDimension and PixelYDimension are for compressed data, not TIFF's.
                let fields: Vec<&Field> = fields
                    .iter()
                    .filter(|f| !matches!(f.tag, 0xA002 | 0xA003))
                    .collect();
                if !fields.is_empty() {
                    let mut directory = tiff.extra_directory()?;
                    add_fields(&mut directory, fields.into_iter())?;
                    pointers.push((tag, directory.finish_with_offsets()?.offset));
                }
            }
        }
        let mut image = tiff.new_image::<C>(self.width, self.height)?;
        if let Some(tags) = &exif {
            // The resolution is written from the density below.
            let described = tags.image.iter().filter(|f| DESCRIPTIVE.contains(&f.tag));
            add_fields(image.encoder(), described)?;
        }
        for (tag, offset) in pointers {
            image.encoder().write_tag(tag, offset)?;
        }
        // Gray+alpha or RGBA: the samples quantise_planes gives end in alpha.
        if self.color.channel_count().is_multiple_of(2) {
            // 2: unassociated alpha, which is what is written (colour not premultiplied).
            image.encoder().write_tag(Tag::ExtraSamples, &[2u16][..])?;
        }
        if let Some(icc) = self.icc_profile() {
            image.encoder().write_tag(Tag::IccProfile, Undefined(icc))?;
        }
        if let Some(density) = self.opts.density {
            // These replace the encoder's default of 1/1 without a unit.
            use tiff::encoder::Rational;
            let (unit, (xn, xd), (yn, yd)) = density.to_tiff();
            let encoder = image.encoder();
            encoder.write_tag(Tag::ResolutionUnit, unit)?;
            encoder.write_tag(Tag::XResolution, Rational { n: xn, d: xd })?;
            encoder.write_tag(Tag::YResolution, Rational { n: yn, d: yd })?;
        }
        if let Some(mut xmp) = self.xmp() {
            // An even length keeps the values after it on word boundaries, as TIFF asks;
            // white space after the packet is allowed.
            if xmp.len() % 2 == 1 {
                xmp.push(b'\n');
            }
            image
                .encoder()
                .write_tag(Tag::Unknown(XML_PACKET), &xmp[..])?;
        }
        if let Some(iptc) = &self.opts.iptc {
            // Typed LONG, as Photoshop writes it and expects it: the record's bytes in order,
            // padded with zeros to whole LONGs, in the file's (the machine's) byte order.
            let longs: Vec<u32> = iptc
                .record
                .chunks(4)
                .map(|b| {
                    let mut word = [0; 4];
                    word[..b.len()].copy_from_slice(b);
                    u32::from_ne_bytes(word)
                })
                .collect();
            image.encoder().write_tag(Tag::Unknown(IPTC), &longs[..])?;
        }
        if pad {
            image.encoder().write_data(&[0u8][..])?;
        }
        image.write_data(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{format_fixture, gradient, icc_profile, limits, ramp};
    use crate::imageops::io::{
        decode_bytes, decode_file, encode_file, EncodeOptions, ImageIoError, OutputFormat,
    };
    use std::fs::File;
    use std::io::Cursor;

    /// A photo's EXIF tags reach a TIFF output's own directories (in the machine's byte
    /// order, values on word boundaries), and a TIFF's reach the EXIF chunk of other formats.
    #[test]
    fn exif_moves_between_chunks_and_tiff_directories() {
        use crate::imageops::exif::Field;
        use tiff::tags::Tag;
        let tags = ExifTags {
            big_endian: true,
            image: vec![
                Field::new(0x010F, 2, b"Maker\0"),
                Field::new(0x0110, 2, b"Model 1\0"),
                Field::new(0x011A, 5, &[0, 0, 0, 72, 0, 0, 0, 1]),
            ],
            exif: vec![
                Field::new(0x829A, 5, &[0, 0, 0, 1, 0, 0, 0, 125]),
                Field::new(0x8827, 3, &[0, 200]),
                Field::new(0x9286, 7, b"UNICODE\0\0h\0i"),
                Field::new(0xA002, 4, &[0, 0, 0, 8]),
            ],
            gps: vec![Field::new(
                0x0002,
                5,
                &[
                    0, 0, 0, 48, 0, 0, 0, 1, 0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
                ],
            )],
        };
        let img = gradient(6, 10);
        let opts = EncodeOptions {
            exif: Some(tags.to_chunk()),
            ..EncodeOptions::new(OutputFormat::Tiff)
        };
        let file =
            crate::imageops::io::encode_bytes(std::path::Path::new("e.tif"), &img, None, &opts)
                .unwrap();
        let mut d = tiff::decoder::Decoder::new(Cursor::new(&file)).unwrap();
        assert_eq!(
            d.get_tag(Tag::Make).unwrap().into_string().unwrap(),
            "Maker"
        );
        assert_eq!(
            d.get_tag(Tag::Model).unwrap().into_string().unwrap(),
            "Model 1"
        );
        // The resolution comes from the density, which these options do not give.
        assert!(matches!(
            d.get_tag(Tag::XResolution).unwrap(),
            tiff::decoder::ifd::Value::Rational(1, 1)
        ));
        let read = ExifTags::from_file(&mut Cursor::new(&file)).unwrap();
        let native = tags.clone().in_byte_order(cfg!(target_endian = "big"));
        assert_eq!(read.image[..2], native.image[..2]);
        assert_eq!(read.gps, native.gps);
        // PixelXDimension, which is for compressed data, is left out of TIFF.
        assert_eq!(read.exif[..], native.exif[..3]);
        let text: Vec<u8> = "hi".encode_utf16().flat_map(u16::to_ne_bytes).collect();
        let comment = [&b"UNICODE\0"[..], &text].concat();
        assert_eq!(
            read.exif[2].data, comment,
            "UTF-16 text in the file's byte order"
        );
        for f in read.image.iter().chain(&read.exif).chain(&read.gps) {
            assert_eq!(f.data.len() % 2, 0, "word-aligned values follow {f:?}");
        }

        // And back: the TIFF's tags, as the EXIF chunk of a PNG.
        let decoded = decode_bytes(&file, &limits()).unwrap();
        let png = EncodeOptions::matching(OutputFormat::Png, &decoded);
        let png =
            crate::imageops::io::encode_bytes(std::path::Path::new("e.png"), &img, None, &png)
                .unwrap();
        let chunk = decode_bytes(&png, &limits()).unwrap().exif.unwrap();
        let again = ExifTags::from_chunk(&chunk).unwrap();
        assert_eq!((again.exif, again.gps), (read.exif, read.gps));
        assert_eq!(again.image[..2], read.image[..2]);
        // A TIFF without such tags has no EXIF.
        let plain = crate::imageops::io::encode_bytes(
            std::path::Path::new("p.tif"),
            &img,
            None,
            &EncodeOptions::new(OutputFormat::Tiff),
        )
        .unwrap();
        assert_eq!(decode_bytes(&plain, &limits()).unwrap().exif, None);
    }

    /// TIFF outputs are LZW-compressed after horizontal differencing, except gray+alpha
    /// (which the tiff crate cannot difference), and read back exactly; the image's
    /// directory lies on a word boundary whatever the compressed data's length.
    #[test]
    fn tiff_output_is_lzw_compressed_losslessly() {
        use tiff::tags::Tag;
        // Widths whose compressed data ends at odd and even offsets.
        for w in 1..16 {
            let img = gradient(3, w);
            let opts = EncodeOptions::new(OutputFormat::Tiff);
            let file =
                crate::imageops::io::encode_bytes(std::path::Path::new("w.tif"), &img, None, &opts)
                    .unwrap();
            let ifd = u32::from_le_bytes(file[4..8].try_into().unwrap());
            assert_eq!(ifd % 2, 0, "width {w}");
            assert!(
                decode_bytes(&file, &limits())
                    .unwrap()
                    .rgb
                    .max_abs_diff(&img)
                    < 1e-6
            );
        }
        let (img, alpha) = (gradient(6, 10), ramp(6, 10, 1));
        for (grayscale, predictor) in [(false, 2), (true, 1)] {
            for sixteen_bit in [false, true] {
                let opts = EncodeOptions {
                    grayscale,
                    sixteen_bit,
                    ..EncodeOptions::new(OutputFormat::Tiff)
                };
                let alpha = grayscale.then_some(&alpha);
                let path = std::path::Path::new("c.tif");
                let file = crate::imageops::io::encode_bytes(path, &img, alpha, &opts).unwrap();
                let mut d = tiff::decoder::Decoder::new(Cursor::new(&file)).unwrap();
                assert_eq!(d.get_tag_u32(Tag::Compression).unwrap(), 5);
                assert_eq!(d.get_tag_u32(Tag::Predictor).unwrap(), predictor);
                let back = decode_bytes(&file, &limits()).unwrap();
                assert_eq!(back.alpha.as_ref(), alpha, "{grayscale} {sixteen_bit}");
                if !grayscale {
                    assert!(back.rgb.max_abs_diff(&img) < 1e-6);
                }
            }
        }
    }

    /// The IPTC record is read from the IPTC tag whatever type its writer gave it, and
    /// from the Photoshop tag's image resources.
    #[test]
    fn iptc_is_read_from_either_tag() {
        let record = [&[0x1C, 2, 25, 0, 5][..], b"boats"].concat();
        let iptc = Iptc {
            record: record.clone(),
            digest: None,
        };
        let tiff_with = |tag, kind, data: &[u8]| {
            let mut file = Cursor::new(Vec::new());
            let mut tiff = tiff::encoder::TiffEncoder::new(&mut file).unwrap();
            let mut image = tiff
                .new_image::<tiff::encoder::colortype::Gray8>(1, 1)
                .unwrap();
            add_fields(image.encoder(), [Field::new(tag, kind, data)].iter()).unwrap();
            image.write_data(&[0]).unwrap();
            decode_bytes(file.get_ref(), &limits()).unwrap().iptc
        };
        let (byte, long, undefined) = (1, 4, 7);
        let padded = [&record[..], &[0, 0]].concat();
        let whole_longs = Iptc {
            record: padded.clone(),
            digest: None,
        };
        assert_eq!(tiff_with(IPTC, long, &padded), Some(whole_longs));
        assert_eq!(tiff_with(IPTC, byte, &record), Some(iptc.clone()));
        assert_eq!(tiff_with(IPTC, undefined, &record), Some(iptc.clone()));
        let resources = iptc.to_resources();
        assert_eq!(tiff_with(PHOTOSHOP, byte, &resources), Some(iptc));
        assert_eq!(tiff_with(IPTC, undefined, b"not a record"), None);
    }

    /// TIFF alpha is written as such (ExtraSamples: unassociated), and premultiplied
    /// (associated) alpha is divided out on reading.
    #[test]
    fn tiff_alpha_is_tagged_and_premultiplied_alpha_undone() {
        use tiff::tags::Tag;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tiff");
        let (img, alpha) = (gradient(6, 10), ramp(6, 10, 3));
        // RGBA, and gray+alpha (in 8 and 16 bits) with its gray profile.
        let gray_icc = icc_profile(b"GRAY");
        for (grayscale, sixteen_bit, photometric, bits) in [
            (false, false, 2, vec![8; 4]),
            (true, false, 1, vec![8; 2]),
            (true, true, 1, vec![16; 2]),
        ] {
            let opts = EncodeOptions {
                grayscale,
                sixteen_bit,
                icc_profile: Some(gray_icc.clone()),
                ..EncodeOptions::new(OutputFormat::Tiff)
            };
            encode_file(&path, &img, Some(&alpha), &opts).unwrap();
            let mut d = tiff::decoder::Decoder::new(File::open(&path).unwrap()).unwrap();
            let tag = |d: &mut tiff::decoder::Decoder<File>, tag| {
                d.find_tag_unsigned_vec::<u16>(tag).unwrap()
            };
            assert_eq!(tag(&mut d, Tag::ExtraSamples), Some(vec![2]));
            assert_eq!(
                tag(&mut d, Tag::PhotometricInterpretation),
                Some(vec![photometric])
            );
            assert_eq!(tag(&mut d, Tag::BitsPerSample), Some(bits));
            let icc = d.find_tag(Tag::IccProfile).unwrap();
            assert_eq!(icc.is_some(), grayscale, "gray {grayscale}");
        }

        let (w, h) = (3u32, 1u32);
        // Straight (200, 100, 50) at alpha 255, 128 and 0, stored premultiplied.
        let straight = [200.0f32, 100.0, 50.0];
        let mut samples = Vec::new();
        for a in [255u8, 128, 0] {
            samples.extend(straight.map(|c| (c * f32::from(a) / 255.0).round() as u8));
            samples.push(a);
        }
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc
            .new_image::<tiff::encoder::colortype::RGBA8>(w, h)
            .unwrap();
        image
            .encoder()
            .write_tag(Tag::ExtraSamples, &[1u16][..])
            .unwrap();
        image.write_data(&samples).unwrap();
        let d = decode_bytes(buf.get_ref(), &limits()).unwrap();
        for x in 0..2 {
            for (c, want) in straight.iter().enumerate() {
                let got = d.rgb.at(c, 0, x) * 255.0;
                assert!((got - want).abs() < 1.5, "x {x} c {c}: {got}");
            }
        }
        assert_eq!(d.rgb.at(0, 0, 2), 0.0);
    }

    /// 32-bit TIFF samples: floats decode; integers (which the image crate would turn to
    /// black) are refused with a hint.
    #[test]
    fn thirty_two_bit_tiff_floats_decode_integers_are_refused() {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut floats = Cursor::new(Vec::new());
        TiffEncoder::new(&mut floats)
            .unwrap()
            .write_image::<colortype::RGB32Float>(2, 1, &[0.0, 0.5, 1.0, 0.25, 0.75, 2.0])
            .unwrap();
        let d = decode_bytes(floats.get_ref(), &limits()).unwrap();
        assert_eq!(d.rgb.data, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        let mut integers = Cursor::new(Vec::new());
        TiffEncoder::new(&mut integers)
            .unwrap()
            .write_image::<colortype::RGB32>(2, 1, &[0, 1 << 31, u32::MAX, 7, 8, 9])
            .unwrap();
        let integers = integers.into_inner();
        // Float gray, which the image crate refuses, is read with the tiff crate.
        let mut gray = Cursor::new(Vec::new());
        TiffEncoder::new(&mut gray)
            .unwrap()
            .write_image::<colortype::Gray32Float>(2, 1, &[0.0, 0.5])
            .unwrap();
        let d = decode_bytes(gray.get_ref(), &limits()).unwrap();
        assert!(d.grayscale && d.sixteen_bit);
        assert_eq!(d.rgb.data, [0.0, 0.5, 0.0, 0.5, 0.0, 0.5]);
        // As WhiteIsZero, inverted (by the tiff crate, and only once).
        let mut white = gray.into_inner();
        set_photometric(&mut white, 0).unwrap();
        let d = decode_bytes(&white, &limits()).unwrap();
        assert_eq!(d.rgb.data, [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]);
        let e = decode_bytes(&integers, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("32-bit integer samples"), "{e}");
    }

    /// A camera raw file's first image is its preview, not the photo: such files are
    /// refused, told by their content whatever their name.
    #[test]
    fn camera_raw_files_are_refused() {
        use tiff::encoder::{colortype, TiffEncoder};
        use tiff::tags::Tag;
        let tiff = |tags: &[(Tag, u32)]| {
            let mut buf = Cursor::new(Vec::new());
            let mut enc = TiffEncoder::new(&mut buf).unwrap();
            let mut image = enc.new_image::<colortype::RGB8>(2, 1).unwrap();
            for &(tag, value) in tags {
                image.encoder().write_tag(tag, value).unwrap();
            }
            image.write_data(&[0; 6]).unwrap();
            buf.into_inner()
        };
        let refused = |file: &[u8]| match decode_bytes(file, &limits()) {
            Err(ImageIoError::Unsupported { detail, .. }) => detail,
            other => panic!("{:?}", other.map(|d| d.format)),
        };
        let dng = tiff(&[(Tag::Unknown(DNG_VERSION), 0x0104_0000)]);
        assert!(refused(&dng).contains("camera raw file (DNG)"));
        let preview = tiff(&[(Tag::NewSubfileType, 1), (Tag::SubIfd, 8)]);
        assert!(refused(&preview).contains("reduced-resolution preview"));
        // Canon's signature after the TIFF header.
        let mut cr2 = tiff(&[]);
        cr2[8..10].copy_from_slice(b"CR");
        assert!(refused(&cr2).contains("camera raw file (CR2)"));
        // A reduced-resolution image alone, or sub-images alone, are ordinary.
        decode_bytes(&tiff(&[(Tag::NewSubfileType, 1)]), &limits()).unwrap();
        decode_bytes(&tiff(&[(Tag::SubIfd, 8)]), &limits()).unwrap();
    }

    /// CMYK with alpha, which the image crate does not read, comes out as RGB by its CMYK
    /// conversion, with the alpha kept.
    #[test]
    fn cmyk_with_alpha_decodes() {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut buf = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<colortype::CMYKA8>(2, 1).unwrap();
        image
            .encoder()
            .write_tag(tiff::tags::Tag::ExtraSamples, &[2u16][..])
            .unwrap();
        // Magenta ink at full alpha; cyan and half black, a fifth opaque.
        image
            .write_data(&[0, 255, 0, 0, 255, 255, 0, 0, 102, 51])
            .unwrap();
        let d = decode_bytes(buf.get_ref(), &limits()).unwrap();
        assert!(!d.grayscale && !d.sixteen_bit);
        assert_eq!(d.rgb.data, [1.0, 0.0, 0.0, 0.6, 1.0, 0.6]);
        assert_eq!(d.alpha.unwrap().data, [1.0, 0.2]);
    }

    /// Gray with alpha, and BigTIFF, which the image crate does not read, are read with the
    /// tiff crate.
    #[test]
    fn gray_alpha_and_big_tiff_decode() {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut buf = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<GrayAlpha8>(2, 1).unwrap();
        image
            .encoder()
            .write_tag(tiff::tags::Tag::ExtraSamples, &[2u16][..])
            .unwrap();
        image.write_data(&[51, 255, 204, 0]).unwrap();
        let d = decode_bytes(buf.get_ref(), &limits()).unwrap();
        assert!(d.grayscale && !d.sixteen_bit);
        assert_eq!(d.rgb.plane(1), [0.2, 0.8]);
        assert_eq!(d.alpha.unwrap().data, [1.0, 0.0]);

        let mut big = Cursor::new(Vec::new());
        TiffEncoder::new_big(&mut big)
            .unwrap()
            .write_image::<colortype::RGB8>(1, 1, &[255, 0, 51])
            .unwrap();
        let d = decode_bytes(big.get_ref(), &limits()).unwrap();
        assert_eq!(d.format, InputFormat::Tiff);
        assert_eq!(d.rgb.data, [1.0, 0.0, 0.2]);
    }

    /// Samples stored plane by plane (PlanarConfiguration 2) decode as interleaved ones.
    #[test]
    fn planar_tiffs_decode() {
        // The image crate reads the first; the second is a layout it passes to the tiff
        // crate; the tiled ones (with edge tiles sticking out, which the image crate's read
        // panics on) are read tile by tile.
        for (name, sixteen_bit, grayscale) in [
            ("planar_rgba16", true, false),
            ("planar_gray_alpha8", false, true),
            ("tiled_planar_rgb8", false, false),
            ("tiled_planar_rgba16", true, false),
        ] {
            let d = decode_file(&format_fixture(&format!("{name}.tif")), &limits()).unwrap();
            let want = decode_file(&format_fixture(&format!("{name}.png")), &limits()).unwrap();
            assert_eq!(
                (d.sixteen_bit, d.grayscale),
                (sixteen_bit, grayscale),
                "{name}"
            );
            assert_eq!(d.rgb, want.rgb, "{name}");
            assert_eq!(d.alpha, want.alpha, "{name}");
        }
    }

    /// The files the tiff crate reads are turned upright as the image crate turns the
    /// others, for all eight Orientation values.
    #[test]
    fn orientation_applies_to_the_files_the_tiff_crate_reads() {
        use tiff::encoder::{colortype, TiffEncoder};
        use tiff::tags::Tag;
        let values: Vec<u8> = (0..6).map(|v| v * 40).collect();
        for orientation in 1..=8u16 {
            let mut gray_alpha = Cursor::new(Vec::new());
            let mut enc = TiffEncoder::new(&mut gray_alpha).unwrap();
            let mut image = enc.new_image::<GrayAlpha8>(3, 2).unwrap();
            image
                .encoder()
                .write_tag(Tag::ExtraSamples, &[2u16][..])
                .unwrap();
            image
                .encoder()
                .write_tag(Tag::Orientation, orientation)
                .unwrap();
            let data: Vec<u8> = values.iter().flat_map(|&v| [v, 255 - v]).collect();
            image.write_data(&data).unwrap();
            let mut rgb = Cursor::new(Vec::new());
            let mut enc = TiffEncoder::new(&mut rgb).unwrap();
            let mut image = enc.new_image::<colortype::RGB8>(3, 2).unwrap();
            image
                .encoder()
                .write_tag(Tag::Orientation, orientation)
                .unwrap();
            let data: Vec<u8> = values.iter().flat_map(|&v| [v, v, v]).collect();
            image.write_data(&data).unwrap();
            let ours = decode_bytes(gray_alpha.get_ref(), &limits()).unwrap();
            let theirs = decode_bytes(rgb.get_ref(), &limits()).unwrap();
            assert_eq!(ours.rgb, theirs.rgb, "orientation {orientation}");
            let alpha = ours.alpha.unwrap();
            let expected = theirs.rgb.plane(0).iter().map(|v| 1.0 - v);
            assert!(alpha
                .data
                .iter()
                .zip(expected)
                .all(|(a, e)| (a - e).abs() < 1e-6));
        }
    }

    /// The fixtures' PNGs are what libtiff decodes the TIFFs to (libjpeg for the JPEG ones),
    /// except ycbcr.png, which holds the TIFF 6 formulas' exact result (libtiff truncates);
    /// see scripts/make_tiff_fixtures.py.
    #[test]
    fn palette_and_ycbcr_tiffs_decode_as_libtiff_does() {
        // JPEG decoders differ in their IDCT, colour conversion and chroma upsampling:
        // zune-jpeg is within 3 levels of libjpeg-turbo (0.3 on average without subsampling,
        // 0.6 with), except in the right-hand column of the 2×2-subsampled image (up to 7),
        // where the two upsample the chroma edge differently.
        let level = 1.0 / 255.0;
        for (name, sixteen_bit, grayscale, (max, mean)) in [
            ("palette8", false, false, (0.0, 0.0)),
            ("palette4", false, false, (0.0, 0.0)),
            ("palette1", false, false, (0.0, 0.0)),
            ("palette2_gray", false, true, (0.0, 0.0)),
            ("palette16", true, false, (0.0, 0.0)),
            ("ycbcr", false, false, (1e-5, 1e-5)),
            ("ycbcr_jpeg", false, false, (8.0 * level, level)),
            (
                "ycbcr_jpeg_tables",
                false,
                false,
                (3.0 * level, 0.5 * level),
            ),
        ] {
            let d = decode_file(&format_fixture(&format!("{name}.tif")), &limits()).unwrap();
            let want = decode_file(&format_fixture(&format!("{name}.png")), &limits()).unwrap();
            assert_eq!(d.format, InputFormat::Tiff);
            assert_eq!(
                (d.sixteen_bit, d.grayscale, d.alpha.is_some()),
                (sixteen_bit, grayscale, false),
                "{name}"
            );
            let diff = d.rgb.max_abs_diff(&want.rgb);
            let mean_diff = d
                .rgb
                .zip_map(&want.rgb, |a, b| (a - b).abs())
                .data
                .iter()
                .sum::<f32>()
                / d.rgb.data.len() as f32;
            assert!(
                diff <= max && mean_diff <= mean,
                "{name}: {diff}, {mean_diff} on average"
            );
        }
    }

    /// A gray colour map makes a gray image, as for the other colour-mapped formats, unless
    /// an RGB ICC profile comes with it, which gray samples could not carry.
    #[test]
    fn gray_palette_tiff_is_gray_unless_it_has_an_rgb_profile() {
        use tiff::tags::Tag;
        colour_type!(Palette8, u8, 8, RGBPalette, 1);
        let map: Vec<u16> = (0..768).map(|i| (i % 256) * 257).collect();
        let rgb_icc = icc_profile(b"RGB ");
        for icc in [None, Some(rgb_icc)] {
            let mut buf = Cursor::new(Vec::new());
            let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
            let mut image = enc.new_image::<Palette8>(2, 1).unwrap();
            image.encoder().write_tag(Tag::ColorMap, &map[..]).unwrap();
            if let Some(icc) = &icc {
                image
                    .encoder()
                    .write_tag(Tag::IccProfile, &icc[..])
                    .unwrap();
            }
            image.write_data(&[51, 204]).unwrap();
            let d = decode_bytes(buf.get_ref(), &limits()).unwrap();
            assert_eq!(d.grayscale, icc.is_none());
            assert_eq!(d.icc_profile, icc);
            assert_eq!(d.rgb.plane(1), [0.2, 0.8]);
        }
    }

    /// The ICC profile is written with the type its tag takes, UNDEFINED, and read back.
    #[test]
    fn icc_profile_is_written_as_undefined() {
        let icc = icc_profile(b"RGB ");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icc.tif");
        let opts = EncodeOptions {
            icc_profile: Some(icc.clone()),
            ..EncodeOptions::new(OutputFormat::Tiff)
        };
        encode_file(&path, &gradient(2, 3), None, &opts).unwrap();
        let file = std::fs::read(&path).unwrap();
        // The entry: tag 34675, type 7 (UNDEFINED), little-endian.
        assert!(file.windows(4).any(|w| w == [0x73, 0x87, 7, 0]));
        assert_eq!(
            decode_bytes(&file, &limits()).unwrap().icc_profile,
            Some(icc)
        );
    }

    /// The XMP packet is read whether the tag's type is BYTE or UNDEFINED, as writers differ.
    #[test]
    fn xmp_packet_is_read_as_bytes_or_undefined() {
        let xmp = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"/>"#;
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc
            .new_image::<tiff::encoder::colortype::Gray8>(2, 1)
            .unwrap();
        image
            .encoder()
            .write_tag(tiff::tags::Tag::Unknown(XML_PACKET), &xmp[..])
            .unwrap();
        image.write_data(&[51, 204]).unwrap();
        let mut file = buf.into_inner();
        assert_eq!(
            decode_bytes(&file, &limits()).unwrap().xmp.as_deref(),
            Some(&xmp[..])
        );
        // The entry: tag 700, type 1 (BYTE), little-endian.
        let entry = file
            .windows(4)
            .position(|w| w == [0xBC, 0x02, 1, 0])
            .unwrap();
        file[entry + 2] = 7;
        assert_eq!(
            decode_bytes(&file, &limits()).unwrap().xmp.as_deref(),
            Some(&xmp[..])
        );
    }

    /// Palette indices, and gray samples, of 1, 2 or 4 bits come packed from the high bit
    /// down in rows padded to whole bytes.
    #[test]
    fn sub_byte_samples_unpack() {
        assert_eq!(
            unpack(&[0b1010_0000, 0b0110_0000], 1, 3),
            [1, 0, 1, 0, 1, 1]
        );
        assert_eq!(unpack(&[0b1110_0100, 0b1100_0000], 2, 5), [3, 2, 1, 0, 3]);
        assert_eq!(unpack(&[0x5A, 0xF0], 4, 3), [5, 10, 15]);
        assert_eq!(unpack(&[7, 200], 8, 2), [7, 200]);
    }

    /// The same 4-bit samples read as gray (BlackIsZero, and inverted by WhiteIsZero) and
    /// through the colour map, in every header kind and byte order.
    #[test]
    fn palette_indices_read_as_gray() {
        use tiff::tags::Tag;
        for name in ["palette8", "palette4", "palette1", "palette2_gray"] {
            let file = std::fs::read(format_fixture(&format!("{name}.tif"))).unwrap();
            let mut d = tiff::decoder::Decoder::new(Cursor::new(&file)).unwrap();
            let map = d.get_tag_u16_vec(Tag::ColorMap).unwrap();
            let top = (map.len() / 3 - 1) as f32;
            let colours = decode_bytes(&file, &limits()).unwrap().rgb;
            let gray = |photometric| {
                let mut file = file.clone();
                set_photometric(&mut file, photometric).unwrap();
                decode_bytes(&file, &limits()).unwrap()
            };
            let (black_is_zero, white_is_zero) = (gray(1), gray(0));
            assert!(
                black_is_zero.grayscale && !black_is_zero.sixteen_bit,
                "{name}"
            );
            let (n, stride) = (colours.data.len() / 3, map.len() / 3);
            for i in 0..n {
                let k = black_is_zero.rgb.data[i] * top;
                assert_eq!(k, k.round(), "{name}");
                let inverted = 1.0 - black_is_zero.rgb.data[i];
                assert!(
                    (white_is_zero.rgb.data[i] - inverted).abs() < 1e-6,
                    "{name}"
                );
                for c in 0..3 {
                    let entry = map[c * stride + k as usize] >> 8;
                    assert_eq!(colours.data[c * n + i], f32::from(entry) / 255.0, "{name}");
                }
            }
        }
        let e = set_photometric(&mut b"II*\0\x08\0\0\0\0\0".to_vec(), 1).unwrap_err();
        assert!(
            matches!(&e, Failure::Corrupt(why) if why.contains("damaged")),
            "{e:?}"
        );
    }

    /// A colour map in the 0–255 range (against the spec's 0–65535) is read as 8-bit
    /// colours, as libtiff reads it, not as near-black 16-bit ones.
    #[test]
    fn an_eight_bit_range_colour_map_is_read_as_eight_bit() {
        use tiff::tags::Tag;
        colour_type!(Palette8, u8, 8, RGBPalette, 1);
        let map: Vec<u16> = (0..768).map(|i| (i * 7 + 3) % 256).collect();
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<Palette8>(2, 1).unwrap();
        image.encoder().write_tag(Tag::ColorMap, &map[..]).unwrap();
        image.write_data(&[1, 200]).unwrap();
        let d = decode_bytes(buf.get_ref(), &limits()).unwrap();
        assert!(!d.sixteen_bit);
        for (c, i) in [0usize, 1, 2]
            .into_iter()
            .flat_map(|c| [(c, 1usize), (c, 200)])
        {
            let pixel = usize::from(i == 200);
            assert_eq!(
                d.rgb.data[c * 2 + pixel],
                f32::from(map[c * 256 + i]) / 255.0
            );
        }
    }

    /// What is not read is refused with the reason: a palette with alpha or a wrong colour
    /// map, YCbCr with subsampled chroma and no JPEG compression.
    #[test]
    fn unreadable_palette_and_ycbcr_tiffs_are_refused() {
        use tiff::encoder::colortype;
        use tiff::tags::Tag;
        colour_type!(PaletteAlpha8, u8, 8, RGBPalette, 2);
        colour_type!(Palette8, u8, 8, RGBPalette, 1);
        let refused = |bytes: &[u8], why: &str| {
            let e = decode_bytes(bytes, &limits()).unwrap_err();
            assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        };
        let map: Vec<u16> = (0..768).map(|i| (i % 256) * 257).collect();
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<PaletteAlpha8>(2, 1).unwrap();
        image.encoder().write_tag(Tag::ColorMap, &map[..]).unwrap();
        image
            .encoder()
            .write_tag(Tag::ExtraSamples, &[2u16][..])
            .unwrap();
        image.write_data(&[1, 255, 2, 0]).unwrap();
        refused(buf.get_ref(), "palette with extra samples (alpha)");

        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        let mut image = enc.new_image::<Palette8>(2, 1).unwrap();
        image
            .encoder()
            .write_tag(Tag::ColorMap, &map[..48])
            .unwrap();
        image.write_data(&[1, 2]).unwrap();
        refused(buf.get_ref(), "a ColorMap of 48 entries for 8-bit indices");

        // The encoder writes YCbCrSubSampling 1×1 (entry: tag 530, SHORT, 2 values); 1×1
        // decodes, 2×2 is refused.
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        enc.write_image::<colortype::YCbCr8>(2, 2, &[128; 12])
            .unwrap();
        let mut bytes = buf.into_inner();
        let gray = decode_bytes(&bytes, &limits()).unwrap();
        assert!(gray.rgb.data.iter().all(|&v| v == 128.0 / 255.0));
        let entry = [0x12, 2, 3, 0, 2, 0, 0, 0, 1, 0, 1, 0];
        let at = bytes.windows(12).position(|w| w == entry).unwrap();
        bytes[at + 8..at + 12].copy_from_slice(&[2, 0, 2, 0]);
        refused(
            &bytes,
            "YCbCr with [2, 2] chroma subsampling and no JPEG compression",
        );
    }

    /// ZSTD (here with the horizontal predictor on 16-bit samples) and lossless WebP
    /// strips decode to the samples written.
    #[test]
    fn zstd_and_webp_compressed_tiffs_decode() {
        for name in ["zstd_rgb16", "webp_rgb8", "webp_rgba8"] {
            let d = decode_file(&format_fixture(&format!("{name}.tif")), &limits()).unwrap();
            let want = decode_file(&format_fixture(&format!("{name}.png")), &limits()).unwrap();
            assert_eq!((d.rgb, d.alpha), (want.rgb, want.alpha), "{name}");
            assert_eq!(d.sixteen_bit, want.sixteen_bit, "{name}");
        }
    }

    /// A compression scheme no decoder here reads is refused by name before decoding.
    #[test]
    fn other_compressions_are_refused_by_name() {
        use tiff::tags::Tag;
        for (value, name) in [
            (3u16, "TIFF with CCITT Group 3 fax compression"),
            (34925, "TIFF with LZMA compression"),
            (4242, "TIFF with compression scheme 4242"),
        ] {
            let mut buf = Cursor::new(Vec::new());
            let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
            let mut image = enc
                .new_image::<tiff::encoder::colortype::Gray8>(2, 1)
                .unwrap();
            image.encoder().write_tag(Tag::Compression, value).unwrap();
            image.write_data(&[51, 204]).unwrap();
            let e = decode_bytes(buf.get_ref(), &limits())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{name} is not supported")), "{e}");
        }
    }

    /// Damage anywhere in a palette, JPEG-compressed or tiled planar TIFF gives an error or
    /// an image, never a panic.
    /// Damaged data in a layout the tiff crate reads is reported as damaged, not as a
    /// layout to convert.
    #[test]
    fn damaged_tiled_planar_data_is_corrupt_not_unsupported() {
        let bytes = std::fs::read(format_fixture("tiled_planar_rgba16.tif")).unwrap();
        let cut = &bytes[..bytes.len() - 400];
        let e = decode_bytes(cut, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn damaged_palette_ycbcr_and_tiled_planar_tiffs_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for name in [
            "palette4.tif",
            "palette1.tif",
            "ycbcr_jpeg_tables.tif",
            "tiled_planar_rgb8.tif",
            "tiled_planar_rgba16.tif",
            "zstd_rgb16.tif",
            "webp_rgba8.tif",
        ] {
            let bytes = std::fs::read(format_fixture(name)).unwrap();
            for _ in 0..200 {
                let mut damaged = bytes.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..damaged.len());
                    damaged[i] ^= 1 << rng.gen_range(0..8);
                }
                let _ = decode_bytes(&damaged, &limits());
            }
        }
    }
}
