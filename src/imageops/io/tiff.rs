//! TIFF through the tiff crate, where the `image` crate reads or writes it wrongly or not at
//! all: the layouts it refuses, the facts it misses, and alpha tagged as such on writing.

use std::io::{self, BufRead, Read, Seek, Write};

use image::ExtendedColorType;

use super::encode::Encoded;
use super::format::InputFormat;
use super::planes::split;
use super::{DecodeLimits, DecodedImage};

/// Decodes a TIFF with the tiff crate: gray, gray+alpha, RGB and RGBA in 8 or 16 bits
/// or floats, in whatever compression it reads. For the layouts the image crate refuses;
/// the reason is returned for anything else.
pub(super) fn decode_tiff(
    reader: impl Read + Seek,
    limits: &DecodeLimits,
) -> Result<DecodedImage, String> {
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::ColorType;
    let budget = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let mut tiff_limits = tiff::decoder::Limits::default();
    tiff_limits.decoding_buffer_size = budget;
    tiff_limits.intermediate_buffer_size = budget;
    let mut d = Decoder::new(reader)
        .map_err(|e| e.to_string())?
        .with_limits(tiff_limits);
    let (w, h) = d.dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 || w > limits.max_width || h > limits.max_height {
        return Err(format!("a {w}x{h} image"));
    }
    // 0: WhiteIsZero, 1: BlackIsZero, 2: RGB.
    let photometric = d
        .find_tag_unsigned::<u16>(tiff::tags::Tag::PhotometricInterpretation)
        .ok()
        .flatten();
    let (channels, bits, gray) = match (d.colortype().map_err(|e| e.to_string())?, photometric) {
        (ColorType::Gray(b), _) => (1, b, true),
        (ColorType::GrayA(b), _) => (2, b, true),
        (ColorType::RGB(b), _) => (3, b, false),
        (ColorType::RGBA(b), _) => (4, b, false),
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
        (other, _) => return Err(format!("colour type {other:?}")),
    };
    let (h, w) = (h as usize, w as usize);
    // Interleaved samples only (a planar file would hold the same count, plane by plane).
    if d.find_tag_unsigned::<u16>(tiff::tags::Tag::PlanarConfiguration)
        .ok()
        .flatten()
        .is_some_and(|p| p == 2)
    {
        return Err("planar samples".into());
    }
    let planes = |v: &[f32], max| split(v, channels, h, w, max);
    let (rgb, alpha) = match d.read_image().map_err(|e| e.to_string())? {
        DecodingResult::U8(v) => split(&v, channels, h, w, 255.0),
        DecodingResult::U16(v) => split(&v, channels, h, w, 65535.0),
        DecodingResult::F16(v) => planes(&v.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), 1.0),
        DecodingResult::F32(v) => planes(&v, 1.0),
        DecodingResult::F64(v) => planes(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1.0),
        _ => return Err("integer samples wider than 16 bits or signed".into()),
    };
    let rgb = if photometric == Some(0) {
        rgb.map(|v| 1.0 - v)
    } else {
        rgb
    };
    Ok(DecodedImage {
        rgb,
        alpha,
        sixteen_bit: bits > 8,
        grayscale: gray,
        icc_profile: None,
        png_colour: Default::default(),
        exif: None,
        format: InputFormat::Tiff,
    })
}

/// What the image crate's TIFF decoder gets wrong, read with the tiff crate.
#[derive(Default)]
pub(super) struct TiffFacts {
    /// 32-bit samples stored as integers. The image crate takes 32-bit samples without a
    /// SampleFormat tag (which means unsigned integers) for floats and decodes them to
    /// black, so these files are refused instead.
    pub(super) wide_integer_samples: bool,
    /// The ICC profile, which the image crate does not read from TIFF (the tag's type is
    /// UNDEFINED, not BYTE).
    pub(super) icc_profile: Option<Vec<u8>>,
    /// More pages follow the first.
    pub(super) pages: bool,
    /// The extra sample is associated (premultiplied) alpha, which the image crate
    /// passes on as if it were straight.
    pub(super) associated_alpha: bool,
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
                let icc_profile = d
                    .find_tag(Tag::IccProfile)
                    .ok()
                    .flatten()
                    .and_then(|v| v.into_u8_vec().ok());
                let extra = d.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples);
                Self {
                    wide_integer_samples: bits.ok().flatten().is_some_and(|b| b.contains(&32))
                        && !float,
                    icc_profile,
                    pages: d.more_images(),
                    associated_alpha: extra.ok().flatten().is_some_and(|e| e.first() == Some(&1)),
                }
            },
        );
        let _ = reader.seek(io::SeekFrom::Start(0));
        facts
    }
}

