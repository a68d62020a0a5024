//! Encoding [`Planar`] images into PNG, JPEG, WebP or TIFF files, written atomically.

use std::fmt;
use std::io::{BufWriter, Cursor, Seek, Write};
use std::path::Path;
use std::str::FromStr;

use image::{ExtendedColorType, ImageError, ImageFormat};

use super::planes::{quantise_planes, with_alpha};
use super::webp::WebpError;
use super::{DecodedImage, ImageIoError, PngColour};
use crate::imageops::density::Density;
use crate::imageops::iptc::Iptc;
use crate::imageops::Planar;

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Png,
    Jpeg,
    /// Encoded by libwebp, lossy or lossless. WebP has no grayscale storage: luma is
    /// expanded to RGB.
    Webp,
    Tiff,
}

impl OutputFormat {
    /// Recognises `png`, `jpg`/`jpeg`/`jpe`/`jif`/`jfif`, `webp`, `tif`/`tiff` in any case,
    /// without the dot.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" | "jpe" | "jif" | "jfif" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            "tif" | "tiff" => Some(Self::Tiff),
            _ => None,
        }
    }

    /// The format named by `path`'s extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::from_extension)
    }

    /// The name users know the format by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Webp => "WebP",
            Self::Tiff => "TIFF",
        }
    }

    /// The conventional extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Tiff => "tiff",
        }
    }

    /// The longest side the format stores, where it has a limit an upscale can reach.
    pub fn max_side(self) -> Option<usize> {
        match self {
            Self::Jpeg => Some(usize::from(u16::MAX)),
            Self::Webp => Some(super::webp::WEBP_MAX_SIDE as usize),
            Self::Png | Self::Tiff => None,
        }
    }

    /// Whether samples can be written with 16 bits.
    pub fn supports_sixteen_bit(self) -> bool {
        matches!(self, Self::Png | Self::Tiff)
    }

    /// Whether an alpha channel can be written.
    pub fn supports_alpha(self) -> bool {
        self != Self::Jpeg
    }

    /// Whether the file can store one luma sample a pixel (plus alpha).
    pub fn supports_grayscale(self) -> bool {
        self != Self::Webp
    }
}

/// For `--format`: the names shells complete, with the other spellings as aliases.
impl clap::ValueEnum for OutputFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Png, Self::Jpeg, Self::Webp, Self::Tiff]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            Self::Png => PossibleValue::new("png"),
            Self::Jpeg => PossibleValue::new("jpg").alias("jpeg"),
            Self::Webp => PossibleValue::new("webp"),
            Self::Tiff => PossibleValue::new("tiff").alias("tif"),
        })
    }
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_extension(s.trim_start_matches('.'))
            .ok_or_else(|| format!("unknown output format '{s}' (expected png, jpg, webp or tiff)"))
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// How [`encode_file`] writes an image.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOptions {
    pub format: OutputFormat,
    /// JPEG and WebP quality, 1–100; ignored by PNG and TIFF (lossless) and lossless WebP.
    pub quality: u8,
    /// WebP: lossless rather than at `quality` (PNG and TIFF always are, JPEG never).
    pub lossless: bool,
    /// Write 16 bits per sample. Honoured by PNG and TIFF; the others fall back to 8 bits.
    pub sixteen_bit: bool,
    /// Write a single luma channel (plus alpha). WebP stores it as RGB.
    pub grayscale: bool,
    /// Attached to the output unchanged.
    pub icc_profile: Option<Vec<u8>>,
    /// Attached with the pixel dimensions set to the output's: as a chunk to PNG, JPEG and
    /// WebP outputs, as the TIFF's own tags and directories to TIFF outputs (see
    /// [`crate::imageops::exif::ExifTags`]).
    pub exif: Option<Vec<u8>>,
    /// Attached to every output format, rewritten for the output (see
    /// [`crate::imageops::xmp`]).
    pub xmp: Option<Vec<u8>>,
    /// Written to PNG outputs; the other formats have no place for them, and a warning says
    /// when that changes how viewers show the colours.
    pub png_colour: PngColour,
    /// Attached unchanged to JPEG (APP13) and TIFF (IPTC tag) outputs; PNG and WebP have
    /// no standard place for it.
    pub iptc: Option<Iptc>,
    /// Written as PNG pHYs, JFIF density and TIFF resolution tags; WebP has no place for
    /// it beside the EXIF tags.
    pub density: Option<Density>,
}

