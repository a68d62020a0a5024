//! Real-ESRGAN-style second-order degradation: turns a clean HR crop into a realistic LR
//! input (blur, resize, noise and JPEG, twice, then a final resize and sinc filter), or,
//! with a configurable probability, into a plain antialiased bicubic downscale — the
//! kernel the model is evaluated on.
//!
//! Written from the published recipe (kernel families, parameter ranges and order of
//! operations); all randomness comes from the caller's RNG, so a seeded RNG reproduces a
//! degradation exactly.

use std::f64::consts::PI;

use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageFormat};
use rand::Rng;
use rand_distr::{Distribution, Normal, Poisson};

use crate::imageops::resize::{resize_area, resize_bicubic, resize_bilinear};
use crate::imageops::{reflect, Planar};

/// Blur-kernel sampling for one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct BlurConfig {
    /// Probabilities of the kernel families, in the order isotropic Gaussian, anisotropic
    /// Gaussian, generalized isotropic, generalized anisotropic, plateau isotropic,
    /// plateau anisotropic. Need not sum to one (they are normalised).
    pub kernel_probs: [f64; 6],
    /// Standard deviation range of the Gaussian-family kernels, in pixels.
    pub sigma: (f64, f64),
    /// Shape range β of the generalized Gaussian `exp(-½ (xᵀΣ⁻¹x)^β)`.
    pub beta_generalized: (f64, f64),
    /// Shape range β of the plateau kernel `1 / (1 + (xᵀΣ⁻¹x)^β)`.
    pub beta_plateau: (f64, f64),
    /// Probability of a circular sinc (ideal low-pass) kernel instead of the families.
    pub sinc_prob: f64,
}

/// One degradation stage: blur → random resize → noise → JPEG.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    /// Probability that the stage blurs at all (1 for the first stage; 0.8 for the second,
    /// as in Real-ESRGAN's recipe).
    pub blur_prob: f64,
    pub blur: BlurConfig,
    /// Probabilities of scaling up, down, or keeping the size.
    pub resize_probs: [f64; 3],
    /// Scale range: up draws from `[1, max]`, down from `[min, 1]`.
    pub resize_range: (f64, f64),
    /// Probability of Gaussian noise; otherwise Poisson noise is added.
    pub gaussian_noise_prob: f64,
    /// Gaussian noise σ range on the 0–255 scale.
    pub noise_sigma: (f64, f64),
    /// Poisson noise scale range.
    pub poisson_scale: (f64, f64),
    /// Probability that the noise is the same in all channels (luminance-only noise).
    pub gray_noise_prob: f64,
    /// JPEG quality range (inclusive). The second stage's JPEG is applied in the final
    /// step, in random order with the last resize and sinc filter.
    pub jpeg_quality: (u8, u8),
}

/// Full degradation recipe. `Default` is the official second-order recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct DegradationConfig {
    /// Probability of returning a plain antialiased bicubic downscale instead.
    pub bicubic_prob: f64,
    /// Odd kernel sizes to draw from (uniformly) for every random kernel.
    pub kernel_sizes: Vec<usize>,
    pub stage1: StageConfig,
    pub stage2: StageConfig,
    /// Probability of the final sinc filter (otherwise identity).
    pub final_sinc_prob: f64,
}

impl Default for DegradationConfig {
    fn default() -> Self {
        let kernel_probs = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03];
        Self {
            bicubic_prob: 0.3,
            kernel_sizes: (3..=10).map(|v| 2 * v + 1).collect(),
            stage1: StageConfig {
                blur_prob: 1.0,
                blur: BlurConfig {
                    kernel_probs,
                    sigma: (0.2, 3.0),
                    beta_generalized: (0.5, 4.0),
                    beta_plateau: (1.0, 2.0),
                    sinc_prob: 0.1,
                },
                resize_probs: [0.2, 0.7, 0.1],
                resize_range: (0.3, 1.5),
                gaussian_noise_prob: 0.5,
                noise_sigma: (1.0, 15.0),
                poisson_scale: (0.05, 2.0),
                gray_noise_prob: 0.4,
                jpeg_quality: (60, 95),
            },
            stage2: StageConfig {
                blur_prob: 0.8,
                blur: BlurConfig {
                    kernel_probs,
                    sigma: (0.2, 1.5),
                    beta_generalized: (0.5, 4.0),
                    beta_plateau: (1.0, 2.0),
                    sinc_prob: 0.1,
                },
                resize_probs: [0.3, 0.4, 0.3],
                resize_range: (0.6, 1.2),
                gaussian_noise_prob: 0.5,
                noise_sigma: (1.0, 12.0),
                poisson_scale: (0.05, 1.0),
                gray_noise_prob: 0.4,
                jpeg_quality: (60, 100),
            },
            final_sinc_prob: 0.8,
        }
    }
}

