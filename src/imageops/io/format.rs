//! Which format a file holds, told from its first bytes or its name, and which files
//! a folder holds.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use image::{ImageDecoder, ImageFormat, ImageReader};
use jxl_oxide::JxlImage;

use super::avif::AvifDecoder;
use super::encode::OutputFormat;
use super::heic::HeicDecoder;
use super::heif::{brands, HeifDecoder};
use super::jpeg::{JpegDecoder, JpegFacts};
use crate::imageops::density::{Density, DensityUnit};

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
    /// Decoded by rav1d (see `avif`); the `image` crate's AVIF decoder needs a C library.
    Avif,
    /// HEIF with HEVC pictures, as phones write photos; decoded by heic-decoder.
    Heic,
}

impl InputFormat {
    /// Every accepted input format.
    pub const ALL: [Self; 12] = [
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
        Self::Avif,
        Self::Heic,
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
            Self::JpegXl | Self::Avif | Self::Heic => return None,
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
        if ext.eq_ignore_ascii_case("avif") {
            return Some(Self::Avif);
        }
        if ["heic", "heif", "hif"]
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e))
        {
            return Some(Self::Heic);
        }
        // Spellings the image crate does not know.
        let ext = match ext.to_ascii_lowercase().as_str() {
            "jpe" | "jif" => "jpg",
            "dib" => "bmp",
            _ => ext,
        };
        ImageFormat::from_extension(ext).and_then(Self::from_image_format)
    }

    /// The format `head`, a file's first bytes, opens with. TGA has no signature, so only
    /// the name of the file it came from (`path`) can tell it.
    pub fn detect(head: &[u8], path: &Path) -> Option<Self> {
        if head.starts_with(JXL_CODESTREAM) || head.starts_with(JXL_CONTAINER) {
            return Some(Self::JpegXl);
        }
        if is_avif(head) {
            return Some(Self::Avif);
        }
        if is_heic(head) {
            return Some(Self::Heic);
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
            Self::Avif => "AVIF",
            Self::Heic => "HEIC",
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

/// The extensions of camera raw formats. Most are TIFF containers whose first image is a
/// small preview (the photo itself is undeveloped sensor data elsewhere in the file), the
/// rest formats of their own; no raw developer is built in.
const CAMERA_RAW_EXTENSIONS: [&str; 25] = [
    "3fr", "arw", "cr2", "cr3", "crw", "dcr", "dng", "erf", "iiq", "kdc", "mef", "mos", "mrw",
    "nef", "nrw", "orf", "pef", "raf", "raw", "rw2", "rwl", "sr2", "srf", "srw", "x3f",
];

/// The camera raw format `path`'s extension names (`NEF`), if any.
pub fn camera_raw_extension(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    CAMERA_RAW_EXTENSIONS
        .contains(&ext.as_str())
        .then(|| ext.to_ascii_uppercase())
}

/// Why a camera raw file of the format `kind` is refused, and what to do instead.
pub fn camera_raw_refusal(kind: &str) -> String {
    format!(
        "a camera raw file ({kind}), whose photo is undeveloped sensor data; develop it to \
         TIFF, PNG or JPEG with a raw converter (darktable, RawTherapee, the camera maker's \
         software) and upscale that"
    )
}

/// Whether `path`'s extension names an input format (for directory listings).
pub fn has_input_extension(path: &Path) -> bool {
    InputFormat::from_path(path).is_some()
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

/// Whether orientation `o` turns the image by a quarter, trading its width for its height.
pub(super) fn quarter_turn(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
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
    fn upright_size(mut decoder: impl ImageDecoder) -> (u32, u32) {
        let (w, h) = decoder.dimensions();
        if decoder.orientation().ok().is_some_and(quarter_turn) {
            (w, h)
        } else {
            (h, w)
        }
    }
    let format = InputFormat::detect(bytes, name)?;
    let size = match (format, format.image_format()) {
        (InputFormat::Jpeg, _) => JpegDecoder::new(bytes, &JpegFacts::read(bytes))
            .ok()
            .map(upright_size),
        (_, Some(f)) => ImageReader::with_format(Cursor::new(bytes), f)
            .into_decoder()
            .ok()
            .map(upright_size),
        (InputFormat::Avif, _) => AvifDecoder::new(bytes)
            .ok()
            .map(|d| upright_size(HeifDecoder(d))),
        (InputFormat::Heic, _) => HeicDecoder::new(bytes)
            .ok()
            .map(|d| upright_size(HeifDecoder(d))),
        (_, None) => JxlImage::builder()
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

/// Whether `head` opens an AVIF file: an ISO-BMFF file of the AVIF image or sequence
/// brand, major or compatible (a file may be branded `mif1` first).
fn is_avif(head: &[u8]) -> bool {
    brands(head).iter().any(|b| b == b"avif" || b == b"avis")
}

/// Whether `head` opens a HEIC file: an ISO-BMFF file of a HEVC image brand, or of the
/// generic HEIF ones (`mif1`, `msf1`) and not AVIF (its decoder tells what it holds).
fn is_heic(head: &[u8]) -> bool {
    const HEIC: [&[u8; 4]; 8] = [
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
    ];
    brands(head).iter().any(|b| HEIC.contains(&b))
}

/// Whether the file whose first bytes are `head` stores its colours through a
/// palette: every GIF, and the colour-mapped kinds of PNG, BMP and TGA. Decoders give such
/// images as RGB even where the palette is gray. (A colour-mapped TIFF is told by its
/// directory; see [`TiffFacts`](super::tiff::TiffFacts).)
pub(super) fn is_colour_mapped(format: InputFormat, head: &[u8]) -> bool {
    match format {
        InputFormat::Gif => true,
        // The IHDR chunk, always first: colour type 3.
        InputFormat::Png => head.get(25) == Some(&3),
        // The info header's bit count, after the 14-byte file header: at 24 in the OS/2
        // header (12 bytes long), at 28 in the others. Up to 8 bits, pixels are indices.
        InputFormat::Bmp => {
            let header_len = head.get(14..18).map(|b| b == [12, 0, 0, 0]);
            let at = if header_len == Some(true) { 24 } else { 28 };
            head.get(at..at + 2)
                .is_some_and(|b| matches!(u16::from_le_bytes([b[0], b[1]]), 1 | 2 | 4 | 8))
        }
        // Image type 1 (colour-mapped) or 9 (colour-mapped, run-length encoded).
        InputFormat::Tga => matches!(head.get(2), Some(1 | 9)),
        _ => false,
    }
}

/// A BMP's density: the info header's pixels per metre across and down, at 38 and 42
/// (the OS/2 header, 12 bytes long, has none; 0 means unknown).
pub(super) fn bmp_density(head: &[u8]) -> Option<Density> {
    let field = |at: usize| -> Option<f64> {
        let b: [u8; 4] = head.get(at..at + 4)?.try_into().ok()?;
        Some(f64::from(i32::from_le_bytes(b)))
    };
    let header_len = u32::from_le_bytes(head.get(14..18)?.try_into().ok()?);
    if header_len < 40 {
        return None;
    }
    Density::new(field(38)?, field(42)?, DensityUnit::Metre)
}

/// What the file holds beyond its first image (animation frames), named for a warning:
/// only the first is read. TIFF pages and PNG animations are among the
/// [`TiffFacts`](super::tiff::TiffFacts) and [`PngFacts`](super::png::PngFacts). Leaves
/// `reader` at the start.
pub(super) fn several_images(
    format: InputFormat,
    reader: &mut (impl BufRead + Seek),
) -> Option<&'static str> {
    use image::codecs::{gif::GifDecoder, webp::WebPDecoder};
    use image::AnimationDecoder;
    let several = match format {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_raw_is_told_by_its_extension() {
        assert_eq!(
            camera_raw_extension(Path::new("a/IMG_1.CR2")).as_deref(),
            Some("CR2")
        );
        assert_eq!(
            camera_raw_extension(Path::new("x.nef")).as_deref(),
            Some("NEF")
        );
        assert_eq!(camera_raw_extension(Path::new("x.tif")), None);
        assert_eq!(camera_raw_extension(Path::new("raw")), None);
    }

    #[test]
    fn less_common_spellings_name_their_formats() {
        for (name, format) in [
            ("a.JPE", InputFormat::Jpeg),
            ("a.jif", InputFormat::Jpeg),
            ("a.jfif", InputFormat::Jpeg),
            ("a.dib", InputFormat::Bmp),
            ("a.PPM", InputFormat::Pnm),
            ("a.hif", InputFormat::Heic),
        ] {
            assert_eq!(
                InputFormat::from_path(Path::new(name)),
                Some(format),
                "{name}"
            );
        }
        assert_eq!(InputFormat::from_path(Path::new("a.jpx")), None);
    }
    use crate::imageops::io::test_support::{gradient, limits};
    use crate::imageops::io::{decode_file, encode_file, EncodeOptions};

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

    /// Palette images are told from their headers; the true-colour and gray kinds of the same
    /// formats, and formats without palettes, are not colour-mapped.
    #[test]
    fn colour_mapped_headers() {
        let png = |colour_type: u8| {
            let mut head = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x02\0\0\0\x01\x08".to_vec();
            head.push(colour_type);
            head
        };
        // File header, then the info header's length and, for a 40-byte header, width,
        // height and planes before the bit count; for the 12-byte OS/2 header, shorter ones.
        let bmp = |header_len: u8, bits: u8| {
            let mut head = vec![0u8; 30];
            head[..2].copy_from_slice(b"BM");
            head[14] = header_len;
            head[if header_len == 12 { 24 } else { 28 }] = bits;
            head
        };
        let tga = |image_type: u8| vec![0, u8::from(matches!(image_type, 1 | 9)), image_type];
        let mapped = |format, head: Vec<u8>| is_colour_mapped(format, &head);
        assert!(mapped(InputFormat::Png, png(3)));
        assert!(!mapped(InputFormat::Png, png(2)));
        assert!(!mapped(InputFormat::Png, png(0)));
        for bits in [1, 4, 8] {
            assert!(mapped(InputFormat::Bmp, bmp(40, bits)), "{bits}");
            assert!(mapped(InputFormat::Bmp, bmp(12, bits)), "OS/2 {bits}");
        }
        assert!(!mapped(InputFormat::Bmp, bmp(40, 24)));
        assert!(!mapped(InputFormat::Bmp, bmp(124, 32)));
        assert!(!mapped(InputFormat::Bmp, bmp(12, 24)));
        assert!(mapped(InputFormat::Tga, tga(1)) && mapped(InputFormat::Tga, tga(9)));
        assert!(!mapped(InputFormat::Tga, tga(2)) && !mapped(InputFormat::Tga, tga(3)));
        assert!(mapped(InputFormat::Gif, Vec::new()));
        assert!(!mapped(InputFormat::Qoi, Vec::new()));
        assert!(!mapped(InputFormat::Bmp, b"BM".to_vec()));
    }
}
