//! PNG through the png crate, for what the `image` crate passes over: the colour-space
//! chunks besides iCCP (sRGB, gAMA, cHRM, and cICP with its HDR companions mDCV and cLLI),
//! read and written again, and whether an animation follows the first image.

use std::borrow::Cow;
use std::io::{self, BufRead, Seek, Write};

use image::ExtendedColorType;
use png::chunk::{cICP, cLLI, mDCV, ChunkType};
use png::{
    CodingIndependentCodePoints, ContentLightLevelInfo, MasteringDisplayColorVolume, ScaledFloat,
    SourceChromaticities, SrgbRenderingIntent,
};

use super::encode::{Encoded, OutputFormat};
use super::DecodeLimits;
use crate::imageops::density::{Density, DensityUnit};
use crate::imageops::xmp;

/// A PNG's colour-space chunks other than iCCP, whose ICC profile travels on its own since
/// other formats hold one too. The model works on the encoded values, so the chunks that
/// describe the input describe its upscale as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PngColour {
    /// sRGB: the samples are sRGB, to be rendered with this intent.
    pub srgb: Option<SrgbRenderingIntent>,
    /// gAMA: the exponent the samples were encoded with (45455 for 1/2.2).
    pub gamma: Option<ScaledFloat>,
    /// cHRM: the white point and primaries.
    pub chromaticities: Option<SourceChromaticities>,
    /// cICP: the colour space as ITU-T H.273 code points (HDR PQ or HLG, Display P3, …);
    /// it takes precedence over iCCP, sRGB, gAMA and cHRM.
    pub cicp: Option<CodingIndependentCodePoints>,
    /// mDCV: the display an HDR image was mastered on.
    pub mastering_display: Option<MasteringDisplayColorVolume>,
    /// cLLI: the light level of an HDR image's brightest pixel and frame.
    pub content_light: Option<ContentLightLevelInfo>,
}

/// cICP for sRGB: BT.709 primaries, the sRGB transfer function, RGB, full range.
const SRGB_CICP: CodingIndependentCodePoints = CodingIndependentCodePoints {
    color_primaries: 1,
    transfer_function: 13,
    matrix_coefficients: 0,
    is_video_full_range_image: true,
};

/// The gAMA of sRGB-like files (1/2.2, scaled by 100000), and how far one may lie from it
/// and still be taken for sRGB: 1%, which admits the 45000 some writers store.
const SRGB_GAMMA: u32 = 45455;
const GAMMA_TOLERANCE: u32 = 455;

/// sRGB's white point and primaries (x, y scaled by 100000: white, red, green, blue), and
/// how far a cHRM value may lie from them: 0.01, well under the gap to any other gamut.
const SRGB_CHROMATICITIES: [u32; 8] = [31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000];
const CHROMATICITY_TOLERANCE: u32 = 1000;

impl PngColour {
    fn from_info(info: &png::Info) -> Self {
        Self {
            srgb: info.srgb,
            // The chunks themselves, not the values the decoder derives from sRGB.
            gamma: info.gama_chunk,
            chromaticities: info.chrm_chunk,
            cicp: info.coding_independent_code_points,
            mastering_display: info.mastering_display_color_volume,
            content_light: info.content_light_level,
        }
    }

    /// What viewers lose when the samples are written without these chunks, worded for a
    /// warning, or `None` when they show the same colours (the chunks say sRGB, which is
    /// what untagged samples are taken for). `icc_kept`: the ICC profile goes with the
    /// samples; it outranks sRGB, gAMA and cHRM, though not cICP.
    pub(super) fn lost_without_chunks(&self, icc_kept: bool) -> Option<String> {
        if let Some(cicp) = self.cicp {
            return (cicp != SRGB_CICP).then(|| format!("colour space ({})", describe(cicp)));
        }
        if icc_kept || self.srgb.is_some() {
            return None;
        }
        let gamma = self
            .gamma
            .map(ScaledFloat::into_scaled)
            .filter(|g| g.abs_diff(SRGB_GAMMA) > GAMMA_TOLERANCE);
        let other_primaries = self.chromaticities.is_some_and(|c| {
            scaled(&c)
                .iter()
                .zip(SRGB_CHROMATICITIES)
                .any(|(v, s)| v.abs_diff(s) > CHROMATICITY_TOLERANCE)
        });
        let mut lost = Vec::new();
        if let Some(g) = gamma {
            lost.push(format!("gamma {:.2} (gAMA)", 1e5 / f64::from(g)));
        }
        if other_primaries {
            lost.push("primaries other than sRGB's (cHRM)".to_string());
        }
        (!lost.is_empty()).then(|| lost.join(" and "))
    }

