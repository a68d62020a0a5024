//! Decoding and encoding image files.
//!
//! Decoding turns PNG, JPEG, WebP, TIFF, BMP, GIF, TGA, PNM, QOI, JPEG XL, AVIF and HEIC
//! files into [`Planar`] images in `[0, 1]`, upright (orientation applied), with alpha split
//! off and 16-bit precision kept, and reports what the caller needs to write a faithful
//! result back: bit depth, grayness, the colour space (ICC profile, PNG colour chunks), the
//! physical density and the EXIF, XMP and IPTC metadata. Encoding writes PNG, JPEG, WebP or
//! TIFF atomically, so an interrupted or failed run never leaves a truncated output file
//! behind.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use image::ImageError;

use super::density::Density;
use super::iptc::Iptc;
use super::Planar;

mod avif;
mod decode;
mod encode;
mod format;
mod heic;
mod heif;
mod jpeg;
mod planes;
mod png;
#[cfg(test)]
mod test_support;
mod tga;
mod tiff;
mod webp;

pub use self::png::PngColour;
pub use avif::{avif_child_main, decode_avif_in_child_process, AVIF_CHILD_COMMAND};
pub use decode::{decode_bytes, decode_file, decode_named_bytes, decode_rgb};
pub use encode::{check_writable, encode_bytes, encode_file, EncodeOptions, OutputFormat};
pub use format::{
    has_input_extension, image_files, input_format_names, peek, peek_file, InputFormat, Peek,
};
pub use planes::{from_model_range, image_to_planes, is_deep, planes_to_image, to_model_range};

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
    /// The file stored gray samples, or is colour-mapped with only gray pixels and no RGB
    /// ICC profile, so the output can be written as grayscale.
    pub grayscale: bool,
    /// The embedded ICC profile, to be attached to the output unchanged: the model works on
    /// the encoded values and does no colour management.
    pub icc_profile: Option<Vec<u8>>,
    /// A PNG's sRGB, gAMA, cHRM, cICP, mDCV and cLLI chunks, for the same reason.
    pub png_colour: PngColour,
    /// The EXIF metadata as a chunk of TIFF data, as PNG, JPEG, WebP, JPEG XL and HEIF files
    /// hold it (a TIFF's own EXIF tags are gathered into one); orientation reset, since it
    /// has been applied.
    pub exif: Option<Vec<u8>>,
    /// The XMP packet, well-formed XML as read (rewritten for the output when written).
    pub xmp: Option<Vec<u8>>,
    /// The IPTC-IIM record (JPEG, TIFF).
    pub iptc: Option<Iptc>,
    /// The physical pixel density, upright: the format's own (PNG pHYs, JFIF, TIFF tags,
    /// BMP header), else the EXIF one.
    pub density: Option<Density>,
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
    /// The most bytes an encoded image within these limits is taken to hold: twice its
    /// pixels raw at 16-bit RGBA (no format's worst case comes near) and 64 MiB of
    /// metadata, within `max_alloc`. A stream, which must be read whole before it is
    /// decoded, is refused past it.
    pub fn max_encoded_bytes(&self) -> u64 {
        let raw = u64::from(self.max_width) * u64::from(self.max_height) * 8;
        (2 * raw + (64 << 20)).min(self.max_alloc)
    }

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
                detail: format!(
                    "{} (what its header declares needs more than the decoding budget)",
                    one_line(e)
                ),
            },
            // What a decoder here refuses reads as "AVIF with …", as when parsing refuses it.
            ImageError::Unsupported(e) => Self::Unsupported {
                path,
                detail: one_line(match (e.format_hint(), e.kind()) {
                    (
                        image::error::ImageFormatHint::Name(format),
                        image::error::UnsupportedErrorKind::GenericFeature(feature),
                    ) => format!("{format} with {feature}"),
                    _ => e.to_string(),
                }),
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
            ImageError::IoError(cause) if cause.kind() == io::ErrorKind::UnexpectedEof => {
                Self::Corrupt {
                    path,
                    detail: ENDS_EARLY.into(),
                }
            }
            // JPEG variants that the decoder reports as decoding errors are refused
            // before it runs (see jpeg::JpegFacts::unsupported).
            ImageError::Decoding(e) => Self::Corrupt {
                path,
                detail: one_line(decoding_cause(&e)),
            },
            e => Self::Corrupt {
                path,
                detail: one_line(e),
            },
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

/// What a decoding error says, without the image crate's "Format error decoding FORMAT: "
/// wrapping (which some decoders nest): the first cause that is the decoder's own.
fn decoding_cause(e: &image::error::DecodingError) -> &(dyn std::error::Error + 'static) {
    use std::error::Error;
    let mut cause: &(dyn Error + 'static) = e;
    while let Some(inner) = cause.source() {
        let wrapper = cause.is::<image::error::DecodingError>()
            || matches!(
                cause.downcast_ref::<ImageError>(),
                Some(ImageError::Decoding(_))
            );
        if !wrapper {
            break;
        }
        cause = inner;
    }
    cause
}

/// What a file cut short is said to be, wherever a decoder notices it.
const ENDS_EARLY: &str = "the data ends early";

/// Some decoder messages end in a newline, and some are Debug-quoted strings (`"… \n"`);
/// ours are plain single lines.
fn one_line(e: impl fmt::Display) -> String {
    let text = e.to_string();
    let text = text.trim();
    let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\n", "\n").replace("\\\"", "\""),
        None => text.to_string(),
    };
    plain_chunk_types(text.trim()).replace('\n', "; ")
}

/// `text` with the png crate's chunk types (printed as their Debug structure, `ChunkType
/// { type: IDAT, critical: true, … }`) as their four letters, `'IDAT'`.
fn plain_chunk_types(text: &str) -> String {
    const OPEN: &str = "ChunkType { type: ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let (Some(name_end), Some(close)) = (after.find(", critical:"), after.find(" }")) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&format!("'{}'", &after[..name_end]));
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}
