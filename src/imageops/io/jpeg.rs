//! JPEG: what a file's markers tell before it is decoded, the decoder that reads it, and
//! the XMP segment added to what the image crate's encoder writes.
//!
//! The image crate's decoder (zune-jpeg) reads the common files; the markers settle what
//! it would get wrong. Variants no decoder here reads are refused by name, sampling
//! layouts it garbles are read by jpeg-decoder, and the EXIF segment used is the first,
//! as other readers take it (the image crate keeps the last).

use std::io::{Cursor, Write};

use image::codecs::jpeg::JpegEncoder;
use image::error::DecodingError;
use image::{ColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageResult, Limits};

use super::encode::Encoded;
use crate::imageops::density::Density;
use crate::imageops::iptc::{self, Iptc};
use crate::imageops::xmp;

/// What a JPEG stream's markers tell.
pub(super) struct JpegFacts<'a> {
    /// Whether the stream reaches its end-of-image marker (what follows it, an appended
    /// trailer, does not matter). The image crate decodes JPEG leniently and fills a
    /// truncated scan with gray instead of failing, which would silently upscale a
    /// half-downloaded photo.
    pub complete: bool,
    frame: Option<Frame>,
    /// The contents of the first EXIF segment (APP1 `Exif\0\0`) before the first scan:
    /// TIFF data.
    exif: Option<&'a [u8]>,
    /// The first XMP packet (APP1 with the XMP namespace) before the first scan.
    xmp: Option<&'a [u8]>,
    /// The Photoshop image resources of the APP13 segments before the first scan, joined.
    photoshop: Vec<u8>,
    /// The density of the first JFIF segment (APP0 `JFIF\0`) before the first scan.
    pub density: Option<Density>,
}

/// The first frame header (SOFn).
struct Frame {
    /// n of SOFn: the coding process.
    process: u8,
    /// Bits per sample.
    precision: u8,
    /// Each component's horizontal and vertical sampling factors.
    sampling: Vec<(u8, u8)>,
}

impl<'a> JpegFacts<'a> {
    /// Reads the markers of `data`, a whole file or its head.
    pub fn read(data: &'a [u8]) -> Self {
        let mut facts = Self {
            complete: false,
            frame: None,
            exif: None,
            xmp: None,
            photoshop: Vec::new(),
            density: None,
        };
        let mut header = true;
        let mut jfif = false;
        for (marker, contents) in Markers::new(data) {
            match marker {
                EOI => {
                    facts.complete = true;
                    break;
                }
                SOS => header = false,
                APP13 if header => {
                    if let Some(resources) = contents.strip_prefix(iptc::JPEG_SIGNATURE) {
                        facts.photoshop.extend(resources);
                    }
                }
                APP0 if header && !jfif => {
                    if let Some(&[_, _, units, x0, x1, y0, y1, ..]) =
                        contents.strip_prefix(b"JFIF\0")
                    {
                        let (x, y) = (u16::from_be_bytes([x0, x1]), u16::from_be_bytes([y0, y1]));
                        facts.density = Density::from_jfif(units, x, y);
                        jfif = true;
                    }
                }
                APP1 if header => {
                    if facts.exif.is_none() {
                        facts.exif = contents.strip_prefix(EXIF_SIGNATURE);
                    }
                    if facts.xmp.is_none() {
                        facts.xmp = contents.strip_prefix(xmp::JPEG_SIGNATURE);
                    }
                }
                // SOF0–SOF15, less DHT, JPG and DAC, which share the range.
                0xC0..=0xCF
                    if header && facts.frame.is_none() && !matches!(marker, 0xC4 | 0xC8 | 0xCC) =>
                {
                    facts.frame = Frame::read(marker - 0xC0, contents);
                }
                SOF55 if header && facts.frame.is_none() => {
                    facts.frame = Frame::read(55, contents);
                }
                _ => {}
            }
        }
        facts
    }

    /// The IPTC-IIM record among the Photoshop image resources, if any.
    pub fn iptc(&self) -> Option<Iptc> {
        Iptc::from_resources(&self.photoshop)
    }

