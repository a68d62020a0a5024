//! Environment switches, each read once per process. They choose between equivalent
//! compute paths, for comparisons and as escape hatches, or opt into paths not yet
//! measured to be faster; the defaults are the measured best. The README lists them.

use std::sync::OnceLock;

/// An environment variable read on first use; unset and non-UTF-8 values read as unset.
pub struct Switch {
    name: &'static str,
    value: OnceLock<Option<String>>,
}

impl Switch {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<&str> {
        self.value
            .get_or_init(|| std::env::var(self.name).ok())
            .as_deref()
    }

    pub fn is(&self, value: &str) -> bool {
        self.get() == Some(value)
    }

    /// On unless set to `0`.
    pub fn on_unless_zero(&self) -> bool {
        !self.is("0")
    }
}

/// `0`: candle's element-wise ops instead of the fused CUDA kernels; `v2`: the vectorised
/// LayerNorm + modulation and QKV-split kernels.
pub static FUSED: Switch = Switch::new("INFDIT_FUSED");
/// `composed`: candle's matmul → softmax → matmul attention instead of the fused kernels.
pub static ATTENTION: Switch = Switch::new("INFDIT_ATTENTION");
/// `lt`: the linear layers through cuBLASLt with fused epilogues.
pub static GEMM: Switch = Switch::new("INFDIT_GEMM");
/// `w8` or `wg`: the flash-attention kernel shape (default `w4`).
pub static FLASH_SHAPE: Switch = Switch::new("INFDIT_FLASH_SHAPE");
/// `0`: neighbour K/V gathered into one sequence before the attention, not read paged.
pub static PAGED: Switch = Switch::new("INFDIT_PAGED");
/// Non-empty and not `0`: per-stage timing (see `profile`).
pub static PROFILE: Switch = Switch::new("INFDIT_PROFILE");
