//! tanh-GELU and softmax, fused on the CPU, with their gradients (the softmax only where
//! gradients are tracked: at inference candle's kernel is slightly faster).
//!
//! candle's GELU evaluates libm `tanhf` per element and builds its gradient from ten
//! separate tensor ops; its fused softmax has no backward pass at all (gradients would
//! silently stop at the attention scores). Here each forward pass and each gradient is
//! one vectorisable loop (plain arithmetic: no `mul_add`, which is a libm call without
//! FMA) with a polynomial `exp` accurate to about one ulp, so results agree with
//! candle's to ~1e-7. The exp-heavy loops are also compiled for AVX2 and picked at run
//! time. Other devices and dtypes use candle's kernels.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `√(2/π)`, the constant of the tanh approximation.
const K: f32 = 0.797_884_6;
const C: f32 = 0.044_715;
/// Elements per parallel work item.
pub(super) const CHUNK: usize = 1 << 14;

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`; fused on the CPU for f32, candle's
/// kernel elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.apply_op1(FusedGelu)
    } else {
        x.gelu()
    }
}

/// Softmax over the last dimension, differentiable on every device. Without gradients
/// it is candle's kernel (measured slightly faster than ours at inference).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        candle_nn::ops::softmax_last_dim(x)
    } else if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(FusedSoftmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// `eˣ` by range reduction to `r ∈ [−ln2/2, ln2/2]` and a degree-7 Taylor polynomial;
/// branch-free so that loops over slices vectorise.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to the nearest integer in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let bits = (t.to_bits() as i32 - SHIFT.to_bits() as i32 + 127) << 23;
    p * f32::from_bits(bits as u32)
}

/// `tanh(√(2/π)·(x + c·x³))` as `1 − 2/(e^{2u} + 1)`.
#[inline(always)]
fn inner_tanh(x: f32) -> f32 {
    let u = K * x * (1.0 + C * x * x);
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + inner_tanh(x))
}

/// `y = gelu(x)` element-wise (see [`softmax_row`] on the AVX2 version).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn gelu_into(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu_value(x))
}

/// `o = g · gelu'(x)` element-wise (see [`softmax_row`] on the AVX2 version).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn gelu_grad_into(x: &[f32], g: &[f32], o: &mut [f32]) {
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        *o = g * gelu_derivative(x);
    }
}

#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    let t = inner_tanh(x);
    let du = K * (1.0 + 3.0 * C * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("fused op: non-contiguous input"),
        _ => candle_core::bail!("fused op: f32 only"),
    }
}

/// A tensor's f32 values on the CPU, for the inputs a custom op carries besides its own
/// (a gradient op's output gradient).
pub(super) fn carried_f32(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<(CpuStorage, Shape)>,
) -> Result<(CpuStorage, Shape)> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(f32_slice(s, layout)?),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

/// `len` values computed `chunk` at a time in parallel: `f(start, out)` fills `out`, the
/// values at `start..start + out.len()`.
pub(super) fn par_fill(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> CpuStorage {
    let mut out = vec![0f32; len];
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(k, o)| f(k * chunk, o));
    CpuStorage::F32(out)
}

struct FusedGelu;

impl CustomOp1 for FusedGelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let y = par_fill(x.len(), CHUNK, |i, y| gelu_into(&x[i..], y));
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2(&grad_res.contiguous()?, GeluGrad)?,
        ))
    }
}

/// `grad · gelu'(x)`, the backward pass of [`FusedGelu`].
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = par_fill(x.len(), CHUNK, |i, o| gelu_grad_into(&x[i..], &g[i..], o));
        Ok((out, l1.shape().clone()))
    }
}

struct FusedSoftmax;

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let d = last_dim(l)?;
        let y = par_fill(x.len(), d, |i, y| {
            y.copy_from_slice(&x[i..i + d]);
            softmax_row(y);
        });
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&grad_res.contiguous()?, SoftmaxGrad)?))
    }
}

/// `s ⊙ (g − Σ g⊙s)` per row, the backward pass of [`FusedSoftmax`] (`s` its output).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = last_dim(l1)?;
        let out = par_fill(s.len(), d, |i, o| {
            let (s, g) = (&s[i..i + d], &g[i..i + d]);
            o.copy_from_slice(g);
            softmax_grad_row(s, o);
        });
        Ok((out, l1.shape().clone()))
    }
}

/// Independent partial results of the reductions below: a single running sum is a
/// serial chain of dependent float additions, which the compiler cannot vectorise.
const LANES: usize = 8;

/// `f`-reduction of `x` over [`LANES`] interleaved partial results, seeded with `init`.
#[inline(always)]
fn reduce(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    acc.into_iter().fold(tail, f)
}

/// Σ aᵢ·bᵢ, vectorisable.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    acc.into_iter().fold(tail, |s, a| s + a)
}

/// Softmax of one row, in place. Compiled for AVX2 too, chosen at run time: the default
/// x86-64 target has only 4-wide SSE2 vectors, and the bit arithmetic of [`exp`] needs
/// AVX2 to run 8 wide. The operations are the same either way, so are the results.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub(super) fn softmax_row(row: &mut [f32]) {
    let max = reduce(row, f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / reduce(row, 0.0, |s, v| s + v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Turns `g`, the gradient of a softmax row whose output is `s`, into the gradient of
/// its input: `s ⊙ (g − Σ g⊙s)`, in place.
pub(super) fn softmax_grad_row(s: &[f32], g: &mut [f32]) {
    let d = dot(s, g);
    for (g, &s) in g.iter_mut().zip(s) {
        *g = s * (*g - d);
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("softmax: empty last dimension"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Gradient of `Σ w⊙f(x)` with respect to `x`.
    fn weighted_grad(
        x: &Tensor,
        w: &Tensor,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let v = Var::from_tensor(x)?;
        let grads = (f(v.as_tensor())? * w)?.sum_all()?.backward()?;
        Ok(grads.get(v.as_tensor()).expect("gradient").clone())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn exp_is_accurate_over_the_range() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (want, got) = (x.exp(), exp(x));
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn matches_candle_gelu_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        // Wide enough to reach both saturated tails, and several parallel chunks.
        let x = (Tensor::randn(0f32, 1., 3 * CHUNK + 17, &dev)? * 4.0)?;
        let diff = max_diff(&gelu(&x)?, &x.gelu()?)?;
        assert!(diff < 1e-6, "forward {diff}");

        let w = Tensor::randn(0f32, 1., x.shape(), &dev)?;
        let diff = max_diff(
            &weighted_grad(&x, &w, gelu)?,
            &weighted_grad(&x, &w, |t| t.gelu())?,
        )?;
        assert!(diff < 1e-5, "gradient {diff}");
        Ok(())
    }

    #[test]
    fn softmax_matches_candle_and_has_the_right_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1., (3, 5, 37), &dev)? * 6.0)?;
        let diff = max_diff(
            &x.apply_op1(FusedSoftmax)?,
            &candle_nn::ops::softmax_last_dim(&x)?,
        )?;
        assert!(diff < 1e-6, "forward {diff}");

        let w = Tensor::randn(0f32, 1., x.shape(), &dev)?;
        let diff = max_diff(
            &weighted_grad(&x, &w, softmax_last_dim)?,
            &weighted_grad(&x, &w, |t| candle_nn::ops::softmax(t, D::Minus1))?,
        )?;
        assert!(diff < 1e-5, "gradient {diff}");
        Ok(())
    }
}
