//! The built-in default model, embedded in the binary so `infdit upscale photo.jpg`
//! works offline with no flags.

use crate::cli::SamplingDefaults;
use crate::model::InfDit;
use anyhow::{bail, Result};
use candle_core::{DType, Device};

pub fn load(_dtype: DType, _device: &Device) -> Result<(InfDit, SamplingDefaults)> {
    bail!("this build has no built-in model yet: pass --model DIR")
}
