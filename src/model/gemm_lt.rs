//! Linear layers through cuBLASLt with the bias, and for the MLP's first layer the
//! tanh-GELU, applied in the GEMM's epilogue. The default CUDA path runs the GEMM and then
//! a separate bias(+GELU) kernel, one more read and write of every output element; on the
//! QKV and MLP outputs that pass measured as costly as a good part of the GEMM itself.
//! cuBLASLt's GELU epilogue is the tanh approximation, the one the model uses.
//!
//! Opt-in with `INFDIT_GEMM=lt` until measured on a GPU against the default path; bf16 and
//! f16 only (cudarc's f32 cuBLASLt matmul computes in TF32, which would change f32 results).

use super::fused_ops::{into_tensor, with_views};
use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{bail, CudaDevice, DType, Result, Tensor};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether [`linear`] serves `x` (a bf16/f16 CUDA tensor without gradient tracking,
/// `INFDIT_GEMM=lt`) with `weight` and `bias`. The operands must start 256-byte aligned,
/// the alignment cuBLASLt's algorithm choice assumes by default.
pub fn applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    let aligned =
        |t: &Tensor| (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(256);
    enabled()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && super::fused_ops::applies(x)
        && [x, weight, bias].into_iter().all(aligned)
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFDIT_GEMM").is_ok_and(|v| v == "lt"))
}

/// One cuBLASLt handle (and its workspace) per device, on the device's stream so that
/// it orders with candle's kernels.
fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
    type Handles = Mutex<Vec<(DeviceId, Arc<CudaBlasLT>)>>;
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(h.clone());
    }
    let h = Arc::new(
        CudaBlasLT::new(dev.cuda_stream())
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt: {e:?}")))?,
    );
    handles.push((dev.id(), h.clone()));
    Ok(h)
}

/// `x·weightᵀ + bias`, then tanh-GELU when `gelu`: `x` `[rows, in]`, `weight` `[out, in]`,
/// `bias` `[out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, gelu: bool) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let (n, wk) = weight.dims2()?;
    if wk != k || bias.dims1()? != n {
        bail!(
            "linear: input {:?}, weight {:?}, bias {:?} do not fit",
            x.shape(),
            weight.shape(),
            bias.shape()
        );
    }
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    match x.dtype() {
        DType::BF16 => linear_t::<half::bf16>(&x, &weight, &bias, (rows, k, n), gelu),
        DType::F16 => linear_t::<half::f16>(&x, &weight, &bias, (rows, k, n), gelu),
        dt => bail!("cuBLASLt linear: unsupported dtype {dt:?}"),
    }
}

fn linear_t<T: CudaDType + DeviceRepr>(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (rows, k, n): (usize, usize, usize),
    gelu: bool,
) -> Result<Tensor>
where
    CudaBlasLT: Matmul<T>,
{
    with_views::<T, _>(&[x, weight, bias], |v, dev| {
        let lt = handle(dev)?;
        // cuBLASLt is column-major: the row-major output [rows, n] is its n × rows matrix
        // weight (read transposed from its row-major [n, k]) times xᵀ (x's row-major
        // [rows, k] as a k × rows matrix); the bias runs along its n rows.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: rows as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        // SAFETY: every element is written by the GEMM (beta = 0).
        let mut out = unsafe { dev.alloc::<T>(rows * n)? };
        let act = gelu.then_some(Activation::Gelu);
        // SAFETY: the views hold rows·k, n·k and n elements, as the configuration reads.
        unsafe { lt.matmul(cfg, &v[1], &v[0], &mut out, Some(&v[2]), act.as_ref()) }
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt matmul: {e:?}")))?;
        Ok(into_tensor(out, dev, &[rows, n]))
    })
}