/// Degrades an HR image (`[0, 1]` RGB) to an LR image of `hr / scale` size (floored),
/// in `[0, 1]` and quantised to 8-bit levels.
///
/// With probability `cfg.bicubic_prob` the result is the antialiased bicubic downscale
/// (`resize_bicubic(hr, h / scale, w / scale, true)`, clamped to `[0, 1]`, not quantised);
/// otherwise the second-order degradation.
pub fn degrade(hr: &Planar, scale: usize, cfg: &DegradationConfig, rng: &mut impl Rng) -> Planar {
    assert!(scale >= 1, "scale must be at least 1");
    let (out_h, out_w) = ((hr.height / scale).max(1), (hr.width / scale).max(1));
    if rng.gen::<f64>() < cfg.bicubic_prob {
        return resize_bicubic(hr, out_h, out_w, true).map(|v| v.clamp(0.0, 1.0));
    }

    // First stage, on the HR grid.
    let mut img = run_stage(hr.clone(), &cfg.stage1, cfg, rng, None);
    // Second stage: its random resize is relative to the LR size.
    img = run_stage(img, &cfg.stage2, cfg, rng, Some((out_h, out_w)));

    // Final: resize to the LR size plus sinc filter, and JPEG, in random order.
    let sinc = if rng.gen::<f64>() < cfg.final_sinc_prob {
        let size = choose_size(&cfg.kernel_sizes, rng);
        let omega = rng.gen_range(PI / 3.0..=PI);
        Some(Kernel::Full {
            size,
            w: sinc_kernel(size, omega),
        })
    } else {
        None
    };
    let quality = rng.gen_range(cfg.stage2.jpeg_quality.0..=cfg.stage2.jpeg_quality.1);
    let resize_first = rng.gen::<f64>() < 0.5;
    let mode = ResizeMode::from_index(rng.gen_range(0..3usize));
    let resize_and_filter = |img: Planar| {
        let out = resize_mode(&img, out_h, out_w, mode);
        match &sinc {
            Some(k) => filter(&out, k),
            None => out,
        }
    };
    img = if resize_first {
        jpeg(&resize_and_filter(img), quality)
    } else {
        resize_and_filter(jpeg(&img, quality))
    };
    img.map(|v| ((v * 255.0).round() / 255.0).clamp(0.0, 1.0))
}

fn run_stage(
    mut img: Planar,
    st: &StageConfig,
    cfg: &DegradationConfig,
    rng: &mut impl Rng,
    relative_to: Option<(usize, usize)>,
) -> Planar {
    // Blur.
    if rng.gen::<f64>() < st.blur_prob {
        let k = random_blur_kernel(&st.blur, &cfg.kernel_sizes, rng);
        img = filter(&img, &k);
    }
    // Random resize.
    let r: f64 = rng.gen();
    let [p_up, p_down, _] = normalised3(st.resize_probs);
    let s = if r < p_up {
        rng.gen_range(1.0..=st.resize_range.1.max(1.0))
    } else if r < p_up + p_down {
        rng.gen_range(st.resize_range.0.min(1.0)..=1.0)
    } else {
        1.0
    };
    let mode = ResizeMode::from_index(rng.gen_range(0..3usize));
    let (bh, bw) = relative_to.unwrap_or((img.height, img.width));
    let nh = ((bh as f64 * s) as usize).max(1);
    let nw = ((bw as f64 * s) as usize).max(1);
    if (nh, nw) != (img.height, img.width) {
        img = resize_mode(&img, nh, nw, mode);
    }
    // Noise.
    let gray = rng.gen::<f64>() < st.gray_noise_prob;
    if rng.gen::<f64>() < st.gaussian_noise_prob {
        let sigma = rng.gen_range(st.noise_sigma.0..=st.noise_sigma.1) / 255.0;
        add_gaussian_noise(&mut img, sigma, gray, rng);
    } else {
        let scale = rng.gen_range(st.poisson_scale.0..=st.poisson_scale.1);
        add_poisson_noise(&mut img, scale, gray, rng);
    }
    // JPEG (the second stage's JPEG is part of the final step).
    if relative_to.is_none() {
        let q = rng.gen_range(st.jpeg_quality.0..=st.jpeg_quality.1);
        img = jpeg(&img, q);
    }
    img
}

