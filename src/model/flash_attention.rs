//! Fused attention on CUDA: the project's own FlashAttention-2-style kernel
//! (`flash_attention.cu`, compiled to PTX by `build.rs`). Scores never reach device
//! memory, which is what makes half-precision attention compute-bound instead of
//! bandwidth-bound. Inference only (no backward pass); other cases keep the composed path.
//! [`forward_paged`] reads the block attention's neighbour slots in place (no gathered
//! copy of the keys and values).

use super::fused_ops::{compute_capability_major, into_tensor, with_views};
use super::kv_cache::PagedKv;
use crate::switches::{FLASH_SHAPE, PAGED};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape,
    Tensor,
};
use std::sync::OnceLock;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));
const MODULE: &str = "infdit_flash_attention";
/// The same source built for sm_90a, which adds the Hopper (wgmma) entry points.
const PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention_sm90.ptx"));
const MODULE_SM90: &str = "infdit_flash_attention_sm90";
/// Queries per CTA in both kernel shapes (8 warps × 16 rows, or 4 warps × 32 rows).
const ROWS_PER_CTA: usize = 128;
/// Paged reads: pages are whole key tiles, and one MMA tile holds every slot's q·e.
pub const PAGE_MULTIPLE: usize = 64;
const MAX_SLOTS: usize = 8;

/// A kernel variant: its entry-point prefix, threads per CTA, and whether it is in the
/// sm_90a module.
#[derive(Debug, Clone, Copy)]
struct KernelShape {
    prefix: &'static str,
    threads: u32,
    hopper: bool,
}

const W4: KernelShape = KernelShape {
    prefix: "w4",
    threads: 128,
    hopper: false,
};

/// The kernel variant from `INFDIT_FLASH_SHAPE`: `w4` (default; measured ~4% faster on
/// an H100 than `w8`), `w8`, or `wg` (two warpgroups using Hopper's wgmma; opt-in until
/// measured, and only on compute capability 9.0, else `w4`).
fn shape(dev: &CudaDevice) -> KernelShape {
    static SHAPE: OnceLock<KernelShape> = OnceLock::new();
    *SHAPE.get_or_init(|| match FLASH_SHAPE.get() {
        Some("w8") => KernelShape {
            prefix: "w8",
            threads: 256,
            hopper: false,
        },
        Some("wg") if compute_capability_major(dev) == Some(9) => KernelShape {
            prefix: "wg",
            threads: 256,
            hopper: true,
        },
        Some("wg") => {
            tracing::warn!("INFDIT_FLASH_SHAPE=wg needs an sm_90 GPU; using w4");
            W4
        }
        _ => W4,
    })
}

impl KernelShape {
    /// Entry point `flash_attention_{variant}_{suffix}`, its module name and PTX.
    fn entry(&self, suffix: &str) -> (String, &'static str, &'static str) {
        let name = format!("flash_attention_{}_{suffix}", self.prefix);
        if self.hopper {
            (name, MODULE_SM90, PTX_SM90)
        } else {
            (name, MODULE, PTX)
        }
    }
}

