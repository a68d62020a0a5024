//! Decoding files and bytes into [`DecodedImage`]s: format vetting, limits, orientation,
//! and the checks that refuse truncated files the decoders would accept.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use jxl_oxide::{integration::JxlDecoder, AllocTracker, JxlImage};

use super::avif::AvifDecoder;
use super::encode::icc_describes;
use super::format::{
    bmp_density, camera_raw_extension, camera_raw_refusal, input_format_names, is_colour_mapped,
    quarter_turn, several_images, InputFormat,
};
use super::heic::HeicDecoder;
use super::heif::{Codec, HeifDecoder, HeifError};
use super::jpeg::{JpegDecoder, JpegFacts};
use super::planes::{image_to_planes, is_deep, is_gray};
use super::png::PngFacts;
use super::tiff::TiffFacts;
use super::{one_line, DecodeLimits, DecodedImage, ImageIoError};
use crate::imageops::density::Density;
use crate::imageops::Planar;

/// Decodes an image file. The format is detected from the contents, so a misnamed file
/// still decodes.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<DecodedImage, ImageIoError> {
    let file = File::open(path).map_err(ImageIoError::read(path))?;
    decode_reader(BufReader::new(file), path, limits)
}

/// Decodes an image held in memory; errors name the file as `<memory>`.
pub fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, ImageIoError> {
    decode_named_bytes(bytes, Path::new("<memory>"), limits)
}

/// Decodes an image held in memory that came from `name` (standard input, say).
pub fn decode_named_bytes(
    bytes: &[u8],
    name: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    decode_reader(Cursor::new(bytes), name, limits)
}

/// Decodes an image file to `[0, 1]` planar RGB (alpha left out) with the default limits.
pub fn decode_rgb(path: &Path) -> Result<Planar, ImageIoError> {
    Ok(decode_file(path, &DecodeLimits::default())?.rgb)
}

/// Detects and vets the format, then decodes. A decoder's panic on data it did not foresee
/// is the file's error, not the end of a run over many files.
fn decode_reader(
    reader: impl BufRead + Seek,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    catch_unwind(AssertUnwindSafe(|| detect_and_decode(reader, path, limits))).unwrap_or_else(
        |_| {
            Err(ImageIoError::Corrupt {
                path: path.into(),
                detail: "the decoder failed on damaged data".into(),
            })
        },
    )
}

fn detect_and_decode(
    mut reader: impl BufRead + Seek,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    if let Some(kind) = camera_raw_extension(path) {
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail: camera_raw_refusal(&kind),
        });
    }
    let head = reader.fill_buf().map_err(ImageIoError::read(path))?;
    if head.is_empty() {
        return Err(ImageIoError::Corrupt {
            path: path.into(),
            detail: "it is empty (0 bytes)".into(),
        });
    }
    let Some(format) = InputFormat::detect(head, path) else {
        let what = match (image::guess_format(head), unread_format(head)) {
            // The image crate's guess looks only for the brand: the box around it is
            // broken, or it would have been read.
            (Ok(ImageFormat::Avif), _) => {
                return Err(ImageIoError::Corrupt {
                    path: path.into(),
                    detail: "an AVIF whose file-type box is damaged".into(),
                })
            }
            (Ok(f), _) => format!("{f:?}"),
            (_, Some(name)) => name.into(),
            _ => "unrecognised contents".into(),
        };
        let detail = format!("{what} (supported: {})", input_format_names());
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail,
        });
    };
    let err = |e| ImageIoError::from_decode(path, e);
    let (mut decoded, several) = match format.image_format() {
        Some(image_format) => decode_image_crate(reader, format, image_format, path, limits)?,
        None if format == InputFormat::Avif => {
            let data = read_all(reader, path)?;
            decode_heif(AvifDecoder::new(&data), format, path, limits)?
        }
        None if format == InputFormat::Heic => {
            let data = read_all(reader, path)?;
            decode_heif(HeicDecoder::new(&data), format, path, limits)?
        }
        None => {
            let data = read_all(reader, path)?;
            let (frames, xml) =
                jxl_frames(&data, limits).map_err(|detail| ImageIoError::Corrupt {
                    path: path.into(),
                    detail,
                })?;
            let mut decoder = JxlDecoder::new(Cursor::new(&data[..])).map_err(err)?;
            decoder.set_limits(limits.for_decoder()).map_err(err)?;
            // The decoder has already turned the image upright by the codestream's
            // orientation, which is the one JPEG XL readers obey; an EXIF orientation in
            // the file is not applied again.
            let mut decoded = decode_with(decoder, format, false, None, path, limits)?;
            decoded.xmp = xml;
            (decoded, (frames > 1).then_some("animated JPEG XL"))
        }
    };
    if let Some(what) = several {
        tracing::warn!("{}: {what}: only the first image is read", path.display());
    }
    decoded.xmp = decoded.xmp.filter(|packet| {
        let usable = crate::imageops::xmp::is_well_formed(packet);
        if !usable {
            tracing::warn!(
                "{}: ignoring XMP metadata that is not well-formed XML",
                path.display()
            );
        }
        usable
    });
    Ok(decoded)
}

