//! Small numeric building blocks shared by the denoiser and the trainer. Each uses
//! candle's fused kernel at inference; when gradients are tracked (candle's fused
//! LayerNorm and RoPE kernels have no backward pass) our CPU kernels with gradients, or
//! elsewhere a differentiable composition.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension; the non-affine variant uses unit weight and zero bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Weight, bias and epsilon (for the fused kernels).
    pub fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// A LayerNorm with these weight and bias tensors.
    pub fn from_parts(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn no_affine(size: usize, eps: f64, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(size, dtype, device)?,
            bias: Tensor::zeros(size, dtype, device)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, eps) = self.parts();
        if !x.track_op() && !w.track_op() {
            candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32)
        } else if super::cpu_ops::applies(x) {
            super::cpu_ops::layer_norm(x, w, b, eps)
        } else {
            layer_norm_composed(x, w, b, eps)
        }
    }
}

/// LayerNorm from differentiable tensor ops, in f32 (the reference for the fused kernels,
/// and training where none serves).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_sub(&mean)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    x.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Whether the fused CUDA kernels serve these inputs (never without the `cuda` feature).
pub fn fused_kernels(xs: &[&Tensor]) -> bool {
    #[cfg(feature = "cuda")]
    return xs.first().is_some_and(|x| super::fused_ops::applies(x))
        && xs.iter().all(|t| !t.track_op());
    #[cfg(not(feature = "cuda"))]
    {
        let _ = xs;
        false
    }
}

/// `ln(x)` then the adaLN modulation, fused on CUDA.
pub fn ln_modulate(ln: &LayerNorm, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_kernels(&[x, &ln.weight, shift, scale]) {
        return super::fused_ops::ln_modulate(x, ln.parts(), shift, scale);
    }
    modulate(&ln.forward(x)?, shift, scale)
}

/// `candle_nn::Linear` whose bias (and an optional following GELU) is one fused pass on
/// CUDA; elsewhere it is candle's.
#[derive(Debug, Clone)]
pub struct Linear(candle_nn::Linear);

pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear(candle_nn::linear(in_dim, out_dim, vb)?))
}

impl Linear {
    /// `weight` `[out, in]`, `bias` `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self(candle_nn::Linear::new(weight, bias))
    }

    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// `gelu(self.forward(x))`.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused_bias(x) {
            Some(b) => self.forward_fused(x, b, true),
            None => super::fused::gelu(&self.forward(x)?),
        }
    }

    /// `residual + self.forward(x)`, in one pass where cuBLASLt's epilogue serves.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(b) = self.0.bias() {
            if super::gemm_lt::residual_fits(residual) {
                if let Some(y) = self.lt(x, b, false, Some(residual))? {
                    return Ok(y);
                }
            }
        }
        residual + self.forward(x)?
    }

    /// `x·Wᵀ + b` (then GELU when `gelu`) on CUDA: the bias in cuBLASLt's epilogue where
    /// that is enabled, else the GEMM and one fused bias pass.
    fn forward_fused(&self, x: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) = self.lt(x, bias, gelu, None)? {
            return Ok(y);
        }
        self.matmul(x).and_then(|y| fused_bias_act(&y, bias, gelu))
    }

    /// `x·Wᵀ + bias` (GELU'd when `gelu`, plus `residual` when given) in one cuBLASLt GEMM
    /// over all leading dimensions; `None` where that path does not serve.
    #[cfg(feature = "cuda")]
    fn lt(
        &self,
        x: &Tensor,
        bias: &Tensor,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        if !super::gemm_lt::applies(x, self.weight(), bias) {
            return Ok(None);
        }
        let (x2, lead) = flatten_rows(x)?;
        let r = residual
            .map(|r| r.flatten_to(r.rank().saturating_sub(2)))
            .transpose()?;
        super::gemm_lt::linear(&x2, self.weight(), bias, gelu, r.as_ref())?
            .map(|y| unflatten_rows(y, lead))
            .transpose()
    }

    fn fused_bias<'a>(&'a self, x: &Tensor) -> Option<&'a Tensor> {
        self.0
            .bias()
            .filter(|b| fused_kernels(&[x, self.0.weight(), b]))
    }

    /// `x·Wᵀ` as one 2-D matmul over all leading dimensions.
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (x2, lead) = flatten_rows(x)?;
        unflatten_rows(x2.matmul(&self.0.weight().t()?)?, lead)
    }
}