/// One CTA per (block, head, 128-query tile).
fn launch_config(n: usize, h: usize, tq: usize, sh: KernelShape) -> Result<LaunchConfig> {
    let ctas = n * h * tq.div_ceil(ROWS_PER_CTA);
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(ctas)
                .map_err(|_| candle_core::Error::Msg("flash-attention: grid too large".into()))?,
            1,
            1,
        ),
        block_dim: (sh.threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether paged neighbour reads serve the block attention (off with `INFDIT_PAGED=0`,
/// which gathers the neighbours into one sequence first, as the other devices do).
pub fn paged_enabled() -> bool {
    PAGED.on_unless_zero()
}

/// Whether the kernel serves attention on `device` in `dtype` with this head dim: the
/// `.cu` file instantiates every CTA shape for the same head dims, so `w4`'s entry decides.
pub fn serves(device: &Device, dtype: DType, head_dim: usize) -> bool {
    super::fused_ops::kernels_run_on(device)
        && matches!(dtype, DType::BF16 | DType::F16)
        && !super::ops::composed_forced()
        && super::fused_ops::type_suffix(dtype).is_ok_and(|ty| {
            super::ptx::has_entry(PTX, &format!("flash_attention_w4_{ty}_d{head_dim}"))
        })
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
    let sh = shape(dev);
    let (name, module, ptx) = sh.entry(&format!("{ty}_d{d}"));
    let func = dev.get_or_load_custom_func(&name, module, ptx)?;
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
    let cfg = launch_config(n, h, tq, sh)?;
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

/// Attention of `q` (`[n, heads, T, d]`) over each block's neighbour slots as `kv`
/// describes them; `[n, heads, T, d]` output like [`forward`]. The slot embeddings enter
/// as `q·e` in f32, so the result differs from gathering the slots first only by that
/// gather's rounding of `k + e` to 16 bits.
pub fn forward_paged(q: &Tensor, kv: &PagedKv) -> Result<Tensor> {
    let q = kernel_ready(q)?;
    match q.dtype() {
        DType::BF16 => paged::<half::bf16>(&q, kv, "bf16"),
        DType::F16 => paged::<half::f16>(&q, kv, "f16"),
        dt => bail!("flash-attention: unsupported dtype {dt:?}"),
    }?
    .transpose(1, 2)
}

fn paged<T: CudaDType + DeviceRepr>(q: &Tensor, kv: &PagedKv, ty: &str) -> Result<Tensor> {
    let (n, h, tq, d) = q.dims4()?;
    // Without cached blocks no index points past the batch: any pool will do.
    let (kx, vx) = match &kv.pool {
        Some((pk, pv)) => (pk.contiguous()?, pv.contiguous()?),
        None => (kv.k.contiguous()?, kv.v.contiguous()?),
    };
    let (k, v) = (kv.k.contiguous()?, kv.v.contiguous()?);
    let (_, kh, page, kd) = k.dims4()?;
    let slots = kv.slot_embed.dim(0)?;
    let emb = kv.slot_embed.contiguous()?;
    // One set of strides serves all four tensors (candle's `contiguous` may keep an odd
    // stride on a size-1 dimension, so compare them, not the shapes alone).
    let pool_ok = |t: &Tensor| t.dims()[1..] == k.dims()[1..] && t.stride() == k.stride();
    if (kh, kd) != (h, d)
        || v.stride() != k.stride()
        || v.dims() != k.dims()
        || !pool_ok(&kx)
        || vx.dims() != kx.dims()
        || emb.dims() != [slots, h, d]
        || kv.index.elem_count() != slots * n
        || kv.index.dtype() != DType::U32
        || page == 0
        || !page.is_multiple_of(PAGE_MULTIPLE)
        || slots > MAX_SLOTS
    {
        bail!(
            "flash-attention: paged inputs do not fit q {:?}: k {:?} cached {:?} index {:?}",
            q.shape(),
            k.shape(),
            kx.shape(),
            kv.index.shape()
        );
    }
    let qst = q.stride();
    let st = k.stride();
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg("flash-attention: size too large".into()))
    };
    let (heads, tq32, slots32, page32, batch) =
        (int(h)?, int(tq)?, int(slots)?, int(page)?, int(n)?);
    let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let index = kv.index.contiguous()?;
    with_views::<T, _>(&[q, &k, &v, &kx, &vx, &emb], |vw, dev| {
        with_views::<u32, _>(&[&index], |iv, _| {
            let sh = shape(dev);
            let (name, module, ptx) = sh.entry(&format!("{ty}_d{d}_paged"));
            let func = dev.get_or_load_custom_func(&name, module, ptx)?;
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(n * tq * h * d)? };
            let mut b = func.builder();
            b.arg(&vw[0])
                .arg(&vw[1])
                .arg(&vw[2])
                .arg(&vw[3])
                .arg(&vw[4]);
            b.arg(&iv[0]).arg(&vw[5]).arg(&out);
            b.arg(&heads)
                .arg(&tq32)
                .arg(&slots32)
                .arg(&page32)
                .arg(&batch);
            let strides = [
                qst[0], qst[1], qst[2], st[0], st[1], st[2], st[0], st[1], st[2],
            ]
            .map(|s| s as i64);
            for s in &strides {
                b.arg(s);
            }
            b.arg(&scale_log2);
            // SAFETY: the arguments match the kernel's signature; the index entries are
            // below the pools' block counts (built by the K/V cache).
            unsafe { b.launch(launch_config(n, h, tq, sh)?) }.w()?;
            Ok(into_tensor(out, dev, &[n, tq, h, d]))
        })
    })
}
