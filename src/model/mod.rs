//! The Inf-DiT denoiser network, evaluated on batches of 128-px blocks.
//!
//! Everything except the block self-attention is local to a block, so the network is
//! written over a batch of blocks; the attention reads neighbour keys/values through a
//! [`KvCache`]. Whole-image ("full") evaluation is the special case of one batch holding
//! every block; the [`crate::engine`] streams blocks in smaller batches.

pub mod attention;
pub mod cpu_attention;
pub mod cpu_ops;
pub mod cross_attention;
pub mod embed;
#[cfg(feature = "cuda")]
pub mod flash_attention;
pub mod fused;
#[cfg(feature = "cuda")]
pub mod fused_ops;
#[cfg(feature = "cuda")]
pub mod gemm_lt;
pub mod kv_cache;
pub mod layer;
pub mod ops;
pub mod precond;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) mod ptx;
pub mod rope;

pub use kv_cache::{BatchPlan, BlockId, KvCache};
pub use precond::Precond;

use crate::config::ModelConfig;
use crate::profile::stage;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use embed::{ConditionEmbed, PatchEmbed};
use layer::{DitLayer, FinalLayer, LayerInputs};
use rope::RopeTable;

/// The precision `device` computes in by default: f32 on the CPU (exact parity), bf16 on
/// GPUs, f16 on CUDA GPUs older than Ampere, which have no bf16 arithmetic.
pub fn default_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) if fused_ops::compute_capability_major(dev).is_some_and(|m| m < 8) => {
            DType::F16
        }
        _ => DType::BF16,
    }
}

/// Receives named intermediate tensors (for parity checks and debugging).
pub type Tap<'a> = &'a mut dyn FnMut(&str, &Tensor) -> Result<()>;

/// Network inputs for a batch of `n` blocks.
pub struct BlockBatch {
    pub ids: Vec<BlockId>,
    /// `[n, in_channels, S, S]`: `cat(x, concat_lr)·c_in` over each block.
    pub x: Tensor,
    /// `[n, 3, 3L, 3L]`: raw LR pixels of each block's 3×3-block window (0 outside).
    pub lr: Tensor,
    /// `[n, W, 1]`: 1 for window tokens inside the LR image, 0 for padding.
    pub lr_mask: Tensor,
    /// RoPE tables `[n, T, hd/2]`.
    pub rope_cos: Tensor,
    pub rope_sin: Tensor,
    /// `SiLU(emb)`, `[n or 1, 1, D]`.
    pub emb_act: Tensor,
}

#[derive(Debug, Clone)]
pub struct InfDit {
    cfg: ModelConfig,
    cond: ConditionEmbed,
    patch_embed: PatchEmbed,
    layers: Vec<DitLayer>,
    final_layer: FinalLayer,
    rope: RopeTable,
    dtype: DType,
    device: Device,
}

impl InfDit {
    /// `vb` is rooted at the checkpoint's top level (official key names).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_layers)
            .map(|l| DitLayer::new(cfg, l, vb.clone()))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            cond: ConditionEmbed::new(cfg, vb.clone())?,
            patch_embed: PatchEmbed::new(cfg, vb.pp("mixins.patch_embed"))?,
            layers,
            final_layer: FinalLayer::new(cfg, vb.pp("mixins.final_layer"))?,
            rope: RopeTable::new(
                cfg.head_dim(),
                cfg.rope_table_size,
                cfg.rope_position_modulus,
                cfg.rope_theta,
            ),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    /// `SiLU(SiLU(temb + vemb))` as `[n, 1, D]`: what every adaLN Linear reads.
    pub fn emb_act(&self, c_noise: &[f32], vector: Option<&Tensor>) -> Result<Tensor> {
        self.cond
            .forward(c_noise, vector, self.dtype)?
            .silu()?
            .unsqueeze(1)
    }

    /// The noise-level and condition embedding (exposed for parity checks).
    pub fn condition_embed(&self) -> &ConditionEmbed {
        &self.cond
    }

    /// Raw network output F for the blocks: `[n, out_channels, S, S]`.
    pub fn forward_blocks(&self, batch: &BlockBatch, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_impl(batch, cache, &mut |_, _| Ok(()), true)
    }

    /// [`Self::forward_blocks`], handing `tap` every named intermediate.
    pub fn forward_blocks_tapped(
        &self,
        batch: &BlockBatch,
        cache: &mut KvCache,
        tap: Tap,
    ) -> Result<Tensor> {
        self.forward_impl(batch, cache, tap, false)
    }

    fn forward_impl(
        &self,
        batch: &BlockBatch,
        cache: &mut KvCache,
        tap: Tap,
        fuse_residual: bool,
    ) -> Result<Tensor> {
        let n = batch.ids.len();
        let mut h = self.patch_embed.forward(&batch.x.to_dtype(self.dtype)?)?;
        tap("patch_embed_out", &h)?;
        let lr_tokens = match self.layers.first().and_then(|l| l.cross_attention()) {
            Some(cross) => cross.lr_tokens(
                &batch.lr.to_dtype(self.dtype)?,
                &batch.lr_mask.to_dtype(self.dtype)?,
            )?,
            None => Tensor::zeros((n, 1, self.cfg.hidden_size), self.dtype, &self.device)?,
        };
        tap("lr_tokens", &lr_tokens)?;
        let rope_cos = batch.rope_cos.to_dtype(self.dtype)?;
        let rope_sin = batch.rope_sin.to_dtype(self.dtype)?;
        let inputs = LayerInputs {
            ids: &batch.ids,
            emb_act: &batch.emb_act,
            rope: (&rope_cos, &rope_sin),
            lr_tokens: &lr_tokens,
            fuse_residual,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, &inputs, cache, l, tap)?;
            tap(&format!("layer{l}_out"), &h)?;
        }
        let y = stage("final_layer", &self.device, || {
            self.final_layer.forward(&h, &batch.emb_act, tap)
        })?;
        let f = self.unpatchify(&y)?;
        tap("net_out_F", &f)?;
        Ok(f)
    }

    /// `[n, T, P·P·C]` (ordered p, q, channel) → `[n, C, S, S]`.
    fn unpatchify(&self, y: &Tensor) -> Result<Tensor> {
        let n = y.dim(0)?;
        let (bt, p, c) = (
            self.cfg.block_tokens(),
            self.cfg.patch_size,
            self.cfg.out_channels,
        );
        y.reshape((n, bt, bt, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .reshape((n, c, bt * p, bt * p))
    }
}

impl InfDit {
    /// Builds the model from a checked checkpoint, converting weights to `dtype`.
    pub fn from_source(
        src: &crate::checkpoint::ModelSource,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let tensors = src.checkpoint.model_tensors(&src.config, dtype, device)?;
        // NaN or infinite weights make every output NaN: say so before minutes of sampling, not after.
        let broken = crate::checkpoint::non_finite(tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
        if !broken.is_empty() {
            // f16 turns weights beyond ±65504 into infinities.
            let cause = if dtype == DType::F16 {
                "the weights are broken or too large for f16 (try --dtype bf16 or f32)"
            } else {
                "the weights are broken"
            };
            anyhow::bail!(
                "{}: NaN or infinite values in {} tensor(s), e.g. {}: {cause}",
                src.checkpoint.path.display(),
                broken.len(),
                broken[0]
            );
        }
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Ok(Self::new(&src.config, vb)?)
    }
}

impl InfDit {
    /// A model with seeded random weights (tests, benchmarks).
    pub fn random(
        cfg: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let tensors = crate::checkpoint::random_weights(cfg, seed)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Ok(Self::new(cfg, vb)?)
    }
}