impl EncodeOptions {
    /// 8-bit RGB, JPEG quality 95 (upscaled detail suffers visibly at the usual 75).
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            quality: 95,
            lossless: false,
            sixteen_bit: false,
            grayscale: false,
            icc_profile: None,
            exif: None,
            xmp: None,
            png_colour: PngColour::default(),
            iptc: None,
            density: None,
        }
    }

    /// Options that preserve `source`'s bit depth, grayness, colour space (ICC profile and
    /// PNG colour chunks), EXIF, XMP and IPTC metadata and physical density.
    pub fn matching(format: OutputFormat, source: &DecodedImage) -> Self {
        Self {
            sixteen_bit: source.sixteen_bit,
            grayscale: source.grayscale,
            icc_profile: source.icc_profile.clone(),
            exif: source.exif.clone(),
            xmp: source.xmp.clone(),
            png_colour: source.png_colour,
            iptc: source.iptc.clone(),
            density: source.density,
            ..Self::new(format)
        }
    }
}

/// Writes `rgb` (3 channels in `[0, 1]`) and optional `alpha` (1 channel, same size) to `path`.
///
/// Samples are clamped to `[0, 1]` and quantised by rounding to the nearest level,
/// `(v * max).round()`: the model's output is continuous, and rounding (unlike truncation)
/// is unbiased and makes decode → encode reproduce the input exactly. NaN becomes 0.
/// Alpha is dropped for JPEG.
///
/// The file is written to a temporary file in the same directory, synced, and then renamed
/// over `path`, so `path` either keeps its old contents or gets the complete new image; on
/// failure the temporary file is removed.
pub fn encode_file(
    path: &Path,
    rgb: &Planar,
    alpha: Option<&Planar>,
    opts: &EncodeOptions,
) -> Result<(), ImageIoError> {
    let write_err = |cause| ImageIoError::Write {
        path: path.into(),
        cause,
    };
    let encoded = Encoded::new(path, rgb, alpha, opts)?;
    let mut tmp = crate::fsutil::temp_beside(path).map_err(write_err)?;
    let mut out = BufWriter::new(tmp.as_file_mut());
    encoded.write(&mut out)?;
    out.into_inner().map_err(|e| write_err(e.into_error()))?;
    crate::fsutil::commit(tmp, path).map_err(write_err)?;
    Ok(())
}

/// Checks that `path` can be written (its directory exists and takes new files) by
/// creating and removing a temporary file beside it, so that a long run finds out before
/// its work rather than after.
pub fn check_writable(path: &Path) -> Result<(), ImageIoError> {
    crate::fsutil::temp_beside(path)
        .map(drop)
        .map_err(|cause| ImageIoError::Write {
            path: path.into(),
            cause,
        })
}

/// The file [`encode_file`] would write, in memory (for standard output); errors name
/// `name`.
pub fn encode_bytes(
    name: &Path,
    rgb: &Planar,
    alpha: Option<&Planar>,
    opts: &EncodeOptions,
) -> Result<Vec<u8>, ImageIoError> {
    let mut out = Cursor::new(Vec::new());
    Encoded::new(name, rgb, alpha, opts)?.write(&mut out)?;
    Ok(out.into_inner())
}

/// Checked, quantised samples ready for an encoder.
pub(super) struct Encoded<'a> {
    pub(super) path: &'a Path,
    pub(super) buf: Vec<u8>,
    pub(super) color: ExtendedColorType,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) opts: &'a EncodeOptions,
}

impl<'a> Encoded<'a> {
    fn new(
        path: &'a Path,
        rgb: &Planar,
        alpha: Option<&Planar>,
        opts: &'a EncodeOptions,
    ) -> Result<Self, ImageIoError> {
        let encode_err = |detail: String| ImageIoError::Encode {
            path: path.into(),
            detail,
        };
        if rgb.channels != 3 {
            return Err(encode_err(format!(
                "expected 3 colour channels, got {}",
                rgb.channels
            )));
        }
        if let Some(a) = alpha {
            if a.channels != 1 || (a.height, a.width) != (rgb.height, rgb.width) {
                let (c, h, w) = (a.channels, a.height, a.width);
                return Err(encode_err(format!(
                    "alpha is {c}x{h}x{w}, expected 1x{}x{}",
                    rgb.height, rgb.width
                )));
            }
        }
        let (width, height) = match (u32::try_from(rgb.width), u32::try_from(rgb.height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(encode_err(format!(
                    "{}x{} is too large",
                    rgb.width, rgb.height
                )))
            }
        };
        let format = opts.format;
        let deep = opts.sixteen_bit && format.supports_sixteen_bit();
        // A format without alpha (JPEG) gets the image as seen over a white page, not the
        // colour that happens to lie under transparent pixels.
        let flattened;
        let (rgb, alpha) = match alpha {
            Some(a) if !format.supports_alpha() => {
                flattened = onto_white(rgb, a);
                (&flattened, None)
            }
            _ => (rgb, alpha),
        };
        let (buf, color) = quantise_planes(rgb, alpha, opts.grayscale, deep);
        let encoded = Self {
            path,
            buf,
            color,
            width,
            height,
            opts,
        };
        encoded.warn_of_lost_colour();
        Ok(encoded)
    }