    /// The chunks the png crate's encoder does not write itself, with their contents.
    fn extra_chunks(&self) -> Vec<(ChunkType, Vec<u8>)> {
        let mut chunks = Vec::new();
        if let Some(c) = self.cicp {
            let full = u8::from(c.is_video_full_range_image);
            let data = [
                c.color_primaries,
                c.transfer_function,
                c.matrix_coefficients,
                full,
            ];
            chunks.push((cICP, data.to_vec()));
        }
        if let Some(m) = self.mastering_display {
            // Red, green, blue, then white, in units of 0.00002 (cHRM's are 0.00001).
            let [wx, wy, xy @ ..] = scaled(&m.chromaticities);
            let mut data: Vec<u8> = xy
                .into_iter()
                .chain([wx, wy])
                .flat_map(|v| u16::try_from(v / 2).unwrap_or(u16::MAX).to_be_bytes())
                .collect();
            data.extend(m.max_luminance.to_be_bytes());
            data.extend(m.min_luminance.to_be_bytes());
            chunks.push((mDCV, data));
        }
        if let Some(l) = self.content_light {
            let data = [l.max_content_light_level, l.max_frame_average_light_level];
            chunks.push((cLLI, data.into_iter().flat_map(u32::to_be_bytes).collect()));
        }
        chunks
    }
}

/// White, red, green and blue (x, y), scaled by 100000.
fn scaled(c: &SourceChromaticities) -> [u32; 8] {
    let [(wx, wy), (rx, ry), (gx, gy), (bx, by)] =
        [c.white, c.red, c.green, c.blue].map(|(x, y)| (x.into_scaled(), y.into_scaled()));
    [wx, wy, rx, ry, gx, gy, bx, by]
}

/// Code points by the names users know, the rest by number.
fn describe(c: CodingIndependentCodePoints) -> String {
    let primaries = match c.color_primaries {
        1 => "BT.709".to_string(),
        9 => "BT.2020".to_string(),
        11 => "DCI-P3".to_string(),
        12 => "Display P3".to_string(),
        n => format!("code {n}"),
    };
    let transfer = match c.transfer_function {
        1 | 6 | 14 | 15 => "BT.709".to_string(),
        8 => "linear".to_string(),
        13 => "sRGB".to_string(),
        16 => "PQ".to_string(),
        18 => "HLG".to_string(),
        n => format!("code {n}"),
    };
    let range = if c.is_video_full_range_image {
        ""
    } else {
        ", narrow range"
    };
    format!("cICP: {primaries} primaries, {transfer} transfer{range}")
}

/// What the image crate's PNG decoder does not tell, read with the png crate from the
/// chunks before the image data, and an XMP packet after it.
#[derive(Default)]
pub(super) struct PngFacts {
    pub(super) colour: PngColour,
    /// Animation frames (APNG) follow the first image.
    pub(super) animated: bool,
    /// The XMP packet of an iTXt chunk after the image data, where the PNG specification
    /// lets text go too; the image crate's decoder reads only the chunks before it.
    pub(super) trailing_xmp: Option<Vec<u8>>,
    /// The pHYs chunk.
    pub(super) density: Option<Density>,
}