    /// Why no decoder here reads the image, for the variants refused: coding processes
    /// other than Huffman-coded sequential and progressive DCT, samples of other than 8
    /// bits, and CMYK (or other 4-component) files in a sampling layout zune-jpeg
    /// garbles, whose colours jpeg-decoder would not convert as zune-jpeg does.
    pub fn unsupported(&self) -> Option<String> {
        let frame = self.frame.as_ref()?;
        let n = frame.process;
        let variant = match n {
            3 => "lossless JPEG".to_string(),
            5..=7 => "hierarchical JPEG".into(),
            9 | 10 => "arithmetic-coded JPEG".into(),
            11 => "lossless arithmetic-coded JPEG".into(),
            13..=15 => "hierarchical arithmetic-coded JPEG".into(),
            55 => "JPEG-LS".into(),
            _ if frame.precision != 8 => format!("{}-bit JPEG", frame.precision),
            _ if self.odd_sampling() && frame.sampling.len() != 3 => format!(
                "{}-component JPEG with sampling factors {}",
                frame.sampling.len(),
                frame.layout()
            ),
            _ => return None,
        };
        Some(format!(
            "{variant} (SOF{n}) is not supported; convert it to PNG"
        ))
    }

    /// Whether the sampling layout is one zune-jpeg cannot be trusted with: a component
    /// sampled more finely than the first (the luma) across comes out as stripes of
    /// garbage, or is refused as invalid when progressive; one finer only downwards
    /// decoded right in the files tried, but goes the same way rather than rely on it; a
    /// factor of 3 is refused. jpeg-decoder reads them all.
    fn odd_sampling(&self) -> bool {
        let Some(frame) = &self.frame else {
            return false;
        };
        let Some(&(h0, v0)) = frame.sampling.first() else {
            return false;
        };
        frame.sampling.len() > 1
            && frame
                .sampling
                .iter()
                .any(|&(h, v)| h > h0 || v > v0 || !h.is_power_of_two() || !v.is_power_of_two())
    }
}

impl Frame {
    /// Reads the contents of an SOFn segment: precision, height, width, the number of
    /// components, then for each its id, sampling factors and quantisation table.
    fn read(process: u8, contents: &[u8]) -> Option<Self> {
        let (&precision, rest) = contents.split_first()?;
        let count = usize::from(*rest.get(4)?);
        let sampling = rest
            .get(5..5 + 3 * count)?
            .chunks_exact(3)
            .map(|c| (c[1] >> 4, c[1] & 15))
            .collect();
        Some(Self {
            process,
            precision,
            sampling,
        })
    }

    /// The sampling factors as cjpeg's `-sample` takes them: "1x1,2x2,1x1".
    fn layout(&self) -> String {
        let factors: Vec<_> = self
            .sampling
            .iter()
            .map(|(h, v)| format!("{h}x{v}"))
            .collect();
        factors.join(",")
    }
}

/// The signature that opens an APP1 segment of EXIF data.
const EXIF_SIGNATURE: &[u8] = b"Exif\0\0";
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP13: u8 = 0xED;
const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;
/// JPEG-LS's start of frame (ITU-T T.87).
const SOF55: u8 = 0xF7;

/// The markers of a JPEG stream after SOI, each with its segment's contents (past the
/// length), up to the end-of-image marker. Segments are skipped by their length (so an
/// embedded thumbnail's markers do not count), as is entropy-coded data; markers without
/// a segment inside it (restarts, stuffed bytes) are passed over. Ends early where the
/// data does.
struct Markers<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Markers<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 2 }
    }
}

impl<'a> Iterator for Markers<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        while self.at + 1 < data.len() {
            let i = self.at;
            if data[i] != 0xFF {
                self.at += 1; // entropy-coded data
                continue;
            }
            match data[i + 1] {
                0xFF => self.at += 1,                      // fill byte
                0x00 | 0x01 | 0xD0..=0xD7 => self.at += 2, // stuffed 0xFF, TEM, restart
                EOI => {
                    self.at = data.len();
                    return Some((EOI, &[]));
                }
                marker => {
                    let length = u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]);
                    let end = i + 2 + usize::from(length);
                    let contents = data.get((i + 4).min(end)..end)?;
                    self.at = end;
                    return Some((marker, contents));
                }
            }
        }
        None
    }
}

