//! Super-resolution quality metrics in the usual convention: PSNR and SSIM on the Y channel
//! (ITU-R BT.601, 0–255 scale) with a border of `shave` pixels ignored.
//!
//! `Y = 16 + 65.481 R + 128.553 G + 24.966 B` for `R, G, B ∈ [0, 1]`. SSIM uses the
//! standard 11×11 Gaussian window (σ = 1.5), `K1 = 0.01`, `K2 = 0.03`, `L = 255`, and
//! averages the SSIM map over the positions where the window fits entirely ("valid").

use crate::imageops::Planar;

/// Border shaved off before measuring, the common choice for ×4 results.
pub const DEFAULT_SHAVE: usize = 4;

/// Y (luma) plane of a `[0, 1]` RGB image on the 0–255 scale, as f64. A 1-channel image is
/// taken as already being luma in `[0, 1]` and just scaled.
pub fn rgb_to_y(img: &Planar) -> Vec<f64> {
    let n = img.height * img.width;
    match img.channels {
        3 => {
            let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
            (0..n)
                .map(|i| 16.0 + 65.481 * r[i] as f64 + 128.553 * g[i] as f64 + 24.966 * b[i] as f64)
                .collect()
        }
        1 => img.data.iter().map(|v| *v as f64 * 255.0).collect(),
        c => panic!("expected 1 or 3 channels, got {c}"),
    }
}

/// The shaved Y planes of both images and their shaved size.
fn shaved_y(a: &Planar, b: &Planar, shave: usize) -> (Vec<f64>, Vec<f64>, usize, usize) {
    assert_eq!(
        (a.channels, a.height, a.width),
        (b.channels, b.height, b.width),
        "images must have the same shape"
    );
    assert!(
        a.height > 2 * shave && a.width > 2 * shave,
        "image {}x{} too small for a {shave}-px shave",
        a.height,
        a.width
    );
    let (h, w) = (a.height - 2 * shave, a.width - 2 * shave);
    let crop = |y: Vec<f64>| -> Vec<f64> {
        (0..h)
            .flat_map(|r| y[(r + shave) * a.width + shave..][..w].to_vec())
            .collect()
    };
    (crop(rgb_to_y(a)), crop(rgb_to_y(b)), h, w)
}

