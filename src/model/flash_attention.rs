//! Fused attention on CUDA: the project's own FlashAttention-2-style kernel
//! (`flash_attention.cu`, compiled to PTX by `build.rs`). Scores never reach device
//! memory, which is what makes half-precision attention compute-bound instead of
//! bandwidth-bound. Inference only (no backward pass); other cases keep the composed path.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use std::sync::OnceLock;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));
/// Head dimensions the PTX has entry points for.
const HEAD_DIMS: [usize; 5] = [16, 32, 48, 64, 80];
/// Queries per CTA in both kernel shapes (8 warps × 16 rows, or 4 warps × 32 rows).
const ROWS_PER_CTA: usize = 128;

/// The kernel shape: `w4` (default; measured ~4% faster on an H100) or `w8`, from
/// `INFDIT_FLASH_SHAPE`; returns the entry-point prefix and the threads per CTA.
fn shape() -> (&'static str, u32) {
    static SHAPE: OnceLock<(&'static str, u32)> = OnceLock::new();
    *SHAPE.get_or_init(|| match std::env::var("INFDIT_FLASH_SHAPE").as_deref() {
        Ok("w8") => ("w8", 256),
        _ => ("w4", 128),
    })
}

/// Whether the kernel serves attention on `device` in `dtype` with this head dim.
pub fn serves(device: &Device, dtype: DType, head_dim: usize) -> bool {
    device.is_cuda()
        && matches!(dtype, DType::BF16 | DType::F16)
        && HEAD_DIMS.contains(&head_dim)
        && !super::ops::composed_forced()
}

/// Whether the fused kernel computes `softmax(q·kᵀ/√d)·v` for these `[n, heads, T, d]` inputs.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    serves(q.device(), q.dtype(), q.dims().last().copied().unwrap_or(0))
        && !(q.track_op() || k.track_op() || v.track_op())
}

/// The kernel reads rows with 16-byte copies: each tensor needs a contiguous last
/// dimension and 8-element-aligned strides and offset, otherwise it is copied once.
fn kernel_ready(x: &Tensor) -> Result<Tensor> {
    let l = x.layout();
    let s = l.stride();
    let ok =
        s.len() == 4 && s[3] == 1 && s[..3].iter().chain([&l.start_offset()]).all(|v| v % 8 == 0);
    if ok {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

/// `[n, heads, Tq, d]` output (a transposed view of the kernel's `[n, Tq, heads, d]`,
/// so the caller's transpose back to token-major order is free).
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    kernel_ready(q)?
        .apply_op3_no_bwd(&kernel_ready(k)?, &kernel_ready(v)?, &FlashAttention)?
        .transpose(1, 2)
}

struct FlashAttention;

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("the fused attention kernel runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, h, _, d) = ql.shape().dims4()?;
        let (kn, kh, tk, kd) = kl.shape().dims4()?;
        if (kn, kh, kd) != (n, h, d) || vl.shape() != kl.shape() || tk == 0 {
            bail!(
                "flash-attention: incompatible shapes q {:?} k {:?} v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let inputs = [(q, ql), (k, kl), (v, vl)];
        match q.dtype() {
            DType::BF16 => launch::<half::bf16>(inputs, "bf16"),
            DType::F16 => launch::<half::f16>(inputs, "f16"),
            dt => bail!("flash-attention: unsupported dtype {dt:?}"),
        }
    }
}

/// `inputs`: q, k, v with their layouts (shapes checked by the caller).
fn launch<T: CudaDType + DeviceRepr>(
    inputs: [(&CudaStorage, &Layout); 3],
    ty: &str,
) -> Result<(CudaStorage, Shape)> {
    let [(q, ql), (k, kl), (v, vl)] = inputs;
    let (n, h, tq, d) = ql.shape().dims4()?;
    let tk = kl.dims()[2];
    let dev = q.device();
    let (prefix, threads) = shape();
    let func = dev.get_or_load_custom_func(
        &format!("flash_attention_{prefix}_{ty}_d{d}"),
        "infdit_flash_attention",
        PTX,
    )?;
    let qs = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
    let ks = k.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
    let vs = v.as_cuda_slice::<T>()?.slice(vl.start_offset()..);
    // SAFETY: every element is written by the kernel.
    let out = unsafe { dev.alloc::<T>(n * tq * h * d)? };
    let strides = |l: &Layout| -> [i64; 3] {
        let s = l.stride();
        [s[0] as i64, s[1] as i64, s[2] as i64]
    };
    let (qst, kst, vst) = (strides(ql), strides(kl), strides(vl));
    let (heads, tq32, tk32) = (h as i32, tq as i32, tk as i32);
    let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let ctas = n * h * tq.div_ceil(ROWS_PER_CTA);
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(ctas)
                .map_err(|_| candle_core::Error::Msg("flash-attention: grid too large".into()))?,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = func.builder();
    b.arg(&qs).arg(&ks).arg(&vs).arg(&out);
    b.arg(&heads).arg(&tq32).arg(&tk32);
    for s in qst.iter().chain(&kst).chain(&vst) {
        b.arg(s);
    }
    b.arg(&scale_log2);
    // SAFETY: the argument list matches the kernel's signature; bounds come from the shapes.
    unsafe { b.launch(cfg) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n, tq, h, d)),
    ))
}
