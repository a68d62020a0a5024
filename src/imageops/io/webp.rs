//! WebP output through libwebp: lossy at a quality (as JPEG output is) or lossless. The
//! ICC profile and Exif go into the extended container (a `VP8X` header and `ICCP` and
//! `EXIF` chunks), which libwebp's simple encoder does not write.

use std::io::Write;

use image::ExtendedColorType;

use super::encode::Encoded;

/// The longest side a WebP image has: 14 bits store it.
pub const WEBP_MAX_SIDE: u32 = 16383;

/// Why a WebP file could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WebpError {
    #[error("WebP stores at most {WEBP_MAX_SIDE} pixels a side; this image is {0}x{1} (write PNG, TIFF or JPEG)")]
    TooLarge(u32, u32),
    #[error("libwebp: {0}")]
    Encoder(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Encoded<'_> {
    /// Writes the samples as WebP: lossless if the options say so, else lossy at their
    /// quality (sharp RGB-to-YUV conversion, which keeps the fine colour detail an upscale
    /// adds; alpha stored losslessly).
    pub(super) fn encode_webp(&self, mut w: impl Write) -> Result<(), WebpError> {
        let (width, height) = (self.width, self.height);
        if width > WEBP_MAX_SIDE || height > WEBP_MAX_SIDE {
            return Err(WebpError::TooLarge(width, height));
        }
        // WebP has no gray storage: luma is expanded to RGB.
        let expanded: Vec<u8>;
        let (samples, alpha) = match self.color {
            ExtendedColorType::L8 => {
                expanded = self.buf.iter().flat_map(|&v| [v; 3]).collect();
                (&expanded[..], false)
            }
            ExtendedColorType::La8 => {
                expanded = self
                    .buf
                    .chunks_exact(2)
                    .flat_map(|p| [p[0], p[0], p[0], p[1]])
                    .collect();
                (&expanded[..], true)
            }
            ExtendedColorType::Rgba8 => (&self.buf[..], true),
            _ => (&self.buf[..], false),
        };
        let encoder = if alpha {
            webp::Encoder::from_rgba(samples, width, height)
        } else {
            webp::Encoder::from_rgb(samples, width, height)
        };
        let mut config = webp::WebPConfig::new()
            .map_err(|()| WebpError::Encoder("cannot make a configuration".into()))?;
        if self.opts.lossless {
            config.lossless = 1;
            // Also the colour under fully transparent pixels, which libwebp otherwise drops.
            config.exact = 1;
        } else {
            config.quality = f32::from(self.opts.quality.clamp(1, 100));
            config.use_sharp_yuv = 1;
            config.alpha_quality = 100;
        }
        let file = encoder
            .encode_advanced(&config)
            .map_err(|e| WebpError::Encoder(format!("{e:?}")))?;
        let icc = self.icc_profile().map(Vec::as_slice);
        // EXIF is WebP's only place for the density: a source without EXIF gets one that
        // holds just that.
        let exif = self
            .exif()
            .or_else(|| self.opts.density.map(crate::imageops::exif::of_density));
        let xmp = self.xmp();
        w.write_all(&with_metadata(&file, icc, exif.as_deref(), xmp.as_deref())?)?;
        Ok(())
    }
}

