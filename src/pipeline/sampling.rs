//! A model's recommended sampler settings, stored beside it as `sampling.json`.

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

    /// Reads and checks a `sampling.json`.
    pub fn parse(text: &str) -> Result<Self> {
        let defaults: Self = serde_json::from_str(text)?;
        SamplerConfig {
            kind: defaults.sampler,
            steps: defaults.steps,
            sigma_max: defaults.sigma_max,
            ..SamplerConfig::default()
        }
        .validate()?;
        ensure!(
            matches!(defaults.self_ensemble, 1 | 2 | 4 | 8),
            "self_ensemble must be 1, 2, 4 or 8"
        );
        Ok(defaults)
    }

    /// The settings in the model folder `dir`; the defaults where it has no
    /// `sampling.json`. One that cannot be read or parsed is an error, not ignored.
    pub fn beside_model(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
        .with_context(|| format!("reading {} beside the model", path.display()))
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
        assert_eq!(
            SamplingDefaults::beside_model(dir.path()).unwrap().steps,
            SamplingDefaults::default().steps
        );
        let path = dir.path().join(SamplingDefaults::FILE_NAME);
        std::fs::write(&path, r#"{"steps": 7}"#).unwrap();
        let d = SamplingDefaults::beside_model(dir.path()).unwrap();
        assert_eq!((d.steps, d.self_ensemble), (7, 1));
        std::fs::write(&path, r#"{"steps": 0}"#).unwrap();
        assert!(SamplingDefaults::beside_model(dir.path()).is_err());
        // A folder of that name cannot be read: an error, not the defaults.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = format!(
            "{:#}",
            SamplingDefaults::beside_model(dir.path()).unwrap_err()
        );
        assert!(e.contains("sampling.json beside the model"), "{e}");
    }
}
