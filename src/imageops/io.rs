//! Decoding and encoding image files.
//!
//! Decoding turns PNG, JPEG, WebP, TIFF, BMP, GIF, TGA, PNM, QOI and JPEG XL files into
//! [`Planar`] images in `[0, 1]`, upright (orientation applied), with alpha split off and
//! 16-bit precision kept, and reports what the caller needs to write a faithful result back:
//! bit depth, grayness, the ICC profile and the EXIF metadata. Encoding writes PNG, JPEG,
//! WebP or TIFF atomically, so an interrupted or failed run never leaves a truncated output
//! file behind.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::codecs::{jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder};
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat,
    ImageReader, ImageResult,
};

use jxl_oxide::{integration::JxlDecoder, AllocTracker, JxlImage};

use super::Planar;

/// A decoded image file, split into the parts the pipeline treats differently.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// Colour, 3 channels in `[0, 1]`. Grayscale files are expanded to three equal channels
    /// because the model only takes RGB.
    pub rgb: Planar,
    /// Opacity, 1 channel in `[0, 1]`, when the file has an alpha channel.
    pub alpha: Option<Planar>,
    /// The file stored more than 8 bits per sample, so the output should too.
    pub sixteen_bit: bool,
    /// The file was grayscale, so the output can be written as grayscale again.
    pub grayscale: bool,
    /// The embedded ICC profile, to be attached to the output unchanged: the model works on
    /// the encoded values and does no colour management.
    pub icc_profile: Option<Vec<u8>>,
    /// The EXIF metadata (PNG, JPEG, WebP), orientation reset since it has been applied.
    pub exif: Option<Vec<u8>>,
    /// The format detected from the file's contents (not its extension).
    pub format: InputFormat,
}

/// Bounds checked before any pixel data is decoded, so that a small malicious file
/// (a "decompression bomb") cannot make us allocate unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width in pixels, as stored (before EXIF rotation).
    pub max_width: u32,
    /// Largest accepted height in pixels, as stored (before EXIF rotation).
    pub max_height: u32,
    /// Budget in bytes for the decoder's pixel buffer plus the float planes built from it.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 32768×32768 pixels and 4 GiB: far beyond any photo, small enough for a workstation.
    fn default() -> Self {
        Self {
            max_width: 32768,
            max_height: 32768,
            max_alloc: 4 << 30,
        }
    }
}

impl DecodeLimits {
    /// The allocation bound for a decoder, which enforces it while decoding. The sizes are
    /// checked here, right after the header is read, where the message can name them.
    fn for_decoder(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        limits.max_alloc = Some(self.max_alloc);
        limits
    }
}

/// Everything that can go wrong reading or writing an image file; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    // The I/O error is part of the message, not a `source`: a chain printer would
    // otherwise repeat it.
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("{}: unsupported image format: {detail}", path.display())]
    Unsupported { path: PathBuf, detail: String },
    #[error("{}: corrupt or truncated image data: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: image too large: {detail}", path.display())]
    TooLarge { path: PathBuf, detail: String },
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("cannot encode {}: {detail}", path.display())]
    Encode { path: PathBuf, detail: String },
}

impl ImageIoError {
    fn from_decode(path: &Path, e: ImageError) -> Self {
        let path = path.to_path_buf();
        match e {
            ImageError::Limits(e) => Self::TooLarge {
                path,
                detail: one_line(e),
            },
            ImageError::Unsupported(e) => Self::Unsupported {
                path,
                detail: one_line(e),
            },
            // Running out of input mid-image is a property of the file, not of the disk.
            ImageError::IoError(cause)
                if !matches!(
                    cause.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                Self::Read { path, cause }
            }
            e => {
                let detail = one_line(e);
                // The JPEG decoder reports the variants it does not read (12-bit,
                // arithmetic-coded, lossless) as decoding errors.
                let variant = [
                    "cannot yet decode",
                    "can only parse 8-bit",
                    "is not supported",
                ]
                .iter()
                .any(|m| detail.contains(m));
                if variant {
                    Self::Unsupported {
                        path,
                        detail: format!("{detail}; convert it to PNG"),
                    }
                } else {
                    Self::Corrupt { path, detail }
                }
            }
        }
    }

    /// Wraps a read failure of `path`.
    fn read(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |cause| Self::Read {
            path: path.into(),
            cause,
        }
    }

    fn from_encode(path: &Path, e: ImageError) -> Self {
        let path = path.to_path_buf();
        match e {
            ImageError::IoError(cause) => Self::Write { path, cause },
            e => Self::Encode {
                path,
                detail: one_line(e),
            },
        }
    }
}

/// Some decoder messages end in a newline; ours are single lines.
fn one_line(e: impl fmt::Display) -> String {
    e.to_string().trim().replace('\n', "; ")
}

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

/// An accepted input format. Multi-frame GIFs are read as their first frame. Formats the
/// `image` crate knows beyond these (EXR, HDR, ...) are refused rather than half-supported:
/// their values lie outside [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    Png,
    Jpeg,
    WebP,
    Tiff,
    Bmp,
    Gif,
    Tga,
    Pnm,
    Qoi,
    /// Decoded by jxl-oxide; the `image` crate has no JPEG XL decoder.
    JpegXl,
}