fn normalised3(p: [f64; 3]) -> [f64; 3] {
    let s: f64 = p.iter().sum();
    if s <= 0.0 {
        return [0.0, 0.0, 1.0];
    }
    [p[0] / s, p[1] / s, p[2] / s]
}

fn choose_size(sizes: &[usize], rng: &mut impl Rng) -> usize {
    assert!(!sizes.is_empty(), "kernel_sizes must not be empty");
    let k = sizes[rng.gen_range(0..sizes.len())];
    assert!(k % 2 == 1, "kernel sizes must be odd, got {k}");
    k
}

// ------------------------------------------------------------------------------------
// Blur kernels
// ------------------------------------------------------------------------------------

/// A normalised blur kernel: separable (one 1-D kernel for both axes) or a full odd
/// `size × size` row-major kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    Separable(Vec<f32>),
    Full { size: usize, w: Vec<f32> },
}

impl Kernel {
    /// The kernel as a full row-major `size × size` matrix.
    pub fn to_full(&self) -> (usize, Vec<f32>) {
        match self {
            Kernel::Full { size, w } => (*size, w.clone()),
            Kernel::Separable(k) => {
                let n = k.len();
                let mut w = Vec::with_capacity(n * n);
                for a in k {
                    for b in k {
                        w.push(a * b);
                    }
                }
                (n, w)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Gaussian,
    Generalized(f64),
    Plateau(f64),
}

fn random_blur_kernel(cfg: &BlurConfig, sizes: &[usize], rng: &mut impl Rng) -> Kernel {
    let size = choose_size(sizes, rng);
    if rng.gen::<f64>() < cfg.sinc_prob {
        let omega = if size < 13 {
            rng.gen_range(PI / 3.0..=PI)
        } else {
            rng.gen_range(PI / 5.0..=PI)
        };
        return Kernel::Full {
            size,
            w: sinc_kernel(size, omega),
        };
    }
    let total: f64 = cfg.kernel_probs.iter().sum();
    let mut r = rng.gen::<f64>() * total;
    let mut which = cfg.kernel_probs.len() - 1;
    for (i, p) in cfg.kernel_probs.iter().enumerate() {
        if r < *p {
            which = i;
            break;
        }
        r -= p;
    }
    let isotropic = matches!(which, 0 | 2 | 4);
    let family = match which / 2 {
        0 => Family::Gaussian,
        1 => Family::Generalized(draw_beta(cfg.beta_generalized, rng)),
        _ => Family::Plateau(draw_beta(cfg.beta_plateau, rng)),
    };
    let (sx, sy, theta) = if isotropic {
        (rng.gen_range(cfg.sigma.0..=cfg.sigma.1), 0.0, 0.0)
    } else {
        (
            rng.gen_range(cfg.sigma.0..=cfg.sigma.1),
            rng.gen_range(cfg.sigma.0..=cfg.sigma.1),
            rng.gen_range(-PI..=PI),
        )
    };
    if isotropic && family == Family::Gaussian {
        return Kernel::Separable(gaussian_1d(size, sx));
    }
    let sy = if isotropic { sx } else { sy };
    Kernel::Full {
        size,
        w: bivariate_kernel(size, sx, sy, theta, family),
    }
}

/// β below 1 and above 1 equally often (heavier and lighter tails than a Gaussian).
fn draw_beta(range: (f64, f64), rng: &mut impl Rng) -> f64 {
    if rng.gen::<f64>() < 0.5 {
        let lo = range.0.min(1.0);
        rng.gen_range(lo..=1.0)
    } else {
        let hi = range.1.max(1.0);
        rng.gen_range(1.0..=hi)
    }
}

/// Normalised 1-D Gaussian of odd length `size`.
pub fn gaussian_1d(size: usize, sigma: f64) -> Vec<f32> {
    let c = (size / 2) as f64;
    let w: Vec<f64> = (0..size)
        .map(|i| (-(i as f64 - c).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// Normalised anisotropic kernel of the given family with principal standard deviations
/// `sx`, `sy` rotated by `theta` (covariance `R diag(sx², sy²) Rᵀ`).
fn bivariate_kernel(size: usize, sx: f64, sy: f64, theta: f64, family: Family) -> Vec<f32> {
    let (c, s) = (theta.cos(), theta.sin());
    // Σ = R D Rᵀ → Σ⁻¹ = R D⁻¹ Rᵀ.
    let (ix, iy) = (1.0 / (sx * sx), 1.0 / (sy * sy));
    let a = c * c * ix + s * s * iy;
    let b = c * s * (ix - iy);
    let d = s * s * ix + c * c * iy;
    let half = (size / 2) as f64;
    let mut w = Vec::with_capacity(size * size);
    for i in 0..size {
        let y = i as f64 - half;
        for j in 0..size {
            let x = j as f64 - half;
            let q = a * x * x + 2.0 * b * x * y + d * y * y;
            w.push(match family {
                Family::Gaussian => (-0.5 * q).exp(),
                Family::Generalized(beta) => (-0.5 * q.powf(beta)).exp(),
                Family::Plateau(beta) => 1.0 / (1.0 + q.powf(beta)),
            });
        }
    }
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Bessel function of the first kind, order 1, from its integral representation
/// `J1(x) = 1/(2π) ∫₀^{2π} cos(τ − x sin τ) dτ`; the trapezoid rule over a full period
/// converges exponentially, so a few hundred nodes give f64 accuracy for |x| ≲ 100.
pub fn bessel_j1(x: f64) -> f64 {
    let n = 64 + 2 * x.abs().ceil() as usize;
    let mut acc = 0.0;
    for k in 0..n {
        let t = 2.0 * PI * k as f64 / n as f64;
        acc += (t - x * t.sin()).cos();
    }
    acc / n as f64
}

/// Normalised circular low-pass ("sinc") kernel with cutoff `omega` (radians/pixel):
/// `ω J1(ω r) / (2π r)`, with its limit `ω² / (4π)` at the centre.
pub fn sinc_kernel(size: usize, omega: f64) -> Vec<f32> {
    let half = (size / 2) as f64;
    let mut w = Vec::with_capacity(size * size);
    for i in 0..size {
        for j in 0..size {
            let r = ((i as f64 - half).powi(2) + (j as f64 - half).powi(2)).sqrt();
            w.push(if r == 0.0 {
                omega * omega / (4.0 * PI)
            } else {
                omega * bessel_j1(omega * r) / (2.0 * PI * r)
            });
        }
    }
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Correlates every channel with `k`, reflect-padded so the size is kept.
pub fn filter(img: &Planar, k: &Kernel) -> Planar {
    match k {
        Kernel::Separable(k1) => filter_separable(img, k1),
        Kernel::Full { size, w } => filter_full(img, *size, w),
    }
}

fn filter_full(img: &Planar, size: usize, w: &[f32]) -> Planar {
    let (c, h, wd) = (img.channels, img.height, img.width);
    let p = size / 2;
    let (ph, pw) = (h + 2 * p, wd + 2 * p);
    let cols: Vec<usize> = (0..pw)
        .map(|x| reflect(x as isize - p as isize, wd))
        .collect();
    let mut out = vec![0.0f32; c * h * wd];
    let mut pad = vec![0.0f32; ph * pw];
    for ch in 0..c {
        let plane = img.plane(ch);
        for y in 0..ph {
            let row = &plane[reflect(y as isize - p as isize, h) * wd..][..wd];
            for (o, &sx) in pad[y * pw..(y + 1) * pw].iter_mut().zip(&cols) {
                *o = row[sx];
            }
        }
        let dst = &mut out[ch * h * wd..(ch + 1) * h * wd];
        for (y, row_out) in dst.chunks_exact_mut(wd).enumerate() {
            for ky in 0..size {
                let src_row = &pad[(y + ky) * pw..(y + ky + 1) * pw];
                for kx in 0..size {
                    let wv = w[ky * size + kx];
                    if wv == 0.0 {
                        continue;
                    }
                    row_out
                        .iter_mut()
                        .zip(&src_row[kx..kx + wd])
                        .for_each(|(o, s)| *o += wv * s);
                }
            }
        }
    }
    Planar::new(c, h, wd, out)
}

fn filter_separable(img: &Planar, k: &[f32]) -> Planar {
    let (c, h, wd) = (img.channels, img.height, img.width);
    let size = k.len();
    let p = size / 2;
    let pw = wd + 2 * p;
    let cols: Vec<usize> = (0..pw)
        .map(|x| reflect(x as isize - p as isize, wd))
        .collect();
    let mut tmp = vec![0.0f32; c * h * wd];
    let mut padrow = vec![0.0f32; pw];
    // Horizontal pass.
    for (row_in, row_out) in img.data.chunks_exact(wd).zip(tmp.chunks_exact_mut(wd)) {
        for (o, &sx) in padrow.iter_mut().zip(&cols) {
            *o = row_in[sx];
        }
        for (kx, wv) in k.iter().enumerate() {
            row_out
                .iter_mut()
                .zip(&padrow[kx..kx + wd])
                .for_each(|(o, s)| *o += wv * s);
        }
    }
    // Vertical pass.
    let mut out = vec![0.0f32; c * h * wd];
    for ch in 0..c {
        let src = &tmp[ch * h * wd..(ch + 1) * h * wd];
        let dst = &mut out[ch * h * wd..(ch + 1) * h * wd];
        for (y, row_out) in dst.chunks_exact_mut(wd).enumerate() {
            for (ky, wv) in k.iter().enumerate() {
                let sy = reflect(y as isize + ky as isize - p as isize, h);
                row_out
                    .iter_mut()
                    .zip(&src[sy * wd..(sy + 1) * wd])
                    .for_each(|(o, s)| *o += wv * s);
            }
        }
    }
    Planar::new(c, h, wd, out)
}

// ------------------------------------------------------------------------------------
// Resizing (PyTorch `F.interpolate` modes without antialiasing)
// ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResizeMode {
    Area,
    Bilinear,
    Bicubic,
}

impl ResizeMode {
    fn from_index(i: usize) -> Self {
        match i {
            0 => ResizeMode::Area,
            1 => ResizeMode::Bilinear,
            _ => ResizeMode::Bicubic,
        }
    }
}

fn resize_mode(img: &Planar, h: usize, w: usize, mode: ResizeMode) -> Planar {
    if (h, w) == (img.height, img.width) {
        return img.clone();
    }
    match mode {
        ResizeMode::Area => resize_area(img, h, w),
        ResizeMode::Bilinear => resize_bilinear(img, h, w),
        ResizeMode::Bicubic => resize_bicubic(img, h, w, false),
    }
}

// ------------------------------------------------------------------------------------
// Noise and JPEG
// ------------------------------------------------------------------------------------

fn add_gaussian_noise(img: &mut Planar, sigma: f64, gray: bool, rng: &mut impl Rng) {
    let normal = Normal::new(0.0f32, sigma as f32).expect("valid sigma");
    let n = img.height * img.width;
    if gray {
        let noise: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
        for plane in img.data.chunks_exact_mut(n) {
            plane
                .iter_mut()
                .zip(&noise)
                .for_each(|(v, e)| *v = (*v + e).clamp(0.0, 1.0));
        }
    } else {
        img.data
            .iter_mut()
            .for_each(|v| *v = (*v + normal.sample(rng)).clamp(0.0, 1.0));
    }
}

/// Shot noise: the image quantised to 8 bits is treated as an expected photon count at
/// `2^⌈log2(distinct levels)⌉` counts per unit, resampled, and the difference (times
/// `scale`) is added to the image.
fn add_poisson_noise(img: &mut Planar, scale: f64, gray: bool, rng: &mut impl Rng) {
    let n = img.height * img.width;
    let quant = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) / 255.0;
    let noise_of = |src: &[f32], rng: &mut dyn rand::RngCore| -> Vec<f32> {
        let mut seen = [false; 256];
        src.iter()
            .for_each(|v| seen[(quant(*v) * 255.0).round() as usize] = true);
        let levels = seen.iter().filter(|s| **s).count().max(1);
        let vals = 2f64.powi((levels as f64).log2().ceil() as i32);
        // One distribution per 8-bit level (rate 0 never fires).
        let dists: Vec<Option<Poisson<f64>>> = (0..256)
            .map(|l| (l > 0).then(|| Poisson::new(l as f64 / 255.0 * vals).expect("positive rate")))
            .collect();
        src.iter()
            .map(|v| {
                let level = (v * 255.0).round().clamp(0.0, 255.0) as usize;
                let q = level as f64 / 255.0;
                let draw = dists[level].as_ref().map_or(0.0, |d| d.sample(rng));
                ((draw / vals - q) * scale) as f32
            })
            .collect()
    };
    if gray && img.channels == 3 {
        let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
        let y: Vec<f32> = (0..n)
            .map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i])
            .collect();
        let noise = noise_of(&y, rng);
        for plane in img.data.chunks_exact_mut(n) {
            plane
                .iter_mut()
                .zip(&noise)
                .for_each(|(v, e)| *v = (*v + e).clamp(0.0, 1.0));
        }
    } else {
        let noise = noise_of(&img.data, rng);
        img.data
            .iter_mut()
            .zip(&noise)
            .for_each(|(v, e)| *v = (*v + e).clamp(0.0, 1.0));
    }
}

/// Round-trips the image through the JPEG encoder at `quality` (1–100).
pub fn jpeg(img: &Planar, quality: u8) -> Planar {
    assert_eq!(img.channels, 3, "JPEG degradation expects RGB");
    let (h, w) = (img.height, img.width);
    let n = h * w;
    let mut rgb = vec![0u8; 3 * n];
    for c in 0..3 {
        for (i, v) in img.plane(c).iter().enumerate() {
            rgb[3 * i + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100))
        .encode(&rgb, w as u32, h as u32, ExtendedColorType::Rgb8)
        .expect("JPEG encoding of an in-memory RGB buffer");
    let dec = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg)
        .expect("decoding the JPEG just encoded")
        .to_rgb8();
    let mut data = vec![0.0f32; 3 * n];
    for (i, px) in dec.pixels().enumerate() {
        for c in 0..3 {
            data[c * n + i] = px.0[c] as f32 / 255.0;
        }
    }
    Planar::new(3, h, w, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn test_image(h: usize, w: usize) -> Planar {
        let mut data = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = 0.5
                        + 0.3 * ((x as f32 * 0.21 + c as f32).sin() * (y as f32 * 0.13).cos())
                        + if (x / 8 + y / 8) % 2 == 0 {
                            0.15
                        } else {
                            -0.15
                        };
                    data.push(v.clamp(0.0, 1.0));
                }
            }
        }
        Planar::new(3, h, w, data)
    }

    #[test]
    fn bessel_j1_known_values() {
        // Abramowitz & Stegun table values.
        for (x, j) in [
            (0.0, 0.0),
            (1.0, 0.440_050_585_7),
            (2.5, 0.497_094_102_5),
            (10.0, 0.043_472_746_2),
        ] {
            assert!(
                (bessel_j1(x) - j).abs() < 1e-9,
                "J1({x}) = {}",
                bessel_j1(x)
            );
        }
        assert!((bessel_j1(-1.0) + 0.440_050_585_7).abs() < 1e-9);
    }

    #[test]
    fn kernels_are_normalised_and_symmetric() {
        let mut rng = StdRng::seed_from_u64(7);
        let cfg = DegradationConfig::default();
        for _ in 0..200 {
            let k = random_blur_kernel(&cfg.stage1.blur, &cfg.kernel_sizes, &mut rng);
            let (n, w) = k.to_full();
            assert!(n % 2 == 1 && (7..=21).contains(&n));
            let s: f32 = w.iter().sum();
            assert!((s - 1.0).abs() < 1e-4, "sum {s}");
            // Point symmetric: k(x) = k(−x).
            for i in 0..n * n {
                assert!((w[i] - w[n * n - 1 - i]).abs() < 1e-6);
            }
        }
        let s = sinc_kernel(21, PI / 4.0);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn separable_gaussian_matches_full_filter() {
        let img = test_image(20, 23);
        let k = Kernel::Separable(gaussian_1d(9, 1.7));
        let (n, w) = k.to_full();
        let a = filter(&img, &k);
        let b = filter(&img, &Kernel::Full { size: n, w });
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!((x - y).abs() < 1e-5);
        }
        // The iso Gaussian is the generic bivariate formula with equal sigmas.
        let full = bivariate_kernel(9, 1.7, 1.7, 0.3, Family::Gaussian);
        for (x, y) in full.iter().zip(&k.to_full().1) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn filter_keeps_constants_and_handles_tiny_images() {
        let img = Planar::new(3, 4, 3, vec![0.4; 36]);
        let k = Kernel::Full {
            size: 21,
            w: sinc_kernel(21, PI / 3.0),
        };
        let out = filter(&img, &k);
        assert!(out.data.iter().all(|v| (v - 0.4).abs() < 1e-5));
    }

    #[test]
    fn reflect_matches_mirror_padding() {
        let n = 4;
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, n)).collect();
        assert_eq!(got, vec![2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
    }

    #[test]
    fn area_and_bilinear_resize() {
        let img = Planar::new(1, 1, 4, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            resize_mode(&img, 1, 2, ResizeMode::Area).data,
            vec![0.5, 2.5]
        );
        // Bilinear ×2: src = (i + 0.5)/2 − 0.5, clamped at 0.
        let up = resize_mode(&img, 1, 8, ResizeMode::Bilinear);
        let want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (a, b) in up.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", up.data);
        }
    }

    #[test]
    fn degrade_size_range_and_determinism() {
        let cfg = DegradationConfig {
            bicubic_prob: 0.0,
            ..Default::default()
        };
        let hr = test_image(96, 128);
        for seed in 0..12 {
            let a = degrade(&hr, 4, &cfg, &mut StdRng::seed_from_u64(seed));
            assert_eq!((a.channels, a.height, a.width), (3, 24, 32));
            assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
            // Quantised to 8-bit levels.
            assert!(a
                .data
                .iter()
                .all(|v| ((v * 255.0) - (v * 255.0).round()).abs() < 1e-3));
            let b = degrade(&hr, 4, &cfg, &mut StdRng::seed_from_u64(seed));
            assert_eq!(a, b, "seed {seed}");
        }
        let a = degrade(&hr, 4, &cfg, &mut StdRng::seed_from_u64(1));
        let b = degrade(&hr, 4, &cfg, &mut StdRng::seed_from_u64(2));
        assert_ne!(a, b);
        // Odd sizes floor like `h // scale`.
        let odd = degrade(&test_image(67, 50), 4, &cfg, &mut StdRng::seed_from_u64(3));
        assert_eq!((odd.height, odd.width), (16, 12));
    }

    #[test]
    fn degrade_stays_close_to_the_bicubic_downscale() {
        // A degradation is not arbitrary: on average it stays near the clean downscale.
        let cfg = DegradationConfig {
            bicubic_prob: 0.0,
            ..Default::default()
        };
        let hr = test_image(128, 128);
        let clean = resize_bicubic(&hr, 32, 32, true);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..5 {
            let lr = degrade(&hr, 4, &cfg, &mut rng);
            let mad: f32 = lr
                .data
                .iter()
                .zip(&clean.data)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / lr.data.len() as f32;
            assert!(mad < 0.2, "mean abs diff {mad}");
        }
    }

    #[test]
    fn bicubic_path_equals_resize_bicubic() {
        let cfg = DegradationConfig {
            bicubic_prob: 1.0,
            ..Default::default()
        };
        let hr = test_image(64, 80);
        let lr = degrade(&hr, 4, &cfg, &mut StdRng::seed_from_u64(5));
        let want = resize_bicubic(&hr, 16, 20, true).map(|v| v.clamp(0.0, 1.0));
        assert_eq!(lr, want);
    }

    #[test]
    fn jpeg_round_trip_is_close() {
        let img = test_image(32, 40);
        let out = jpeg(&img, 95);
        assert_eq!((out.height, out.width), (32, 40));
        let mad: f32 = out
            .data
            .iter()
            .zip(&img.data)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / img.data.len() as f32;
        assert!(mad < 0.03, "{mad}");
    }

    #[test]
    fn noise_has_the_requested_strength() {
        let mut img = Planar::new(3, 64, 64, vec![0.5; 3 * 64 * 64]);
        let mut rng = StdRng::seed_from_u64(3);
        add_gaussian_noise(&mut img, 10.0 / 255.0, false, &mut rng);
        let var: f32 =
            img.data.iter().map(|v| (v - 0.5).powi(2)).sum::<f32>() / img.data.len() as f32;
        assert!(
            (var.sqrt() * 255.0 - 10.0).abs() < 0.5,
            "{}",
            var.sqrt() * 255.0
        );
        let mut gray = Planar::new(3, 8, 8, vec![0.5; 192]);
        add_gaussian_noise(&mut gray, 0.05, true, &mut rng);
        assert_eq!(gray.plane(0), gray.plane(1));
        let mut p = Planar::new(3, 8, 8, vec![0.5; 192]);
        add_poisson_noise(&mut p, 1.0, true, &mut rng);
        assert_eq!(p.plane(0), p.plane(2));
        assert!(p.data.iter().any(|v| *v != 0.5));
    }
}