/// PSNR in dB between the Y channels (peak 255). Identical images give `+∞`.
pub fn psnr_y(a: &Planar, b: &Planar, shave: usize) -> f64 {
    let (ya, yb, _, _) = shaved_y(a, b, shave);
    let mse = ya
        .iter()
        .zip(&yb)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        / ya.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Normalised 11×11 Gaussian window (σ = 1.5), as a 1-D factor (the window is its outer
/// product with itself).
fn window_1d() -> [f64; 11] {
    let mut g = [0.0; 11];
    for (i, v) in g.iter_mut().enumerate() {
        let x = i as f64 - 5.0;
        *v = (-x * x / (2.0 * 1.5 * 1.5)).exp();
    }
    let s: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= s);
    g
}

/// "Valid" separable filtering of an `h × w` plane with the 11-tap window.
fn filter_valid(x: &[f64], h: usize, w: usize, g: &[f64; 11]) -> Vec<f64> {
    let (oh, ow) = (h - 10, w - 10);
    let mut tmp = vec![0.0; h * ow];
    for y in 0..h {
        let row = &x[y * w..(y + 1) * w];
        for (c, o) in tmp[y * ow..(y + 1) * ow].iter_mut().enumerate() {
            *o = g.iter().zip(&row[c..c + 11]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        for (k, gk) in g.iter().enumerate() {
            let src = &tmp[(y + k) * ow..(y + k + 1) * ow];
            out[y * ow..(y + 1) * ow]
                .iter_mut()
                .zip(src)
                .for_each(|(o, s)| *o += gk * s);
        }
    }
    out
}

/// Mean SSIM between the Y channels. Identical images give 1. The shaved image must be at
/// least 11×11.
pub fn ssim_y(a: &Planar, b: &Planar, shave: usize) -> f64 {
    let (ya, yb, h, w) = shaved_y(a, b, shave);
    assert!(
        h >= 11 && w >= 11,
        "SSIM needs at least 11x11 pixels after shaving, got {h}x{w}"
    );
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let g = window_1d();
    let mu_a = filter_valid(&ya, h, w, &g);
    let mu_b = filter_valid(&yb, h, w, &g);
    let prod = |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(x, y)| x * y).collect() };
    let e_aa = filter_valid(&prod(&ya, &ya), h, w, &g);
    let e_bb = filter_valid(&prod(&yb, &yb), h, w, &g);
    let e_ab = filter_valid(&prod(&ya, &yb), h, w, &g);
    let n = mu_a.len();
    let mut acc = 0.0;
    for i in 0..n {
        let (ma, mb) = (mu_a[i], mu_b[i]);
        let var_a = e_aa[i] - ma * ma;
        let var_b = e_bb[i] - mb * mb;
        let cov = e_ab[i] - ma * mb;
        acc += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
            / ((ma * ma + mb * mb + c1) * (var_a + var_b + c2));
    }
    acc / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(h: usize, w: usize) -> Planar {
        let mut data = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = 0.5 + 0.2 * ((x * 7 + y * 3 + c * 5) % 11) as f32 / 11.0
                        - 0.1 * (y % 4) as f32 / 4.0;
                    data.push(v);
                }
            }
        }
        Planar::new(3, h, w, data)
    }

    #[test]
    fn y_of_black_and_white() {
        let black = Planar::zeros(3, 1, 1);
        let white = Planar::new(3, 1, 1, vec![1.0; 3]);
        assert!((rgb_to_y(&black)[0] - 16.0).abs() < 1e-12);
        assert!((rgb_to_y(&white)[0] - 235.0).abs() < 1e-9);
    }

    #[test]
    fn identical_images() {
        let a = textured(40, 33);
        assert_eq!(psnr_y(&a, &a, DEFAULT_SHAVE), f64::INFINITY);
        assert!((ssim_y(&a, &a, DEFAULT_SHAVE) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_offset_psnr() {
        // +δ in every RGB channel moves Y by 219·δ everywhere: PSNR = 20·log10(255 / 219δ).
        let a = textured(32, 32);
        let d = 4.0f32 / 255.0;
        let b = a.clone().map(|v| v + d);
        let want = 20.0 * (255.0 / (219.0 * d as f64)).log10();
        let got = psnr_y(&a, &b, DEFAULT_SHAVE);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // The offset only inside the shaved border does not count.
        let mut c = a.clone();
        for ch in 0..3 {
            c.data[ch * 32 * 32] += 0.5;
        }
        assert_eq!(psnr_y(&a, &c, DEFAULT_SHAVE), f64::INFINITY);
        assert!(psnr_y(&a, &c, 0).is_finite());
    }

    #[test]
    fn ssim_of_flat_images_by_hand() {
        // Flat images: σ = 0, so SSIM = (2·μa·μb + C1) / (μa² + μb² + C1).
        let a = Planar::new(3, 24, 24, vec![0.25; 3 * 24 * 24]);
        let b = Planar::new(3, 24, 24, vec![0.5; 3 * 24 * 24]);
        let (ma, mb) = (16.0 + 219.0 * 0.25, 16.0 + 219.0 * 0.5);
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * ma * mb + c1) / (ma * ma + mb * mb + c1);
        let got = ssim_y(&a, &b, 0);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn ssim_is_symmetric_and_drops_with_noise() {
        let a = textured(48, 40);
        let mut state = 12345u64;
        let mut noise = |amp: f32| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * amp
        };
        let mut small = a.clone();
        small.data.iter_mut().for_each(|v| *v += noise(0.02));
        let mut large = a.clone();
        large.data.iter_mut().for_each(|v| *v += noise(0.2));
        let s_small = ssim_y(&a, &small, DEFAULT_SHAVE);
        let s_large = ssim_y(&a, &large, DEFAULT_SHAVE);
        assert!(s_small < 1.0 && s_large < s_small, "{s_small} {s_large}");
        assert!((ssim_y(&small, &a, DEFAULT_SHAVE) - s_small).abs() < 1e-12);
        assert!(psnr_y(&a, &large, DEFAULT_SHAVE) < psnr_y(&a, &small, DEFAULT_SHAVE));
    }
}