impl InputFormat {
    /// Every accepted input format.
    pub const ALL: [Self; 10] = [
        Self::Png,
        Self::Jpeg,
        Self::WebP,
        Self::Tiff,
        Self::Bmp,
        Self::Gif,
        Self::Tga,
        Self::Pnm,
        Self::Qoi,
        Self::JpegXl,
    ];

    /// The `image` crate's name for the format, where that crate decodes it.
    pub fn image_format(self) -> Option<ImageFormat> {
        Some(match self {
            Self::Png => ImageFormat::Png,
            Self::Jpeg => ImageFormat::Jpeg,
            Self::WebP => ImageFormat::WebP,
            Self::Tiff => ImageFormat::Tiff,
            Self::Bmp => ImageFormat::Bmp,
            Self::Gif => ImageFormat::Gif,
            Self::Tga => ImageFormat::Tga,
            Self::Pnm => ImageFormat::Pnm,
            Self::Qoi => ImageFormat::Qoi,
            Self::JpegXl => return None,
        })
    }

    fn from_image_format(format: ImageFormat) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.image_format() == Some(format))
    }

    /// The format a file's extension names, in any case (`a/B.PPM` is PNM).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("jxl") {
            return Some(Self::JpegXl);
        }
        ImageFormat::from_extension(ext).and_then(Self::from_image_format)
    }

    /// The format `head`, a file's first bytes, opens with. TGA has no signature, so only
    /// the name of the file it came from (`path`) can tell it.
    pub fn detect(head: &[u8], path: &Path) -> Option<Self> {
        if head.starts_with(JXL_CODESTREAM) || head.starts_with(JXL_CONTAINER) {
            return Some(Self::JpegXl);
        }
        // BigTIFF, which the image crate's format guess does not know.
        if head.starts_with(b"II\x2b\0") || head.starts_with(b"MM\0\x2b") {
            return Some(Self::Tiff);
        }
        match image::guess_format(head) {
            Ok(f) => Self::from_image_format(f),
            Err(_) => Self::from_path(path).filter(|f| *f == Self::Tga),
        }
    }

    /// The output format a result takes by default: the input's, where it can be written,
    /// else PNG (lossless, alpha and 16 bits kept).
    pub fn default_output(self) -> OutputFormat {
        match self {
            Self::Jpeg => OutputFormat::Jpeg,
            Self::WebP => OutputFormat::Webp,
            Self::Tiff => OutputFormat::Tiff,
            _ => OutputFormat::Png,
        }
    }

    /// The name users know the format by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::WebP => "WebP",
            Self::Tiff => "TIFF",
            Self::Bmp => "BMP",
            Self::Gif => "GIF",
            Self::Tga => "TGA",
            Self::Pnm => "PNM",
            Self::Qoi => "QOI",
            Self::JpegXl => "JPEG XL",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const JXL_CODESTREAM: &[u8] = b"\xff\x0a";
const JXL_CONTAINER: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";

/// The input format names, for help texts and errors: "PNG, JPEG, ...".
pub fn input_format_names() -> String {
    InputFormat::ALL.map(InputFormat::name).join(", ")
}

/// Whether `path`'s extension names an input format (for directory listings).
pub fn has_input_extension(path: &Path) -> bool {
    InputFormat::from_path(path).is_some()
}

/// Whether `path`'s extension names an image format that is recognised but not read
/// (HEIF/HEIC, AVIF): a folder scan lists such files so that each is reported with the
/// way out, rather than passed over in silence.
pub fn has_refused_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["heic", "heif", "avif"]
            .iter()
            .any(|r| e.eq_ignore_ascii_case(r))
    })
}

/// The image files in `dir` (by extension; hidden names passed over), in its subfolders
/// too if `recursive`, sorted. For the tools that read folders of photos (training,
/// scoring); `upscale` selects its inputs by its own rules.
pub fn image_files(dir: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Linked folders are not followed: a link cycle would never end.
            if entry.file_type()?.is_dir() {
                if recursive {
                    walk(&path, recursive, out)?;
                }
            } else if has_input_extension(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, recursive, &mut out)?;
    out.sort();
    Ok(out)
}

/// Decodes an image file to `[0, 1]` planar RGB (alpha left out) with the default limits.
pub fn decode_rgb(path: &Path) -> Result<Planar, ImageIoError> {
    Ok(decode_file(path, &DecodeLimits::default())?.rgb)
}

/// What a file's first bytes tell before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    pub format: InputFormat,
    /// The upright size (height, width), where the header tells it; read so that a caller
    /// can refuse work it cannot do before decoding a large image.
    pub size: Option<(usize, usize)>,
}

/// The format and size of the image in `bytes` (its head is enough), or `None` for no
/// accepted format (decoding then reports why).
pub fn peek(bytes: &[u8], name: &Path) -> Option<Peek> {
    let format = InputFormat::detect(bytes, name)?;
    let size = match format.image_format() {
        Some(f) => ImageReader::with_format(Cursor::new(bytes), f)
            .into_decoder()
            .ok()
            .map(|mut decoder| {
                let (w, h) = decoder.dimensions();
                let turned = decoder.orientation().ok().is_some_and(|o| {
                    use image::metadata::Orientation::*;
                    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
                });
                if turned {
                    (w, h)
                } else {
                    (h, w)
                }
            }),
        None => JxlImage::builder()
            .read(bytes)
            .ok()
            .map(|image| (image.height(), image.width())),
    };
    Some(Peek {
        format,
        // An empty image is left for decoding to report.
        size: size
            .filter(|&(h, w)| h > 0 && w > 0)
            .map(|(h, w)| (h as usize, w as usize)),
    })
}

