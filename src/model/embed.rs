//! Patch, noise-level and condition embeddings (NOTES §5.3–5.4).

use super::ops::{linear, patch_linear, Linear};
use crate::config::ModelConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `[cos(c·f_k) ‖ sin(c·f_k)]` with `f_k = max_period^(−k/half)`, computed in f32 like
/// the reference; cos comes first. `c_noise`: one value per sample.
pub fn timestep_embedding(
    c_noise: &[f32],
    channels: usize,
    max_period: f64,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let half = channels / 2;
    let ln_p = (max_period as f32).ln();
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-ln_p * k as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(c_noise.len() * channels);
    for &c in c_noise {
        out.extend(freqs.iter().map(|f| (c * f).cos()));
        out.extend(freqs.iter().map(|f| (c * f).sin()));
    }
    Tensor::from_vec(out, (c_noise.len(), channels), dev)
}

/// Two-layer MLP with SiLU in between (`time_embed.mlp`, `cond_embed.map_vector`).
#[derive(Debug, Clone)]
pub struct Mlp2 {
    fc0: Linear,
    fc2: Linear,
}

impl Mlp2 {
    pub fn new(inp: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc0: linear(inp, hidden, vb.pp("0"))?,
            fc2: linear(hidden, hidden, vb.pp("2"))?,
        })
    }
}

impl Module for Mlp2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc0.forward(x)?.silu()?)
    }
}

/// `emb = SiLU(time_embed(t) + map_vector(vector))`: the conditioning every adaLN head reads.
#[derive(Debug, Clone)]
pub struct ConditionEmbed {
    time_embed: Mlp2,
    map_vector: Option<Mlp2>,
    channels: usize,
    max_period: f64,
}

impl ConditionEmbed {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let map_vector = if cfg.vector_dim > 0 {
            Some(Mlp2::new(
                cfg.vector_dim,
                d,
                vb.pp("cond_embed.map_vector"),
            )?)
        } else {
            None
        };
        Ok(Self {
            time_embed: Mlp2::new(cfg.time_embed_channels, d, vb.pp("time_embed.mlp"))?,
            map_vector,
            channels: cfg.time_embed_channels,
            max_period: cfg.time_embed_max_period,
        })
    }

    /// `time_embed(sinusoid(c_noise))`: `[n, D]`.
    pub fn time_embedding(&self, c_noise: &[f32], dtype: candle_core::DType) -> Result<Tensor> {
        let dev = self.time_embed.fc0.weight().device();
        let t =
            timestep_embedding(c_noise, self.channels, self.max_period, dev)?.to_dtype(dtype)?;
        self.time_embed.forward(&t)
    }

    /// Sum of the time and vector embeddings, before the SiLU: `[n, D]`.
    pub fn pre_activation(
        &self,
        c_noise: &[f32],
        vector: Option<&Tensor>,
        dtype: candle_core::DType,
    ) -> Result<Tensor> {
        let temb = self.time_embedding(c_noise, dtype)?;
        match (&self.map_vector, vector) {
            (Some(m), Some(v)) => temb.broadcast_add(&m.forward(&v.to_dtype(dtype)?)?),
            (Some(_), None) => candle_core::bail!("this model needs an image-condition vector"),
            (None, _) => Ok(temb),
        }
    }

    /// `SiLU(temb + vemb)`: `[n, D]`.
    pub fn forward(
        &self,
        c_noise: &[f32],
        vector: Option<&Tensor>,
        dtype: candle_core::DType,
    ) -> Result<Tensor> {
        self.pre_activation(c_noise, vector, dtype)?.silu()
    }
}

/// Conv2d(in→D, k=P, s=P) over a block's pixels, as a Linear over patches.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj: Linear,
    patch: usize,
}

impl PatchEmbed {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let proj = patch_linear(
            cfg.hidden_size,
            cfg.in_channels,
            cfg.patch_size,
            vb.pp("proj"),
        )?;
        Ok(Self {
            proj,
            patch: cfg.patch_size,
        })
    }

    /// `[n, C, S, S]` → `[n, (S/P)², D]`, tokens row-major inside the block.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&super::ops::patchify(x, self.patch)?)
    }
}