/// `x` flattened to 2-D `[rows, in]`, with its leading dimensions.
fn flatten_rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let (k, lead) = dims
        .split_last()
        .expect("linear input has a last dimension");
    let rows: usize = lead.iter().product();
    Ok((x.contiguous()?.reshape((rows, *k))?, lead.to_vec()))
}

/// A `[rows, out]` result given back the input's leading dimensions `lead`.
fn unflatten_rows(y: Tensor, mut lead: Vec<usize>) -> Result<Tensor> {
    lead.push(y.dim(1)?);
    y.reshape(lead)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.fused_bias(x), self.0.bias()) {
            (Some(b), _) => self.forward_fused(x, b, false),
            (None, Some(b)) if super::cpu_ops::applies(x) => {
                super::cpu_ops::add_bias(&self.matmul(x)?, b)
            }
            _ => self.0.forward(x),
        }
    }
}

fn fused_bias_act(y: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return super::fused_ops::bias_act(y, bias, gelu);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (y, bias, gelu);
        unreachable!("fused kernels exist only with the cuda feature")
    }
}

/// adaLN modulation: `x·(1 + scale) + shift`, broadcast over tokens (`x`: `[n, T, D]`,
/// shift and scale `[n or 1, 1, D]`).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if super::cpu_ops::applies(x) {
        super::cpu_ops::modulate(x, shift, scale)
    } else {
        modulate_composed(x, shift, scale)
    }
}

/// [`modulate`] from broadcasting tensor ops.
pub fn modulate_composed(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// Interleaved rotary embedding: pairs `(2i, 2i+1)` rotate by the angle whose cosine
/// and sine are `cos[.., i]`, `sin[.., i]`. `x`: `[n, heads, T, hd]`, tables `[n, T, hd/2]`.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin)
    } else if super::cpu_ops::applies(x) {
        super::cpu_ops::rope_interleaved(x, cos, sin)
    } else {
        rope_composed(x, cos, sin)
    }
}

/// [`rope_interleaved`] from differentiable tensor ops.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (n, h, t, d) = x.dims4()?;
    let x = x.reshape((n, h, t, d / 2, 2))?;
    let x0 = x.narrow(4, 0, 1)?;
    let x1 = x.narrow(4, 1, 1)?;
    let cos = cos.reshape((n, 1, t, d / 2, 1))?;
    let sin = sin.reshape((n, 1, t, d / 2, 1))?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], 4)?.reshape((n, h, t, d))
}

/// Largest attention-score tensor materialised at once; bigger batches are split
/// along the block dimension so whole-image evaluation does not hold every block's
/// scores at the same time.
pub const MAX_SCORE_BYTES: usize = 256 << 20;

/// Whether [`attention`] runs fused (no score tensor in memory) for this device, dtype
/// and head dim: f32 on the CPU, the CUDA kernel's dtypes and head dims on a GPU.
pub fn fused_attention(device: &Device, dtype: DType, head_dim: usize) -> bool {
    if device.is_cpu() {
        return super::cpu_ops::serves(device, dtype) && !composed_forced();
    }
    #[cfg(feature = "cuda")]
    return super::flash_attention::serves(device, dtype, head_dim);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = head_dim;
        false
    }
}

/// The largest |a − b| over two tensors of one shape, compared in f32 (for checks of a
/// kernel against its reference).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// `INFDIT_ATTENTION=composed` turns the fused attention kernels off (for comparisons and
/// as an escape hatch).
pub fn composed_forced() -> bool {
    crate::switches::ATTENTION.is("composed")
}