/// [`peek`] at a file, from its first MiB.
pub fn peek_file(path: &Path) -> Option<Peek> {
    let mut head = Vec::new();
    File::open(path)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut head)
        .ok()?;
    peek(&head, path)
}

/// Detects and vets the format, then decodes.
fn decode_reader(
    mut reader: impl BufRead + Seek,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    let head = reader.fill_buf().map_err(ImageIoError::read(path))?;
    let Some(format) = InputFormat::detect(head, path) else {
        let what = match (unreadable_format(head), image::guess_format(head)) {
            (Some(name), _) => format!("{name} (convert it to PNG or JPEG first)"),
            (None, Ok(f)) => format!("{f:?}"),
            (None, Err(_)) => "unrecognised contents".into(),
        };
        let detail = format!("{what} (supported: {})", input_format_names());
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail,
        });
    };
    let err = |e| ImageIoError::from_decode(path, e);
    let (decoded, several) = match format.image_format() {
        Some(image_format) => decode_image_crate(reader, format, image_format, path, limits)?,
        None => {
            let data = read_all(reader, path)?;
            let frames = jxl_frames(&data, limits).map_err(|detail| ImageIoError::Corrupt {
                path: path.into(),
                detail,
            })?;
            let mut decoder = JxlDecoder::new(Cursor::new(&data[..])).map_err(err)?;
            decoder.set_limits(limits.for_decoder()).map_err(err)?;
            // The decoder has already turned the image upright by the codestream's
            // orientation, which is the one JPEG XL readers obey; an EXIF orientation in
            // the file is not applied again.
            let decoded = decode_with(decoder, format, false, path, limits)?;
            (decoded, (frames > 1).then_some("animated JPEG XL"))
        }
    };
    if let Some(what) = several {
        tracing::warn!("{}: {what}: only the first image is read", path.display());
    }
    Ok(decoded)
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
    let err = |e| ImageIoError::from_decode(path, e);
    fn reader_for<R: BufRead + Seek>(r: R, f: ImageFormat, l: &DecodeLimits) -> ImageReader<R> {
        let mut reader = ImageReader::with_format(r, f);
        reader.limits(l.for_decoder());
        reader
    }
    let tiff = (format == InputFormat::Tiff).then(|| TiffFacts::read(&mut reader));
    let several = match &tiff {
        Some(facts) => facts.pages.then_some("multi-page TIFF"),
        None => several_images(format, &mut reader),
    };
    if tiff.as_ref().is_some_and(|f| f.wide_integer_samples) {
        return Err(ImageIoError::Unsupported {
            path: path.into(),
            detail: "TIFF with 32-bit integer samples (convert it to 16-bit or floating point)"
                .into(),
        });
    }
    if !matches!(format, InputFormat::Jpeg | InputFormat::Gif) {
        let decoded = reader_for(&mut reader, image_format, limits)
            .into_decoder()
            .map_err(err)
            .and_then(|decoder| decode_with(decoder, format, true, path, limits));
        let mut decoded = match (decoded, &tiff) {
            // The image crate maps only some TIFF layouts (not gray+alpha, float gray,
            // palette, JPEG-compressed YCbCr); the tiff crate reads more of them.
            (Err(ImageIoError::Unsupported { detail, .. }), Some(_)) => {
                reader
                    .seek(io::SeekFrom::Start(0))
                    .map_err(ImageIoError::read(path))?;
                decode_tiff(reader, limits).map_err(|why| ImageIoError::Unsupported {
                    path: path.into(),
                    detail: format!(
                        "a TIFF layout this decoder does not read ({detail}; {why}); \
                         convert it to PNG, or to an 8- or 16-bit RGB or grayscale TIFF"
                    ),
                })?
            }
            (decoded, _) => decoded?,
        };
        if let Some(facts) = tiff {
            decoded.icc_profile = decoded.icc_profile.or(facts.icc_profile);
            if let Some(alpha) = decoded.alpha.as_ref().filter(|_| facts.associated_alpha) {
                unpremultiply(&mut decoded.rgb, alpha);
            }
        }
        return Ok((decoded, several));
    }
    // Both decoders read the whole file into memory anyway, so this copy is cheap.
    let data = read_all(reader, path)?;
    if format == InputFormat::Jpeg && !jpeg_is_complete(&data) {
        return Err(ImageIoError::Corrupt {
            path: path.into(),
            detail: "JPEG ends before its end-of-image marker (truncated file?)".into(),
        });
    }
    let decoder = reader_for(Cursor::new(&data[..]), image_format, limits)
        .into_decoder()
        .map_err(err)?;
    let mut decoded = decode_with(decoder, format, true, path, limits)?;
    // The GIF decoder gives RGBA even where no colour is transparent; such an alpha plane
    // says nothing and would only make the output bigger.
    if format == InputFormat::Gif
        && decoded
            .alpha
            .as_ref()
            .is_some_and(|a| a.data.iter().all(|&v| v >= 1.0))
    {
        decoded.alpha = None;
    }
    Ok((decoded, several))
}

