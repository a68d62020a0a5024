//! A model's recommended sampler settings: a `sampling.json` beside its weights, or the
//! copy `convert` stores in a safetensors file's metadata so that the file alone carries
//! them.

use super::UpscaleOptions;
use crate::sampler::{SamplerConfig, SamplerKind};
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// The settings `upscale` and `eval` use when no flag overrides them. A setting the file
/// leaves out takes the default.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingDefaults {
    pub steps: usize,
    pub sigma_max: f32,
    pub sampler: SamplerKind,
    /// See `UpscaleOptions::self_ensemble`.
    pub self_ensemble: usize,
}

impl SamplingDefaults {
    pub const FILE_NAME: &'static str = "sampling.json";
    /// The safetensors metadata key holding the settings as `sampling.json` text.
    pub const METADATA_KEY: &'static str = "infdit.sampling";

    /// Reads and checks a `sampling.json`.
    pub fn parse(text: &str) -> Result<Self> {
        // serde would also take a JSON array as the fields in order.
        let value: serde_json::Value = serde_json::from_str(text)?;
        ensure!(
            value.is_object(),
            "expected a JSON object of settings, such as {{\"steps\": 20}}"
        );
        let defaults: Self = serde_json::from_value(value)?;
        defaults.sampler().validate()?;
        super::check_self_ensemble(defaults.self_ensemble)?;
        Ok(defaults)
    }

    /// The settings of the model whose weights file is `weights`; the defaults where it
    /// has none.
    pub fn of_model(weights: &Path) -> Result<Self> {
        Ok(Self::stored(weights)?.unwrap_or_default())
    }

    /// The settings a model carries: the `sampling.json` beside its weights file, else
    /// those stored in the file. One that cannot be read or parsed is an error, not
    /// ignored.
    pub fn stored(weights: &Path) -> Result<Option<Self>> {
        let path = weights.with_file_name(Self::FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return Self::parse(&text)
                    .map(Some)
                    .with_context(|| format!("reading {} beside the model", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {} beside the model", path.display()))
            }
        }
        if !weights.is_file() {
            return Ok(None);
        }
        crate::checkpoint::embedded_metadata(weights, Self::METADATA_KEY)?
            .map(|text| {
                Self::parse(&text).with_context(|| {
                    format!("{}: invalid stored sampling settings", weights.display())
                })
            })
            .transpose()
    }

    /// The sampler these settings describe.
    pub fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            kind: self.sampler,
            steps: self.steps,
            sigma_max: self.sigma_max,
            ..SamplerConfig::default()
        }
    }

    /// Upscale options with these settings, the others at their defaults.
    pub fn options(&self) -> UpscaleOptions {
        UpscaleOptions {
            sampler: self.sampler(),
            self_ensemble: self.self_ensemble,
            ..UpscaleOptions::default()
        }
    }

    /// The settings as `sampling.json` text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain fields serialise")
    }
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        let s = SamplerConfig::default();
        Self {
            steps: s.steps,
            sigma_max: s.sigma_max,
            sampler: s.kind,
            self_ensemble: UpscaleOptions::default().self_ensemble,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_the_defaults_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("weights.safetensors");
        assert_eq!(
            SamplingDefaults::of_model(&weights).unwrap().steps,
            SamplingDefaults::default().steps
        );
        let path = dir.path().join(SamplingDefaults::FILE_NAME);
        std::fs::write(&path, r#"{"steps": 7}"#).unwrap();
        let d = SamplingDefaults::of_model(&weights).unwrap();
        assert_eq!((d.steps, d.self_ensemble), (7, 1));
        for broken in [r#"{"steps": 0}"#, "[]", "[3]", r#"{"sigma_max": 1e30}"#] {
            std::fs::write(&path, broken).unwrap();
            assert!(SamplingDefaults::of_model(&weights).is_err(), "{broken}");
        }
        // A folder of that name cannot be read: an error, not the defaults.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = format!("{:#}", SamplingDefaults::of_model(&weights).unwrap_err());
        assert!(e.contains("sampling.json beside the model"), "{e}");
    }

    /// A weights file carries its settings in its metadata when no file is beside it.
    #[test]
    fn stored_settings_travel_with_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w.safetensors");
        let tensors = [(
            "t".to_string(),
            candle_core::Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap(),
        )]
        .into_iter()
        .collect();
        let settings = SamplingDefaults {
            steps: 3,
            ..Default::default()
        };
        let metadata = [(
            SamplingDefaults::METADATA_KEY.to_string(),
            settings.to_json(),
        )];
        crate::fsutil::save_safetensors_with_metadata(
            &weights,
            &tensors,
            Some(metadata.into_iter().collect()),
        )
        .unwrap();
        assert_eq!(SamplingDefaults::of_model(&weights).unwrap().steps, 3);
        // A file beside the weights still wins.
        std::fs::write(
            dir.path().join(SamplingDefaults::FILE_NAME),
            r#"{"steps": 5}"#,
        )
        .unwrap();
        assert_eq!(SamplingDefaults::of_model(&weights).unwrap().steps, 5);
    }
}
