//! Fused CUDA kernels for the inference hot path (`fused_ops.cu`): bias (+GELU),
//! LayerNorm + adaLN modulation, the QKV split with QK-LayerNorm and RoPE, and the
//! neighbour-slot K/V gather. Each replaces a chain of candle ops whose broadcasting
//! kernels cost more than the matmuls around them. Inference only: callers use them when
//! [`applies`] holds and keep candle's differentiable composition otherwise.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result, Storage, Tensor};
use std::sync::OnceLock;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_ops.ptx"));
const MODULE: &str = "infdit_fused_ops";

/// Whether the fused kernels serve `x` (CUDA, no gradient tracking; off with
/// `INFDIT_FUSED=0`).
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && !x.track_op()
        && enabled()
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFDIT_FUSED").map_or(true, |v| v != "0"))
}

fn type_suffix(dt: DType) -> Result<&'static str> {
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

/// Runs `f` with the CUDA view of `t` (from its layout's start offset).
fn with_view<T: CudaDType, R>(
    t: &Tensor,
    f: impl FnOnce(&CudaView<'_, T>, &CudaDevice) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        bail!("fused ops: tensor is not on a CUDA device")
    };
    let view = s.as_cuda_slice::<T>()?.slice(layout.start_offset()..);
    f(&view, s.device())
}

fn into_tensor<T: CudaDType>(out: CudaSlice<T>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
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
    with_view::<T, _>(x, |xv, dev| {
        with_view::<T, _>(bias, |bv, _| {
            let name = format!(
                "bias_{}_{}",
                if gelu { "gelu" } else { "add" },
                type_suffix(x.dtype())?
            );
            let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(n)? };
            let mut b = func.builder();
            b.arg(xv).arg(bv).arg(&out).arg(&rows).arg(&cols32);
            // SAFETY: arguments match the kernel signature; bounds come from the shapes.
            unsafe { b.launch(grid(n, 256)?) }.w()?;
            Ok(into_tensor(out, dev, x.dims()))
        })
    })
}

/// LayerNorm of `x` `[b, t, d]` over `d` (affine when `affine` is given), then the adaLN
/// modulation `·(1 + scale) + shift` when `modulation` is given; shift/scale are
/// `[b or 1, 1, d]` views whose rows may be strided.
pub fn ln_modulate(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    dispatch!(x.dtype(), ln_modulate_t(&x, affine, modulation, eps))
}

fn ln_modulate_t<T: CudaDType + DeviceRepr>(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let rows = b * t;
    let (rows_per_batch, mod_stride) = match modulation {
        Some((shift, scale)) => {
            let (mb, one, md) = scale.dims3()?;
            if shift.dims() != scale.dims() || one != 1 || md != d || !(mb == 1 || mb == b) {
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
            (if mb == 1 { rows } else { t }, st[0])
        }
        None => (rows, 0),
    };
    let affine = match affine {
        Some((w, bias)) => Some((w.contiguous()?, bias.contiguous()?)),
        None => None,
    };
    let (rows32, d32) = (u32_of(rows, "rows")?, u32_of(d, "cols")?);
    let (rpb, ms) = (
        u32_of(rows_per_batch, "rows")?,
        u32_of(mod_stride, "stride")?,
    );
    let eps = eps as f32;
    let (xs, xl) = x.storage_and_layout();
    let Storage::Cuda(xs) = &*xs else {
        bail!("fused ops: tensor is not on a CUDA device")
    };
    let dev = xs.device();
    let xv = xs.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
    // Absent optional inputs are passed as null pointers.
    let null: u64 = 0;
    let guards: Vec<_> = [
        affine.as_ref().map(|a| &a.0),
        affine.as_ref().map(|a| &a.1),
        modulation.map(|m| m.0),
        modulation.map(|m| m.1),
    ]
    .into_iter()
    .map(|t| t.map(|t| t.storage_and_layout()))
    .collect();
    let views = guards
        .iter()
        .map(|g| match g {
            Some((s, l)) => match &**s {
                Storage::Cuda(s) => Ok(Some(s.as_cuda_slice::<T>()?.slice(l.start_offset()..))),
                _ => bail!("fused ops: tensor is not on a CUDA device"),
            },
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let func = dev.get_or_load_custom_func(
        &format!("ln_modulate_{}", type_suffix(x.dtype())?),
        MODULE,
        PTX,
    )?;
    // SAFETY: every element is written by the kernel.
    let out = unsafe { dev.alloc::<T>(rows * d)? };
    let mut builder = func.builder();
    builder.arg(&xv);
    for v in &views {
        match v {
            Some(v) => builder.arg(v),
            None => builder.arg(&null),
        };
    }
    builder
        .arg(&out)
        .arg(&rows32)
        .arg(&d32)
        .arg(&rpb)
        .arg(&ms)
        .arg(&eps);
    let cfg = LaunchConfig {
        grid_dim: (u32_of(rows.div_ceil(8), "grid")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel signature; one warp per row, bounds checked.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(into_tensor(out, dev, &[b, t, d]))
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
    if hd * heads * 3 != d3 || hd % 2 != 0 || cos.dims() != [n, t, hd / 2] || w.elem_count() != hd {
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
    let args = [n, t, heads, hd].map(|v| v as u32);
    let eps = eps as f32;
    with_view::<T, _>(qkv, |qv, dev| {
        with_view::<T, _>(w, |wv, _| {
            with_view::<T, _>(b, |bv, _| {
                with_view::<T, _>(cos, |cv, _| {
                    with_view::<T, _>(sin, |sv, _| {
                        let func = dev.get_or_load_custom_func(
                            &format!("qkv_norm_rope_{}", type_suffix(qkv.dtype())?),
                            MODULE,
                            PTX,
                        )?;
                        // SAFETY: every element is written by the kernel.
                        let out = unsafe { dev.alloc::<T>(3 * each)? };
                        let (q, k, v) = (
                            out.slice(0..each),
                            out.slice(each..2 * each),
                            out.slice(2 * each..),
                        );
                        let mut bld = func.builder();
                        bld.arg(qv).arg(wv).arg(bv).arg(cv).arg(sv);
                        bld.arg(&q).arg(&k).arg(&v);
                        for a in &args {
                            bld.arg(a);
                        }
                        bld.arg(&eps);
                        let cfg = LaunchConfig {
                            grid_dim: (u32_of(items.div_ceil(8), "grid")?, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        // SAFETY: arguments match the kernel; one warp per (block, token, head).
                        unsafe { bld.launch(cfg) }.w()?;
                        drop((q, k, v));
                        Ok(into_tensor(out, dev, &[3, n, heads, t, hd]))
                    })
                })
            })
        })
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
    let null: u64 = 0;
    with_view::<T, _>(src, |sv, dev| {
        with_view::<u32, _>(&idx, |iv, _| {
            let run = |ev: Option<&CudaView<'_, T>>| -> Result<Tensor> {
                let func = dev.get_or_load_custom_func(
                    &format!("gather_slots_{}", type_suffix(src.dtype())?),
                    MODULE,
                    PTX,
                )?;
                // SAFETY: every element is written by the kernel.
                let out = unsafe { dev.alloc::<T>(total)? };
                let mut b = func.builder();
                b.arg(sv).arg(iv);
                match ev {
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
            };
            match emb {
                Some(e) => with_view::<T, _>(e, |ev, _| run(Some(ev))),
                None => run(None),
            }
        })
    })
}
