//! Linear layers through cuBLASLt with the bias, the MLP's tanh-GELU and the residual add
//! applied in the GEMM's epilogue. The default CUDA path runs the GEMM, then a bias(+GELU)
//! kernel, then for the residual layers an add kernel: two or three more passes over every
//! output element, which on the QKV and MLP outputs measured as costly as a good part of
//! the GEMM itself. cuBLASLt's GELU epilogue is the tanh approximation, the one the model
//! uses; the residual enters as the GEMM's C matrix (D = x·Wᵀ + bias + C).
//!
//! Opt-in with `INFDIT_GEMM=lt` until measured on a GPU against the default path; bf16 and
//! f16 only (f32 keeps candle's full-precision GEMM).

use super::fused_ops::{into_tensor, starts_aligned, with_views};
use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{bail, CudaDevice, DType, Result, Tensor};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// NVIDIA's recommended cuBLASLt workspace on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;
/// The operand alignment cuBLASLt's algorithm choice assumes by default.
const ALIGN: usize = 256;

/// Whether [`linear`] serves `x` (a bf16/f16 CUDA tensor without gradient tracking,
/// `INFDIT_GEMM=lt`) with `weight` and `bias`, all starting [`ALIGN`]-aligned.
pub fn applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    enabled()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && super::fused_ops::applies(x)
        && !weight.track_op()
        && !bias.track_op()
        && starts_aligned(&[x, weight, bias], ALIGN)
}

/// Whether `residual` can be the epilogue's C matrix as it is (contiguous, aligned).
pub fn residual_fits(residual: &Tensor) -> bool {
    residual.is_contiguous() && !residual.track_op() && starts_aligned(&[residual], ALIGN)
}

fn enabled() -> bool {
    crate::switches::GEMM.is("lt")
}

fn lt_err(e: result::CublasError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuBLASLt: {e:?}"))
}

/// What the epilogue applies after `x·Wᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Epilogue {
    gelu: bool,
    residual: bool,
}

/// One problem shape: dtype, rows, inner and output size, epilogue.
type PlanKey = (DType, usize, usize, usize, Epilogue);

/// A cuBLASLt handle and workspace on one device's stream (so it orders with candle's
/// kernels), with the algorithm chosen for each problem shape: the heuristic query costs
/// more host time than building the descriptors.
struct LtContext {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    /// `None`: cuBLASLt offers no algorithm for that problem.
    plans: Mutex<HashMap<PlanKey, Option<sys::cublasLtMatmulAlgo_t>>>,
}

// SAFETY: the handle is only used on `stream`, whose work cuBLASLt serialises; the
// algorithm cache is behind a mutex.
unsafe impl Send for LtContext {}
unsafe impl Sync for LtContext {}

impl Drop for LtContext {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is destroyed once.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

impl LtContext {
    fn new(dev: &CudaDevice) -> Result<Self> {
        let stream = dev.cuda_stream();
        // SAFETY: cuBLASLt only uses the workspace as scratch.
        let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES)? };
        Ok(Self {
            handle: result::create_handle().map_err(lt_err)?,
            workspace,
            stream,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The context of `dev`, created on first use.
    fn of(dev: &CudaDevice) -> Result<Arc<Self>> {
        type Contexts = Mutex<Vec<(DeviceId, Arc<LtContext>)>>;
        static CONTEXTS: OnceLock<Contexts> = OnceLock::new();
        let mut all = CONTEXTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = all.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Self::new(dev)?);
        all.push((dev.id(), c.clone()));
        Ok(c)
    }
}

/// RAII owners of the cuBLASLt descriptors of one call.
struct Desc(sys::cublasLtMatmulDesc_t);
struct MatLayout(sys::cublasLtMatrixLayout_t);
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}
impl Drop for MatLayout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

/// Sets one descriptor attribute from a plain value.
///
/// # Safety
/// `T` must be the attribute's documented type.
unsafe fn set_attr<T>(desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    result::set_matmul_desc_attribute(
        desc.0,
        attr,
        v as *const T as *const c_void,
        std::mem::size_of::<T>(),
    )
    .map_err(lt_err)
}

/// `x·weightᵀ + bias`, then tanh-GELU when `gelu`, or plus `residual` when given: `x`
/// `[rows, in]`, `weight` `[out, in]`, `bias` `[out]`, `residual` `[rows, out]`. `None`
/// when cuBLASLt has no algorithm for this problem (the caller then takes its usual path).
/// GELU and residual do not combine: the epilogue adds C before the activation.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let (n, wk) = weight.dims2()?;
    if wk != k || bias.dims1()? != n || residual.is_some_and(|r| r.dims() != [rows, n]) {
        bail!(
            "linear: input {:?}, weight {:?}, bias {:?}, residual {:?} do not fit",
            x.shape(),
            weight.shape(),
            bias.shape(),
            residual.map(|r| r.shape())
        );
    }
    if gelu && residual.is_some() {
        bail!("cuBLASLt linear: the epilogue would apply GELU after the residual add");
    }
    let mut operands = vec![x.contiguous()?, weight.contiguous()?, bias.contiguous()?];
    if let Some(r) = residual {
        operands.push(r.contiguous()?);
    }
    let epilogue = Epilogue {
        gelu,
        residual: residual.is_some(),
    };
    let refs: Vec<&Tensor> = operands.iter().collect();
    if !starts_aligned(&refs, ALIGN) {
        bail!("cuBLASLt linear: operands must start {ALIGN}-byte aligned");
    }
    match x.dtype() {
        DType::BF16 => linear_t::<half::bf16>(&refs, (rows, k, n), epilogue),
        DType::F16 => linear_t::<half::f16>(&refs, (rows, k, n), epilogue),
        dt => bail!("cuBLASLt linear: unsupported dtype {dt:?}"),
    }
}

