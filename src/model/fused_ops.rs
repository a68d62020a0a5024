//! Fused CUDA kernels for the inference hot path (`fused_ops.cu`): bias (+GELU),
//! LayerNorm + adaLN modulation, the QKV split with QK-LayerNorm and RoPE, and the
//! neighbour-slot K/V gather. Each replaces a chain of candle ops whose broadcasting
//! kernels cost more than the matmuls around them. Inference only: callers use them when
//! [`applies`] holds and keep candle's differentiable composition otherwise.

use crate::switches::FUSED;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Result, Storage, Tensor};
use std::sync::OnceLock;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_ops.ptx"));
const MODULE: &str = "infdit_fused_ops";

/// Whether the fused kernels serve `x` (CUDA, no gradient tracking; off with
/// `INFDIT_FUSED=0`).
pub fn applies(x: &Tensor) -> bool {
    kernels_run_on(x.device())
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && !x.track_op()
        && enabled()
}

/// Whether `device` runs the project's kernels: they are PTX for compute capability 8.0
/// (bf16 MMA, `cp.async`), which older GPUs cannot load, so there candle's ops serve
/// instead. Decided once per process, which uses one device.
pub(super) fn kernels_run_on(device: &Device) -> bool {
    let Device::Cuda(dev) = device else {
        return false;
    };
    static CAPABLE: OnceLock<bool> = OnceLock::new();
    *CAPABLE.get_or_init(|| {
        let major = compute_capability_major(dev);
        let capable = major.is_some_and(|m| m >= 8);
        if !capable {
            tracing::warn!(
                "GPU compute capability {major:?} is below 8.0: using candle's ops instead of \
                 the fused kernels (slower)"
            );
        }
        capable
    })
}

pub(crate) fn compute_capability_major(dev: &CudaDevice) -> Option<i32> {
    dev.cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .ok()
}

fn enabled() -> bool {
    FUSED.on_unless_zero()
}

/// Whether the vectorised LayerNorm + modulation and QKV kernels serve where their shapes
/// and alignment allow (`INFDIT_FUSED=v2`; opt-in until measured on a GPU).
fn vectorised(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16) && FUSED.is("v2")
}

/// Whether each tensor's first element is `bytes`-aligned within its storage (the storage
/// itself is allocated with coarser alignment).
pub(super) fn starts_aligned(ts: &[&Tensor], bytes: usize) -> bool {
    ts.iter()
        .all(|t| (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(bytes))
}

pub(super) fn type_suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        dt => bail!("fused ops: unsupported dtype {dt:?}"),
    })
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("fused ops: {what} too large")))
}