/// Decodes a TIFF with the tiff crate: gray, gray+alpha, RGB and RGBA in 8 or 16 bits
/// or floats, in whatever compression it reads. For the layouts the image crate refuses;
/// the reason is returned for anything else.
fn decode_tiff(reader: impl Read + Seek, limits: &DecodeLimits) -> Result<DecodedImage, String> {
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
        exif: None,
        format: InputFormat::Tiff,
    })
}

/// What the image crate's TIFF decoder gets wrong, read with the tiff crate.
#[derive(Default)]
struct TiffFacts {
    /// 32-bit samples stored as integers. The image crate takes 32-bit samples without a
    /// SampleFormat tag (which means unsigned integers) for floats and decodes them to
    /// black, so these files are refused instead.
    wide_integer_samples: bool,
    /// The ICC profile, which the image crate does not read from TIFF (the tag's type is
    /// UNDEFINED, not BYTE).
    icc_profile: Option<Vec<u8>>,
    /// More pages follow the first.
    pages: bool,
    /// The extra sample is associated (premultiplied) alpha, which the image crate
    /// passes on as if it were straight.
    associated_alpha: bool,
}

impl TiffFacts {
    /// Reads the facts from the TIFF `reader` opens, and leaves it at the start.
    fn read(reader: &mut (impl BufRead + Seek)) -> Self {
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

fn read_all(mut reader: impl io::Read, path: &Path) -> Result<Vec<u8>, ImageIoError> {
    let mut data = Vec::new();
    reader
        .read_to_end(&mut data)
        .map_err(ImageIoError::read(path))?;
    Ok(data)
}

/// The number of frames of a JPEG XL file, once it is known to hold all of them.
/// jxl-oxide renders whatever part of a frame has arrived (progressive decoding), so a
/// half-downloaded file would otherwise be upscaled with its missing part made up.
/// Loading only parses; pixels are decoded later.
fn jxl_frames(data: &[u8], limits: &DecodeLimits) -> Result<usize, String> {
    let budget = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let image = JxlImage::builder()
        .alloc_tracker(AllocTracker::with_limit(budget))
        .read(data)
        .map_err(one_line)?;
    if image.is_loading_done() {
        Ok(image.num_loaded_keyframes())
    } else {
        Err("JPEG XL data ends before the image does (truncated file?)".into())
    }
}

/// The name of a common format that `head`, a file's first bytes, opens but no decoder
/// here reads: phones' HEIF/HEIC and AVIF (both ISO-BMFF with their brand).
fn unreadable_format(head: &[u8]) -> Option<&'static str> {
    const HEIF: [&[u8]; 7] = [
        b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1",
    ];
    let brand = (head.get(4..8) == Some(b"ftyp"))
        .then(|| head.get(8..12))
        .flatten();
    match brand {
        Some(b"avif" | b"avis") => Some("AVIF"),
        Some(b) if HEIF.contains(&b) => Some("HEIF/HEIC"),
        _ => None,
    }
}

/// What the file holds beyond its first image (animation frames), named for a warning:
/// only the first is read. TIFF pages are among the [`TiffFacts`]. Leaves `reader` at
/// the start.
fn several_images(format: InputFormat, reader: &mut (impl BufRead + Seek)) -> Option<&'static str> {
    use image::codecs::{gif::GifDecoder, png::PngDecoder, webp::WebPDecoder};
    use image::AnimationDecoder;
    let several = match format {
        InputFormat::Png => PngDecoder::new(&mut *reader)
            .and_then(|d| d.is_apng())
            .unwrap_or(false)
            .then_some("animated PNG"),
        InputFormat::WebP => WebPDecoder::new(&mut *reader)
            .is_ok_and(|d| d.has_animation())
            .then_some("animated WebP"),
        InputFormat::Gif => GifDecoder::new(&mut *reader)
            .is_ok_and(|d| d.into_frames().take(2).count() > 1)
            .then_some("animated GIF"),
        _ => None,
    };
    let _ = reader.seek(io::SeekFrom::Start(0));
    several
}

