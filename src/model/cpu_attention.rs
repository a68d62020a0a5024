//! softmax(q·kᵀ/√d)·v on the CPU in one pass per (block, head, query tile), with its
//! gradient.
//!
//! The composed form materialises `[n, heads, Tq, Tk]` scores several times over (scaled
//! queries, transposed keys, scores, probabilities; in training also their gradients),
//! which made attention more than half of a CPU training step. Here a tile of
//! `TILE` query rows computes its scores into a buffer that stays in cache, and the
//! backward pass recomputes them (as FlashAttention does) instead of keeping them, so
//! neither inference nor training holds a score tensor. The products run on the `gemm`
//! crate that candle's CPU matmul also uses.

use super::cpu_ops::packed_grads;
use super::fused::{carried_f32, f32_slice, softmax_grad_row, softmax_row};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Query rows per work item: their scores (`TILE × Tk` f32, 256 KiB for 1024 keys)
/// stay in the core's cache between the two products.
const TILE: usize = 64;

/// softmax(q·kᵀ/√d)·v for `[n, heads, Tq, d]` × `[n, heads, Tk, d]` (f32, CPU: where
/// [`super::cpu_ops::applies`]), with a backward pass.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n, h, _, d) = q.dims4()?;
    let (kn, kh, tk, kd) = k.dims4()?;
    if (kn, kh, kd) != (n, h, d) || v.dims() != k.dims() || tk == 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.elem_count() == 0 {
        return q.zeros_like();
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3(&k, &v, Attention)
}

/// A row-major matrix view: element `(r, c)` is `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// `rows × cols`, stored row by row.
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of [`Mat::rows`]`(data, cols)`.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len(),
            "matrix view out of bounds"
        );
    }
}