/// Runs `f` with the CUDA views of `ts` (each from its layout's start offset) and their
/// device.
pub(super) fn with_views<T: CudaDType, R>(
    ts: &[&Tensor],
    f: impl FnOnce(&[CudaView<'_, T>], &CudaDevice) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(ts.len());
    let mut device = None;
    for (storage, layout) in &guards {
        let Storage::Cuda(s) = &**storage else {
            bail!("fused ops: tensor is not on a CUDA device")
        };
        device.get_or_insert(s.device());
        views.push(s.as_cuda_slice::<T>()?.slice(layout.start_offset()..));
    }
    match device {
        Some(dev) => f(&views, dev),
        None => bail!("fused ops: no input tensors"),
    }
}

pub(super) fn into_tensor<T: CudaDType>(
    out: CudaSlice<T>,
    dev: &CudaDevice,
    shape: &[usize],
) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// One warp for each of `items` (8 warps per 256-thread CTA), for kernels that do not
/// loop over items.
fn warp_per_item(items: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32_of(items.div_ceil(8), "grid")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One thread for each of `items` (256 per CTA), for kernels that do not loop over items.
fn grid_exact(items: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32_of(items.div_ceil(256), "grid")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn grid(items: usize, per_block: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            u32_of(items.div_ceil(per_block).clamp(1, 1 << 20), "grid")?,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

macro_rules! dispatch {
    ($dt:expr, $f:ident ( $($arg:expr),* )) => {
        match $dt {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            dt => bail!("fused ops: unsupported dtype {dt:?}"),
        }
    };
}

/// `x + bias` over the last dimension, optionally followed by tanh-GELU.
pub fn bias_act(x: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.contiguous()?;
    dispatch!(x.dtype(), bias_act_t(&x, &bias, gelu))
}

fn bias_act_t<T: CudaDType + DeviceRepr>(x: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
    let cols = bias.elem_count();
    let n = x.elem_count();
    if x.dims().last() != Some(&cols) {
        bail!("bias: {:?} does not end in {cols}", x.shape());
    }
    let (rows, cols32) = (u32_of(n / cols, "rows")?, u32_of(cols, "cols")?);
    u32_of(n, "tensor")?;
    let name = format!(
        "bias_{}_{}",
        if gelu { "gelu" } else { "add" },
        type_suffix(x.dtype())?
    );
    with_views::<T, _>(&[x, bias], |v, dev| {
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(n)? };
        let mut b = func.builder();
        b.arg(&v[0]).arg(&v[1]).arg(&out).arg(&rows).arg(&cols32);
        // SAFETY: arguments match the kernel signature; bounds come from the shapes.
        unsafe { b.launch(grid(n, 256)?) }.w()?;
        Ok(into_tensor(out, dev, x.dims()))
    })
}

/// The affine LayerNorm `ln` = (weight, bias, eps) of `x` `[b, t, d]` over `d`, then the
/// adaLN modulation `·(1 + scale) + shift`; shift/scale are `[b or 1, 1, d]` views whose
/// rows may be strided.
pub fn ln_modulate(
    x: &Tensor,
    ln: (&Tensor, &Tensor, f64),
    shift: &Tensor,
    scale: &Tensor,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (w, b) = (ln.0.contiguous()?, ln.1.contiguous()?);
    dispatch!(x.dtype(), ln_modulate_t(&x, &w, &b, ln.2, shift, scale))
}

fn ln_modulate_t<T: CudaDType + DeviceRepr>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    shift: &Tensor,
    scale: &Tensor,
) -> Result<Tensor> {
    let (bn, t, d) = x.dims3()?;
    let rows = bn * t;
    let (mb, one, md) = scale.dims3()?;
    if shift.dims() != scale.dims() || one != 1 || md != d || !(mb == 1 || mb == bn) {
        bail!(
            "modulation {:?} does not fit {:?}",
            scale.shape(),
            x.shape()
        );
    }
    let (st, sh) = (scale.stride(), shift.stride());
    if st[2] != 1 || sh[2] != 1 || st[0] != sh[0] {
        bail!("modulation rows must be contiguous and equally strided");
    }
    let rows_per_batch = if mb == 1 { rows } else { t };
    let (rows32, d32) = (u32_of(rows, "rows")?, u32_of(d, "cols")?);
    let (rpb, ms) = (u32_of(rows_per_batch, "rows")?, u32_of(st[0], "stride")?);
    let eps = eps as f32;
    // The vectorised kernels: rows of 256·J values, 16-byte aligned, for the J that
    // `fused_ops.cu` instantiates.
    let ty = type_suffix(x.dtype())?;
    let vec_name = format!("ln_modulate_vec{}_{ty}", d / 256);
    let vec = vectorised(x.dtype())
        && d.is_multiple_of(256)
        && super::ptx::has_entry(PTX, &vec_name)
        && st[0].is_multiple_of(8)
        && starts_aligned(&[x, w, b, shift, scale], 16);
    let name = if vec {
        vec_name
    } else {
        format!("ln_modulate_{ty}")
    };
    with_views::<T, _>(&[x, w, b, shift, scale], |v, dev| {
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(rows * d)? };
        let mut builder = func.builder();
        for view in v {
            builder.arg(view);
        }
        builder.arg(&out).arg(&rows32);
        if !vec {
            builder.arg(&d32);
        }
        builder.arg(&rpb).arg(&ms).arg(&eps);
        let cfg = warp_per_item(rows)?;
        // SAFETY: arguments match the kernel signature; one warp per row, bounds checked.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(into_tensor(out, dev, &[bn, t, d]))
    })
}

/// `qkv` `[n, t, 3·heads·hd]` → q, k, v `[n, heads, t, hd]`, with the LayerNorm
/// (`weight`, `bias` over hd) and the interleaved RoPE (`cos`, `sin` `[n, t, hd/2]`)
/// applied to q and k.
pub fn qkv_norm_rope(
    qkv: &Tensor,
    norm: (&Tensor, &Tensor, f64),
    rope: (&Tensor, &Tensor),
    heads: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let qkv = qkv.contiguous()?;
    let (w, b) = (norm.0.contiguous()?, norm.1.contiguous()?);
    let (cos, sin) = (rope.0.contiguous()?, rope.1.contiguous()?);
    let out = dispatch!(
        qkv.dtype(),
        qkv_norm_rope_t(&qkv, &w, &b, norm.2, &cos, &sin, heads)
    )?;
    Ok((out.get(0)?, out.get(1)?, out.get(2)?))
}

fn qkv_norm_rope_t<T: CudaDType + DeviceRepr>(
    qkv: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (n, t, d3) = qkv.dims3()?;
    let hd = d3 / 3 / heads;
    if hd * heads * 3 != d3
        || !hd.is_multiple_of(2)
        || cos.dims() != [n, t, hd / 2]
        || sin.dims() != cos.dims()
        || w.elem_count() != hd
        || b.elem_count() != hd
    {
        bail!(
            "qkv {:?} / rope {:?} / norm {:?} do not fit",
            qkv.shape(),
            cos.shape(),
            w.shape()
        );
    }
    let each = n * heads * t * hd;
    u32_of(3 * each, "tensor")?;
    let items = n * t * heads;
    // The vectorised kernel: one thread per (token, head), for the head dims that
    // `fused_ops.cu` instantiates.
    let vec_name = format!("qkv_norm_rope_vec{hd}_{}", type_suffix(qkv.dtype())?);
    let vec = vectorised(qkv.dtype())
        && super::ptx::has_entry(PTX, &vec_name)
        && starts_aligned(&[qkv, w, b], 16)
        && starts_aligned(&[cos, sin], 8);
    let (name, args, cfg) = if vec {
        (
            vec_name,
            vec![n as u32, t as u32, heads as u32],
            grid_exact(items)?,
        )
    } else {
        (
            format!("qkv_norm_rope_{}", type_suffix(qkv.dtype())?),
            vec![n as u32, t as u32, heads as u32, hd as u32],
            warp_per_item(items)?,
        )
    };
    let eps = eps as f32;
    with_views::<T, _>(&[qkv, w, b, cos, sin], |v, dev| {
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(3 * each)? };
        let (q, k, vv) = (
            out.slice(0..each),
            out.slice(each..2 * each),
            out.slice(2 * each..),
        );
        let mut bld = func.builder();
        for view in v {
            bld.arg(view);
        }
        bld.arg(&q).arg(&k).arg(&vv);
        for a in &args {
            bld.arg(a);
        }
        bld.arg(&eps);
        // SAFETY: arguments match the kernel; a warp (scalar kernel) or a thread
        // (vectorised) per (block, token, head), bounds checked in the kernel.
        unsafe { bld.launch(cfg) }.w()?;
        Ok(into_tensor(out, dev, &[3, n, heads, t, hd]))
    })
}

/// `[n, heads, slots·t, hd]` where slot `s` of block `i` is block `index[s·n + i]` of `src`
/// `[m, heads, t, hd]`, plus `emb[s]` (`[slots, heads, hd]`) when given. `index` is a u32
/// device tensor whose entries the caller guarantees to be below `m`.
pub(crate) fn gather_slots(
    src: &Tensor,
    index: &Tensor,
    emb: Option<&Tensor>,
    n: usize,
) -> Result<Tensor> {
    let src = src.contiguous()?;
    let emb = emb.map(|e| e.contiguous()).transpose()?;
    dispatch!(src.dtype(), gather_slots_t(&src, index, emb.as_ref(), n))
}

fn gather_slots_t<T: CudaDType + DeviceRepr>(
    src: &Tensor,
    idx: &Tensor,
    emb: Option<&Tensor>,
    n: usize,
) -> Result<Tensor> {
    let (_, heads, t, hd) = src.dims4()?;
    let slots = idx.elem_count() / n.max(1);
    if slots * n != idx.elem_count() || hd % 8 != 0 || idx.dtype() != DType::U32 {
        bail!("gather: index does not fit {:?}", src.shape());
    }
    if let Some(e) = emb {
        if e.dims() != [slots, heads, hd] {
            bail!("gather: slot embedding {:?} does not fit", e.shape());
        }
    }
    let total = n * heads * slots * t * hd;
    u32_of(total, "tensor")?;
    let idx = idx.contiguous()?;
    let args = [n, heads, t, hd, slots].map(|v| v as u32);
    // An absent slot embedding is passed as a null pointer.
    let null: u64 = 0;
    let inputs: Vec<&Tensor> = std::iter::once(src).chain(emb).collect();
    with_views::<T, _>(&inputs, |v, dev| {
        with_views::<u32, _>(&[&idx], |iv, _| {
            let func = dev.get_or_load_custom_func(
                &format!("gather_slots_{}", type_suffix(src.dtype())?),
                MODULE,
                PTX,
            )?;
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(total)? };
            let mut b = func.builder();
            b.arg(&v[0]).arg(&iv[0]);
            match v.get(1) {
                Some(ev) => b.arg(ev),
                None => b.arg(&null),
            };
            b.arg(&out);
            for a in &args {
                b.arg(a);
            }
            // SAFETY: arguments match the kernel signature; the caller keeps indices below m.
            unsafe { b.launch(grid(total / 8, 256)?) }.w()?;
            Ok(into_tensor(out, dev, &[n, heads, slots * t, hd]))
        })
    })
}
