//! LayerNorm, interleaved RoPE, bias addition and adaLN modulation on the CPU, with their
//! gradients.
//!
//! candle's fused LayerNorm and RoPE kernels have no backward pass, and composing these
//! functions from broadcasting tensor ops (eight ops for a LayerNorm, eleven for RoPE) made
//! them most of a CPU training step's backward pass: every broadcast's gradient is a
//! single-threaded strided sum. Here each is one pass forward and one parallel pass
//! backward. Inference keeps candle's LayerNorm and RoPE kernels; bias and modulation use
//! these (one pass instead of broadcasting ops, same arithmetic).

use super::fused::{carried_f32, f32_slice, par_fill, CHUNK};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Whether the CPU kernels (these and [`super::cpu_attention`]) serve `dtype` on `device`:
/// f32 on the CPU.
pub fn serves(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// Whether the CPU kernels serve `x`.
pub fn applies(x: &Tensor) -> bool {
    serves(x.device(), x.dtype())
}

/// `(x − mean)/√(var + eps)·weight + bias` over the last dimension, differentiable in all
/// three inputs.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [d] || bias.dims() != [d] || d == 0 {
        candle_core::bail!("layer_norm: weight/bias must be [{d}], d > 0");
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// Pairs `(2i, 2i+1)` of `x` (`[n, heads, T, hd]`) rotated by the angles whose cosines
/// and sines are `cos[n, T, i]`, `sin[n, T, i]`; differentiable in `x`.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (n, _, t, d) = x.dims4()?;
    if d % 2 != 0 || t * d == 0 || cos.dims() != [n, t, d / 2] || sin.dims() != cos.dims() {
        candle_core::bail!(
            "rope: x {:?} needs [{n}, {t}, {}] tables, got {:?}",
            x.dims(),
            d / 2,
            cos.dims()
        );
    }
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

/// `x + bias` over the last dimension, differentiable in both.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if bias.dims() != [d] || d == 0 {
        candle_core::bail!("add_bias: bias {:?} for rows of {d}", bias.dims());
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

/// adaLN modulation `x·(1 + scale) + shift` of `[n, T, D]` tokens with per-block `[n or
/// 1, 1, D]` shift and scale, differentiable in all three.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (n, _, d) = x.dims3()?;
    let per_block = |m: &Tensor| -> Result<Tensor> {
        match m.dims() {
            &[mb, 1, md] if md == d && d > 0 && (mb == 1 || mb == n) => {
                m.broadcast_as((n, 1, d))?.contiguous()
            }
            dims => candle_core::bail!("modulate: {dims:?} for tokens {:?}", x.dims()),
        }
    };
    let (shift, scale) = (per_block(shift)?, per_block(scale)?);
    if x.elem_count() == 0 {
        return x.zeros_like();
    }
    x.contiguous()?.apply_op3(&shift, &scale, Modulate)
}

/// Mean and 1/√(var + eps) of one row.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The gradients of a custom op's three inputs from `grad_op`, whose single output packs
/// them as one flat tensor, in input order (a custom op has one output).
pub(super) fn packed_grads(
    inputs: [&Tensor; 3],
    grad_op: &impl CustomOp3,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let packed = inputs[0].apply_op3_no_bwd(inputs[1], inputs[2], grad_op)?;
    let mut start = 0;
    let mut next = |t: &Tensor| -> Result<Option<Tensor>> {
        let g = packed
            .narrow(0, start, t.elem_count())?
            .reshape(t.shape())?;
        start += t.elem_count();
        Ok(Some(g))
    };
    Ok((next(inputs[0])?, next(inputs[1])?, next(inputs[2])?))
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "cpu-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let d = w.len();
        let y = par_fill(x.len(), rows_per_item(d), |i, y| {
            for (y, x) in y.chunks_mut(d).zip(x[i..].chunks(d)) {
                let (mean, rstd) = moments(x, self.eps);
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *y = (x - mean) * rstd * w + b;
                }
            }
        });
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = LayerNormGrad {
            eps: self.eps,
            grad_out: grad_res.contiguous()?,
        };
        packed_grads([x, w, b], &grad_op)
    }
}

