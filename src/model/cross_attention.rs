//! Nearby-LR cross-attention (layer 0 only, NOTES §5.8): each block's queries attend to
//! the LR tokens of the 3×3-block window around it.

use super::ops::{attention, linear, patch_linear, patchify, LayerNorm, Linear};
use crate::config::{ModelConfig, MIXIN_LAYERNORM_EPS};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct LrCrossAttention {
    /// Conv2d(3→D, k=s=lr_patch) on the raw LR image.
    proj_lr: Linear,
    query: Linear,
    key_value: Linear,
    dense: Linear,
    q_ln: LayerNorm,
    k_ln: LayerNorm,
    /// `[T, heads, hd]`, indexed by the in-block query token.
    query_pos: Tensor,
    /// `[W, heads, hd]`, indexed by the window token.
    key_pos: Tensor,
    lr_patch: usize,
    heads: usize,
}

impl LrCrossAttention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let (nh, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let t = cfg.block_tokens() * cfg.block_tokens();
        let w = (3 * cfg.lr_block_tokens()).pow(2);
        let eps = MIXIN_LAYERNORM_EPS;
        Ok(Self {
            proj_lr: patch_linear(d, cfg.out_channels, cfg.lr_patch_size, vb.pp("proj_lr"))?,
            query: linear(d, d, vb.pp("cross_attention.query"))?,
            key_value: linear(d, 2 * d, vb.pp("cross_attention.key_value"))?,
            dense: linear(d, d, vb.pp("cross_attention.dense"))?,
            q_ln: LayerNorm::new(hd, eps, vb.pp("cross_q_ln"))?,
            k_ln: LayerNorm::new(hd, eps, vb.pp("cross_k_ln"))?,
            query_pos: vb
                .get((1, t, nh, hd), "lr_query_position_embedding")?
                .squeeze(0)?,
            key_pos: vb
                .get((1, w, nh, hd), "lr_key_position_embedding")?
                .squeeze(0)?,
            lr_patch: cfg.lr_patch_size,
            heads: nh,
        })
    }

    /// LR tokens of each block's window: `lr` `[n, 3, 3L, 3L]` raw LR pixels, `mask`
    /// `[n, W, 1]` (0 where the window leaves the image: the reference zero-pads after
    /// the conv, so those tokens carry no bias).
    pub fn lr_tokens(&self, lr: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.proj_lr
            .forward(&patchify(lr, self.lr_patch)?)?
            .broadcast_mul(mask)
    }

    /// `c`: `[n, T, D]` normalised residual stream; `lr_tokens`: `[n, W, D]`.
    pub fn forward(&self, c: &Tensor, lr_tokens: &Tensor) -> Result<Tensor> {
        let (n, t, d) = c.dims3()?;
        let w = lr_tokens.dim(1)?;
        let hd = d / self.heads;
        let q = self.query.forward(c)?.reshape((n, t, self.heads, hd))?;
        let q = self
            .q_ln
            .forward(&q)?
            .broadcast_add(&self.query_pos)?
            .transpose(1, 2)?;
        let kv = self.key_value.forward(lr_tokens)?;
        let k = kv.narrow(2, 0, d)?.reshape((n, w, self.heads, hd))?;
        let k = self
            .k_ln
            .forward(&k)?
            .broadcast_add(&self.key_pos)?
            .transpose(1, 2)?;
        let v = kv
            .narrow(2, d, d)?
            .reshape((n, w, self.heads, hd))?
            .transpose(1, 2)?;
        let y = attention(&q, &k, &v)?;
        self.dense.forward(&y.transpose(1, 2)?.reshape((n, t, d))?)
    }
}