/// The name of a format that is not read, told by its signature in `head`, for the
/// refusal: image formats people try (JPEG 2000, Photoshop, GIMP) and documents.
fn unread_format(head: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 6] = [
        (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
        (b"8BPS", "Photoshop document (PSD)"),
        (b"gimp xcf", "GIMP image (XCF)"),
        (b"%PDF-", "PDF document"),
        (b"FUJIFILMCCD-RAW", "Fujifilm camera raw (RAF)"),
    ];
    if let Some((_, name)) = SIGNATURES.iter().find(|(sig, _)| head.starts_with(sig)) {
        return Some(name);
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
    text.contains("<svg").then_some("SVG drawing")
}

/// Decodes a HEIF file (AVIF, HEIC) its codec has parsed; also names the image sequence
/// it holds, if any.
fn decode_heif<C: Codec>(
    parsed: Result<C, HeifError>,
    format: InputFormat,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<(DecodedImage, Option<&'static str>), ImageIoError> {
    let codec = parsed.map_err(|e| match e {
        HeifError::Corrupt(detail) => ImageIoError::Corrupt {
            path: path.into(),
            detail,
        },
        HeifError::Unsupported(detail) => ImageIoError::Unsupported {
            path: path.into(),
            detail: format!("{format} with {detail}"),
        },
    })?;
    let sequence = codec.is_sequence().then_some(match format {
        InputFormat::Avif => "AVIF image sequence",
        _ => "HEIF image sequence",
    });
    let png_colour = codec.presentation().png_colour();
    // The decoder's orientation is the file's rotation and mirroring (`irot`, `imir`),
    // not its Exif one.
    let mut decoded = decode_with(HeifDecoder(codec), format, true, None, path, limits)?;
    decoded.png_colour = png_colour;
    Ok((decoded, sequence))
}

/// Decodes a format the image crate reads; also names what the file holds beyond the
/// image decoded (see [`several_images`]).
fn decode_image_crate(
    mut reader: impl BufRead + Seek,
    format: InputFormat,
    image_format: ImageFormat,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<(DecodedImage, Option<&'static str>), ImageIoError> {
    let tiff = (format == InputFormat::Tiff).then(|| TiffFacts::read(&mut reader));
    let png = (format == InputFormat::Png).then(|| PngFacts::read(&mut reader, limits));
    let several = match (&tiff, &png) {
        (Some(facts), _) => facts.pages.then_some("multi-page TIFF"),
        (_, Some(facts)) => facts.animated.then_some("animated PNG"),
        _ => several_images(format, &mut reader),
    };
    if let Some(detail) = tiff.as_ref().and_then(TiffFacts::refusal) {
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail,
        });
    }
    let head = reader.fill_buf().map_err(ImageIoError::read(path))?;
    let colour_mapped =
        is_colour_mapped(format, head) || tiff.as_ref().is_some_and(|f| f.colour_mapped);
    let tga_alpha = format == InputFormat::Tga && super::tga::declares_one_bit_alpha(head);
    let density = match (&tiff, &png) {
        (Some(facts), _) => facts.density,
        (_, Some(facts)) => facts.density,
        _ if format == InputFormat::Bmp => bmp_density(head),
        _ => None,
    };
    let mut decoded = if matches!(format, InputFormat::Jpeg | InputFormat::Gif) {
        decode_in_memory(reader, format, image_format, path, limits)?
    } else {
        let decoded = if tiff.as_ref().is_some_and(|f| f.tiled_planar) {
            Err(ImageIoError::Unsupported {
                path: path.into(),
                detail: "tiled planar samples".into(),
            })
        } else {
            reader_for(&mut reader, image_format, limits)
                .into_decoder()
                .map_err(|e| ImageIoError::from_decode(path, e))
                .and_then(|decoder| decode_with(decoder, format, true, density, path, limits))
        };
        let mut decoded = match (decoded, &tiff) {
            // The image crate maps only some TIFF layouts (not gray+alpha, float gray,
            // palette, JPEG-compressed YCbCr) and cannot read tiled planar ones; the tiff
            // crate reads more of them.
            // Its refusal names the layout better than the image crate's.
            (Err(ImageIoError::Unsupported { .. }), Some(facts)) => {
                reader
                    .seek(io::SeekFrom::Start(0))
                    .map_err(ImageIoError::read(path))?;
                facts
                    .decode(&mut reader, density, limits)
                    .map_err(|why| match why {
                        super::tiff::Failure::Corrupt(detail) => ImageIoError::Corrupt {
                            path: path.into(),
                            detail,
                        },
                        super::tiff::Failure::Unsupported(layout) => ImageIoError::Unsupported {
                            path: path.into(),
                            detail: format!(
                                "a TIFF layout this decoder does not read ({layout}); \
                                 convert it to PNG, or to an 8- or 16-bit RGB or grayscale TIFF"
                            ),
                        },
                    })?
            }
            (decoded, _) => decoded?,
        };
        if let Some(facts) = tiff {
            facts.amend(&mut decoded);
        }
        if let Some(facts) = png {
            decoded.png_colour = facts.colour;
            decoded.xmp = decoded.xmp.or(facts.trailing_xmp);
        }
        if tga_alpha && decoded.alpha.is_none() {
            reader
                .seek(io::SeekFrom::Start(0))
                .map_err(ImageIoError::read(path))?;
            let file = read_all(&mut reader, path)?;
            decoded.alpha = super::tga::one_bit_alpha(&file)
                .filter(|a| (a.height, a.width) == (decoded.rgb.height, decoded.rgb.width));
        }
        decoded
    };
    if colour_mapped {
        decoded.grayscale = gray_palette_loses_nothing(&decoded);
    }
    Ok((decoded, several))
}

/// The image crate's reader of format `f`, within the limits `l`.
fn reader_for<R: BufRead + Seek>(r: R, f: ImageFormat, l: &DecodeLimits) -> ImageReader<R> {
    let mut reader = ImageReader::with_format(r, f);
    reader.limits(l.for_decoder());
    reader
}

/// Decodes a JPEG or a GIF from memory.
fn decode_in_memory(
    reader: impl BufRead + Seek,
    format: InputFormat,
    image_format: ImageFormat,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    // Both decoders read the whole file into memory anyway, so this copy is cheap.
    let data = read_all(reader, path)?;
    if format == InputFormat::Jpeg {
        return decode_jpeg(&data, path, limits);
    }
    let decoder = reader_for(Cursor::new(&data[..]), image_format, limits)
        .into_decoder()
        .map_err(|e| ImageIoError::from_decode(path, e))?;
    let mut decoded = decode_with(decoder, format, true, None, path, limits)?;
    // The GIF decoder gives RGBA even where no colour is transparent; such an alpha plane
    // says nothing and would only make the output bigger.
    if decoded
        .alpha
        .as_ref()
        .is_some_and(|a| a.data.iter().all(|&v| v >= 1.0))
    {
        decoded.alpha = None;
    }
    Ok(decoded)
}

/// Whether a colour-mapped image, which its decoder gives as RGB even where the palette is
/// gray, is gray: where every pixel is, and writing it as gray loses nothing. An RGB ICC
/// profile cannot go with gray samples, so an image that carries one stays RGB.
fn gray_palette_loses_nothing(decoded: &DecodedImage) -> bool {
    is_gray(&decoded.rgb)
        && !decoded
            .icc_profile
            .as_deref()
            .is_some_and(|icc| icc_describes(icc, false))
}

/// Decodes a JPEG file's bytes, once its markers have been vetted.
fn decode_jpeg(
    data: &[u8],
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    let facts = JpegFacts::read(data);
    if let Some(detail) = facts.unsupported() {
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail,
        });
    }
    if !facts.complete {
        return Err(ImageIoError::Corrupt {
            path: path.into(),
            detail: "JPEG ends before its end-of-image marker (truncated file?)".into(),
        });
    }
    let err = |e| ImageIoError::from_decode(path, e);
    let mut decoder = JpegDecoder::new(data, &facts).map_err(err)?;
    decoder.set_limits(limits.for_decoder()).map_err(err)?;
    let decoded = decode_with(
        decoder,
        InputFormat::Jpeg,
        true,
        facts.density,
        path,
        limits,
    )?;
    Ok(DecodedImage {
        iptc: facts.iptc(),
        ..decoded
    })
}