/// The gradients of [`LayerNorm`] for the output gradient `grad_out`, packed as one flat
/// `[dx, dweight, dbias]` (a custom op has one output).
struct LayerNormGrad {
    eps: f32,
    grad_out: Tensor,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "cpu-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = w.len();
        let rows = rows_per_item(d);
        carried_f32(&self.grad_out, |g| {
            let mut out = vec![0f32; x.len() + 2 * d];
            let (dx, _) = out.split_at_mut(x.len());
            // Each work item returns its rows' weight and bias gradients, summed after.
            let (dw, db) = dx
                .par_chunks_mut(rows)
                .zip(x.par_chunks(rows))
                .zip(g.par_chunks(rows))
                .map(|((dx, x), g)| {
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    let mut gw = vec![0f32; d];
                    for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                        let (mean, rstd) = moments(x, self.eps);
                        let (mut a, mut c) = (0f32, 0f32);
                        for i in 0..d {
                            let xh = (x[i] - mean) * rstd;
                            gw[i] = g[i] * w[i];
                            a += gw[i];
                            c += gw[i] * xh;
                            dw[i] += g[i] * xh;
                            db[i] += g[i];
                        }
                        let (a, c) = (a / d as f32, c / d as f32);
                        for i in 0..d {
                            let xh = (x[i] - mean) * rstd;
                            dx[i] = rstd * (gw[i] - a - xh * c);
                        }
                    }
                    (dw, db)
                })
                .reduce(
                    || (vec![0f32; d], vec![0f32; d]),
                    |(w1, b1), (w2, b2)| (add_into(w1, w2), add_into(b1, b2)),
                );
            let n = x.len();
            out[n..n + d].copy_from_slice(&dw);
            out[n + d..].copy_from_slice(&db);
            let len = out.len();
            Ok((CpuStorage::F32(out), Shape::from(len)))
        })
    }
}

/// Rows of `d` values per parallel work item.
fn rows_per_item(d: usize) -> usize {
    d * (CHUNK / d).max(1)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "cpu-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = b.len();
        let y = par_fill(x.len(), rows_per_item(d), |i, y| {
            for (y, x) in y.chunks_mut(d).zip(x[i..].chunks(d)) {
                for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                    *y = x + b;
                }
            }
        });
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSums { d: b.elem_count() })?;
        Ok((Some(grad_res.clone()), Some(db)))
    }
}

/// Sums of the rows of a `[.., d]` tensor: `[d]`.
struct ColumnSums {
    d: usize,
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "cpu-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, d) = (f32_slice(s, l)?, self.d);
        let sums = g
            .par_chunks(rows_per_item(d))
            .map(|g| {
                let mut acc = vec![0f32; d];
                for row in g.chunks(d) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .reduce(|| vec![0f32; d], add_into);
        Ok((CpuStorage::F32(sums), Shape::from(d)))
    }
}

/// `a += b` elementwise, returning `a` (for parallel reductions of partial sums).
fn add_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    a
}

struct Modulate;

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "cpu-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, shift, scale) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (_, t, d) = l1.shape().dims3()?;
        // One work item per block: its rows share the block's shift and scale.
        let y = par_fill(x.len(), t * d, |i, y| {
            let blk = i / (t * d);
            let (sh, sc) = (&shift[blk * d..][..d], &scale[blk * d..][..d]);
            for (y, x) in y.chunks_mut(d).zip(x[i..].chunks(d)) {
                for (((y, &x), &sh), &sc) in y.iter_mut().zip(x).zip(sh).zip(sc) {
                    *y = x * (1.0 + sc) + sh;
                }
            }
        });
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = ModulateGrad {
            grad_out: grad_res.contiguous()?,
        };
        packed_grads([x, shift, scale], &grad_op)
    }
}

/// The gradients of [`Modulate`] for `grad_out`, packed as one flat `[dx, dshift, dscale]`.
struct ModulateGrad {
    grad_out: Tensor,
}

impl CustomOp3 for ModulateGrad {
    fn name(&self) -> &'static str {
        "cpu-modulate-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, scale) = (f32_slice(s1, l1)?, f32_slice(s3, l3)?);
        let (n, t, d) = l1.shape().dims3()?;
        carried_f32(&self.grad_out, |g| {
            let mut dx = vec![0f32; x.len()];
            let mut dm = vec![0f32; 2 * n * d];
            let (dshift, dscale) = dm.split_at_mut(n * d);
            dx.par_chunks_mut(t * d)
                .zip(dshift.par_chunks_mut(d))
                .zip(dscale.par_chunks_mut(d))
                .enumerate()
                .for_each(|(blk, ((dx, dsh), dsc))| {
                    let sc = &scale[blk * d..][..d];
                    let (x, g) = (&x[blk * t * d..][..t * d], &g[blk * t * d..][..t * d]);
                    for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                        for i in 0..d {
                            dx[i] = g[i] * (1.0 + sc[i]);
                            dsh[i] += g[i];
                            dsc[i] += g[i] * x[i];
                        }
                    }
                });
            dx.extend_from_slice(&dm);
            let len = dx.len();
            Ok((CpuStorage::F32(dx), Shape::from(len)))
        })
    }
}