    /// Encodes into `w` in the options' format.
    fn write(&self, w: impl Write + Seek) -> Result<(), ImageIoError> {
        let written = match self.opts.format {
            OutputFormat::Png => self.encode_png(w).map_err(|e| match e {
                png::EncodingError::IoError(e) => ImageError::IoError(e),
                e => encoding_error(ImageFormat::Png, e),
            }),
            OutputFormat::Jpeg => self.encode_jpeg(w),
            OutputFormat::Webp => self.encode_webp(w).map_err(|e| match e {
                WebpError::Io(e) => ImageError::IoError(e),
                e => encoding_error(ImageFormat::WebP, e),
            }),
            OutputFormat::Tiff => self.encode_tiff(w).map_err(|e| match e {
                tiff::TiffError::IoError(e) => ImageError::IoError(e),
                e => encoding_error(ImageFormat::Tiff, e),
            }),
        };
        written.map_err(|e| ImageIoError::from_encode(self.path, e))
    }

    /// The ICC profile to embed: the source's, where it describes the samples the file
    /// stores (RGB where the format expands luma to RGB).
    pub(super) fn icc_profile(&self) -> Option<&Vec<u8>> {
        let gray = self.opts.format.supports_grayscale()
            && matches!(
                self.color,
                ExtendedColorType::L8
                    | ExtendedColorType::La8
                    | ExtendedColorType::L16
                    | ExtendedColorType::La16
            );
        self.opts
            .icc_profile
            .as_ref()
            .filter(|icc| icc_describes(icc, gray))
    }

    /// The EXIF metadata to embed, its pixel dimensions and density set to the output's.
    pub(super) fn exif(&self) -> Option<Vec<u8>> {
        use crate::imageops::exif::{with_density, with_dimensions};
        let exif = with_dimensions(self.opts.exif.clone()?, self.width, self.height);
        Some(match self.opts.density {
            Some(density) => with_density(exif, density),
            None => exif,
        })
    }

    /// The XMP packet to embed, rewritten for the output; one that cannot be is left out.
    pub(super) fn xmp(&self) -> Option<Vec<u8>> {
        let packet = self.opts.xmp.as_ref()?;
        let rewritten = crate::imageops::xmp::for_output(packet, self.width, self.height);
        if rewritten.is_none() {
            tracing::warn!(
                "{}: leaving out XMP metadata that is not well-formed XML",
                self.path.display()
            );
        }
        rewritten
    }
}