/// Decodes once the format is known and accepted.
fn decode_with(
    mut decoder: impl ImageDecoder,
    format: InputFormat,
    exif_orientation: bool,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageIoError> {
    let err = |e| ImageIoError::from_decode(path, e);
    let (w, h) = decoder.dimensions();
    let orientation = if exif_orientation {
        decoder.orientation().map_err(err)?
    } else {
        image::metadata::Orientation::NoTransforms
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
    let copies = if orientation == image::metadata::Orientation::NoTransforms {
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
        .map(super::exif::upright);

    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    let color = img.color();
    let (rgb, alpha) = image_to_planes(&img);
    // Colour-mapped images (GIF, BMP, TGA, palette PNG) reach us expanded to 8-bit RGB
    // even when their palette is gray.
    let gray_pixels = matches!(
        format,
        InputFormat::Gif | InputFormat::Bmp | InputFormat::Png | InputFormat::Tga
    ) && matches!(color, image::ColorType::Rgb8 | image::ColorType::Rgba8)
        && rgb.plane(0) == rgb.plane(1)
        && rgb.plane(1) == rgb.plane(2);
    Ok(DecodedImage {
        rgb,
        alpha,
        sixteen_bit: is_deep(color),
        grayscale: !color.has_color() || gray_pixels,
        icc_profile,
        exif,
        format,
    })
}

/// Whether a JPEG stream reaches its end-of-image marker. The `image` crate decodes JPEG
/// leniently and fills a truncated scan with gray instead of failing, which would silently
/// upscale a half-downloaded photo. Segments are skipped by their length (so an embedded
/// thumbnail's marker does not count) and anything after the marker is ignored (so appended
/// trailers are fine).
fn jpeg_is_complete(data: &[u8]) -> bool {
    let mut i = 2; // past SOI
    while i + 1 < data.len() {
        if data[i] != 0xFF {
            i += 1; // entropy-coded data
            continue;
        }
        match data[i + 1] {
            0xD9 => return true,
            0xFF => i += 1,                      // fill byte
            0x00 | 0x01 | 0xD0..=0xD7 => i += 2, // stuffed 0xFF, TEM, restart: no length
            _ if i + 3 < data.len() => {
                i += 2 + usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]))
            }
            _ => return false,
        }
    }
    false
}

/// Whether samples of `color` have more than 8 bits (16-bit or float).
pub fn is_deep(color: image::ColorType) -> bool {
    color.bytes_per_pixel() > color.channel_count()
}

/// RGB and optional alpha planes of an in-memory image, scaled to `[0, 1]` (luma is
/// copied to all three colour planes).
pub fn image_to_planes(img: &DynamicImage) -> (Planar, Option<Planar>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    match img {
        DynamicImage::ImageLuma8(b) => split(b.as_raw(), 1, h, w, 255.0),
        DynamicImage::ImageLumaA8(b) => split(b.as_raw(), 2, h, w, 255.0),
        DynamicImage::ImageRgb8(b) => split(b.as_raw(), 3, h, w, 255.0),
        DynamicImage::ImageRgba8(b) => split(b.as_raw(), 4, h, w, 255.0),
        DynamicImage::ImageLuma16(b) => split(b.as_raw(), 1, h, w, 65535.0),
        DynamicImage::ImageLumaA16(b) => split(b.as_raw(), 2, h, w, 65535.0),
        DynamicImage::ImageRgb16(b) => split(b.as_raw(), 3, h, w, 65535.0),
        DynamicImage::ImageRgba16(b) => split(b.as_raw(), 4, h, w, 65535.0),
        DynamicImage::ImageRgb32F(b) => split(b.as_raw(), 3, h, w, 1.0),
        DynamicImage::ImageRgba32F(b) => split(b.as_raw(), 4, h, w, 1.0),
        other => split(other.to_rgba32f().as_raw(), 4, h, w, 1.0),
    }
}

/// `channels` is 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA); luma is copied into all three colour
/// planes. Samples are divided by `max` directly from their integer values, so 16-bit data
/// keeps all of its precision.
fn split<T: Copy + Into<f32>>(
    raw: &[T],
    channels: usize,
    h: usize,
    w: usize,
    max: f32,
) -> (Planar, Option<Planar>) {
    let n = h * w;
    let colour = if channels >= 3 { 3 } else { 1 };
    let mut rgb = vec![0.0; 3 * n];
    let mut alpha = channels.is_multiple_of(2).then(|| vec![0.0; n]);
    let norm = |v: T| (v.into() / max).clamp(0.0, 1.0);
    for (i, px) in raw.chunks_exact(channels).enumerate() {
        for c in 0..3 {
            rgb[c * n + i] = norm(px[c.min(colour - 1)]);
        }
        if let Some(a) = alpha.as_mut() {
            a[i] = norm(px[channels - 1]);
        }
    }
    (
        Planar::new(3, h, w, rgb),
        alpha.map(|a| Planar::new(1, h, w, a)),
    )
}

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Png,
    Jpeg,
    /// Lossless only: the `image` crate has no lossy WebP encoder. WebP has no grayscale
    /// storage, so grayscale output is stored as RGB.
    Webp,
    Tiff,
}

impl OutputFormat {
    /// Recognises `png`, `jpg`/`jpeg`, `webp`, `tif`/`tiff` in any case, without the dot.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
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

    /// The conventional extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Tiff => "tiff",
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
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_extension(s.trim_start_matches('.')).ok_or_else(|| {
            format!("unknown output format '{s}' (expected png, jpeg, webp or tiff)")
        })
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// How [`encode_file`] writes an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    pub format: OutputFormat,
    /// JPEG quality, 1–100; ignored by the other (lossless) formats.
    pub quality: u8,
    /// Write 16 bits per sample. Honoured by PNG and TIFF; the others fall back to 8 bits.
    pub sixteen_bit: bool,
    /// Write a single luma channel (plus alpha). WebP stores it as RGB; TIFF with alpha is
    /// written as RGBA, a layout more readers take than gray+alpha.
    pub grayscale: bool,
    /// Attached to the output unchanged.
    pub icc_profile: Option<Vec<u8>>,
    /// Attached to PNG, JPEG and WebP outputs with the pixel dimensions set to the output's.
    pub exif: Option<Vec<u8>>,
}