/// Interleaved RoPE; `inverse` rotates by the negative angles (its own gradient).
struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cpu-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (_, h, t, d) = l1.shape().dims4()?;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        // One work item per (block, head): its tables are block `p / h`'s.
        let y = par_fill(x.len(), t * d, |i, y| {
            let table = (i / (t * d) / h) * t * d / 2;
            let (cos, sin) = (
                &cos[table..table + t * d / 2],
                &sin[table..table + t * d / 2],
            );
            for (((y, x), &c), &s) in y
                .chunks_exact_mut(2)
                .zip(x[i..].chunks_exact(2))
                .zip(cos)
                .zip(sin)
            {
                let s = sign * s;
                y[0] = x[0] * c - x[1] * s;
                y[1] = x[0] * s + x[1] * c;
            }
        });
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad_res.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::{layer_norm_composed, modulate_composed, rope_composed};
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Gradients of `Σ w⊙f(inputs)` with respect to each input.
    fn grads(
        inputs: &[&Tensor],
        w: &Tensor,
        f: impl Fn(&[&Tensor]) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t))
            .collect::<Result<_>>()?;
        let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let g = (f(&ts)? * w)?.sum_all()?.backward()?;
        Ok(ts
            .iter()
            .map(|t| g.get(t).expect("gradient").clone())
            .collect())
    }

    #[test]
    fn layer_norm_and_its_gradients_match_the_composition() -> Result<()> {
        let dev = Device::Cpu;
        // Rows of 48: not a multiple of the chunk, several work items.
        let x = ((Tensor::randn(0f32, 1.0, (3, 700, 48), &dev)? * 3.0)? + 1.0)?;
        let w = Tensor::randn(1f32, 0.3, 48, &dev)?;
        let b = Tensor::randn(0f32, 0.3, 48, &dev)?;
        let out_w = Tensor::randn(0f32, 1.0, x.shape(), &dev)?;
        let diff = max_diff(
            &layer_norm(&x, &w, &b, 1e-6)?,
            &layer_norm_composed(&x, &w, &b, 1e-6)?,
        )?;
        assert!(diff < 1e-5, "forward {diff}");
        let ours = grads(&[&x, &w, &b], &out_w, |t| {
            layer_norm(t[0], t[1], t[2], 1e-6)
        })?;
        let want = grads(&[&x, &w, &b], &out_w, |t| {
            layer_norm_composed(t[0], t[1], t[2], 1e-6)
        })?;
        assert_grads_close(&ours, &want, &["x", "weight", "bias"])
    }

    #[test]
    fn rope_and_its_gradient_match_the_composition() -> Result<()> {
        let dev = Device::Cpu;
        let (n, h, t, d) = (2, 3, 20, 8);
        let x = Tensor::randn(0f32, 1.0, (n, h, t, d), &dev)?;
        let angle = Tensor::randn(0f32, 2.0, (n, t, d / 2), &dev)?;
        let (cos, sin) = (angle.cos()?, angle.sin()?);
        let out_w = Tensor::randn(0f32, 1.0, x.shape(), &dev)?;
        let diff = max_diff(
            &rope_interleaved(&x, &cos, &sin)?,
            &rope_composed(&x, &cos, &sin)?,
        )?;
        assert!(diff < 1e-6, "forward {diff}");
        let ours = grads(&[&x], &out_w, |t| rope_interleaved(t[0], &cos, &sin))?;
        let want = grads(&[&x], &out_w, |t| rope_composed(t[0], &cos, &sin))?;
        let diff = max_diff(&ours[0], &want[0])?;
        assert!(diff < 1e-6, "dx {diff}");
        Ok(())
    }

    /// Each gradient within 1e-5 of the reference's largest value (or absolutely, below 1).
    fn assert_grads_close(ours: &[Tensor], want: &[Tensor], names: &[&str]) -> Result<()> {
        for (name, (a, b)) in names.iter().zip(ours.iter().zip(want)) {
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = max_diff(a, b)?;
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "d{name}: {diff} (scale {scale})"
            );
        }
        Ok(())
    }

    #[test]
    fn bias_and_modulation_match_the_broadcasting_ops_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (n, t, d) = (3, 500, 24);
        let x = Tensor::randn(0f32, 1.0, (n, t, d), &dev)?;
        let out_w = Tensor::randn(0f32, 1.0, x.shape(), &dev)?;
        let b = Tensor::randn(0f32, 1.0, d, &dev)?;
        assert_eq!(max_diff(&add_bias(&x, &b)?, &x.broadcast_add(&b)?)?, 0.0);
        let ours = grads(&[&x, &b], &out_w, |t| add_bias(t[0], t[1]))?;
        let want = grads(&[&x, &b], &out_w, |t| t[0].broadcast_add(t[1]))?;
        assert_grads_close(&ours, &want, &["x", "bias"])?;
        // Per-block and shared (first dimension 1) modulation.
        for m in [n, 1] {
            let shift = Tensor::randn(0f32, 1.0, (m, 1, d), &dev)?;
            let scale = Tensor::randn(0f32, 1.0, (m, 1, d), &dev)?;
            let diff = max_diff(
                &modulate(&x, &shift, &scale)?,
                &modulate_composed(&x, &shift, &scale)?,
            )?;
            assert_eq!(diff, 0.0, "forward, {m} modulations");
            let inputs = [&x, &shift, &scale];
            let ours = grads(&inputs, &out_w, |t| modulate(t[0], t[1], t[2]))?;
            let want = grads(&inputs, &out_w, |t| modulate_composed(t[0], t[1], t[2]))?;
            assert_grads_close(&ours, &want, &["x", "shift", "scale"])?;
        }
        Ok(())
    }
}
