//! Conversion between `image` crate images and [`Planar`] ones, quantisation, and the
//! model's value range.

use image::{DynamicImage, ExtendedColorType};

use crate::imageops::Planar;

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
/// keeps all of its precision, and clamped to [0, 1], NaN taken as 0.
pub(super) fn split<T: Copy + Into<f32>>(
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
    // Floating-point samples may be NaN (no data, in some files): black, as clamping
    // gives infinities the nearest end.
    let norm = |v: T| {
        let x = v.into() / max;
        if x.is_nan() {
            0.0
        } else {
            x.clamp(0.0, 1.0)
        }
    };
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

/// Whether every pixel of `rgb` is gray: its three planes agree.
pub(super) fn is_gray(rgb: &Planar) -> bool {
    rgb.plane(0) == rgb.plane(1) && rgb.plane(1) == rgb.plane(2)
}

/// R, G and B (unclamped) of a Y′CbCr sample: Y′ in [0, 1], Cb and Cr centred on zero,
/// `luma` the weights of red, green and blue in Y′. The matrix of TIFF's YCbCr (section
/// 21) and of H.273's Y′CbCr matrices.
pub(super) fn ycbcr_to_rgb(y: f32, cb: f32, cr: f32, luma: [f32; 3]) -> [f32; 3] {
    let [red, green, blue] = luma;
    let r = y + (2.0 - 2.0 * red) * cr;
    let b = y + (2.0 - 2.0 * blue) * cb;
    let g = (y - blue * b - red * r) / green;
    [r, g, b]
}

/// Sets every colour sample `v` to `f(v, a)`, `a` being its pixel's alpha.
pub(super) fn with_alpha(rgb: &mut Planar, alpha: &Planar, f: impl Fn(f32, f32) -> f32) {
    let n = alpha.data.len();
    for plane in rgb.data.chunks_exact_mut(n) {
        for (v, &a) in plane.iter_mut().zip(&alpha.data) {
            *v = f(*v, a);
        }
    }
}

/// Divides premultiplied colour by its alpha (fully transparent pixels keep their zero).
pub(super) fn unpremultiply(rgb: &mut Planar, alpha: &Planar) {
    with_alpha(
        rgb,
        alpha,
        |v, a| if a > 0.0 { (v / a).min(1.0) } else { v },
    );
}

/// Divides lossily coded premultiplied colour by its alpha, before rounding, which keeps
/// what precision the samples have where alpha is small. Fully transparent pixels get
/// colour 0, as in libavif: lossy coding leaves noise where the premultiplied colour was
/// zero.
pub(super) fn unpremultiply_coded(rgb: &mut Planar, alpha: &Planar) {
    with_alpha(
        rgb,
        alpha,
        |v, a| if a > 0.0 { (v / a).min(1.0) } else { 0.0 },
    );
}

/// Interleaved, quantised samples (native-endian bytes, as the encoders expect) and their
/// colour type: luma (Rec. 709 weights, as the `image` crate uses; for gray sources the
/// channels agree anyway and this only averages away the model's small colour noise) or
/// RGB, then alpha if given.
pub(super) fn quantise_planes(
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

/// Maps the model's `[-1, 1]` range back to `[0, 1]`. No clamping: [`encode_file`](super::encode_file) clamps
/// when it quantises, and intermediate consumers may want the raw values.
pub fn from_model_range(p: Planar) -> Planar {
    p.map(|v| (v + 1.0) * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::io::test_support::gradient;

    #[test]
    fn float_samples_are_clamped_and_nan_is_black() {
        let (rgb, alpha) = split(
            &[f32::NAN, f32::INFINITY, -f32::INFINITY, 0.5],
            4,
            1,
            1,
            1.0,
        );
        assert_eq!(rgb.data, [0.0, 1.0, 0.0]);
        assert_eq!(alpha.unwrap().data, [0.5]);
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
