//! torchvision/PyTorch-exact resizing: bicubic (plain and antialiased), and the area and
//! bilinear modes the training degradations draw from. No crate reproduces these kernels,
//! and the model was trained on their exact output, so they are written here from the
//! formulas. All are separable: per-axis taps, applied by one loop.
//!
//! Coordinates and weights are computed in f32 like PyTorch does; f64 would differ by up
//! to 4e-5 on downscales.

use super::Planar;

/// Per output index: first source index and its normalised weights.
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

fn cubic(x: f32, a: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Antialiased (PIL-style, a = −0.5) taps: support widens with the downscale factor and
/// border taps are dropped and the rest renormalised.
fn taps_antialias(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f32 / n_out as f32;
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut start = Vec::with_capacity(n_out);
    let mut weights = Vec::with_capacity(n_out);
    for i in 0..n_out {
        let center = scale * (i as f32 + 0.5);
        let lo = ((center - support + 0.5) as isize).max(0) as usize;
        let hi = ((center + support + 0.5) as isize).min(n_in as isize) as usize;
        let mut w: Vec<f32> = (lo..hi)
            .map(|j| cubic((j as f32 - center + 0.5) * inv, -0.5))
            .collect();
        let sum: f32 = w.iter().sum();
        if sum != 0.0 {
            w.iter_mut().for_each(|v| *v /= sum);
        }
        start.push(lo);
        weights.push(w);
    }
    Taps { start, weights }
}

/// `F.interpolate(mode="bicubic", align_corners=False)` taps (a = −0.75, clamped indices),
/// expressed as a contiguous window so both kernels share one apply loop.
fn taps_plain(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f32 / n_out as f32;
    let mut start = Vec::with_capacity(n_out);
    let mut weights = Vec::with_capacity(n_out);
    let last = n_in as isize - 1;
    for i in 0..n_out {
        let src = scale * (i as f32 + 0.5) - 0.5;
        let i0 = src.floor();
        let t = src - i0;
        let i0 = i0 as isize;
        let k = [
            cubic(t + 1.0, -0.75),
            cubic(t, -0.75),
            cubic(1.0 - t, -0.75),
            cubic(2.0 - t, -0.75),
        ];
        let lo = (i0 - 1).clamp(0, last);
        let hi = (i0 + 2).clamp(0, last);
        let mut w = vec![0.0f32; (hi - lo + 1) as usize];
        for (m, km) in k.iter().enumerate() {
            let j = (i0 - 1 + m as isize).clamp(0, last);
            w[(j - lo) as usize] += km;
        }
        start.push(lo as usize);
        weights.push(w);
    }
    Taps { start, weights }
}

fn taps(n_in: usize, n_out: usize, antialias: bool) -> Taps {
    if antialias {
        taps_antialias(n_in, n_out)
    } else {
        taps_plain(n_in, n_out)
    }
}

/// `F.interpolate(mode="area")` taps: each output is the mean of the inputs its cell
/// covers (adaptive average pooling).
fn taps_area(n_in: usize, n_out: usize) -> Taps {
    let (start, weights) = (0..n_out)
        .map(|i| {
            let lo = i * n_in / n_out;
            let hi = ((i + 1) * n_in).div_ceil(n_out);
            (lo, vec![1.0 / (hi - lo) as f32; hi - lo])
        })
        .unzip();
    Taps { start, weights }
}

/// `F.interpolate(mode="bilinear", align_corners=False)` taps, without antialiasing.
fn taps_bilinear(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f32 / n_out as f32;
    let (start, weights) = (0..n_out)
        .map(|i| {
            let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let l1 = src - i0 as f32;
            if i0 + 1 < n_in {
                (i0, vec![1.0 - l1, l1])
            } else {
                (i0, vec![1.0])
            }
        })
        .unzip();
    Taps { start, weights }
}

/// Bicubic resize to `out_h × out_w`.
pub fn resize_bicubic(img: &Planar, out_h: usize, out_w: usize, antialias: bool) -> Planar {
    let th = taps(img.height, out_h, antialias);
    let tw = taps(img.width, out_w, antialias);
    apply(img, &th, &tw)
}

/// Area resize to `out_h × out_w` (`F.interpolate(mode="area")`).
pub fn resize_area(img: &Planar, out_h: usize, out_w: usize) -> Planar {
    apply(
        img,
        &taps_area(img.height, out_h),
        &taps_area(img.width, out_w),
    )
}

/// Bilinear resize to `out_h × out_w` (`F.interpolate(mode="bilinear")`, no antialias).
pub fn resize_bilinear(img: &Planar, out_h: usize, out_w: usize) -> Planar {
    apply(
        img,
        &taps_bilinear(img.height, out_h),
        &taps_bilinear(img.width, out_w),
    )
}

/// Applies height taps `th` and width taps `tw`: width pass first, then height, as
/// torchvision does.
fn apply(img: &Planar, th: &Taps, tw: &Taps) -> Planar {
    let (c, h, w) = (img.channels, img.height, img.width);
    let (out_h, out_w) = (th.start.len(), tw.start.len());
    let mut tmp = vec![0.0f32; c * h * out_w];
    for (row_in, row_out) in img.data.chunks_exact(w).zip(tmp.chunks_exact_mut(out_w)) {
        for (x, o) in row_out.iter_mut().enumerate() {
            let s = tw.start[x];
            *o = tw.weights[x]
                .iter()
                .zip(&row_in[s..])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    let mut out = vec![0.0f32; c * out_h * out_w];
    for ch in 0..c {
        let src = &tmp[ch * h * out_w..(ch + 1) * h * out_w];
        let dst = &mut out[ch * out_h * out_w..(ch + 1) * out_h * out_w];
        for (y, row_out) in dst.chunks_exact_mut(out_w).enumerate() {
            let s = th.start[y];
            for (k, wk) in th.weights[y].iter().enumerate() {
                let row_in = &src[(s + k) * out_w..(s + k + 1) * out_w];
                row_out
                    .iter_mut()
                    .zip(row_in)
                    .for_each(|(o, v)| *o += wk * v);
            }
        }
    }
    Planar::new(c, out_h, out_w, out)
}

/// torchvision `Resize(size)` with an int: the short side becomes `size`, the long side
/// `int(size · long / short)` (truncated).
pub fn resize_short_side(img: &Planar, size: usize, antialias: bool) -> Planar {
    let (h, w) = (img.height, img.width);
    let (oh, ow) = if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    };
    resize_bicubic(img, oh, ow, antialias)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from `F.interpolate` (PyTorch 2.11) on the row [1, 2, 4, 8, 16].
    #[test]
    fn area_and_bilinear_match_pytorch() {
        let row = Planar::new(1, 1, 5, vec![1.0, 2.0, 4.0, 8.0, 16.0]);
        let close = |got: &Planar, want: &[f32]| {
            assert_eq!(got.data.len(), want.len());
            for (g, w) in got.data.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{:?} vs {want:?}", got.data);
            }
        };
        close(&resize_area(&row, 1, 3), &[1.5, 14.0 / 3.0, 12.0]);
        close(
            &resize_bilinear(&row, 1, 8),
            &[1.0, 1.4375, 2.125, 3.375, 5.25, 7.75, 12.5, 16.0],
        );
    }

    #[test]
    fn identity_size_is_identity_for_plain_kernel() {
        let img = Planar::new(1, 3, 4, (0..12).map(|v| v as f32).collect());
        let out = resize_bicubic(&img, 3, 4, false);
        for (a, b) in out.data.iter().zip(&img.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Planar::new(2, 5, 7, vec![0.25; 70]);
        for aa in [true, false] {
            for (h, w) in [(20, 28), (2, 3), (5, 7)] {
                let out = resize_bicubic(&img, h, w, aa);
                assert!(
                    out.data.iter().all(|v| (v - 0.25).abs() < 1e-6),
                    "{aa} {h}x{w}"
                );
            }
        }
    }
}