/// `dst (m×n, row-major) = [dst +] alpha·lhs (m×k)·rhs (k×n)`, single-threaded (the
/// callers parallelise over blocks and heads).
fn matmul(dst: &mut [f32], accumulate: bool, alpha: f32, lhs: Mat, rhs: Mat, m: usize, k: usize) {
    let n = dst.len() / m.max(1);
    assert_eq!(dst.len(), m * n, "matmul: destination size");
    lhs.check(m, k);
    rhs.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: `check` and the assertion above keep every index gemm forms for an
    // m×k · k×n product with these strides inside the slices, and `dst` is borrowed
    // mutably, so it aliases neither operand.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The `p`-th of consecutive runs of `len` values.
fn part(x: &[f32], p: usize, len: usize) -> &[f32] {
    &x[p * len..(p + 1) * len]
}

/// Shapes of one call: `bh` (block, head) pairs, `tq` queries and `tk` keys of width `d`.
#[derive(Clone, Copy)]
struct Dims {
    bh: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout) -> Result<Self> {
        let (n, h, tq, d) = q.shape().dims4()?;
        Ok(Self {
            bh: n * h,
            tq,
            tk: k.shape().dims4()?.2,
            d,
        })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Softmax probabilities of query rows `r0..r0 + rows` over all keys, for the
    /// (block, head) pair whose queries and keys are `q` and `k`; into `p_buf`.
    fn probabilities(&self, q: &[f32], k: &[f32], r0: usize, rows: usize, p_buf: &mut [f32]) {
        let (tk, d) = (self.tk, self.d);
        let q_tile = &q[r0 * d..(r0 + rows) * d];
        matmul(
            p_buf,
            false,
            self.scale(),
            Mat::rows(q_tile, d),
            Mat::transposed(k, d),
            rows,
            d,
        );
        p_buf.chunks_mut(tk).for_each(softmax_row);
    }
}

struct Attention;

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "cpu-attention"
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
        let (q, k, v) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let dims = Dims::of(l1, l2)?;
        let Dims { tq, tk, d, .. } = dims;
        let mut out = vec![0f32; q.len()];
        // Work items are (pair, query tile): enough of them to keep every core busy even
        // for a single block.
        out.par_chunks_mut(tq * d)
            .enumerate()
            .flat_map(|(p, o)| {
                o.par_chunks_mut(TILE * d)
                    .enumerate()
                    .map(move |(t, o)| (p, t, o))
            })
            .for_each_init(Vec::new, |buf, (p, t, o)| {
                let rows = o.len() / d;
                buf.resize(rows * tk, 0.0);
                let (qp, kp, vp) = (part(q, p, tq * d), part(k, p, tk * d), part(v, p, tk * d));
                dims.probabilities(qp, kp, t * TILE, rows, buf);
                matmul(
                    o,
                    false,
                    1.0,
                    Mat::rows(buf, tk),
                    Mat::rows(vp, d),
                    rows,
                    tk,
                );
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = AttentionGrad {
            grad_out: grad_res.contiguous()?,
        };
        packed_grads([q, k, v], &grad_op)
    }
}

/// The gradients of [`Attention`] for the output gradient `grad_out`, packed as one
/// flat `[dq, dk, dv]` (a custom op has one output).
struct AttentionGrad {
    grad_out: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "cpu-attention-grad"
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
        let (q, k, v) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let dims = Dims::of(l1, l2)?;
        carried_f32(&self.grad_out, |g| {
            let Dims { bh, tq, tk, d } = dims;
            let scale = dims.scale();
            let mut dq = vec![0f32; bh * tq * d];
            let mut dkv = vec![0f32; 2 * bh * tk * d];
            let (dk, dv) = dkv.split_at_mut(bh * tk * d);
            // Keys and values collect contributions from every query tile of their pair, so
            // a work item is a whole pair; its tiles run in order.
            dq.par_chunks_mut(tq * d)
                .zip(dk.par_chunks_mut(tk * d))
                .zip(dv.par_chunks_mut(tk * d))
                .enumerate()
                .for_each(|(p, ((dq, dk), dv))| {
                    let (qp, kp, vp, gp) = (
                        part(q, p, tq * d),
                        part(k, p, tk * d),
                        part(v, p, tk * d),
                        part(g, p, tq * d),
                    );
                    let rows_max = TILE.min(tq);
                    let mut prob = vec![0f32; rows_max * tk];
                    let mut dp = vec![0f32; rows_max * tk];
                    for (t, r0) in (0..tq).step_by(TILE).enumerate() {
                        let rows = TILE.min(tq - r0);
                        let (prob, dp) = (&mut prob[..rows * tk], &mut dp[..rows * tk]);
                        let (q_t, g_t) =
                            (&qp[r0 * d..(r0 + rows) * d], &gp[r0 * d..(r0 + rows) * d]);
                        dims.probabilities(qp, kp, r0, rows, prob);
                        // dP = dO·vᵀ, then dS = P ⊙ (dP − Σ_row P⊙dP) in place.
                        matmul(
                            dp,
                            false,
                            1.0,
                            Mat::rows(g_t, d),
                            Mat::transposed(vp, d),
                            rows,
                            d,
                        );
                        for (p_row, g_row) in prob.chunks(tk).zip(dp.chunks_mut(tk)) {
                            softmax_grad_row(p_row, g_row);
                        }
                        let accumulate = t > 0;
                        let dq_t = &mut dq[r0 * d..(r0 + rows) * d];
                        matmul(
                            dq_t,
                            false,
                            scale,
                            Mat::rows(dp, tk),
                            Mat::rows(kp, d),
                            rows,
                            tk,
                        );
                        matmul(
                            dk,
                            accumulate,
                            scale,
                            Mat::transposed(dp, tk),
                            Mat::rows(q_t, d),
                            tk,
                            rows,
                        );
                        matmul(
                            dv,
                            accumulate,
                            1.0,
                            Mat::transposed(prob, tk),
                            Mat::rows(g_t, d),
                            tk,
                            rows,
                        );
                    }
                });
            dq.extend_from_slice(&dkv);
            let len = dq.len();
            Ok((CpuStorage::F32(dq), Shape::from(len)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::attention_composed;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Query counts that are and are not multiples of the tile, keys of another length.
    fn inputs(tq: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let (n, h, tk, d) = (2, 3, 2 * TILE + 5, 16);
        Ok((
            (Tensor::randn(0f32, 1.0, (n, h, tq, d), &dev)? * 2.0)?,
            (Tensor::randn(0f32, 1.0, (n, h, tk, d), &dev)? * 2.0)?,
            Tensor::randn(0f32, 1.0, (n, h, tk, d), &dev)?,
        ))
    }

    #[test]
    fn matches_the_composed_attention() -> Result<()> {
        for tq in [TILE, 2 * TILE + 9, 7] {
            let (q, k, v) = inputs(tq)?;
            let diff = max_diff(&attention(&q, &k, &v)?, &attention_composed(&q, &k, &v)?)?;
            assert!(diff < 2e-6, "tq {tq}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn no_queries_give_an_empty_output() -> Result<()> {
        let (_, k, v) = inputs(1)?;
        let q = Tensor::zeros((2, 3, 0, 16), DType::F32, &Device::Cpu)?;
        assert_eq!(attention(&q, &k, &v)?.dims(), [2, 3, 0, 16]);
        Ok(())
    }

    #[test]
    fn gradients_match_the_composed_attention() -> Result<()> {
        for tq in [2 * TILE + 9, 7] {
            let (q, k, v) = inputs(tq)?;
            let w = Tensor::randn(0f32, 1.0, q.shape(), q.device())?;
            let grads =
                |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
                    let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).expect("var"));
                    let out = f(
                        vars[0].as_tensor(),
                        vars[1].as_tensor(),
                        vars[2].as_tensor(),
                    )?;
                    let g = (out * &w)?.sum_all()?.backward()?;
                    Ok(vars
                        .iter()
                        .map(|v| g.get(v.as_tensor()).expect("gradient").clone())
                        .collect())
                };
            let (ours, composed) = (grads(attention)?, grads(attention_composed)?);
            for (name, (a, b)) in ["q", "k", "v"].iter().zip(ours.iter().zip(&composed)) {
                let diff = max_diff(a, b)?;
                assert!(diff < 1e-5, "tq {tq}: d{name} differs by {diff}");
            }
        }
        Ok(())
    }
}