/// softmax(q·kᵀ/√d)·v for `[n, heads, Tq, d]` × `[n, heads, Tk, d]`: one fused pass where
/// a kernel serves the inputs, else [`attention_composed`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if !composed_forced() && super::cpu_ops::applies(q) {
        return super::cpu_attention::attention(q, k, v);
    }
    #[cfg(feature = "cuda")]
    if super::flash_attention::applies(q, k, v) {
        return super::flash_attention::forward(q, k, v);
    }
    attention_composed(q, k, v)
}

/// [`attention`] as matmul → softmax → matmul, in chunks of blocks.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n, h, tq, _) = q.dims4()?;
    let tk = k.dim(2)?;
    let per_block = h * tq * tk * 4;
    let chunk = (MAX_SCORE_BYTES / per_block.max(1)).clamp(1, n.max(1));
    if chunk >= n {
        return attention_dense(q, k, v);
    }
    let parts = (0..n)
        .step_by(chunk)
        .map(|s| {
            let len = chunk.min(n - s);
            attention_dense(
                &q.narrow(0, s, len)?,
                &k.narrow(0, s, len)?,
                &v.narrow(0, s, len)?,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

fn attention_dense(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    // Scaling the queries instead of the scores saves a pass over the largest tensor.
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let scores = (q * scale)?.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    super::fused::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}

/// Splits a `[.., k·d]` tensor into `k` chunks of `d` along the last dimension.
pub fn split_last(x: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let d = x.dim(D::Minus1)? / k;
    (0..k).map(|i| x.narrow(D::Minus1, i * d, d)).collect()
}

/// Cuts `[n, c, S, S]` into non-overlapping `p×p` patches, row-major:
/// `[n, (S/p)², c·p·p]` with each patch's values ordered (c, y, x) as a Conv2d weight is.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h / p, p, w / p, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((n, (h / p) * (w / p), c * p * p))
}

/// A Conv2d with kernel = stride = `p`, as a Linear over patches (same numbers, no im2col).
pub fn patch_linear(size_out: usize, c_in: usize, p: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb
        .get((size_out, c_in, p, p), "weight")?
        .reshape((size_out, c_in * p * p))?;
    let b = vb.get(size_out, "bias")?;
    Ok(Linear(candle_nn::Linear::new(w, Some(b))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differentiable_paths_match_fused_kernels() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let cos = Tensor::randn(0f32, 1., (2, 5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1., (2, 5, 4), &dev)?;
        let fused = rope_interleaved(&x, &cos, &sin)?;
        let var = candle_core::Var::from_tensor(&x)?;
        let slow = rope_interleaved(var.as_tensor(), &cos, &sin)?;
        let diff = (fused - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "rope {diff}");

        let ln = LayerNorm::new(
            8,
            1e-6,
            VarBuilder::from_tensors(
                [
                    ("weight".to_string(), Tensor::randn(1f32, 0.1, 8, &dev)?),
                    ("bias".to_string(), Tensor::randn(0f32, 0.1, 8, &dev)?),
                ]
                .into(),
                DType::F32,
                &dev,
            ),
        )?;
        let fused = ln.forward(&x)?;
        let slow = ln.forward(var.as_tensor())?;
        let diff = (fused - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "layer norm {diff}");
        Ok(())
    }

    #[test]
    fn patchify_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 12), &dev)?;
        let w = Tensor::randn(0f32, 1., (5, 3, 4, 4), &dev)?;
        let conv = x.conv2d(&w, 0, 4, 1, 1)?; // [2,5,2,3]
        let lin = patchify(&x, 4)?.matmul(
            &w.reshape((5, 48))?
                .t()?
                .unsqueeze(0)?
                .broadcast_as((2, 48, 5))?
                .contiguous()?,
        )?;
        let conv = conv.flatten_from(2)?.transpose(1, 2)?;
        let diff = (conv - lin)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}
