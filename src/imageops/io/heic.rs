//! HEIC: HEIF items holding HEVC pictures, as phones and cameras write them. The HEVC
//! pictures (grids of them too, with their alpha) are decoded by the heic-decoder crate,
//! pure Rust and bit-exact against the HEVC reference decoder, and turned into RGB with
//! the matrix, range and chroma siting the file states (bilinear chroma). The clean
//! aperture, rotation, mirror, colour description and Exif are read by the HEIF code
//! AVIF shares.

use image::{ColorType, DynamicImage, ImageBuffer, Pixel, Rgb, Rgba};

use super::heif::{
    color_type, find_alpha, Codec, Coding, Heif, HeifError, Presentation, Property, Source,
};
use super::planes::{image_to_planes, planes_to_image, unpremultiply_coded};

/// HEIC's pictures: HEVC items.
const HEVC: Coding = Coding {
    item: *b"hvc1",
    name: "HEVC",
};

/// A HEIC file, parsed but not yet decoded; decoding happens in [`Codec::decode`].
pub(super) struct HeicDecoder<'a> {
    heif: Heif<'a>,
    shown: Presentation,
    depth: u8,
    monochrome: bool,
    alpha: bool,
    premultiplied: bool,
}

impl<'a> HeicDecoder<'a> {
    /// Reads the container of `file`; nothing is decoded yet.
    pub fn new(file: &'a [u8]) -> Result<Self, HeifError> {
        let heif = Heif::parse(file)?;
        let colour = Source::of(&heif, heif.primary, HEVC)?;
        let config = heif
            .properties(colour.first())?
            .into_iter()
            .find_map(|(p, _)| match p {
                Property::HevcConfig(c) => Some(*c),
                _ => None,
            })
            .ok_or_else(|| {
                HeifError::Corrupt("an image has no HEVC configuration ('hvcC')".into())
            })?;
        let shown = Presentation::read(&heif, colour.stored_size(&heif)?)?;
        let alpha = find_alpha(&heif, HEVC, shown.stored)?;
        Ok(HeicDecoder {
            depth: config.depth,
            monochrome: config.monochrome,
            alpha: alpha.is_some(),
            premultiplied: alpha.is_some_and(|(_, premultiplied)| premultiplied),
            shown,
            heif,
        })
    }

    /// Decodes the picture and its alpha, converts them and applies the clean aperture.
    fn decode_here(&self) -> Result<DynamicImage, HeifError> {
        let (sw, sh) = self.shown.stored;
        let check_size = |(w, h): (usize, usize)| {
            if (w, h) == (sw, sh) {
                return Ok(());
            }
            Err(HeifError::Corrupt(format!(
                "the image is {sw}x{sh} by its header but its HEVC picture is {w}x{h}"
            )))
        };
        // The size the parameter sets give, checked before the decoder allocates for it.
        let file = self.heif.file();
        let coded = heic_decoder::probe(file).map_err(hevc_error)?;
        check_size((coded.coded_width, coded.coded_height))?;
        let options = heic_decoder::DecodeOptions {
            apply_transforms: false,
        };
        let picture = heic_decoder::decode_with(file, &options).map_err(hevc_error)?;
        let (w, h) = (picture.width, picture.height);
        check_size((w, h))?;
        if picture.alpha.is_some() != self.alpha {
            return Err(HeifError::Corrupt(
                "the HEVC decoder and the header disagree on the alpha image".into(),
            ));
        }
        // Premultiplied colour is divided in floats from 16-bit samples; other pictures
        // come at their own depth, correctly rounded.
        // An unspecified matrix (2) is BT.601's, as libheif and libavif (and this
        // decoder's AVIF side) take it; heic-decoder would take BT.709's.
        let options = heic_decoder::RgbOptions {
            color: picture
                .color_info
                .filter(|c| c.matrix_coefficients == 2)
                .map(|c| heic_decoder::ColorInfo {
                    matrix_coefficients: 6,
                    ..c
                }),
            ..Default::default()
        };
        let (w, h) = (w as u32, h as u32);
        let image: DynamicImage = match (self.alpha, self.depth > 8 || self.premultiplied) {
            (false, false) => {
                buffer::<Rgb<u8>>(w, h, picture.to_rgb8_with_options(&options).map(|p| p.data))?
                    .into()
            }
            (true, false) => buffer::<Rgba<u8>>(
                w,
                h,
                picture.to_rgba8_with_options(&options).map(|p| p.data),
            )?
            .into(),
            (false, true) => buffer::<Rgb<u16>>(
                w,
                h,
                picture.to_rgb16_with_options(&options).map(|p| p.data),
            )?
            .into(),
            (true, true) => buffer::<Rgba<u16>>(
                w,
                h,
                picture.to_rgba16_with_options(&options).map(|p| p.data),
            )?
            .into(),
        };
        drop(picture);
        let image = match self.shown.crop_rect() {
            Some((x, y, cw, ch)) => image.crop_imm(x as u32, y as u32, cw as u32, ch as u32),
            None => image,
        };
        if self.premultiplied {
            let (mut rgb, alpha) = image_to_planes(&image);
            if let Some(a) = &alpha {
                unpremultiply_coded(&mut rgb, a);
            }
            return Ok(planes_to_image(
                &rgb,
                alpha.as_ref(),
                self.depth > 8,
                self.monochrome,
            ));
        }
        // Monochrome pictures come as equal R, G and B.
        Ok(match (self.monochrome, self.alpha, self.depth > 8) {
            (false, ..) => image,
            (true, false, false) => image.into_luma8().into(),
            (true, true, false) => image.into_luma_alpha8().into(),
            (true, false, true) => image.into_luma16().into(),
            (true, true, true) => image.into_luma_alpha16().into(),
        })
    }
}