/// cuBLASLt's name for a 16-bit storage type.
fn data_type(dtype: DType) -> Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
        dt => bail!("cuBLASLt linear: unsupported dtype {dt:?}"),
    })
}

fn linear_t<T: CudaDType + DeviceRepr>(
    operands: &[&Tensor],
    (rows, k, n): (usize, usize, usize),
    epilogue: Epilogue,
) -> Result<Option<Tensor>> {
    let dtype = operands[0].dtype();
    let data_type = data_type(dtype)?;
    with_views::<T, _>(operands, |v, dev| {
        let ctx = LtContext::of(dev)?;
        let stream = &ctx.stream;
        // cuBLASLt is column-major: the row-major output [rows, n] is its n × rows matrix
        // D = op(A)·B with A = weight (its row-major [n, k] read transposed, stored k × n)
        // and B = x (its row-major [rows, k] as a k × rows matrix); the bias runs along
        // D's n rows, and C (the residual) has D's layout.
        let layout = |r: usize, c: usize| -> Result<MatLayout> {
            result::create_matrix_layout(data_type, r as u64, c as u64, r as i64)
                .map(MatLayout)
                .map_err(lt_err)
        };
        let (a_layout, b_layout, d_layout) = (layout(k, n)?, layout(k, rows)?, layout(n, rows)?);
        let desc = Desc(
            result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(lt_err)?,
        );
        let (bias_ptr, _bias_guard) = v[2].device_ptr(stream);
        let epi = if epilogue.gelu {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        };
        // SAFETY: each value has its attribute's type (cublasOperation_t, the epilogue
        // enum, a device pointer).
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as A;
            set_attr(
                &desc,
                A::CUBLASLT_MATMUL_DESC_TRANSA,
                &cublasOperation_t::CUBLAS_OP_T,
            )?;
            set_attr(&desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
            set_attr(&desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr)?;
        }
        let key = (dtype, rows, k, n, epilogue);
        let cached = ctx
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let algo = match cached {
            Some(plan) => plan,
            None => {
                let pref = Pref(result::create_matmul_pref().map_err(lt_err)?);
                // SAFETY: the attribute is a size_t byte count; the descriptors are live.
                let found = unsafe {
                    result::set_matmul_pref_attribute(
                        pref.0,
                        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        &WORKSPACE_BYTES as *const usize as *const c_void,
                        std::mem::size_of::<usize>(),
                    )
                    .map_err(lt_err)?;
                    result::get_matmul_algo_heuristic(
                        ctx.handle, desc.0, a_layout.0, b_layout.0, d_layout.0, d_layout.0, pref.0,
                    )
                };
                let plan = match found {
                    Ok(heuristic) => Some(heuristic.algo),
                    Err(result::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => {
                        tracing::debug!("cuBLASLt has no algorithm for {key:?}; default path");
                        None
                    }
                    Err(e) => return Err(lt_err(e)),
                };
                ctx.plans
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, plan);
                plan
            }
        };
        let Some(algo) = algo else {
            return Ok(None);
        };
        // SAFETY: every element is written by the GEMM.
        let mut out = unsafe { dev.alloc::<T>(rows * n)? };
        let (alpha, beta) = (1f32, if epilogue.residual { 1f32 } else { 0f32 });
        {
            let (a_ptr, _a) = v[1].device_ptr(stream);
            let (b_ptr, _b) = v[0].device_ptr(stream);
            let (w_ptr, _w) = ctx.workspace.device_ptr(stream);
            let residual = v.get(3).map(|r| r.device_ptr(stream));
            let (d_ptr, _d) = out.device_ptr_mut(stream);
            if d_ptr % ALIGN as u64 != 0 {
                return Ok(None);
            }
            // Without a residual C is not read (beta = 0); D stands in for it.
            let c_ptr = residual.as_ref().map_or(d_ptr, |(p, _)| *p);
            // SAFETY: the views hold k·n, rows·k, n and (residual) rows·n elements and the
            // output rows·n, as the layouts describe; the workspace holds WORKSPACE_BYTES.
            unsafe {
                result::matmul(
                    ctx.handle,
                    desc.0,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    a_ptr as *const c_void,
                    a_layout.0,
                    b_ptr as *const c_void,
                    b_layout.0,
                    c_ptr as *const c_void,
                    d_layout.0,
                    d_ptr as *mut c_void,
                    d_layout.0,
                    &algo,
                    w_ptr as *mut c_void,
                    WORKSPACE_BYTES,
                    stream.cu_stream() as sys::cudaStream_t,
                )
                .map_err(lt_err)?;
            }
        }
        Ok(Some(into_tensor(out, dev, &[rows, n])))
    })
}