impl PngFacts {
    /// Reads the facts from the PNG `reader` opens, and leaves it at the start. Text and
    /// the ICC profile, which the image crate reads, are skipped.
    pub(super) fn read(reader: &mut (impl BufRead + Seek), limits: &DecodeLimits) -> Self {
        let bytes = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
        let mut decoder = png::Decoder::new_with_limits(&mut *reader, png::Limits { bytes });
        decoder.set_ignore_text_chunk(true);
        decoder.set_ignore_iccp_chunk(true);
        let mut facts = decoder.read_info().map_or_else(
            |_| Self::default(),
            |r| Self {
                colour: PngColour::from_info(r.info()),
                animated: r.info().animation_control.is_some(),
                trailing_xmp: None,
                density: r.info().pixel_dims.and_then(|d| {
                    let unit = match d.unit {
                        png::Unit::Meter => DensityUnit::Metre,
                        png::Unit::Unspecified => DensityUnit::None,
                    };
                    Density::new(f64::from(d.xppu), f64::from(d.yppu), unit)
                }),
            },
        );
        facts.trailing_xmp = trailing_xmp(reader, limits);
        let _ = reader.seek(io::SeekFrom::Start(0));
        facts
    }
}

/// The XMP iTXt chunk after the image data, if any: the chunks are walked by their
/// lengths (the image data is skipped, not read), and the one found is parsed by the png
/// crate as the text of a PNG made of the file's header and that chunk.
fn trailing_xmp(reader: &mut (impl BufRead + Seek), limits: &DecodeLimits) -> Option<Vec<u8>> {
    use std::io::Read;
    let keyword = [xmp::PNG_KEYWORD.as_bytes(), b"\0"].concat();
    reader.seek(io::SeekFrom::Start(8)).ok()?;
    let mut header = None;
    let mut after_image = false;
    loop {
        let mut head = [0u8; 8];
        reader.read_exact(&mut head).ok()?;
        let length = u64::from(u32::from_be_bytes(head[..4].try_into().ok()?));
        let kind = &head[4..];
        if kind == b"IEND" {
            return None;
        }
        if kind == b"IHDR" || (kind == b"iTXt" && after_image) {
            if length > limits.max_alloc {
                return None;
            }
            // Read as it comes, so that a length the file does not hold allocates nothing.
            let mut chunk = head.to_vec();
            let read = reader
                .by_ref()
                .take(length + 4)
                .read_to_end(&mut chunk)
                .ok()?;
            if read as u64 != length + 4 {
                return None;
            }
            if kind == b"IHDR" {
                header = Some(chunk);
            } else if chunk[8..].starts_with(&keyword) {
                return itxt_text(header.as_deref()?, &chunk);
            }
        } else {
            after_image |= kind == b"IDAT";
            reader.seek(io::SeekFrom::Current(length as i64 + 4)).ok()?;
        }
    }
}

/// The text of the iTXt `chunk` (length, type, data and CRC), read by the png crate from
/// a PNG of the `header` chunk, that chunk and an empty image-data chunk.
fn itxt_text(header: &[u8], chunk: &[u8]) -> Option<Vec<u8>> {
    // An IDAT chunk of no bytes, with its CRC.
    const EMPTY_IDAT: [u8; 12] = [0, 0, 0, 0, b'I', b'D', b'A', b'T', 0x35, 0xAF, 0x06, 0x1E];
    let file = [&b"\x89PNG\r\n\x1a\n"[..], header, chunk, &EMPTY_IDAT].concat();
    let reader = png::Decoder::new(io::Cursor::new(file)).read_info().ok()?;
    let mut text = reader.info().utf8_text.first()?.clone();
    text.decompress_text().ok()?;
    text.get_text().ok().map(String::into_bytes)
}