fn read_all(mut reader: impl io::Read, path: &Path) -> Result<Vec<u8>, ImageIoError> {
    let mut data = Vec::new();
    reader
        .read_to_end(&mut data)
        .map_err(ImageIoError::read(path))?;
    Ok(data)
}

/// An XMP packet whose file's orientation decoding has applied, with its orientation
/// upright; one that is not XMP is left for the check that names it.
pub(super) fn upright_xmp(packet: Vec<u8>) -> Vec<u8> {
    crate::imageops::xmp::upright(&packet).unwrap_or(packet)
}

/// The number of frames of a JPEG XL file, once it is known to hold all of them, and its
/// XMP packet (the first `xml ` box), which jxl-oxide's decoder does not pass on, upright
/// where the decoder turns the image.
/// jxl-oxide renders whatever part of a frame has arrived (progressive decoding), so a
/// half-downloaded file would otherwise be upscaled with its missing part made up.
/// Loading only parses; pixels are decoded later.
fn jxl_frames(data: &[u8], limits: &DecodeLimits) -> Result<(usize, Option<Vec<u8>>), String> {
    let budget = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let image = JxlImage::builder()
        .alloc_tracker(AllocTracker::with_limit(budget))
        .read(data)
        .map_err(one_line)?;
    if image.is_loading_done() {
        let xml = match image.aux_boxes().first_xml() {
            jxl_oxide::AuxBoxData::Data(xml) if image.image_header().metadata.orientation != 1 => {
                Some(upright_xmp(xml.to_vec()))
            }
            jxl_oxide::AuxBoxData::Data(xml) => Some(xml.to_vec()),
            _ => None,
        };
        Ok((image.num_loaded_keyframes(), xml))
    } else {
        Err("JPEG XL data ends before the image does (truncated file?)".into())
    }
}