impl EncodeOptions {
    /// 8-bit RGB, JPEG quality 95 (upscaled detail suffers visibly at the usual 75).
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            quality: 95,
            sixteen_bit: false,
            grayscale: false,
            icc_profile: None,
            exif: None,
        }
    }

    /// Options that preserve `source`'s bit depth, grayness, ICC profile and EXIF metadata.
    pub fn matching(format: OutputFormat, source: &DecodedImage) -> Self {
        Self {
            sixteen_bit: source.sixteen_bit,
            grayscale: source.grayscale,
            icc_profile: source.icc_profile.clone(),
            exif: source.exif.clone(),
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
struct Encoded<'a> {
    path: &'a Path,
    buf: Vec<u8>,
    color: ExtendedColorType,
    width: u32,
    height: u32,
    opts: &'a EncodeOptions,
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
        // Gray with alpha as TIFF is RGBA: the image crate (like other readers) does not
        // read gray+alpha TIFF back.
        let gray = opts.grayscale && !(format == OutputFormat::Tiff && alpha.is_some());
        let (buf, color) = quantise_planes(rgb, alpha, gray, deep);
        Ok(Self {
            path,
            buf,
            color,
            width,
            height,
            opts,
        })
    }

    /// Encodes into `w` in the options' format.
    fn write(&self, w: impl Write + Seek) -> Result<(), ImageIoError> {
        let written = match self.opts.format {
            OutputFormat::Png => self.encode_with(PngEncoder::new(w)),
            OutputFormat::Jpeg => self.encode_with(JpegEncoder::new_with_quality(
                w,
                self.opts.quality.clamp(1, 100),
            )),
            OutputFormat::Webp => self.encode_with(WebPEncoder::new_lossless(w)),
            OutputFormat::Tiff => self.encode_tiff(w).map_err(|e| match e {
                tiff::TiffError::IoError(e) => ImageError::IoError(e),
                e => ImageError::Encoding(image::error::EncodingError::new(
                    ImageFormat::Tiff.into(),
                    e,
                )),
            }),
        };
        written.map_err(|e| ImageIoError::from_encode(self.path, e))
    }

    /// The ICC profile to embed: the source's, where it describes the samples written.
    fn icc_profile(&self) -> Option<&Vec<u8>> {
        let gray = matches!(
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

    /// TIFF through the tiff crate, which (unlike the `image` crate's encoder) can say
    /// that the fourth sample is alpha (ExtraSamples).
    fn encode_tiff(&self, w: impl Write + Seek) -> tiff::TiffResult<()> {
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

    fn encode_with(&self, mut enc: impl ImageEncoder) -> ImageResult<()> {
        if let Some(icc) = self.icc_profile() {
            enc.set_icc_profile(icc.clone())
                .map_err(ImageError::Unsupported)?;
        }
        if let Some(exif) = &self.opts.exif {
            // TIFF's encoder cannot carry EXIF; the image matters more than its metadata.
            let _ = enc.set_exif_metadata(super::exif::with_dimensions(
                exif.clone(),
                self.width,
                self.height,
            ));
        }
        enc.write_image(&self.buf, self.width, self.height, self.color)
    }
}

/// Whether an ICC profile is for the colour model of the samples written: a CMYK profile
/// (kept from a print JPEG, whose samples were converted to RGB) or a gray one over RGB
/// samples would make colour-managed viewers misrender or reject the file.
fn icc_describes(icc: &[u8], gray: bool) -> bool {
    // The header's data colour space field.
    icc.get(16..20) == Some(if gray { b"GRAY" } else { b"RGB " })
}

/// Sets every colour sample `v` to `f(v, a)`, `a` being its pixel's alpha.
fn with_alpha(rgb: &mut Planar, alpha: &Planar, f: impl Fn(f32, f32) -> f32) {
    let n = alpha.data.len();
    for plane in rgb.data.chunks_exact_mut(n) {
        for (v, &a) in plane.iter_mut().zip(&alpha.data) {
            *v = f(*v, a);
        }
    }
}

/// Divides premultiplied colour by its alpha (fully transparent pixels keep their zero).
fn unpremultiply(rgb: &mut Planar, alpha: &Planar) {
    with_alpha(
        rgb,
        alpha,
        |v, a| if a > 0.0 { (v / a).min(1.0) } else { v },
    );
}

/// `rgb` composited over white by `alpha` (values in `[0, 1]`).
fn onto_white(rgb: &Planar, alpha: &Planar) -> Planar {
    let mut out = rgb.clone();
    with_alpha(&mut out, alpha, |v, a| v * a + (1.0 - a));
    out
}

/// Interleaved, quantised samples (native-endian bytes, as the encoders expect) and their
/// colour type: luma (Rec. 709 weights, as the `image` crate uses; for gray sources the
/// channels agree anyway and this only averages away the model's small colour noise) or
/// RGB, then alpha if given.
fn quantise_planes(
    rgb: &Planar,
    alpha: Option<&Planar>,
    gray: bool,
    deep: bool,
) -> (Vec<u8>, ExtendedColorType) {
    let luma: Vec<f32>;
    let mut planes: Vec<&[f32]> = if gray {
        let (r, g, b) = (rgb.plane(0), rgb.plane(1), rgb.plane(2));
        luma = (0..r.len())
            .map(|i| 0.2126 * r[i] + 0.7152 * g[i] + 0.0722 * b[i])
            .collect();
        vec![&luma]
    } else {
        (0..3).map(|c| rgb.plane(c)).collect()
    };
    planes.extend(alpha.map(|a| a.plane(0)));
    let color = match (planes.len(), deep) {
        (1, false) => ExtendedColorType::L8,
        (2, false) => ExtendedColorType::La8,
        (3, false) => ExtendedColorType::Rgb8,
        (4, false) => ExtendedColorType::Rgba8,
        (1, true) => ExtendedColorType::L16,
        (2, true) => ExtendedColorType::La16,
        (3, true) => ExtendedColorType::Rgb16,
        _ => ExtendedColorType::Rgba16,
    };
    (interleave(&planes, deep), color)
}

/// An in-memory image from `[0, 1]` planes, 16-bit when `sixteen_bit`, luma when `grayscale`,
/// quantised by rounding as files are.
pub fn planes_to_image(
    rgb: &Planar,
    alpha: Option<&Planar>,
    sixteen_bit: bool,
    grayscale: bool,
) -> DynamicImage {
    let (w, h) = (rgb.width as u32, rgb.height as u32);
    let (buf, color) = quantise_planes(rgb, alpha, grayscale, sixteen_bit);
    let wide = || {
        buf.chunks_exact(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect::<Vec<u16>>()
    };
    let img = match color {
        ExtendedColorType::L8 => {
            image::GrayImage::from_raw(w, h, buf).map(DynamicImage::ImageLuma8)
        }
        ExtendedColorType::La8 => {
            image::GrayAlphaImage::from_raw(w, h, buf).map(DynamicImage::ImageLumaA8)
        }
        ExtendedColorType::Rgb8 => {
            image::RgbImage::from_raw(w, h, buf).map(DynamicImage::ImageRgb8)
        }
        ExtendedColorType::Rgba8 => {
            image::RgbaImage::from_raw(w, h, buf).map(DynamicImage::ImageRgba8)
        }
        ExtendedColorType::L16 => {
            image::ImageBuffer::from_raw(w, h, wide()).map(DynamicImage::ImageLuma16)
        }
        ExtendedColorType::La16 => {
            image::ImageBuffer::from_raw(w, h, wide()).map(DynamicImage::ImageLumaA16)
        }
        ExtendedColorType::Rgb16 => {
            image::ImageBuffer::from_raw(w, h, wide()).map(DynamicImage::ImageRgb16)
        }
        _ => image::ImageBuffer::from_raw(w, h, wide()).map(DynamicImage::ImageRgba16),
    };
    img.expect("buffer size matches the planes")
}

/// Interleaves planes into a native-endian byte buffer, as the encoders expect.
fn interleave(planes: &[&[f32]], deep: bool) -> Vec<u8> {
    let quantise = |v: f32, max: f32| (v.clamp(0.0, 1.0) * max).round() as u16;
    let n = planes[0].len();
    let mut out = Vec::with_capacity(n * planes.len() * if deep { 2 } else { 1 });
    for i in 0..n {
        for p in planes {
            if deep {
                out.extend_from_slice(&quantise(p[i], 65535.0).to_ne_bytes());
            } else {
                out.push(quantise(p[i], 255.0) as u8);
            }
        }
    }
    out
}

/// Maps `[0, 1]` image values to the model's `[-1, 1]` range.
pub fn to_model_range(p: Planar) -> Planar {
    p.map(|v| v * 2.0 - 1.0)
}

/// Maps the model's `[-1, 1]` range back to `[0, 1]`. No clamping: [`encode_file`] clamps
/// when it quantises, and intermediate consumers may want the raw values.
pub fn from_model_range(p: Planar) -> Planar {
    p.map(|v| (v + 1.0) * 0.5)
}

#[cfg(test)]
#[path = "../../tests/common/exif.rs"]
mod exif;

#[cfg(test)]
mod tests {
    use super::exif::with_exif_orientation;
    use super::*;

    const ALL: [OutputFormat; 4] = [
        OutputFormat::Png,
        OutputFormat::Jpeg,
        OutputFormat::Webp,
        OutputFormat::Tiff,
    ];

    /// A smooth colour gradient (so JPEG stays close) sampled on the 8-bit grid.
    fn gradient(h: usize, w: usize) -> Planar {
        let mut data = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = (x * 7 + y * 5 + c * 40) % 256;
                    data.push(v as f32 / 255.0);
                }
            }
        }
        Planar::new(3, h, w, data)
    }

    fn ramp(h: usize, w: usize, seed: usize) -> Planar {
        let data = (0..h * w)
            .map(|i| ((i * 37 + seed) % 256) as f32 / 255.0)
            .collect();
        Planar::new(1, h, w, data)
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    #[test]
    fn round_trip_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let img = gradient(12, 20);
        for fmt in ALL {
            let path = dir.path().join(format!("out.{}", fmt.extension()));
            encode_file(&path, &img, None, &EncodeOptions::new(fmt)).unwrap();
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
    fn format_is_detected_from_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actually_png.jpg");
        encode_file(
            &path,
            &gradient(4, 4),
            None,
            &EncodeOptions::new(OutputFormat::Png),
        )
        .unwrap();
        assert_eq!(
            decode_file(&path, &limits()).unwrap().format,
            InputFormat::Png
        );
    }

    /// A 5×3 RGB image of eight flat colours (so GIF's palette holds it exactly).
    fn eight_colours() -> image::RgbImage {
        image::RgbImage::from_fn(5, 3, |x, y| {
            let k = (x + 2 * y) % 8;
            image::Rgb([(k * 32) as u8, (255 - k * 30) as u8, (k * 70 % 256) as u8])
        })
    }

    #[test]
    fn every_input_format_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let src = eight_colours();
        let want = image_to_planes(&DynamicImage::ImageRgb8(src.clone())).0;
        // JPEG XL, which the image crate cannot write, has its own tests below.
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
        assert!(!has_input_extension(Path::new("a/b.exr")));
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
        let opts = EncodeOptions::new(OutputFormat::Png);
        let png = encode_bytes(Path::new("x.png"), &gradient(3, 2), None, &opts).unwrap();
        assert_eq!(several(InputFormat::Png, &png), None);
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
            encode_file(&path, &img, Some(&alpha), &EncodeOptions::new(fmt)).unwrap();
            let d = decode_file(&path, &limits()).unwrap();
            if fmt == OutputFormat::Jpeg {
                assert!(d.alpha.is_none());
            } else {
                assert_eq!(d.alpha.as_ref(), Some(&alpha), "{fmt}");
                assert_eq!(d.rgb, img, "{fmt}");
            }
        }
    }

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
        // Gray + alpha: PNG keeps LA.
        let path = dir.path().join("la.png");
        let opts = EncodeOptions {
            grayscale: true,
            ..EncodeOptions::new(OutputFormat::Png)
        };
        encode_file(&path, &rgb, Some(&alpha), &opts).unwrap();
        let d = decode_file(&path, &limits()).unwrap();
        assert!(d.grayscale);
        assert_eq!(d.alpha.as_ref(), Some(&alpha));
    }

    #[test]
    fn quantisation_rounds_and_clamps() {
        let planes: [&[f32]; 1] = [&[0.5 / 255.0 + 1e-4, 0.49 / 255.0, -0.3, 1.7, f32::NAN]];
        assert_eq!(interleave(&planes, false), vec![1, 0, 0, 255, 0]);
        let planes: [&[f32]; 1] = [&[1.0, 0.5]];
        let deep = interleave(&planes, true);
        assert_eq!(
            deep,
            [65535u16.to_ne_bytes(), 32768u16.to_ne_bytes()].concat()
        );
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

    #[test]
    fn icc_profile_survives_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let profile = |space: &[u8; 4]| {
            let mut icc: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
            icc[16..20].copy_from_slice(space);
            icc
        };
        for format in [OutputFormat::Png, OutputFormat::Tiff, OutputFormat::Jpeg] {
            let path = dir.path().join(format!("icc.{}", format.extension()));
            let written = |icc: Vec<u8>, grayscale: bool| {
                let opts = EncodeOptions {
                    icc_profile: Some(icc),
                    grayscale,
                    ..EncodeOptions::new(format)
                };
                encode_file(&path, &gradient(4, 4), None, &opts).unwrap();
                decode_file(&path, &limits()).unwrap().icc_profile
            };
            let (rgb, gray, cmyk) = (profile(b"RGB "), profile(b"GRAY"), profile(b"CMYK"));
            assert_eq!(written(rgb.clone(), false), Some(rgb.clone()), "{format}");
            assert_eq!(written(gray.clone(), true), Some(gray.clone()), "{format}");
            // A profile for another colour model than the samples written is left out.
            assert_eq!(written(cmyk, false), None, "{format}");
            assert_eq!(written(gray, false), None, "{format}");
            assert_eq!(written(rgb, true), None, "{format}");
        }
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
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        // A recognised but unsupported format.
        let e = decode_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n", &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
        for (head, name) in [
            (&b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"[..], "HEIF/HEIC"),
            (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "AVIF"),
        ] {
            let e = decode_bytes(head, &limits()).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{name} (convert it to PNG or JPEG first)")),
                "{e}"
            );
        }
        // A GIF header with no image after it.
        let e = decode_bytes(b"GIF89a\x01\0\x01\0\0\0\0", &limits()).unwrap_err();
        assert!(matches!(e, ImageIoError::Corrupt { .. }), "{e}");
    }

    fn format_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats")
            .join(name)
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
        assert_eq!(jxl_frames(&bytes, &limits()), Ok(3));
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
        encode_file(
            &path,
            &gradient(5, 5),
            None,
            &EncodeOptions::new(OutputFormat::Webp),
        )
        .unwrap();
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

    #[test]
    fn model_range_round_trip() {
        let p = gradient(3, 3);
        let m = to_model_range(p.clone());
        assert!(m.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(m.data[0], p.data[0] * 2.0 - 1.0);
        assert!(from_model_range(m).max_abs_diff(&p) < 1e-6);
        let out = from_model_range(Planar::new(1, 1, 2, vec![-1.5, 1.5]));
        assert_eq!(out.data, vec![-0.25, 1.25]);
    }
}
