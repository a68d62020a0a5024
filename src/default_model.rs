//! The built-in default model, embedded in the binary so `infdit upscale photo.jpg`
//! works offline with no flags. It lives in `models/default/` (trained by `infdit train`,
//! see the README) and is compiled in with `include_bytes!`.

use crate::checkpoint::{Checkpoint, ModelSource};
use crate::config::ModelConfig;
use crate::model::InfDit;
use crate::pipeline::SamplingDefaults;
use anyhow::{Context, Result};
use candle_core::{DType, Device};

const CONFIG: &str = include_str!("../models/default/config.json");
const SAMPLING: &str = include_str!("../models/default/sampling.json");
const WEIGHTS: &[u8] = include_bytes!("../models/default/weights.safetensors");

/// The built-in model and its recommended sampler settings.
pub fn load(dtype: DType, device: &Device) -> Result<(InfDit, SamplingDefaults)> {
    let config: ModelConfig = serde_json::from_str(CONFIG).context("built-in model config")?;
    let tensors = candle_core::safetensors::load_buffer(WEIGHTS, &Device::Cpu)
        .context("built-in model weights")?;
    let src = ModelSource {
        config,
        checkpoint: Checkpoint {
            path: "<built-in model>".into(),
            tensors,
            unreadable: Default::default(),
        },
    };
    let sampling = SamplingDefaults::parse(SAMPLING).context("built-in sampling settings")?;
    Ok((InfDit::from_source(&src, dtype, device)?, sampling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_model_loads_and_is_small() {
        assert!(
            WEIGHTS.len() <= 20 << 20,
            "built-in weights must stay within 20 MB"
        );
        let (model, sampling) = load(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            model.config().vector_dim,
            0,
            "the built-in model needs no CLIP weights"
        );
        assert!(sampling.steps >= 1);
    }
}
