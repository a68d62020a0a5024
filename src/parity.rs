//! Runs the reference fixtures' cases through the port: the backing of `infdit parity`,
//! used by the tests and by outside checkers.

use crate::engine::{Conditioning, Engine, EngineOptions, Positions};
use crate::imageops::Planar;
use crate::model::InfDit;
use crate::sampler::{sample, SamplerConfig};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Tensors of a safetensors case file.
pub struct Case(pub HashMap<String, Tensor>);

impl Case {
    pub fn open(path: &Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading case {}", path.display()))?;
        Ok(Self(t))
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.0
            .get(name)
            .with_context(|| format!("case has no tensor `{name}`"))
    }

    pub fn planar(&self, name: &str) -> Result<Planar> {
        Planar::from_tensor(self.get(name)?)
    }

    pub fn scalar(&self, name: &str) -> Result<f32> {
        Ok(self
            .get(name)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .get(0)?
            .to_scalar()?)
    }

    /// Conditioning from `concat_lr`, `lr`, `vector` and optional `rope_position_ids`.
    pub fn conditioning(&self, model: &InfDit) -> Result<Conditioning> {
        let concat_lr = self.planar("concat_lr")?;
        let vector = match self.0.get("vector") {
            Some(v) if model.config().vector_dim > 0 => {
                Some(v.to_dtype(DType::F32)?.to_device(model.device())?)
            }
            _ => None,
        };
        let positions = match self.0.get("rope_position_ids") {
            Some(ids) => {
                let patch = model.config().patch_size;
                let (rows, width) = (concat_lr.height / patch, concat_lr.width / patch);
                ensure!(
                    ids.dims() == [1, rows * width, 2],
                    "rope_position_ids has shape {:?}, not [1, {}, 2] for a {}×{} image",
                    ids.dims(),
                    rows * width,
                    concat_lr.width,
                    concat_lr.height
                );
                let ids = ids.to_dtype(DType::I64)?.squeeze(0)?.to_vec2::<i64>()?;
                let ids = ids
                    .iter()
                    .map(|p| Ok((usize::try_from(p[0])?, usize::try_from(p[1])?)))
                    .collect::<Result<_>>()
                    .context("rope_position_ids holds a negative position")?;
                Positions::Explicit { width, ids }
            }
            None => Positions::Grid,
        };
        Ok(Conditioning {
            concat_lr,
            lr: self.planar("lr")?,
            vector,
            positions,
        })
    }
}

/// Writes f32 tensors to a safetensors file (atomically).
pub fn write_tensors(path: &Path, tensors: &[(&str, Tensor)]) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.to_string(), t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    crate::fsutil::save_safetensors(path, &map)
}

/// One denoiser call: returns `(denoised, net_out_F)`.
pub fn denoise(model: &InfDit, case: &Case, opts: EngineOptions) -> Result<(Planar, Planar)> {
    let cond = case.conditioning(model)?;
    let x = case.planar("x")?;
    let sigma = case.scalar("sigma")?;
    // The noise embedding takes ln σ: other values give NaN outputs, not a comparison.
    ensure!(
        sigma.is_finite() && sigma > 0.0,
        "the case's sigma is {sigma}: the denoiser takes a positive, finite noise level"
    );
    let engine = Engine::new(model, opts);
    let (f, pre) = engine.network_output(&x, sigma, &cond, &mut |_| {})?;
    Ok((pre.denoised(f.clone(), &x), f))
}

/// A sampler run from `init_noise`: returns `(sample, x_after_step0)`.
pub fn sample_case(
    model: &InfDit,
    case: &Case,
    sampler: &SamplerConfig,
    opts: EngineOptions,
) -> Result<(Planar, Planar)> {
    let cond = case.conditioning(model)?;
    let noise = case.planar("init_noise")?;
    ensure!(
        noise.shape() == cond.concat_lr.shape(),
        "init_noise is {:?}, concat_lr {:?}",
        noise.shape(),
        cond.concat_lr.shape()
    );
    let engine = Engine::new(model, opts);
    let mut first = None;
    let out = sample(
        sampler,
        cond.concat_lr.clone(),
        noise,
        &mut |x, s| engine.denoise(x, s, &cond, &mut |_| {}),
        &mut |i, x| {
            if i == 0 {
                first = Some(x.clone());
            }
        },
    )?;
    Ok((out, first.context("sampler ran no step")?))
}