/// A `w`×`h` image of the samples the HEVC decoder's RGB conversion gave.
fn buffer<P: Pixel>(
    w: u32,
    h: u32,
    samples: heic_decoder::Result<Vec<P::Subpixel>>,
) -> Result<ImageBuffer<P, Vec<P::Subpixel>>, HeifError> {
    ImageBuffer::from_raw(w, h, samples.map_err(hevc_error)?)
        .ok_or_else(|| HeifError::Corrupt("the HEVC picture is short of samples".into()))
}

/// The HEVC decoder's error in this module's terms: what it cannot do is unsupported,
/// anything else is damage.
fn hevc_error(e: heic_decoder::HeifError) -> HeifError {
    use heic_decoder::HeifError as E;
    match e {
        E::Unsupported(what) => HeifError::Unsupported(format!(
            "a feature the HEVC decoder does not support ({what})"
        )),
        E::LimitExceeded(what) => HeifError::Unsupported(format!(
            "a picture over the HEVC decoder's size limit ({what})"
        )),
        e => HeifError::Corrupt(e.to_string()),
    }
}

impl Codec for HeicDecoder<'_> {
    const NAME: &'static str = "HEIC";

    fn presentation(&self) -> &Presentation {
        &self.shown
    }

    fn is_sequence(&self) -> bool {
        self.heif.has_tracks
    }

    fn color_type(&self) -> ColorType {
        color_type(self.depth > 8, self.monochrome, self.alpha)
    }

    fn decode(self) -> Result<Vec<u8>, HeifError> {
        Ok(self.decode_here()?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use crate::imageops::io::test_support::{format_fixture, limits};
    use crate::imageops::io::{decode_file, peek_file, DecodedImage, InputFormat};
    use crate::imageops::Planar;

    fn heic(name: &str) -> DecodedImage {
        decode_file(&format_fixture(&format!("heic/{name}.heic")), &limits()).unwrap()
    }

    /// libheif's decode of `name`, in [0, 1]. Its 16-bit PNGs hold a `depth`-bit sample
    /// `v` as `v << (16 - depth)`.
    fn reference(name: &str, depth: u32) -> DecodedImage {
        let mut d =
            decode_file(&format_fixture(&format!("heic/{name}.ref.png")), &limits()).unwrap();
        if depth > 8 {
            let widen = |p: &mut Planar| {
                let (shift, max) = (16 - depth, ((1u32 << depth) - 1) as f32);
                for v in &mut p.data {
                    *v = ((*v * 65535.0).round() as u32 >> shift) as f32 / max;
                }
            };
            widen(&mut d.rgb);
            d.alpha.as_mut().map(widen);
        }
        d
    }

    /// The largest and the mean difference of colour, and the largest of alpha, in
    /// 8-bit levels.
    fn diff(got: &DecodedImage, want: &DecodedImage) -> (f32, f32, f32) {
        assert_eq!(
            (got.rgb.width, got.rgb.height),
            (want.rgb.width, want.rgb.height)
        );
        let alpha = match (&got.alpha, &want.alpha) {
            (Some(a), Some(b)) => a.max_abs_diff(b),
            (None, None) => 0.0,
            _ => panic!("alpha in one image only"),
        };
        let sum: f32 = got
            .rgb
            .data
            .iter()
            .zip(&want.rgb.data)
            .map(|(a, b)| (a - b).abs())
            .sum();
        let mean = sum / got.rgb.data.len() as f32;
        (
            got.rgb.max_abs_diff(&want.rgb) * 255.0,
            mean * 255.0,
            alpha * 255.0,
        )
    }

    /// Each file against libheif's decode of it. Where chroma is not subsampled the two
    /// agree exactly (8-bit) or within rounding (libheif rounds deeper samples to their
    /// depth). Subsampled chroma is upsampled differently (heic-decoder bilinearly at the
    /// stated chroma siting, libheif otherwise), which on these saturated test colours
    /// gives up to 10 levels at the sharpest edges and under 2 on average.
    #[test]
    fn decodes_as_libheif_does() {
        let cases = [
            ("rgb8_444", 8, 0.0, false),
            ("gray8", 8, 0.0, false),
            ("rgba8", 8, 0.0, false),
            ("exif_icc", 8, 0.0, false),
            // The matrix unspecified: BT.601, as libheif takes it.
            ("unspecified_matrix", 8, 0.0, false),
            ("rgb10_444", 10, 0.13, false),
            ("rgba10", 10, 0.13, false),
            ("rgb8_420", 8, 10.01, true),
            ("rgb8_422", 8, 9.01, true),
            ("limited_709", 8, 9.01, true),
            ("confwin_420", 8, 5.01, true),
            ("rgb10_420", 10, 9.01, true),
            ("rgb12_420", 12, 9.01, true),
            ("nclx_pq", 10, 9.01, true),
            ("grid", 8, 4.01, true),
            ("grid_rgba", 8, 4.01, true),
        ];
        for (name, depth, tolerance, subsampled) in cases {
            let got = heic(name);
            let (max, mean, alpha) = diff(&got, &reference(name, depth));
            assert!(max <= tolerance, "{name}: colour off by {max} levels");
            // Rounding to 8 bits of a 10-bit sample is off by a quarter level on average.
            let mean_tolerance = if subsampled { 2.0 } else { 0.07 };
            assert!(
                mean <= mean_tolerance,
                "{name}: colour off by {mean} on average"
            );
            assert!(alpha <= 0.13, "{name}: alpha off by {alpha}");
            assert_eq!(got.sixteen_bit, depth > 8, "{name}");
            assert_eq!(got.grayscale, name.starts_with("gray"), "{name}");
            assert_eq!(got.format, InputFormat::Heic);
        }
    }

    /// The HEVC pictures are libde265's, sample for sample (the clean aperture not yet
    /// applied): the chroma planes too, which the RGB comparison only bounds.
    #[test]
    fn pictures_are_libde265s() {
        for (name, depth) in [("rgb8_420", 8), ("rgb10_420", 10), ("confwin_420", 8)] {
            let file = std::fs::read(format_fixture(&format!("heic/{name}.heic"))).unwrap();
            let options = heic_decoder::DecodeOptions {
                apply_transforms: false,
            };
            let p = heic_decoder::decode_with(&file, &options).unwrap();
            let yuv = std::fs::read(format_fixture(&format!("heic/{name}.yuv"))).unwrap();
            let want: Vec<i32> = if depth > 8 {
                yuv.chunks_exact(2)
                    .map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            } else {
                yuv.iter().map(|&b| i32::from(b)).collect()
            };
            let got = [p.y, p.cb, p.cr].concat();
            assert_eq!(got, want, "{name}");
        }
    }

    /// Clean aperture, rotation and mirroring (MIAF's order), exactly as libheif applies
    /// them; `peek` tells the upright size.
    #[test]
    fn crop_rotation_and_mirror_are_applied() {
        for name in [
            "irot1",
            "imir0",
            "imir1",
            "irot1_imir0",
            "irot3_imir1",
            "clap",
            "clap_irot1",
        ] {
            let got = heic(name);
            let (max, _, _) = diff(&got, &reference(name, 8));
            assert_eq!(max, 0.0, "{name}");
            let peeked = peek_file(&format_fixture(&format!("heic/{name}.heic"))).unwrap();
            assert_eq!(peeked.format, InputFormat::Heic);
            assert_eq!(peeked.size, Some((got.rgb.height, got.rgb.width)), "{name}");
        }
    }

    /// Premultiplied colour (`prem`) is divided out; libheif leaves it premultiplied.
    /// Multiplied again, it is libheif's within rounding (theirs of the premultiplied colour,
    /// ours of the straight one: a level in all) wherever that division means
    /// something: lossy coding leaves some premultiplied colour above its alpha (kept at
    /// full) and some under zero alpha (set to zero, as in libavif).
    #[test]
    fn premultiplied_colour_is_divided_out() {
        let got = heic("rgba8_prem");
        let want = reference("rgba8_prem", 8);
        let (alpha, want_alpha) = (got.alpha.unwrap(), want.alpha.unwrap());
        assert_eq!(alpha.max_abs_diff(&want_alpha), 0.0);
        let n = alpha.data.len();
        let mut checked = 0;
        for i in 0..n {
            let a = alpha.data[i];
            let colour = |p: &Planar| [0, 1, 2].map(|c| p.data[c * n + i]);
            let (ours, theirs) = (colour(&got.rgb), colour(&want.rgb));
            if a == 0.0 {
                assert_eq!(ours, [0.0; 3], "pixel {i}");
            } else if theirs.iter().all(|&v| v <= a) {
                for (v, w) in ours.iter().zip(theirs) {
                    assert!(
                        ((v * a - w) * 255.0).abs() <= 1.01,
                        "pixel {i}: {v} {w} {a}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > n / 2, "{checked} of {n}");
    }

    /// The ICC profile, Exif and XMP are kept, the Exif with its orientation reset: HEIF
    /// readers turn images by `irot`/`imir` only, so this file, with Exif orientation 6
    /// and no `irot`, is not turned. An H.273 description that is not sRGB's goes to PNG's
    /// cICP.
    #[test]
    fn metadata_is_kept() {
        let d = heic("exif_icc");
        let icc = d.icc_profile.unwrap();
        assert_eq!(&icc[36..40], b"acsp");
        assert_eq!(
            u32::from_be_bytes(icc[..4].try_into().unwrap()) as usize,
            icc.len()
        );
        let exif = d.exif.unwrap();
        assert!(exif.starts_with(b"MM\0*"));
        assert_eq!(crate::imageops::exif::upright(exif.clone()), Some(exif));
        assert_eq!((d.rgb.width, d.rgb.height), (37, 23));
        let xmp = String::from_utf8(d.xmp.unwrap()).unwrap();
        assert!(
            xmp.contains(r#"xmp:CreatorTool="infdit fixtures""#),
            "{xmp}"
        );
        let cicp = heic("nclx_pq").png_colour.cicp.unwrap();
        assert_eq!((cicp.color_primaries, cicp.transfer_function), (9, 16));
        assert_eq!(heic("rgb8_444").png_colour, Default::default());
    }

    /// Where the four bytes `kind` (a box or item type) first stand in `file`.
    fn find(file: &[u8], kind: &[u8; 4]) -> usize {
        file.windows(4).position(|w| w == kind).unwrap()
    }

    /// The error decoding `file` gives.
    fn decoding_error(file: &[u8]) -> String {
        crate::imageops::io::decode_bytes(file, &limits())
            .unwrap_err()
            .to_string()
    }

    /// A picture of another size than the header says is refused before it is decoded
    /// (here the 64x64 picture of a 37x23 image, its header made to say 62x62).
    #[test]
    fn a_picture_of_another_size_than_its_header_is_refused() {
        let mut file = std::fs::read(format_fixture("heic/rgb8_444.heic")).unwrap();
        let ispe = find(&file, b"ispe") + 8;
        for at in [ispe, ispe + 4] {
            file[at..at + 4].copy_from_slice(&62u32.to_be_bytes());
        }
        // A clean aperture whole pixels inside both 62x62 and 64x64: offset by half a
        // pixel from the centre.
        let clap = find(&file, b"clap") + 4 + 16;
        for (i, v) in [1u32, 2, 1, 2].into_iter().enumerate() {
            file[clap + 4 * i..][..4].copy_from_slice(&v.to_be_bytes());
        }
        let e = decoding_error(&file);
        assert!(
            e.contains("62x62 by its header but its HEVC picture is 64x64"),
            "{e}"
        );
    }

    /// A HEIF image in another coding is refused with its name.
    #[test]
    fn other_codings_are_named() {
        let mut file = std::fs::read(format_fixture("heic/rgb8_444.heic")).unwrap();
        let infe = find(&file, b"infe");
        let kind = infe + find(&file[infe..], b"hvc1");
        file[kind..kind + 4].copy_from_slice(b"unci");
        let e = decoding_error(&file);
        assert!(
            e.contains("HEIC with a primary image of type 'unci' (uncompressed)"),
            "{e}"
        );
    }

    /// A file cut short anywhere is an error, and so is any damage the decoder notices.
    #[test]
    fn truncated_files_are_refused() {
        let file = std::fs::read(format_fixture("heic/grid_rgba.heic")).unwrap();
        for cut in (0..file.len()).step_by(7) {
            let e = crate::imageops::io::decode_bytes(&file[..cut], &limits());
            assert!(e.is_err(), "cut at {cut}");
        }
    }
}