impl Encoded<'_> {
    /// PNG through the png crate, which (unlike the image crate's encoder) writes the colour
    /// chunks; otherwise the file that encoder writes (fast compression, adaptive filters).
    /// iCCP and sRGB are never both written: sRGB gives way to a profile kept. gAMA and cHRM
    /// stay as fallbacks, beside sRGB only where they hold its values (as the png crate,
    /// following the specification, writes them).
    pub(super) fn encode_png(&self, w: impl Write) -> Result<(), png::EncodingError> {
        let (color_type, bit_depth) = match self.color {
            ExtendedColorType::L8 => (png::ColorType::Grayscale, png::BitDepth::Eight),
            ExtendedColorType::La8 => (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight),
            ExtendedColorType::Rgb8 => (png::ColorType::Rgb, png::BitDepth::Eight),
            ExtendedColorType::Rgba8 => (png::ColorType::Rgba, png::BitDepth::Eight),
            ExtendedColorType::L16 => (png::ColorType::Grayscale, png::BitDepth::Sixteen),
            ExtendedColorType::La16 => (png::ColorType::GrayscaleAlpha, png::BitDepth::Sixteen),
            ExtendedColorType::Rgb16 => (png::ColorType::Rgb, png::BitDepth::Sixteen),
            ExtendedColorType::Rgba16 => (png::ColorType::Rgba, png::BitDepth::Sixteen),
            other => unreachable!("quantise_planes gives no {other:?}"),
        };
        let colour = &self.opts.png_colour;
        let icc = self.icc_profile();
        let mut info = png::Info::with_size(self.width, self.height);
        info.color_type = color_type;
        info.bit_depth = bit_depth;
        info.icc_profile = icc.map(|icc| Cow::Borrowed(&icc[..]));
        info.exif_metadata = self.exif().map(Cow::Owned);
        if let Some(xmp) = self.xmp() {
            // XMP is UTF-8 (checked when it was rewritten).
            let text = String::from_utf8_lossy(&xmp).into_owned();
            info.utf8_text
                .push(png::text_metadata::ITXtChunk::new(xmp::PNG_KEYWORD, text));
        }
        info.srgb = colour.srgb.filter(|_| icc.is_none());
        info.source_gamma = colour.gamma;
        info.source_chromaticities = colour.chromaticities;
        let density = self.opts.density.and_then(|d| d.to_png());
        info.pixel_dims = density.map(|(per_metre, xppu, yppu)| {
            let unit = if per_metre {
                png::Unit::Meter
            } else {
                png::Unit::Unspecified
            };
            png::PixelDimensions { xppu, yppu, unit }
        });
        let mut encoder = png::Encoder::with_info(w, info)?;
        encoder.set_compression(png::Compression::Fast);
        encoder.set_filter(png::Filter::Adaptive);
        let mut writer = encoder.write_header()?;
        for (kind, data) in colour.extra_chunks() {
            writer.write_chunk(kind, &data)?;
        }
        if bit_depth == png::BitDepth::Sixteen {
            let big_endian: Vec<u8> = self
                .buf
                .chunks_exact(2)
                .flat_map(|b| u16::from_ne_bytes([b[0], b[1]]).to_be_bytes())
                .collect();
            writer.write_image_data(&big_endian)?;
        } else {
            writer.write_image_data(&self.buf)?;
        }
        writer.finish()
    }

    /// Warns when the output format has no place for the PNG colour chunks and viewers
    /// would show the colours differently without them.
    pub(super) fn warn_of_lost_colour(&self) {
        if self.opts.format == OutputFormat::Png {
            return;
        }
        let icc = self.icc_profile().is_some();
        if let Some(lost) = self.opts.png_colour.lost_without_chunks(icc) {
            let shown = if icc { "by its ICC profile" } else { "as sRGB" };
            tracing::warn!(
                "{}: {} cannot record the input's {lost}; viewers will show the colours \
                 {shown} (write PNG to keep them)",
                self.path.display(),
                self.opts.format.name()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::{gradient, icc_profile, limits, ramp};
    use crate::imageops::io::{decode_bytes, encode_bytes, EncodeOptions};
    use crate::imageops::Planar;
    use png::chunk::{cHRM, gAMA, sRGB};
    use std::io::Cursor;
    use std::path::Path;

    /// An XMP iTXt chunk after the image data is read as one before it is, and a packet
    /// before it wins over one after.
    #[test]
    fn xmp_after_the_image_data_is_read() {
        let packet = "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>";
        let itxt =
            |text: &str| [xmp::PNG_KEYWORD.as_bytes(), b"\0\0\0\0\0", text.as_bytes()].concat();
        let file = |before: Option<&str>| {
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, 2, 1);
            encoder.set_color(png::ColorType::Grayscale);
            let mut writer = encoder.write_header().unwrap();
            if let Some(text) = before {
                writer
                    .write_chunk(ChunkType(*b"iTXt"), &itxt(text))
                    .unwrap();
            }
            writer.write_image_data(&[0, 255]).unwrap();
            writer
                .write_chunk(ChunkType(*b"iTXt"), &itxt(packet))
                .unwrap();
            writer.finish().unwrap();
            out
        };
        let d = decode_bytes(&file(None), &limits()).unwrap();
        assert_eq!(d.xmp.as_deref(), Some(packet.as_bytes()));
        let first = "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\" x:xmptk=\"first\"/>";
        let d = decode_bytes(&file(Some(first)), &limits()).unwrap();
        assert_eq!(d.xmp.as_deref(), Some(first.as_bytes()));
    }

    /// A 3×2 RGB PNG from the png crate, with an ICC profile if given, and `chunks` (their
    /// contents written out here, by the specification) before its image data.
    fn png_with(icc: Option<&[u8]>, chunks: &[(ChunkType, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut info = png::Info::with_size(3, 2);
        info.color_type = png::ColorType::Rgb;
        info.icc_profile = icc.map(Cow::Borrowed);
        let mut writer = png::Encoder::with_info(&mut out, info)
            .unwrap()
            .write_header()
            .unwrap();
        for (kind, data) in chunks {
            writer.write_chunk(*kind, data).unwrap();
        }
        let samples: Vec<u8> = (0..18).map(|i| i * 14).collect();
        writer.write_image_data(&samples).unwrap();
        writer.finish().unwrap();
        out
    }

    /// The chunks of a PNG file other than its image data, in order.
    fn chunks(png: &[u8]) -> Vec<(ChunkType, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 8;
        while i + 8 <= png.len() {
            let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
            let kind = ChunkType(png[i + 4..i + 8].try_into().unwrap());
            if !matches!(&kind.0, b"IHDR" | b"IDAT" | b"IEND") {
                out.push((kind, png[i + 8..i + 8 + len].to_vec()));
            }
            i += 12 + len;
        }
        out
    }

    fn be(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    const LINEAR: u32 = 100_000;
    const DISPLAY_P3: [u32; 8] = [31270, 32900, 68000, 32000, 26500, 69000, 15000, 6000];

    fn chromaticities(c: [u32; 8]) -> SourceChromaticities {
        let p = |i: usize| {
            (
                ScaledFloat::from_scaled(c[i]),
                ScaledFloat::from_scaled(c[i + 1]),
            )
        };
        SourceChromaticities {
            white: p(0),
            red: p(2),
            green: p(4),
            blue: p(6),
        }
    }

    /// BT.2020 primaries, PQ transfer: an HDR image.
    const PQ: CodingIndependentCodePoints = CodingIndependentCodePoints {
        color_primaries: 9,
        transfer_function: 16,
        matrix_coefficients: 0,
        is_video_full_range_image: true,
    };

    /// Each chunk is read, and written back to a PNG byte for byte, whatever the output's
    /// layout; the pixels are untouched.
    #[test]
    fn colour_chunks_survive_a_round_trip() {
        let mdcv: Vec<u8> = [35400u16, 14600, 8500, 39850, 6550, 2300, 15635, 16450]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .chain(be(&[10_000_000, 50]))
            .collect();
        let hdr = [
            (gAMA, be(&[LINEAR])),
            (cHRM, be(&DISPLAY_P3)),
            (cICP, vec![9, 16, 0, 1]),
            (mDCV, mdcv),
            (cLLI, be(&[10_000_000, 4_000_000])),
        ];
        let srgb = [
            (sRGB, vec![1]),
            (gAMA, be(&[SRGB_GAMMA])),
            (cHRM, be(&SRGB_CHROMATICITIES)),
        ];
        let input = png_with(None, &hdr);
        let d = decode_bytes(&input, &limits()).unwrap();
        let mastering = d.png_colour.mastering_display.unwrap();
        assert_eq!(
            d.png_colour,
            PngColour {
                srgb: None,
                gamma: Some(ScaledFloat::from_scaled(LINEAR)),
                chromaticities: Some(chromaticities(DISPLAY_P3)),
                cicp: Some(PQ),
                mastering_display: Some(MasteringDisplayColorVolume {
                    chromaticities: chromaticities([
                        31270, 32900, 70800, 29200, 17000, 79700, 13100, 4600
                    ]),
                    ..mastering
                }),
                content_light: Some(ContentLightLevelInfo {
                    max_content_light_level: 10_000_000,
                    max_frame_average_light_level: 4_000_000,
                }),
            }
        );
        assert_eq!(
            (mastering.max_luminance, mastering.min_luminance),
            (10_000_000, 50)
        );
        let alpha = ramp(2, 3, 5);
        for (want, deep, gray, alpha) in [
            (&hdr[..], false, false, None),
            (&hdr, true, false, Some(&alpha)),
            (&hdr, false, true, Some(&alpha)),
            (&srgb, true, true, None),
        ] {
            let source = decode_bytes(&png_with(None, want), &limits()).unwrap();
            let opts = EncodeOptions {
                sixteen_bit: deep,
                grayscale: gray,
                ..EncodeOptions::matching(OutputFormat::Png, &source)
            };
            let out = encode_bytes(Path::new("x.png"), &source.rgb, alpha, &opts).unwrap();
            assert_eq!(chunks(&out), want, "16-bit {deep}, gray {gray}");
            let again = decode_bytes(&out, &limits()).unwrap();
            assert_eq!(again.png_colour, source.png_colour);
            assert_eq!((again.sixteen_bit, again.grayscale), (deep, gray));
            if !gray {
                assert!(again.rgb.max_abs_diff(&source.rgb) < 1e-6);
            }
        }
    }

    /// cICP outranks the others, which stay as fallbacks; iCCP and sRGB are never written
    /// together, the profile winning; sRGB keeps only the gAMA and cHRM that agree with it.
    #[test]
    fn chunk_precedence_follows_the_specification() {
        let icc = icc_profile(b"RGB ");
        let source = png_with(
            Some(&icc),
            &[
                (sRGB, vec![0]),
                (gAMA, be(&[SRGB_GAMMA])),
                (cICP, vec![1, 13, 0, 1]),
            ],
        );
        let d = decode_bytes(&source, &limits()).unwrap();
        assert_eq!(d.icc_profile.as_ref(), Some(&icc));
        assert_eq!(d.png_colour.srgb, Some(SrgbRenderingIntent::Perceptual));
        let written = |opts: &EncodeOptions| {
            let out = encode_bytes(Path::new("x.png"), &d.rgb, None, opts).unwrap();
            let names: Vec<_> = chunks(&out).iter().map(|(k, _)| k.0).collect();
            (names, decode_bytes(&out, &limits()).unwrap())
        };
        let opts = EncodeOptions::matching(OutputFormat::Png, &d);
        let (names, again) = written(&opts);
        assert_eq!(names, [*b"gAMA", *b"iCCP", *b"cICP"]);
        assert_eq!(again.icc_profile, Some(icc));
        // Without a profile to keep (none, or one for gray samples), sRGB is written.
        for icc_profile in [None, Some(b"0123456789abcdefGRAY".to_vec())] {
            let opts = EncodeOptions {
                icc_profile,
                ..opts.clone()
            };
            assert_eq!(written(&opts).0, [*b"sRGB", *b"gAMA", *b"cICP"]);
        }
        // A gAMA that contradicts sRGB is left out.
        let contradicting = EncodeOptions {
            icc_profile: None,
            png_colour: PngColour {
                gamma: Some(ScaledFloat::from_scaled(LINEAR)),
                ..opts.png_colour
            },
            ..opts.clone()
        };
        assert_eq!(written(&contradicting).0, [*b"sRGB", *b"cICP"]);
    }

    /// A format without these chunks warns where viewers would show other colours: a cICP
    /// other than sRGB (even beside a profile, which it outranks), or a gAMA or cHRM that
    /// is not sRGB's and that no profile or sRGB chunk outranks.
    #[test]
    fn what_a_format_without_the_chunks_loses() {
        let srgb_like = PngColour {
            gamma: Some(ScaledFloat::from_scaled(45000)),
            chromaticities: Some(chromaticities(SRGB_CHROMATICITIES)),
            ..PngColour::default()
        };
        let linear = PngColour {
            gamma: Some(ScaledFloat::from_scaled(LINEAR)),
            ..PngColour::default()
        };
        let p3 = PngColour {
            chromaticities: Some(chromaticities(DISPLAY_P3)),
            ..srgb_like
        };
        let pq = PngColour {
            cicp: Some(PQ),
            ..srgb_like
        };
        let srgb_cicp = PngColour {
            cicp: Some(SRGB_CICP),
            ..linear
        };
        let marked_srgb = PngColour {
            srgb: Some(SrgbRenderingIntent::Perceptual),
            ..linear
        };
        let lost = |c: PngColour, icc| c.lost_without_chunks(icc);
        for (colour, icc) in [
            (PngColour::default(), false),
            (srgb_like, false),
            (srgb_cicp, false),
            (marked_srgb, false),
            (linear, true),
            (p3, true),
        ] {
            assert_eq!(lost(colour, icc), None, "{colour:?}, profile kept: {icc}");
        }
        assert_eq!(lost(linear, false).as_deref(), Some("gamma 1.00 (gAMA)"));
        assert_eq!(
            lost(p3, false).as_deref(),
            Some("primaries other than sRGB's (cHRM)")
        );
        let both = PngColour {
            gamma: linear.gamma,
            ..p3
        };
        assert_eq!(
            lost(both, false).as_deref(),
            Some("gamma 1.00 (gAMA) and primaries other than sRGB's (cHRM)")
        );
        for icc in [false, true] {
            assert_eq!(
                lost(pq, icc).as_deref(),
                Some("colour space (cICP: BT.2020 primaries, PQ transfer)")
            );
        }
        let narrow = CodingIndependentCodePoints {
            is_video_full_range_image: false,
            ..SRGB_CICP
        };
        assert_eq!(
            describe(narrow),
            "cICP: BT.709 primaries, sRGB transfer, narrow range"
        );
    }

    /// Animation is told from the chunks before the image data; only the first image is
    /// decoded.
    #[test]
    fn animated_png_is_told() {
        let plain = png_with(None, &[]);
        let facts = |bytes: &[u8]| PngFacts::read(&mut Cursor::new(bytes), &limits());
        assert!(!facts(&plain).animated);
        let mut apng = Vec::new();
        let mut encoder = png::Encoder::new(&mut apng, 2, 1);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_animated(2, 0).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[10, 20]).unwrap();
        writer.write_image_data(&[200, 100]).unwrap();
        writer.finish().unwrap();
        assert!(facts(&apng).animated);
        let d = decode_bytes(&apng, &limits()).unwrap();
        assert_eq!(
            d.rgb,
            Planar::new(3, 1, 2, [10.0, 20.0].repeat(3)).map(|v| v / 255.0)
        );
        // A PNG this crate wrote has no animation either.
        let opts = EncodeOptions::new(OutputFormat::Png);
        let png = encode_bytes(Path::new("x.png"), &gradient(3, 2), None, &opts).unwrap();
        assert!(!facts(&png).animated);
    }
}