impl Encoded<'_> {
    /// TIFF through the tiff crate, which (unlike the `image` crate's encoder) can say
    /// that the fourth sample is alpha (ExtraSamples).
    pub(super) fn encode_tiff(&self, w: impl Write + Seek) -> tiff::TiffResult<()> {
        use tiff::encoder::colortype::{Gray16, Gray8, RGB16, RGB8, RGBA16, RGBA8};
        let mut tiff = tiff::encoder::TiffEncoder::new(w)?;
        let wide = || -> Vec<u16> {
            self.buf
                .chunks_exact(2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .collect()
        };
        match self.color {
            ExtendedColorType::L8 => self.tiff_image::<Gray8, _>(&mut tiff, &self.buf),
            ExtendedColorType::Rgb8 => self.tiff_image::<RGB8, _>(&mut tiff, &self.buf),
            ExtendedColorType::Rgba8 => self.tiff_image::<RGBA8, _>(&mut tiff, &self.buf),
            ExtendedColorType::L16 => self.tiff_image::<Gray16, _>(&mut tiff, &wide()),
            ExtendedColorType::Rgb16 => self.tiff_image::<RGB16, _>(&mut tiff, &wide()),
            ExtendedColorType::Rgba16 => self.tiff_image::<RGBA16, _>(&mut tiff, &wide()),
            other => unreachable!("quantise_planes gives no {other:?}"),
        }
    }

    fn tiff_image<C, W>(
        &self,
        tiff: &mut tiff::encoder::TiffEncoder<W>,
        samples: &[C::Inner],
    ) -> tiff::TiffResult<()>
    where
        C: tiff::encoder::colortype::ColorType,
        W: Write + Seek,
        [C::Inner]: tiff::encoder::TiffValue,
    {
        use tiff::tags::Tag;
        let mut image = tiff.new_image::<C>(self.width, self.height)?;
        if matches!(
            self.color,
            ExtendedColorType::Rgba8 | ExtendedColorType::Rgba16
        ) {
            // 2: unassociated alpha, which is what is written (colour not premultiplied).
            image.encoder().write_tag(Tag::ExtraSamples, &[2u16][..])?;
        }
        if let Some(icc) = self.icc_profile() {
            image.encoder().write_tag(Tag::IccProfile, &icc[..])?;
        }
        image.write_data(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{gradient, limits, ramp};
    use crate::imageops::io::{
        decode_bytes, encode_file, EncodeOptions, ImageIoError, OutputFormat,
    };
    use std::fs::File;
    use std::io::Cursor;

    /// TIFF alpha is written as such (ExtraSamples: unassociated), and premultiplied
    /// (associated) alpha is divided out on reading.
    #[test]
    fn tiff_alpha_is_tagged_and_premultiplied_alpha_undone() {
        use tiff::tags::Tag;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tiff");
        let (img, alpha) = (gradient(6, 10), ramp(6, 10, 3));
        encode_file(
            &path,
            &img,
            Some(&alpha),
            &EncodeOptions::new(OutputFormat::Tiff),
        )
        .unwrap();
        let mut d = tiff::decoder::Decoder::new(File::open(&path).unwrap()).unwrap();
        let extra = d.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples).unwrap();
        assert_eq!(extra, Some(vec![2]));

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
        let e = decode_bytes(&integers, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("32-bit integer samples"), "{e}");
    }

    /// Gray with alpha, and BigTIFF, which the image crate does not read, are read with the
    /// tiff crate.
    #[test]
    fn gray_alpha_and_big_tiff_decode() {
        use tiff::encoder::{colortype, TiffEncoder};
        struct GrayAlpha8;
        impl colortype::ColorType for GrayAlpha8 {
            type Inner = u8;
            const TIFF_VALUE: tiff::tags::PhotometricInterpretation =
                tiff::tags::PhotometricInterpretation::BlackIsZero;
            const BITS_PER_SAMPLE: &'static [u16] = &[8, 8];
            const SAMPLE_FORMAT: &'static [tiff::tags::SampleFormat] =
                &[tiff::tags::SampleFormat::Uint; 2];
            fn horizontal_predict(_: &[u8], _: &mut Vec<u8>) {
                unreachable!("written without a predictor")
            }
        }
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
}