/// An encoder crate's own error, other than I/O, as the image crate's.
fn encoding_error(
    format: ImageFormat,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ImageError {
    ImageError::Encoding(image::error::EncodingError::new(format.into(), e))
}

/// Whether an ICC profile is for the colour model of the samples written: a CMYK profile
/// (kept from a print JPEG, whose samples were converted to RGB) or a gray one over RGB
/// samples would make colour-managed viewers misrender or reject the file.
pub(super) fn icc_describes(icc: &[u8], gray: bool) -> bool {
    // The header's data colour space field.
    icc.get(16..20) == Some(if gray { b"GRAY" } else { b"RGB " })
}

/// `rgb` composited over white by `alpha` (values in `[0, 1]`).
fn onto_white(rgb: &Planar, alpha: &Planar) -> Planar {
    let mut out = rgb.clone();
    with_alpha(&mut out, alpha, |v, a| v * a + (1.0 - a));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{
        gradient, icc_profile, limits, ramp, with_exif_orientation,
    };
    use crate::imageops::io::{decode_bytes, decode_file};
    use crate::imageops::iptc::Iptc;
    use std::path::PathBuf;

    const ALL: [OutputFormat; 4] = [
        OutputFormat::Png,
        OutputFormat::Jpeg,
        OutputFormat::Webp,
        OutputFormat::Tiff,
    ];

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Options for `format`, lossless where it can be (WebP).
    fn lossless(format: OutputFormat) -> EncodeOptions {
        EncodeOptions {
            lossless: true,
            ..EncodeOptions::new(format)
        }
    }

    #[test]
    fn round_trip_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let img = gradient(12, 20);
        for fmt in ALL {
            let path = dir.path().join(format!("out.{}", fmt.extension()));
            encode_file(&path, &img, None, &lossless(fmt)).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            assert_eq!(d.format.default_output(), fmt);
            assert!(!d.sixteen_bit && !d.grayscale && d.alpha.is_none(), "{fmt}");
            let tol = if fmt == OutputFormat::Jpeg { 0.08 } else { 0.0 };
            assert!(
                d.rgb.max_abs_diff(&img) <= tol,
                "{fmt}: {}",
                d.rgb.max_abs_diff(&img)
            );
        }
        // Only the finished files remain: no temporary leftovers.
        assert_eq!(files_in(dir.path()).len(), ALL.len());
    }

    #[test]
    fn sixteen_bit_png_and_tiff_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (9, 13);
        let level = |i: usize| (i * 2971 % 65536) as f32 / 65535.0;
        let img = Planar::new(3, h, w, (0..3 * h * w).map(level).collect());
        let alpha = Planar::new(1, h, w, (0..h * w).map(|i| level(i + 7)).collect());
        for fmt in [OutputFormat::Png, OutputFormat::Tiff] {
            let path = dir.path().join(format!("deep.{}", fmt.extension()));
            let opts = EncodeOptions {
                sixteen_bit: true,
                ..EncodeOptions::new(fmt)
            };
            encode_file(&path, &img, Some(&alpha), &opts).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            assert!(d.sixteen_bit, "{fmt}");
            assert_eq!(d.rgb, img, "{fmt}");
            assert_eq!(d.alpha.as_ref(), Some(&alpha), "{fmt}");
            // Writing back what was read reproduces the file bit for bit.
            let again = dir.path().join(format!("again.{}", fmt.extension()));
            encode_file(
                &again,
                &d.rgb,
                d.alpha.as_ref(),
                &EncodeOptions::matching(fmt, &d),
            )
            .unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(&again).unwrap()
            );
        }
    }

    #[test]
    fn sixteen_bit_falls_back_to_eight_for_jpeg_and_webp() {
        let dir = tempfile::tempdir().unwrap();
        for fmt in [OutputFormat::Jpeg, OutputFormat::Webp] {
            let path = dir.path().join(format!("x.{}", fmt.extension()));
            let opts = EncodeOptions {
                sixteen_bit: true,
                ..EncodeOptions::new(fmt)
            };
            encode_file(&path, &gradient(8, 8), None, &opts).unwrap();
            assert!(!decode_file(&path, &limits()).unwrap().sixteen_bit);
        }
    }

    #[test]
    fn alpha_is_kept_except_by_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let (img, alpha) = (gradient(6, 10), ramp(6, 10, 3));
        for fmt in ALL {
            let path = dir.path().join(format!("a.{}", fmt.extension()));
            encode_file(&path, &img, Some(&alpha), &lossless(fmt)).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            if fmt == OutputFormat::Jpeg {
                assert!(d.alpha.is_none());
            } else {
                assert_eq!(d.alpha.as_ref(), Some(&alpha), "{fmt}");
                assert_eq!(d.rgb, img, "{fmt}");
            }
        }
    }

    /// WebP is lossy at the quality asked for (close, and smaller at a lower quality), with
    /// alpha kept exactly, or lossless.
    #[test]
    fn webp_is_lossy_at_its_quality_or_lossless() {
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (48, 64);
        let data = (0..3 * h * w)
            .map(|i| {
                let (c, y, x) = (i / (h * w), i / w % h, i % w);
                0.2 + 0.5 * x as f32 / w as f32 * (1.0 - 0.3 * c as f32) + 0.2 * y as f32 / h as f32
            })
            .collect();
        let smooth = Planar::new(3, h, w, data);
        let alpha = ramp(h, w, 7);
        let size = |name: &str, opts: &EncodeOptions| {
            let path = dir.path().join(name);
            encode_file(&path, &smooth, Some(&alpha), opts).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            assert_eq!(d.alpha.as_ref(), Some(&alpha), "{name}");
            (
                std::fs::metadata(&path).unwrap().len(),
                d.rgb.max_abs_diff(&smooth),
            )
        };
        let opts = |quality| EncodeOptions {
            quality,
            ..EncodeOptions::new(OutputFormat::Webp)
        };
        let (q95, diff95) = size("q95.webp", &opts(95));
        let (q50, diff50) = size("q50.webp", &opts(50));
        let (_, diff) = size("lossless.webp", &lossless(OutputFormat::Webp));
        assert!(
            diff95 <= 6.0 / 255.0 && diff50 > diff95,
            "{diff95} {diff50}"
        );
        assert!(q50 < q95, "{q50} {q95}");
        // Lossless: only the rounding to 8 bits of these continuous samples.
        assert!(diff <= 0.5 / 255.0 + 1e-6, "{diff}");
    }

    #[test]
    fn grayscale_stays_grayscale() {
        let dir = tempfile::tempdir().unwrap();
        let luma = ramp(7, 9, 0);
        let rgb = Planar::new(3, 7, 9, luma.data.repeat(3));
        let alpha = ramp(7, 9, 100);
        for fmt in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Tiff] {
            for deep in [false, true] {
                let path = dir.path().join(format!("g{deep}.{}", fmt.extension()));
                let opts = EncodeOptions {
                    grayscale: true,
                    sixteen_bit: deep,
                    ..EncodeOptions::new(fmt)
                };
                encode_file(&path, &rgb, None, &opts).unwrap();
                let d = decode_file(&path, &limits()).unwrap();
                assert!(d.grayscale, "{fmt} deep={deep}");
                assert_eq!(d.sixteen_bit, deep && fmt.supports_sixteen_bit());
                assert_eq!(d.rgb.plane(0), d.rgb.plane(2));
                let tol = if fmt == OutputFormat::Jpeg {
                    0.05
                } else {
                    1e-6
                };
                assert!(d.rgb.max_abs_diff(&rgb) <= tol, "{fmt}");
            }
        }
        // Gray with alpha, in 8 and 16 bits.
        for fmt in [OutputFormat::Png, OutputFormat::Tiff] {
            for deep in [false, true] {
                let path = dir.path().join(format!("la{deep}.{}", fmt.extension()));
                let opts = EncodeOptions {
                    grayscale: true,
                    sixteen_bit: deep,
                    ..EncodeOptions::new(fmt)
                };
                encode_file(&path, &rgb, Some(&alpha), &opts).unwrap();
                let d = decode_file(&path, &limits()).unwrap();
                assert!(d.grayscale, "{fmt} deep={deep}");
                assert_eq!(d.sixteen_bit, deep, "{fmt}");
                assert!(d.rgb.max_abs_diff(&rgb) <= 1e-6, "{fmt} deep={deep}");
                assert_eq!(d.alpha.as_ref(), Some(&alpha), "{fmt} deep={deep}");
            }
        }
    }

    #[test]
    fn exif_is_kept_upright_with_the_output_size() {
        let img = gradient(8, 16);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.jpg");
        encode_file(&path, &img, None, &EncodeOptions::new(OutputFormat::Jpeg)).unwrap();
        let rotated = with_exif_orientation(&std::fs::read(&path).unwrap(), 6);
        let source = decode_bytes(&rotated, &limits()).unwrap();
        let exif = source.exif.clone().expect("the EXIF chunk is read");
        assert_eq!(
            image::metadata::Orientation::from_exif_chunk(&exif),
            Some(image::metadata::Orientation::NoTransforms)
        );
        let big = crate::imageops::resize::resize_bicubic(&source.rgb, 32, 16, false);
        for format in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp] {
            let out = dir.path().join(format!("out.{format}"));
            encode_file(&out, &big, None, &EncodeOptions::matching(format, &source)).unwrap();
            let d = decode_file(&out, &limits()).unwrap();
            assert_eq!(
                (d.rgb.height, d.rgb.width),
                (32, 16),
                "{format}: not turned again"
            );
            assert_eq!(d.exif.as_deref(), Some(&exif[..]), "{format}");
        }
        let tiff = dir.path().join("out.tiff");
        let opts = EncodeOptions::matching(OutputFormat::Tiff, &source);
        encode_file(&tiff, &big, None, &opts).unwrap();
        assert!(decode_file(&tiff, &limits()).is_ok());
    }

    /// A density's pixels per inch and whether it has a unit at all, to compare densities
    /// that formats record in different units.
    fn per_inch(d: Option<Density>) -> Option<(f64, f64, bool)> {
        use crate::imageops::density::DensityUnit;
        let d = d?;
        let scale = match d.unit {
            DensityUnit::Inch | DensityUnit::None => 1.0,
            DensityUnit::Centimetre => 2.54,
            DensityUnit::Metre => 0.0254,
        };
        let round = |v: f64| (v * scale * 100.0).round() / 100.0;
        Some((round(d.x), round(d.y), d.unit != DensityUnit::None))
    }

    /// The physical density is written where each format records it (PNG pHYs, JFIF,
    /// TIFF tags, and in WebP an EXIF chunk of its own) and read back the same.
    #[test]
    fn density_is_kept_where_the_format_records_it() {
        use crate::imageops::density::DensityUnit;
        let img = gradient(8, 16);
        for (x, y, unit) in [
            (300.0, 300.0, DensityUnit::Inch),
            (11811.0, 11811.0, DensityUnit::Metre),
            (40.0, 20.0, DensityUnit::Centimetre),
            (2.0, 1.0, DensityUnit::None),
        ] {
            let density = Density::new(x, y, unit);
            for format in ALL {
                let opts = EncodeOptions {
                    density,
                    ..EncodeOptions::new(format)
                };
                let file = encode_bytes(Path::new("d"), &img, None, &opts).unwrap();
                let d = decode_bytes(&file, &limits()).unwrap();
                assert_eq!(
                    per_inch(d.density),
                    per_inch(density),
                    "{format} {x}x{y} {unit:?}"
                );
                assert_eq!(EncodeOptions::matching(format, &d).density, d.density);
            }
        }
    }

    /// The density is turned with the image, comes from EXIF where the format records
    /// none, and from a BMP's header.
    #[test]
    fn density_follows_orientation_exif_and_bmp_headers() {
        use crate::imageops::density::DensityUnit;
        let img = gradient(8, 16);
        let opts = EncodeOptions {
            density: Density::new(300.0, 150.0, DensityUnit::Inch),
            ..EncodeOptions::new(OutputFormat::Jpeg)
        };
        let jpeg = encode_bytes(Path::new("d.jpg"), &img, None, &opts).unwrap();
        let upright = decode_bytes(&jpeg, &limits()).unwrap().density;
        assert_eq!(per_inch(upright), Some((300.0, 150.0, true)));
        let turned = decode_bytes(&with_exif_orientation(&jpeg, 6), &limits()).unwrap();
        assert_eq!(per_inch(turned.density), Some((150.0, 300.0, true)));

        // EXIF resolution (a TIFF structure, as the EXIF chunk is) in a PNG without pHYs.
        let exif = encode_bytes(
            Path::new("e.tif"),
            &img,
            None,
            &opts_with(OutputFormat::Tiff, 240.0),
        )
        .unwrap();
        let png = EncodeOptions {
            exif: Some(exif),
            ..EncodeOptions::new(OutputFormat::Png)
        };
        let png = encode_bytes(Path::new("e.png"), &img, None, &png).unwrap();
        let d = decode_bytes(&png, &limits()).unwrap().density;
        assert_eq!(per_inch(d), Some((240.0, 240.0, true)));

        let mut bmp = Vec::new();
        image::RgbImage::new(4, 3)
            .write_to(&mut Cursor::new(&mut bmp), ImageFormat::Bmp)
            .unwrap();
        assert_eq!(decode_bytes(&bmp, &limits()).unwrap().density, None);
        bmp[38..42].copy_from_slice(&11811i32.to_le_bytes());
        bmp[42..46].copy_from_slice(&5906i32.to_le_bytes());
        let d = decode_bytes(&bmp, &limits()).unwrap().density;
        assert_eq!(per_inch(d), Some((300.0, 150.01, true)));
    }

    fn opts_with(format: OutputFormat, dpi: f64) -> EncodeOptions {
        EncodeOptions {
            density: Density::new(dpi, dpi, crate::imageops::density::DensityUnit::Inch),
            ..EncodeOptions::new(format)
        }
    }

    /// An EXIF chunk too large for a JPEG segment is left out of a JPEG, which is still
    /// written whole; the other formats keep it.
    #[test]
    fn exif_too_large_for_jpeg_is_left_out() {
        use crate::imageops::exif::{ExifTags, Field};
        let description = Field::new(0x010E, 2, &[b'x'; 70_000]);
        let exif = ExifTags {
            big_endian: false,
            image: vec![description],
            exif: vec![],
            gps: vec![],
        }
        .to_chunk();
        for format in [OutputFormat::Jpeg, OutputFormat::Png] {
            let opts = EncodeOptions {
                exif: Some(exif.clone()),
                ..EncodeOptions::new(format)
            };
            let file = encode_bytes(Path::new("x"), &gradient(8, 8), None, &opts).unwrap();
            let d = decode_bytes(&file, &limits()).unwrap();
            assert_eq!(d.exif.is_some(), format == OutputFormat::Png, "{format}");
        }
    }

    /// JPEG and TIFF outputs carry the IPTC record unchanged (a JPEG its digest too); PNG
    /// and WebP have no standard place for it.
    #[test]
    fn iptc_is_kept_by_jpeg_and_tiff() {
        let mut record = vec![0x1C, 2, 120, 0, 7];
        record.extend(b"Harbour");
        let iptc = Iptc {
            record,
            digest: Some(vec![9; 16]),
        };
        for format in ALL {
            let opts = EncodeOptions {
                iptc: Some(iptc.clone()),
                ..EncodeOptions::new(format)
            };
            let file = encode_bytes(Path::new("i"), &gradient(8, 8), None, &opts).unwrap();
            let d = decode_bytes(&file, &limits()).unwrap();
            let expected = match format {
                OutputFormat::Jpeg => Some(iptc.clone()),
                OutputFormat::Tiff => Some(Iptc {
                    digest: None,
                    ..iptc.clone()
                }),
                _ => None,
            };
            assert_eq!(d.iptc, expected, "{format}");
        }
    }

    /// Every output format carries the XMP packet, rewritten for the output (an
    /// orientation that decoding did not apply is kept); a JPEG leaves out one too large
    /// for its segment and still writes the image.
    #[test]
    fn xmp_is_kept_rewritten_for_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let packet = |padding: usize| {
            format!(
                r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" tiff:ImageWidth="8" tiff:ImageLength="16"><dc:subject><rdf:Bag><rdf:li>harbour</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>{}<?xpacket end="w"?>"#,
                " ".repeat(padding)
            )
            .into_bytes()
        };
        let big = gradient(32, 16);
        for format in [
            OutputFormat::Png,
            OutputFormat::Jpeg,
            OutputFormat::Webp,
            OutputFormat::Tiff,
        ] {
            let out = dir.path().join(format!("xmp.{}", format.extension()));
            let opts = EncodeOptions {
                xmp: Some(packet(0)),
                ..EncodeOptions::new(format)
            };
            encode_file(&out, &big, None, &opts).unwrap();
            let xmp = decode_file(&out, &limits()).unwrap().xmp.unwrap();
            let want = crate::imageops::xmp::for_output(&packet(0), 16, 32).unwrap();
            // TIFF pads an odd-length packet with a line break.
            assert_eq!(xmp.trim_ascii_end(), want, "{format}");
            assert!(format != OutputFormat::Tiff || xmp.len().is_multiple_of(2));
            let text = String::from_utf8(want).unwrap();
            // The pixels were not turned (no EXIF orientation): the XMP one still holds.
            assert!(
                text.contains(r#"tiff:Orientation="6" tiff:ImageWidth="16" tiff:ImageLength="32""#)
            );
            assert!(text.contains("<rdf:li>harbour</rdf:li>"));
        }
        let huge = EncodeOptions {
            xmp: Some(packet(70_000)),
            ..EncodeOptions::new(OutputFormat::Jpeg)
        };
        let out = dir.path().join("huge.jpg");
        encode_file(&out, &big, None, &huge).unwrap();
        let d = decode_file(&out, &limits()).unwrap();
        assert_eq!((d.xmp, d.rgb.width), (None, 16));
    }

    #[test]
    fn icc_profile_survives_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (rgb, gray, cmyk) = (
            icc_profile(b"RGB "),
            icc_profile(b"GRAY"),
            icc_profile(b"CMYK"),
        );
        let opacity = ramp(4, 4, 9);
        let written = |format: OutputFormat, icc: &[u8], grayscale: bool, alpha: bool| {
            let path = dir.path().join(format!("icc.{}", format.extension()));
            let opts = EncodeOptions {
                icc_profile: Some(icc.to_vec()),
                grayscale,
                ..EncodeOptions::new(format)
            };
            let alpha = alpha.then_some(&opacity);
            encode_file(&path, &gradient(4, 4), alpha, &opts).unwrap();
            decode_file(&path, &limits()).unwrap().icc_profile
        };
        for format in ALL {
            // WebP has no gray storage: its gray output is RGB, which only an RGB profile
            // describes.
            let gray_stored = format.supports_grayscale();
            for alpha in [false, true] {
                let case = format!("{format} alpha {alpha}");
                let keeps = |icc: &[u8], grayscale| written(format, icc, grayscale, alpha);
                assert_eq!(keeps(&rgb, false), Some(rgb.clone()), "{case}");
                let gray_kept = gray_stored.then(|| gray.clone());
                assert_eq!(keeps(&gray, true), gray_kept, "{case}");
                // A profile for another colour model than the samples written is left out.
                assert_eq!(keeps(&cmyk, false), None, "{case}");
                assert_eq!(keeps(&gray, false), None, "{case}");
                let rgb_kept = (!gray_stored).then(|| rgb.clone());
                assert_eq!(keeps(&rgb, true), rgb_kept, "{case}");
            }
        }
    }

    #[test]
    fn failed_writes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let img = gradient(4, 4);
        let opts = EncodeOptions::new(OutputFormat::Png);

        let missing = dir.path().join("no_such_dir").join("out.png");
        let e = encode_file(&missing, &img, None, &opts).unwrap_err();
        assert!(matches!(e, ImageIoError::Write { .. }), "{e}");
        assert!(e.to_string().contains("out.png"), "{e}");

        // A parent that is a file fails even for privileged users.
        let file = dir.path().join("plain_file");
        std::fs::write(&file, b"x").unwrap();
        let e = encode_file(&file.join("out.png"), &img, None, &opts).unwrap_err();
        assert!(matches!(e, ImageIoError::Write { .. }), "{e}");

        // An encoder failure (JPEG caps dimensions at 65535) happens after the temporary
        // file exists; it must be cleaned up and the old target left untouched.
        let target = dir.path().join("wide.jpg");
        std::fs::write(&target, b"old").unwrap();
        let wide = Planar::zeros(3, 1, 70_000);
        let e = encode_file(
            &target,
            &wide,
            None,
            &EncodeOptions::new(OutputFormat::Jpeg),
        )
        .unwrap_err();
        assert!(matches!(e, ImageIoError::Encode { .. }), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");

        let mut names: Vec<_> = files_in(dir.path())
            .into_iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["plain_file", "wide.jpg"]);
    }

    #[cfg(unix)]
    #[test]
    fn read_only_directory_fails_cleanly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Privileged users can write anyway; then there is nothing to test.
        if std::fs::write(ro.join("probe"), b"").is_ok() {
            std::fs::remove_file(ro.join("probe")).unwrap();
        } else {
            let opts = EncodeOptions::new(OutputFormat::Png);
            let e = encode_file(&ro.join("out.png"), &gradient(4, 4), None, &opts).unwrap_err();
            assert!(matches!(e, ImageIoError::Write { .. }), "{e}");
            assert!(files_in(&ro).is_empty());
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn overwrites_existing_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.webp");
        std::fs::write(&path, b"stale").unwrap();
        encode_file(&path, &gradient(5, 5), None, &lossless(OutputFormat::Webp)).unwrap();
        assert_eq!(decode_file(&path, &limits()).unwrap().rgb, gradient(5, 5));
    }

    #[test]
    fn rejects_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let opts = EncodeOptions::new(OutputFormat::Png);
        let e = encode_file(&path, &Planar::zeros(1, 4, 4), None, &opts).unwrap_err();
        assert!(matches!(e, ImageIoError::Encode { .. }), "{e}");
        let e =
            encode_file(&path, &gradient(4, 4), Some(&Planar::zeros(1, 4, 5)), &opts).unwrap_err();
        assert!(matches!(e, ImageIoError::Encode { .. }), "{e}");
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn output_format_names() {
        assert_eq!(
            OutputFormat::from_extension("JPEG"),
            Some(OutputFormat::Jpeg)
        );
        assert_eq!(
            OutputFormat::from_extension("tif"),
            Some(OutputFormat::Tiff)
        );
        assert_eq!(OutputFormat::from_extension("bmp"), None);
        assert_eq!("webp".parse::<OutputFormat>(), Ok(OutputFormat::Webp));
        assert_eq!(".png".parse::<OutputFormat>(), Ok(OutputFormat::Png));
        assert!("gif".parse::<OutputFormat>().is_err());
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.JPG")),
            Some(OutputFormat::Jpeg)
        );
        for f in ALL {
            assert_eq!(OutputFormat::from_extension(f.extension()), Some(f));
        }
    }
}