/// A JPEG decoder for the image crate's pipeline: zune-jpeg (through the image crate) or,
/// for the sampling layouts it garbles, jpeg-decoder; either way with the first EXIF
/// segment, which also gives the orientation, and the first XMP packet.
pub(super) struct JpegDecoder<'a> {
    backend: Backend<'a>,
    exif: Option<Vec<u8>>,
    xmp: Option<Vec<u8>>,
}

enum Backend<'a> {
    Zune(image::codecs::jpeg::JpegDecoder<Cursor<&'a [u8]>>),
    /// Three components (YCbCr or RGB), so jpeg-decoder gives RGB; the header read.
    Fallback(
        Box<jpeg_decoder::Decoder<&'a [u8]>>,
        jpeg_decoder::ImageInfo,
    ),
}

impl<'a> JpegDecoder<'a> {
    /// A decoder of `data`, whose markers `facts` tell; the header is read.
    pub fn new(data: &'a [u8], facts: &JpegFacts<'a>) -> ImageResult<Self> {
        let fallback =
            facts.odd_sampling() && facts.frame.as_ref().is_some_and(|f| f.sampling.len() == 3);
        let backend = if fallback {
            let mut decoder = jpeg_decoder::Decoder::new(data);
            decoder.read_info().map_err(fallback_error)?;
            let info = decoder.info().expect("the header has been read");
            Backend::Fallback(Box::new(decoder), info)
        } else {
            Backend::Zune(image::codecs::jpeg::JpegDecoder::new(Cursor::new(data))?)
        };
        Ok(Self {
            backend,
            exif: facts.exif.map(<[u8]>::to_vec),
            xmp: facts.xmp.map(<[u8]>::to_vec),
        })
    }
}

fn fallback_error(e: jpeg_decoder::Error) -> ImageError {
    ImageError::Decoding(DecodingError::new(ImageFormat::Jpeg.into(), e))
}