/// `file`, a WebP file of one image, with an ICC profile, Exif and XMP added in the extended
/// format's order: `VP8X`, `ICCP`, the image's chunks, `EXIF`, `XMP `.
fn with_metadata(
    file: &[u8],
    icc: Option<&[u8]>,
    exif: Option<&[u8]>,
    xmp: Option<&[u8]>,
) -> Result<Vec<u8>, WebpError> {
    if icc.is_none() && exif.is_none() && xmp.is_none() {
        return Ok(file.to_vec());
    }
    let bad = || WebpError::Encoder("its output is not a WebP file".into());
    if file.get(..4) != Some(b"RIFF") || file.get(8..12) != Some(b"WEBP") {
        return Err(bad());
    }
    let mut chunks = Vec::new();
    let mut rest = &file[12..];
    while !rest.is_empty() {
        let kind: [u8; 4] = rest
            .get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let size = u32::from_le_bytes(
            rest.get(4..8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let payload = rest.get(8..8 + size).ok_or_else(bad)?;
        chunks.push((kind, payload));
        rest = rest.get(8 + size + size % 2..).unwrap_or_default();
    }
    let (width, height, alpha) = chunks
        .iter()
        .find_map(|&(kind, p)| frame_info(&kind, p))
        .ok_or_else(bad)?;
    let alpha = alpha || chunks.iter().any(|(kind, _)| kind == b"ALPH");
    let flags = u8::from(icc.is_some()) << 5
        | u8::from(alpha) << 4
        | u8::from(exif.is_some()) << 3
        | u8::from(xmp.is_some()) << 2;
    let mut header = vec![flags, 0, 0, 0];
    header.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    header.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    let mut push = |kind: &[u8; 4], payload: &[u8]| {
        body.extend_from_slice(kind);
        body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        body.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            body.push(0);
        }
    };
    push(b"VP8X", &header);
    if let Some(icc) = icc {
        push(b"ICCP", icc);
    }
    for (kind, payload) in chunks.iter().filter(|(kind, _)| kind != b"VP8X") {
        push(kind, payload);
    }
    if let Some(exif) = exif {
        push(b"EXIF", exif);
    }
    if let Some(xmp) = xmp {
        push(b"XMP ", xmp);
    }
    let size = u32::try_from(body.len()).map_err(|_| bad())?;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The width, height and alpha flag of a frame chunk (`VP8 ` or `VP8L`).
fn frame_info(kind: &[u8; 4], p: &[u8]) -> Option<(u32, u32, bool)> {
    match kind {
        // A key frame: 3 bytes of frame tag, the start code, then 14-bit width and height.
        b"VP8 " => {
            let dim = |at: usize| -> Option<u32> {
                Some(u32::from(
                    u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]) & 0x3fff,
                ))
            };
            Some((dim(6)?, dim(8)?, false))
        }
        // The signature byte, then 14 bits of width - 1, 14 of height - 1, the alpha bit.
        b"VP8L" => {
            let bits = u32::from_le_bytes(p.get(1..5)?.try_into().ok()?);
            Some((
                (bits & 0x3fff) + 1,
                (bits >> 14 & 0x3fff) + 1,
                bits >> 28 & 1 == 1,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a WebP file: type and payload, padding skipped.
    fn chunks(file: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&file[..4], b"RIFF");
        let size = u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize;
        assert_eq!(size + 8, file.len());
        let mut out = Vec::new();
        let mut at = 12;
        while at < file.len() {
            let kind = file[at..at + 4].try_into().unwrap();
            let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
            out.push((kind, file[at + 8..at + 8 + len].to_vec()));
            at += 8 + len + len % 2;
        }
        assert_eq!(at, file.len());
        out
    }

    /// Odd-sized metadata is padded, the header gives the canvas and the flags, and the
    /// image crate reads the file with its profile and XMP.
    #[test]
    fn metadata_goes_into_the_extended_container() {
        let samples: Vec<u8> = (0..5 * 3 * 4).map(|i| (i * 9 % 256) as u8).collect();
        for (lossless, alpha) in [(false, false), (false, true), (true, true)] {
            let encoder = if alpha {
                webp::Encoder::from_rgba(&samples, 5, 3)
            } else {
                webp::Encoder::from_rgb(&samples[..45], 5, 3)
            };
            let plain = encoder.encode_simple(lossless, 90.0).unwrap();
            let (icc, exif) = (vec![7u8; 133], b"II*\0\x08\0\0\0\0\0\0\0\0".to_vec());
            let xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>".to_vec();
            let file = with_metadata(&plain, Some(&icc), Some(&exif), Some(&xmp)).unwrap();
            let found = chunks(&file);
            let kinds: Vec<&[u8; 4]> = found.iter().map(|(k, _)| k).collect();
            let frame: &[u8; 4] = if lossless { b"VP8L" } else { b"VP8 " };
            let mut want = vec![b"VP8X", b"ICCP"];
            if alpha && !lossless {
                want.push(b"ALPH");
            }
            want.extend([frame, b"EXIF", b"XMP "]);
            assert_eq!(kinds, want, "lossless {lossless}, alpha {alpha}");
            let header = &found[0].1;
            assert_eq!(header[0], 0x20 | 0x08 | 0x04 | if alpha { 0x10 } else { 0 });
            assert_eq!(&header[4..], &[4, 0, 0, 2, 0, 0]);
            let n = found.len();
            assert_eq!(
                (&found[1].1, &found[n - 2].1, &found[n - 1].1),
                (&icc, &exif, &xmp)
            );
            let mut decoder =
                image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&file)).unwrap();
            use image::ImageDecoder;
            assert_eq!(decoder.dimensions(), (5, 3));
            assert_eq!(decoder.icc_profile().unwrap(), Some(icc));
            assert_eq!(decoder.xmp_metadata().unwrap(), Some(xmp));
        }
        // Without metadata the file is libwebp's own.
        let plain = webp::Encoder::from_rgb(&samples[..45], 5, 3).encode(90.0);
        assert_eq!(
            with_metadata(&plain, None, None, None).unwrap(),
            plain.to_vec()
        );
    }
}