/// Decodes once the format is known and accepted; `orient` turns the image upright by the
/// decoder's orientation (its Exif one for most formats), for decoders that have not.
fn decode_with(
    mut decoder: impl ImageDecoder,
    format: InputFormat,
    orient: bool,
    density: Option<Density>,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    let err = |e| ImageIoError::from_decode(path, e);
    let (w, h) = decoder.dimensions();
    let orientation = if orient {
        decoder.orientation().map_err(err)?
    } else {
        Orientation::NoTransforms
    };
    // Not every decoder enforces the limits itself, so check them here before any pixel
    // buffer exists. Rotations copy the decoded buffer once more.
    let too_large = |detail| ImageIoError::TooLarge {
        path: path.into(),
        detail,
    };
    if w == 0 || h == 0 {
        return Err(ImageIoError::Corrupt {
            path: path.into(),
            detail: format!("the image is {w}x{h}: it has no pixels"),
        });
    }
    if w > limits.max_width || h > limits.max_height {
        let (mw, mh) = (limits.max_width, limits.max_height);
        return Err(too_large(format!("{w}x{h} exceeds the {mw}x{mh} limit")));
    }
    let copies = if orientation == Orientation::NoTransforms {
        1
    } else {
        2
    };
    let float_planes = if decoder.color_type().has_alpha() {
        4
    } else {
        3
    };
    let needed = decoder
        .total_bytes()
        .saturating_mul(copies)
        .saturating_add(u64::from(w) * u64::from(h) * float_planes * 4);
    if needed > limits.max_alloc {
        let max = limits.max_alloc;
        return Err(too_large(format!(
            "{w}x{h} needs {needed} bytes, over the {max}-byte limit"
        )));
    }
    // A damaged profile should not cost the user the image; it only loses colour metadata.
    let icc_profile = decoder.icc_profile().unwrap_or_else(|e| {
        tracing::warn!("{}: ignoring unreadable ICC profile: {e}", path.display());
        None
    });
    let exif = decoder
        .exif_metadata()
        .unwrap_or_else(|e| {
            tracing::warn!("{}: ignoring unreadable EXIF metadata: {e}", path.display());
            None
        })
        .and_then(|chunk| {
            let chunk = crate::imageops::exif::upright(chunk);
            if chunk.is_none() {
                tracing::warn!(
                    "{}: ignoring EXIF metadata without a valid TIFF header",
                    path.display()
                );
            }
            chunk
        });
    // The image crate fails on a TIFF XMP tag of type UNDEFINED; TiffFacts reads either.
    let xmp = if format == InputFormat::Tiff {
        None
    } else {
        decoder.xmp_metadata().unwrap_or_else(|e| {
            tracing::warn!("{}: ignoring unreadable XMP metadata: {e}", path.display());
            None
        })
    };
    let xmp = if orientation == Orientation::NoTransforms {
        xmp
    } else {
        xmp.map(upright_xmp)
    };
    let density = density
        .or_else(|| exif.as_deref().and_then(crate::imageops::exif::density))
        .map(|d| d.turned(quarter_turn(orientation)));

    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    let color = img.color();
    let (rgb, alpha) = image_to_planes(&img);
    Ok(DecodedImage {
        rgb,
        alpha,
        sixteen_bit: is_deep(color),
        grayscale: !color.has_color(),
        icc_profile,
        png_colour: Default::default(),
        exif,
        xmp,
        iptc: None,
        density,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{
        format_fixture, gradient, icc_profile, limits, with_exif_orientation,
    };
    use crate::imageops::io::{
        encode_file, has_input_extension, peek, peek_file, EncodeOptions, OutputFormat, Peek,
    };

    /// A 5×3 RGB image of eight flat colours (so GIF's palette holds it exactly).
    fn eight_colours() -> image::RgbImage {
        image::RgbImage::from_fn(5, 3, |x, y| {
            let k = (x + 2 * y) % 8;
            image::Rgb([(k * 32) as u8, (255 - k * 30) as u8, (k * 70 % 256) as u8])
        })
    }

    /// Formats people try that are not read are named in the refusal.
    #[test]
    fn unread_formats_are_named() {
        for (head, name) in [
            (
                &b"\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x14ftypjp2 "[..],
                "JPEG 2000",
            ),
            (b"8BPS\0\x01\0\0\0\0\0\0\0\x03", "Photoshop document"),
            (b"%PDF-1.7\n", "PDF document"),
            (
                b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
                "SVG",
            ),
        ] {
            let e = decode_bytes(head, &limits()).unwrap_err();
            assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    #[test]
    fn every_input_format_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let src = eight_colours();
        let want = image_to_planes(&DynamicImage::ImageRgb8(src.clone())).0;
        // JPEG XL, AVIF and HEIC, which the image crate cannot write, have their own tests
        // (below, and in `avif` and `heic`).
        for format in InputFormat::ALL {
            let Some(image_format) = format.image_format() else {
                continue;
            };
            let ext = image_format.extensions_str()[0];
            let path = dir.path().join(format!("in.{ext}"));
            let img = DynamicImage::ImageRgb8(src.clone());
            // TGA and GIF (through the image crate) store RGBA; the extra alpha is opaque.
            img.save_with_format(&path, image_format).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            assert_eq!(d.format, format);
            assert_eq!(InputFormat::from_path(&path), Some(format));
            assert_eq!((d.rgb.height, d.rgb.width), (3, 5), "{format:?}");
            // Sharp 8×8-block edges are JPEG's worst case; it only has to be close.
            let tol = if format == InputFormat::Jpeg {
                0.25
            } else {
                0.0
            };
            assert!(
                d.rgb.max_abs_diff(&want) <= tol,
                "{format:?}: {}",
                d.rgb.max_abs_diff(&want)
            );
        }
        assert!(has_input_extension(Path::new("a/B.PPM")));
        assert!(has_input_extension(Path::new("a/b.JXL")));
        assert!(has_input_extension(Path::new("a/b.Avif")));
        assert!(!has_input_extension(Path::new("a/b.exr")));
    }

    /// A 4×1 PNG of four grays, indexed through a gray palette or stored as RGB, with `icc`.
    fn gray_png(indexed: bool, icc: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut info = png::Info::with_size(4, 1);
        info.icc_profile = icc.map(std::borrow::Cow::Borrowed);
        let levels = [0u8, 90, 170, 255];
        let samples: Vec<u8> = if indexed {
            info.color_type = png::ColorType::Indexed;
            info.palette = Some(
                levels
                    .iter()
                    .flat_map(|&v| [v; 3])
                    .collect::<Vec<_>>()
                    .into(),
            );
            vec![0, 1, 2, 3]
        } else {
            info.color_type = png::ColorType::Rgb;
            levels.iter().flat_map(|&v| [v; 3]).collect()
        };
        let mut writer = png::Encoder::with_info(&mut out, info)
            .unwrap()
            .write_header()
            .unwrap();
        writer.write_image_data(&samples).unwrap();
        writer.finish().unwrap();
        out
    }

    /// Colour in, colour out: a true-colour file stays RGB however gray its pixels; a
    /// colour-mapped one with a gray palette is gray, unless an RGB ICC profile comes with it.
    #[test]
    fn colour_in_colour_out() {
        let (rgb, gray) = (icc_profile(b"RGB "), icc_profile(b"GRAY"));
        let decoded = |bytes: &[u8]| decode_bytes(bytes, &limits()).unwrap();
        for indexed in [false, true] {
            let d = decoded(&gray_png(indexed, None));
            assert_eq!(d.grayscale, indexed, "indexed: {indexed}");
            assert_eq!(d.rgb.plane(1)[1], 90.0 / 255.0);
            let d = decoded(&gray_png(indexed, Some(&rgb)));
            assert!(!d.grayscale, "indexed: {indexed}");
            assert_eq!(d.icc_profile.as_ref(), Some(&rgb));
        }
        // A gray profile (out of place on a palette) goes with the gray the image becomes.
        let d = decoded(&gray_png(true, Some(&gray)));
        assert!(d.grayscale);
        assert_eq!(d.icc_profile, Some(gray));

        // BMP: 24-bit samples, and 8-bit indices into a gray palette (as the image crate
        // writes gray).
        let levels = image::GrayImage::from_fn(4, 2, |x, y| image::Luma([(x * 60 + y) as u8]));
        for (img, gray) in [
            (
                DynamicImage::ImageLuma8(levels.clone()).into_rgb8().into(),
                false,
            ),
            (DynamicImage::ImageLuma8(levels), true),
        ] {
            let mut bmp = Cursor::new(Vec::new());
            img.write_to(&mut bmp, ImageFormat::Bmp).unwrap();
            assert_eq!(decoded(bmp.get_ref()).grayscale, gray, "BMP {gray}");
        }

        // TGA: true colour, and colour-mapped (image type 1) with a 24-bit gray map.
        let dir = tempfile::tempdir().unwrap();
        let true_colour = dir.path().join("t.tga");
        image::RgbImage::from_pixel(2, 1, image::Rgb([77; 3]))
            .save(&true_colour)
            .unwrap();
        assert!(!decode_file(&true_colour, &limits()).unwrap().grayscale);
        let mut mapped = vec![0, 1, 1, 0, 0, 2, 0, 24, 0, 0, 0, 0, 2, 0, 1, 0, 8, 0x20];
        mapped.extend([10, 10, 10, 200, 200, 200, 1, 0]);
        let path = dir.path().join("m.tga");
        std::fs::write(&path, mapped).unwrap();
        let d = decode_file(&path, &limits()).unwrap();
        assert!(d.grayscale);
        assert_eq!(d.rgb.plane(2), [200.0 / 255.0, 10.0 / 255.0]);
    }

    #[test]
    fn files_of_several_images_give_their_first() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, Rgba, RgbaImage};
        let frame = |v: u8| {
            let img = RgbaImage::from_pixel(4, 2, Rgba([v, 0, 255 - v, 255]));
            Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(100, 1))
        };
        let gif = |frames: Vec<Frame>| {
            let mut bytes = Vec::new();
            GifEncoder::new(&mut bytes).encode_frames(frames).unwrap();
            bytes
        };
        let animated = gif(vec![frame(200), frame(10)]);
        let several = |format, bytes: &[u8]| several_images(format, &mut Cursor::new(bytes));
        assert_eq!(several(InputFormat::Gif, &animated), Some("animated GIF"));
        assert_eq!(several(InputFormat::Gif, &gif(vec![frame(200)])), None);
        let d = decode_bytes(&animated, &limits()).unwrap();
        assert_eq!(d.format, InputFormat::Gif);
        assert_eq!(
            (d.rgb.at(0, 1, 3), d.rgb.at(2, 0, 0)),
            (200.0 / 255.0, 55.0 / 255.0)
        );
        // The GIF decoder's RGBA has nothing transparent here: no alpha plane.
        assert!(d.alpha.is_none());

        let mut pages = Cursor::new(Vec::new());
        let mut tiff = tiff::encoder::TiffEncoder::new(&mut pages).unwrap();
        for v in [40u8, 90] {
            tiff.write_image::<tiff::encoder::colortype::Gray8>(3, 1, &[v; 3])
                .unwrap();
        }
        let pages = pages.into_inner();
        let (first, several_pages) = decode_image_crate(
            Cursor::new(&pages),
            InputFormat::Tiff,
            ImageFormat::Tiff,
            Path::new("pages.tiff"),
            &limits(),
        )
        .unwrap();
        assert_eq!(several_pages, Some("multi-page TIFF"));
        assert_eq!(first.rgb.at(0, 0, 0), 40.0 / 255.0);
        assert_eq!(decode_bytes(&pages, &limits()).unwrap(), first);
    }

    /// A JPEG variant the decoder does not read is named as unsupported, not as corrupt;
    /// an image without pixels is corrupt.
    #[test]
    fn unreadable_variants_and_empty_images_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let jpg = dir.path().join("t.jpg");
        encode_file(
            &jpg,
            &gradient(8, 8),
            None,
            &EncodeOptions::new(OutputFormat::Jpeg),
        )
        .unwrap();
        let mut bytes = std::fs::read(&jpg).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 4] = 12; // sample precision: a 12-bit JPEG
        let e = decode_bytes(&bytes, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        let e = decode_bytes(b"P6\n0 5\n255\n", &limits()).unwrap_err();
        assert!(e.to_string().contains("no pixels"), "{e}");
    }

    #[test]
    fn exif_rotated_jpeg_decodes_upright() {
        // 16 wide, 8 high: left half black, right half white.
        let (h, w) = (8, 16);
        let data = (0..3 * h * w)
            .map(|i| if i % w < w / 2 { 0.0 } else { 1.0 })
            .collect();
        let img = Planar::new(3, h, w, data);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.jpg");
        encode_file(&path, &img, None, &EncodeOptions::new(OutputFormat::Jpeg)).unwrap();
        let rotated = with_exif_orientation(&std::fs::read(&path).unwrap(), 6);
        let d = decode_bytes(&rotated, &limits()).unwrap();
        // Orientation 6 = rotate 90° clockwise: the left (black) half ends up on top.
        assert_eq!((d.rgb.height, d.rgb.width), (16, 8));
        assert!(d.rgb.at(0, 2, 4) < 0.1 && d.rgb.at(1, 13, 4) > 0.9);
        // Without the tag the same data stays as stored.
        let plain = decode_file(&path, &limits()).unwrap();
        assert_eq!((plain.rgb.height, plain.rgb.width), (8, 16));
        // The header alone tells the upright size.
        let size = |p: Option<Peek>| p.and_then(|p| p.size);
        assert_eq!(size(peek(&rotated, Path::new("r.jpg"))), Some((16, 8)));
        assert_eq!(size(peek_file(&path)), Some((8, 16)));
        let jxl = peek_file(&format_fixture("exif_container.jxl")).unwrap();
        assert_eq!(
            (jxl.format, jxl.size),
            (InputFormat::JpegXl, Some((17, 23)))
        );
        assert_eq!(peek(b"not an image", Path::new("x.png")), None);
    }

    #[test]
    fn truncated_and_garbage_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.png");
        encode_file(
            &path,
            &gradient(32, 32),
            None,
            &EncodeOptions::new(OutputFormat::Png),
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [20, 40, bytes.len() / 2, bytes.len() - 12] {
            let e = decode_bytes(&bytes[..cut], &limits()).unwrap_err();
            assert!(
                matches!(e, ImageIoError::Corrupt { .. }),
                "cut at {cut}: {e}"
            );
        }
        let jpg = dir.path().join("t.jpg");
        let opts = EncodeOptions::new(OutputFormat::Jpeg);
        encode_file(&jpg, &gradient(64, 64), None, &opts).unwrap();
        let bytes = std::fs::read(&jpg).unwrap();
        for cut in [30, bytes.len() / 2, bytes.len() - 2] {
            let e = decode_bytes(&bytes[..cut], &limits()).unwrap_err();
            assert!(
                matches!(e, ImageIoError::Corrupt { .. }),
                "jpeg cut at {cut}: {e}"
            );
        }
        // Bytes appended after the end marker are tolerated.
        let trailer = [bytes.as_slice(), b"\xff\xd8 trailing data"].concat();
        assert!(decode_bytes(&trailer, &limits()).is_ok());
        let garbage = dir.path().join("garbage.png");
        std::fs::write(&garbage, b"this is not an image at all").unwrap();
        let e = decode_file(&garbage, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("garbage.png"), "{e}");
        let e = decode_bytes(b"", &limits()).unwrap_err();
        assert!(e.to_string().ends_with("it is empty (0 bytes)"), "{e}");
        // A chunk before the header is named by its four letters, not as a structure.
        let early = [&b"\x89PNG\r\n\x1a\n\0\0\0\0abCD"[..], &[0; 8]].concat();
        let e = decode_bytes(&early, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("'abCD'"), "{e}");
        assert!(!e.to_string().contains("ChunkType"), "{e}");
        // A recognised but unsupported format.
        let e = decode_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n", &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        // AVIF and HEIC are read, so a file of only its header is a truncated one,
        // however branded.
        for head in [
            &b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf"[..],
            b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif",
            b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
            b"\0\0\0\x14ftypmif1\0\0\0\0mif1",
        ] {
            let e = decode_bytes(head, &limits()).unwrap_err();
            assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        // The low-overhead form of HEIF (brand mif3, whose minor version names the image
        // brand; a 'mini' box for the 'meta' one) is told and refused by name.
        for (brand, format) in [(b"avif", "AVIF"), (b"heic", "HEIC")] {
            let file = [
                &b"\0\0\0\x10ftypmif3"[..],
                brand,
                b"\0\0\0\x10mini",
                &[0; 8],
            ]
            .concat();
            let e = decode_bytes(&file, &limits()).unwrap_err();
            assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
            let want = format!("{format} with the low-overhead form of HEIF");
            assert!(e.to_string().contains(&want), "{e}");
        }
        // A GIF header with no image after it.
        let e = decode_bytes(b"GIF89a\x01\0\x01\0\0\0\0", &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
    }

    /// A panic while decoding (here: of the reader, past the header) is the file's error.
    #[test]
    fn a_panic_while_decoding_is_an_error() {
        struct Breaks(Cursor<Vec<u8>>);
        impl io::Read for Breaks {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(self.0.position() < 64, "read past the header");
                self.0.read(buf)
            }
        }
        impl BufRead for Breaks {
            fn fill_buf(&mut self) -> io::Result<&[u8]> {
                assert!(self.0.position() < 64, "read past the header");
                let at = self.0.position() as usize;
                Ok(&self.0.get_ref()[at..(at + 64).min(self.0.get_ref().len())])
            }
            fn consume(&mut self, n: usize) {
                self.0.consume(n)
            }
        }
        impl Seek for Breaks {
            fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
                self.0.seek(to)
            }
        }
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(eight_colours())
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let e = decode_reader(Breaks(Cursor::new(png)), Path::new("p.png"), &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("failed on damaged data"), "{e}");
    }

    /// Decoder messages are given as plain single lines.
    #[test]
    fn decoder_messages_read_as_plain_lines() {
        use crate::imageops::io::one_line;
        assert_eq!(
            one_line("\"Found a marker with invalid length:1\\n\""),
            "Found a marker with invalid length:1"
        );
        assert_eq!(one_line("two\nlines\n"), "two; lines");
        assert_eq!(
            one_line("ChunkType { type: abCD, critical: false, private: true } chunk appeared"),
            "'abCD' chunk appeared"
        );
        // A file cut short, wherever the decoder notices it.
        let e = ImageIoError::from_decode(
            Path::new("a.png"),
            image::ImageError::IoError(io::ErrorKind::UnexpectedEof.into()),
        );
        assert_eq!(
            e.to_string(),
            "a.png: corrupt or truncated image data: the data ends early"
        );
    }

    /// A decoder's own message is given, not the image crate's (nested) wrapping of it.
    #[test]
    fn decoding_errors_give_the_decoders_message() {
        let mut bytes = std::fs::read(format_fixture("lossy.jxl")).unwrap();
        bytes[100] ^= 0xff;
        let e = decode_bytes(&bytes, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
        assert!(!e.to_string().contains("Format error"), "{e}");
    }

    /// The fixtures' PNGs are what libjxl decodes the `.jxl` files to.
    #[test]
    fn jpeg_xl_decodes_as_libjxl_does() {
        for (name, sixteen_bit, grayscale, alpha, tol) in [
            ("rgb8", false, false, false, 0.0),
            ("rgba16", true, false, true, 0.0),
            ("gray8", false, true, false, 0.0),
            ("lossy", false, false, false, 1.5 / 255.0),
        ] {
            let d = decode_file(&format_fixture(&format!("{name}.jxl")), &limits()).unwrap();
            let want = decode_file(&format_fixture(&format!("{name}.png")), &limits()).unwrap();
            assert_eq!(d.format, InputFormat::JpegXl);
            assert_eq!(
                (d.sixteen_bit, d.grayscale, d.alpha.is_some()),
                (sixteen_bit, grayscale, alpha),
                "{name}"
            );
            let diff = d.rgb.max_abs_diff(&want.rgb);
            assert!(diff <= tol, "{name}: {diff}");
            if let (Some(a), Some(b)) = (&d.alpha, &want.alpha) {
                assert_eq!(a.max_abs_diff(b), 0.0, "{name}");
            }
            assert!(d.icc_profile.is_some(), "{name}");
        }
    }

    #[test]
    fn animated_jpeg_xl_gives_its_first_frame() {
        let bytes = std::fs::read(format_fixture("anim.jxl")).unwrap();
        assert_eq!(jxl_frames(&bytes, &limits()), Ok((3, None)));
        let d = decode_bytes(&bytes, &limits()).unwrap();
        let rgb8 = decode_file(&format_fixture("rgb8.png"), &limits())
            .unwrap()
            .rgb;
        assert_eq!(d.rgb, rgb8.crop_clamped(0, 0, 8, 8));
    }

    /// JPEG XL readers turn an image by its codestream's orientation and ignore the EXIF
    /// one; applying both would turn a phone photo twice.
    #[test]
    fn jpeg_xl_orientation_comes_from_the_codestream() {
        let d = decode_file(&format_fixture("exif_container.jxl"), &limits()).unwrap();
        let want = decode_file(&format_fixture("rgb8.png"), &limits()).unwrap();
        assert_eq!(d.rgb, want.rgb);
        let exif = d.exif.expect("the Exif box is read");
        assert!(exif.windows(6).any(|w| w == b"infdit"));
        assert_eq!(
            image::metadata::Orientation::from_exif_chunk(&exif),
            Some(image::metadata::Orientation::NoTransforms)
        );
    }

    /// A JPEG XL file's `xml ` box is its XMP; one that is not XML is left out.
    #[test]
    fn jpeg_xl_xmp_comes_from_its_xml_box() {
        let file = std::fs::read(format_fixture("exif_container.jxl")).unwrap();
        let codestream = file.windows(4).position(|w| w == b"jxlc").unwrap() - 4;
        let with_xml = |xml: &[u8]| {
            let mut out = file[..codestream].to_vec();
            out.extend_from_slice(&(8 + xml.len() as u32).to_be_bytes());
            out.extend_from_slice(b"xml ");
            out.extend_from_slice(xml);
            out.extend_from_slice(&file[codestream..]);
            out
        };
        let xmp = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>"#;
        let d = decode_bytes(&with_xml(xmp), &limits()).unwrap();
        assert_eq!(d.xmp.as_deref(), Some(&xmp[..]));
        assert!(d.exif.is_some());
        let d = decode_bytes(&with_xml(b"<x:xmpmeta>"), &limits()).unwrap();
        assert_eq!(d.xmp, None);
        assert_eq!(decode_bytes(&file, &limits()).unwrap().xmp, None);
    }

    const FUZZ_ROUNDS: usize = 200;

    #[test]
    fn damaged_jpeg_xl_is_refused() {
        let bytes = std::fs::read(format_fixture("lossy.jxl")).unwrap();
        for cut in [2, 10, bytes.len() / 2, bytes.len() - 1] {
            let e = decode_bytes(&bytes[..cut], &limits()).unwrap_err();
            assert!(
                matches!(e, ImageIoError::Corrupt { .. }),
                "cut at {cut}: {e}"
            );
        }
        // Damage anywhere gives an error or an image, never a panic.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for name in ["lossy.jxl", "rgba16.jxl"] {
            let bytes = std::fs::read(format_fixture(name)).unwrap();
            for _ in 0..FUZZ_ROUNDS {
                let mut damaged = bytes.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..damaged.len());
                    damaged[i] ^= 1 << rng.gen_range(0..8);
                }
                let _ = decode_bytes(&damaged, &limits());
            }
        }
        let small = DecodeLimits {
            max_width: 16,
            ..limits()
        };
        let e = decode_bytes(&bytes, &small).unwrap_err();
        assert!(matches!(e, ImageIoError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.png");
        let e = decode_file(&path, &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.png"), "{e}");
    }

    #[test]
    fn oversized_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        encode_file(
            &path,
            &gradient(20, 30),
            None,
            &EncodeOptions::new(OutputFormat::Png),
        )
        .unwrap();
        let narrow = DecodeLimits {
            max_width: 16,
            ..limits()
        };
        let e = decode_file(&path, &narrow).unwrap_err();
        assert!(matches!(e, ImageIoError::TooLarge { .. }), "{e}");
        assert!(
            e.to_string().contains("30x20 exceeds the 16x32768 limit"),
            "{e}"
        );
        let short = DecodeLimits {
            max_height: 16,
            ..limits()
        };
        assert!(matches!(
            decode_file(&path, &short),
            Err(ImageIoError::TooLarge { .. })
        ));
        let tight = DecodeLimits {
            max_alloc: 1000,
            ..limits()
        };
        assert!(matches!(
            decode_file(&path, &tight),
            Err(ImageIoError::TooLarge { .. })
        ));
        assert!(decode_file(
            &path,
            &DecodeLimits {
                max_width: 30,
                max_height: 20,
                ..limits()
            }
        )
        .is_ok());
    }
}