impl ImageDecoder for JpegDecoder<'_> {
    fn dimensions(&self) -> (u32, u32) {
        match &self.backend {
            Backend::Zune(d) => d.dimensions(),
            Backend::Fallback(_, info) => (info.width.into(), info.height.into()),
        }
    }

    fn color_type(&self) -> ColorType {
        match &self.backend {
            Backend::Zune(d) => d.color_type(),
            Backend::Fallback(..) => ColorType::Rgb8,
        }
    }

    fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
        match &mut self.backend {
            Backend::Zune(d) => d.icc_profile(),
            Backend::Fallback(d, _) => Ok(d.icc_profile()),
        }
    }

    fn exif_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.exif.clone())
    }

    fn xmp_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        Ok(self.xmp.clone())
    }

    fn set_limits(&mut self, limits: Limits) -> ImageResult<()> {
        match &mut self.backend {
            Backend::Zune(d) => d.set_limits(limits),
            Backend::Fallback(d, info) => {
                limits.check_support(&image::LimitSupport::default())?;
                limits.check_dimensions(info.width.into(), info.height.into())?;
                if let Some(max) = limits.max_alloc {
                    d.set_max_decoding_buffer_size(usize::try_from(max).unwrap_or(usize::MAX));
                }
                Ok(())
            }
        }
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        match self.backend {
            Backend::Zune(d) => d.read_image(buf),
            Backend::Fallback(mut d, _) => {
                let pixels = d.decode().map_err(fallback_error)?;
                if pixels.len() != buf.len() {
                    return Err(fallback_error(jpeg_decoder::Error::Format(format!(
                        "{} bytes decoded where {} were expected",
                        pixels.len(),
                        buf.len()
                    ))));
                }
                buf.copy_from_slice(&pixels);
                Ok(())
            }
        }
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

impl Encoded<'_> {
    /// JPEG at the options' quality, with the XMP packet (APP1) and the IPTC record
    /// (APP13) after the encoder's own APPn segments (JFIF, Exif, ICC), where readers look
    /// for them.
    pub(super) fn encode_jpeg(&self, mut w: impl Write) -> ImageResult<()> {
        let xmp = self
            .xmp()
            .and_then(|xmp| self.segment(APP1, xmp::JPEG_SIGNATURE, &xmp, "XMP metadata"));
        let iptc = self.opts.iptc.as_ref().and_then(|iptc| {
            let resources = iptc.to_resources();
            self.segment(APP13, iptc::JPEG_SIGNATURE, &resources, "IPTC metadata")
        });
        let segments: Vec<Vec<u8>> = xmp.into_iter().chain(iptc).collect();
        if segments.is_empty() {
            return self.write_jpeg(w);
        }
        let mut file = Vec::new();
        self.write_jpeg(&mut file)?;
        // Past the APPn segments that open the stream.
        let mut markers = Markers::new(&file);
        let mut at = markers.at;
        while let Some((0xE0..=0xEF, _)) = markers.next() {
            at = markers.at;
        }
        w.write_all(&file[..at])?;
        for segment in segments {
            w.write_all(&segment)?;
        }
        w.write_all(&file[at..])?;
        Ok(())
    }

    /// The image through the image crate's encoder, with the ICC profile (which it splits
    /// over segments as ICC defines) and the EXIF chunk (which it does not: one too large
    /// for a segment is left out, with a warning).
    fn write_jpeg(&self, w: impl Write) -> ImageResult<()> {
        let mut encoder = self.jpeg_encoder(w);
        if let Some(icc) = self.icc_profile() {
            encoder
                .set_icc_profile(icc.clone())
                .map_err(ImageError::Unsupported)?;
        }
        let exif = self
            .exif()
            .filter(|exif| self.fits_segment(EXIF_SIGNATURE.len() + exif.len(), "EXIF metadata"));
        if let Some(exif) = exif {
            encoder
                .set_exif_metadata(exif)
                .map_err(ImageError::Unsupported)?;
        }
        encoder.write_image(&self.buf, self.width, self.height, self.color)
    }

    /// The segment `marker` with `signature` and `payload`; `None`, with a warning, where
    /// `what` is too large for one segment.
    fn segment(&self, marker: u8, signature: &[u8], payload: &[u8], what: &str) -> Option<Vec<u8>> {
        let contents = signature.len() + payload.len();
        if !self.fits_segment(contents, what) {
            return None;
        }
        let mut segment = vec![0xFF, marker];
        segment.extend((2 + contents as u16).to_be_bytes());
        segment.extend(signature);
        segment.extend(payload);
        Some(segment)
    }

    /// Whether `contents` bytes fit in one segment (its length field counts itself too);
    /// warns that `what` is left out where they do not.
    fn fits_segment(&self, contents: usize, what: &str) -> bool {
        let fits = contents <= usize::from(u16::MAX) - 2;
        if !fits {
            tracing::warn!(
                "{}: leaving out the {what}: {contents} bytes, more than a JPEG segment holds",
                self.path.display(),
            );
        }
        fits
    }

    /// The image crate's encoder at the options' quality, its JFIF segment giving the
    /// options' density (1:1 without a unit where there is none).
    fn jpeg_encoder<W: Write>(&self, w: W) -> JpegEncoder<W> {
        use image::codecs::jpeg::{PixelDensity, PixelDensityUnit};
        let mut encoder = JpegEncoder::new_with_quality(w, self.opts.quality.clamp(1, 100));
        if let Some((units, x, y)) = self.opts.density.and_then(|d| d.to_jfif()) {
            let unit = match units {
                1 => PixelDensityUnit::Inches,
                2 => PixelDensityUnit::Centimeters,
                _ => PixelDensityUnit::PixelAspectRatio,
            };
            encoder.set_pixel_density(PixelDensity {
                density: (x, y),
                unit,
            });
        }
        encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{format_fixture, limits};
    use crate::imageops::io::{
        decode_bytes, decode_file, encode_bytes, peek, EncodeOptions, ImageIoError, OutputFormat,
    };
    use std::path::Path;

    /// A JPEG stream of `segments` (marker, contents) between SOI and EOI.
    fn stream(segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut s = vec![0xFF, 0xD8];
        for (marker, contents) in segments {
            s.extend([0xFF, *marker]);
            s.extend((contents.len() as u16 + 2).to_be_bytes());
            s.extend(contents);
        }
        s.extend([0xFF, EOI]);
        s
    }

    /// The contents of an SOFn segment for a 23×17 image.
    fn sof(precision: u8, sampling: &[(u8, u8)]) -> Vec<u8> {
        let mut c = vec![precision, 0, 17, 0, 23, sampling.len() as u8];
        for (i, (h, v)) in sampling.iter().enumerate() {
            c.extend([i as u8 + 1, h << 4 | v, 0]);
        }
        c
    }

    fn facts(process: u8, precision: u8, sampling: &[(u8, u8)]) -> JpegFacts<'static> {
        JpegFacts {
            complete: true,
            frame: Some(Frame {
                process,
                precision,
                sampling: sampling.to_vec(),
            }),
            exif: None,
            xmp: None,
            photoshop: Vec::new(),
            density: None,
        }
    }

    #[test]
    fn markers_tell_the_frame_and_the_first_exif_segment() {
        let exif = |tag: &[u8]| [b"Exif\0\0".as_slice(), tag].concat();
        let data = stream(&[
            (0xE0, b"JFIF\0".to_vec()),
            (APP1, b"http://ns.adobe.com/xap/1.0/\0<x/>".to_vec()),
            (APP1, exif(b"first")),
            (0xC4, vec![0; 4]), // DHT, in the SOFn range
            (0xC2, sof(8, &[(1, 1), (2, 2), (1, 1)])),
            (APP1, exif(b"second")),
            (SOS, vec![0; 4]),
            (APP1, exif(b"after the scan")),
        ]);
        let facts = JpegFacts::read(&data);
        assert!(facts.complete);
        assert_eq!(facts.exif, Some(b"first".as_slice()));
        let frame = facts.frame.as_ref().unwrap();
        assert_eq!((frame.process, frame.precision), (2, 8));
        assert_eq!(frame.layout(), "1x1,2x2,1x1");
        assert!(!JpegFacts::read(&data[..data.len() - 1]).complete);
        // An end marker inside a segment (a thumbnail's) does not end the stream.
        let thumbnail = stream(&[(APP1, exif(&[0xFF, 0xD8, 0xFF, EOI]))]);
        assert!(!JpegFacts::read(&thumbnail[..thumbnail.len() - 2]).complete);
    }

    #[test]
    fn sampling_layouts_zune_jpeg_misreads_are_told() {
        for (sampling, odd) in [
            (&[(2, 2), (1, 1), (1, 1)][..], false),
            (&[(4, 1), (1, 1), (1, 1)], false),
            (&[(2, 2), (2, 1), (1, 2)], false),
            (&[(1, 1), (2, 2), (1, 1)], true),
            (&[(1, 1), (1, 1), (2, 2)], true),
            (&[(1, 2), (2, 1), (1, 1)], true),
            (&[(2, 1), (1, 2), (1, 1)], true),
            (&[(1, 1), (3, 1), (1, 1)], true),
            (&[(2, 2)], false),
        ] {
            let f = facts(0, 8, sampling);
            assert_eq!(f.odd_sampling(), odd, "{sampling:?}");
            assert_eq!(f.unsupported(), None, "{sampling:?}");
        }
    }

    #[test]
    fn variants_no_decoder_here_reads_are_named() {
        let subsampled = [(2, 2), (1, 1), (1, 1)];
        for (process, precision, sampling, variant) in [
            (3, 8, &subsampled[..], "lossless JPEG (SOF3)"),
            (5, 8, &subsampled, "hierarchical JPEG (SOF5)"),
            (7, 8, &subsampled, "hierarchical JPEG (SOF7)"),
            (9, 8, &subsampled, "arithmetic-coded JPEG (SOF9)"),
            (10, 8, &subsampled, "arithmetic-coded JPEG (SOF10)"),
            (11, 8, &subsampled, "lossless arithmetic-coded JPEG (SOF11)"),
            (
                14,
                8,
                &subsampled,
                "hierarchical arithmetic-coded JPEG (SOF14)",
            ),
            (1, 12, &subsampled, "12-bit JPEG (SOF1)"),
            (2, 12, &subsampled, "12-bit JPEG (SOF2)"),
            (
                0,
                8,
                &[(1, 1), (2, 2), (1, 1), (1, 1)],
                "4-component JPEG with sampling factors 1x1,2x2,1x1,1x1 (SOF0)",
            ),
        ] {
            let f = facts(process, precision, sampling);
            let want = format!("{variant} is not supported; convert it to PNG");
            assert_eq!(f.unsupported(), Some(want.clone()));
            // Refused before decoding, whatever follows the header.
            let data = stream(&[(0xC0 + process, sof(precision, sampling))]);
            let e = decode_bytes(&data, &limits()).unwrap_err();
            assert!(matches!(e, ImageIoError::Unsupported { .. }), "{e}");
            assert!(e.to_string().ends_with(&want), "{e}");
        }
        assert_eq!(facts(1, 8, &subsampled).unsupported(), None);
        assert_eq!(
            facts(2, 8, &[(1, 1), (1, 1), (1, 1), (1, 1)]).unsupported(),
            None
        );
    }

    /// The fixtures' PNGs are what libjpeg decodes them to.
    #[test]
    fn luma_sampled_below_chroma_decodes_as_libjpeg_does() {
        for name in [
            "sampling_1x1_2x2_1x1",
            "sampling_1x1_1x1_2x2_progressive",
            "sampling_1x1_3x1_1x1",
        ] {
            let path = format_fixture(&format!("{name}.jpg"));
            let d = decode_file(&path, &limits()).unwrap();
            let want = decode_file(&format_fixture(&format!("{name}.png")), &limits()).unwrap();
            assert_eq!((d.rgb.height, d.rgb.width), (17, 23), "{name}");
            // Upsampling differs a little between decoders (libjpeg's is "fancy"): 3 levels here.
            let diff = d.rgb.max_abs_diff(&want.rgb) * 255.0;
            assert!(diff < 3.5, "{name}: {diff}");
            assert!(!d.grayscale && d.alpha.is_none());
            let head = std::fs::read(&path).unwrap();
            assert_eq!(peek(&head, &path).unwrap().size, Some((17, 23)));
        }
    }

    /// A JPEG of `app1s`' EXIF segments, in order, of a 16×8 image: left half black.
    fn with_exif(app1s: &[Vec<u8>]) -> Vec<u8> {
        let (h, w) = (8, 16);
        let data = (0..3 * h * w)
            .map(|i| if i % w < w / 2 { 0.0 } else { 1.0 })
            .collect();
        let img = crate::imageops::Planar::new(3, h, w, data);
        let opts = EncodeOptions::new(OutputFormat::Jpeg);
        let plain = encode_bytes(Path::new("t.jpg"), &img, None, &opts).unwrap();
        let mut out = plain[..2].to_vec();
        for tiff in app1s {
            let payload = [b"Exif\0\0".as_slice(), tiff].concat();
            out.extend([0xFF, APP1]);
            out.extend((payload.len() as u16 + 2).to_be_bytes());
            out.extend(payload);
        }
        out.extend(&plain[2..]);
        out
    }

    /// TIFF data holding only an Orientation.
    fn orientation_tiff(big_endian: bool, orientation: u16) -> Vec<u8> {
        let b16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let b32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut t = if big_endian { b"MM" } else { b"II" }.to_vec();
        t.extend(b16(42));
        t.extend(b32(8));
        t.extend(b16(1));
        t.extend(b16(0x0112));
        t.extend(b16(3));
        t.extend(b32(1));
        t.extend(b16(orientation));
        t.extend([0, 0]);
        t.extend(b32(0));
        t
    }

    /// Of two EXIF segments the first counts, for the orientation and for the metadata kept,
    /// as in other readers.
    #[test]
    fn the_first_exif_segment_wins() {
        let bytes = with_exif(&[orientation_tiff(true, 6), orientation_tiff(false, 3)]);
        let d = decode_bytes(&bytes, &limits()).unwrap();
        // Orientation 6 = rotate 90° clockwise: the left (black) half ends up on top.
        assert_eq!((d.rgb.height, d.rgb.width), (16, 8));
        assert!(d.rgb.at(0, 2, 4) < 0.1 && d.rgb.at(1, 13, 4) > 0.9);
        let exif = d.exif.unwrap();
        assert!(exif.starts_with(b"MM"));
        assert_eq!(exif, orientation_tiff(true, 1));
        assert_eq!(
            peek(&bytes, Path::new("two.jpg")).unwrap().size,
            Some((16, 8))
        );
    }

    #[test]
    fn exif_that_is_not_tiff_data_is_dropped() {
        let junk: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(97) ^ 0x5A).collect();
        let d = decode_bytes(&with_exif(&[junk]), &limits()).unwrap();
        assert_eq!((d.rgb.height, d.rgb.width), (8, 16));
        assert_eq!(d.exif, None);
    }
}
