//! One transformer layer (NOTES §5.6) and the final layer (§5.9).

use super::attention::SelfAttention;
use super::cross_attention::LrCrossAttention;
use super::kv_cache::{BlockId, KvCache};
use super::ops::{linear, ln_modulate, split_last, LayerNorm, Linear};
use super::Tap;
use crate::config::{ModelConfig, MIXIN_LAYERNORM_EPS};
use crate::profile::stage;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `dense_h_to_4h` → tanh-GELU → `dense_4h_to_h`.
#[derive(Debug, Clone)]
pub struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense_h_to_4h: linear(cfg.hidden_size, cfg.mlp_inner_size, vb.pp("dense_h_to_4h"))?,
            dense_4h_to_h: linear(cfg.mlp_inner_size, cfg.hidden_size, vb.pp("dense_4h_to_h"))?,
        })
    }

    /// The MLP output, plus `residual` when given (added in fc2's epilogue where that is
    /// fused).
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let dev = x.device();
        let y = stage("mlp/fc1+gelu", dev, || self.dense_h_to_4h.forward_gelu(x))?;
        stage("mlp/fc2", dev, || match residual {
            Some(r) => self.dense_4h_to_h.forward_add(&y, r),
            None => self.dense_4h_to_h.forward(&y),
        })
    }
}

/// Layer-0 extras: the LR cross-attention and its affine LayerNorm before the MLP.
#[derive(Debug, Clone)]
struct CrossBranch {
    attn: LrCrossAttention,
    post_cross_ln: LayerNorm,
}

/// Inputs every layer shares for one batch of blocks.
pub struct LayerInputs<'a> {
    pub ids: &'a [BlockId],
    /// `SiLU(emb)`: `[n or 1, 1, D]` (each adaLN head applies SiLU to the already-SiLU'd emb).
    pub emb_act: &'a Tensor,
    pub rope: (&'a Tensor, &'a Tensor),
    /// `[n, W, D]` LR window tokens (read by layer 0 only).
    pub lr_tokens: &'a Tensor,
    /// Add the residual inside the output projections (where a fused GEMM epilogue
    /// serves); off when the branch outputs are tapped, since they are then never formed.
    pub fuse_residual: bool,
}

#[derive(Debug, Clone)]
pub struct DitLayer {
    adaln_modulation: Linear,
    attention: SelfAttention,
    mlp: Mlp,
    /// The affine-free pre-LayerNorm used before attention, cross-attention and MLP.
    ln: LayerNorm,
    cross: Option<CrossBranch>,
}

impl DitLayer {
    pub fn new(cfg: &ModelConfig, layer: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let adaln = vb.pp("mixins.adaln_layer");
        let t = vb.pp(format!("transformer.layers.{layer}"));
        let cross = if layer == 0 {
            Some(CrossBranch {
                attn: LrCrossAttention::new(cfg, adaln.clone())?,
                post_cross_ln: LayerNorm::new(
                    d,
                    MIXIN_LAYERNORM_EPS,
                    adaln.pp("post_cross_attention_layernorm"),
                )?,
            })
        } else {
            None
        };
        Ok(Self {
            adaln_modulation: linear(d, 4 * d, adaln.pp(format!("adaLN_modulations.{layer}.1")))?,
            attention: SelfAttention::new(cfg, layer, t.pp("attention"), adaln.clone())?,
            mlp: Mlp::new(cfg, t.pp("mlp"))?,
            ln: LayerNorm::no_affine(d, cfg.layernorm_eps, vb.dtype(), vb.device())?,
            cross,
        })
    }

    pub fn forward(
        &self,
        h: &Tensor,
        inp: &LayerInputs,
        cache: &mut KvCache,
        layer: usize,
        tap: Tap,
    ) -> Result<Tensor> {
        let dev = h.device();
        let m = self.adaln_modulation.forward(inp.emb_act)?;
        tap(&format!("layer{layer}_adaln_mod"), &m)?;
        let m = split_last(&m, 4)?;
        let (shift_msa, scale_msa, shift_mlp, scale_mlp) = (&m[0], &m[1], &m[2], &m[3]);
        let a = stage("layer/ln+modulate", dev, || {
            ln_modulate(&self.ln, h, shift_msa, scale_msa)
        })?;
        let residual = inp.fuse_residual.then_some(h);
        let attn = stage("layer/self_attention", dev, || {
            self.attention
                .forward(&a, inp.ids, inp.rope, cache, residual)
        })?;
        let h = match residual {
            Some(_) => attn,
            None => {
                tap(&format!("layer{layer}_attn_out"), &attn)?;
                (h + attn)?
            }
        };
        let (h, mlp_ln) = match &self.cross {
            Some(cross) => {
                let c = self.ln.forward(&h)?;
                let out = stage("layer/cross_attention", dev, || {
                    cross.attn.forward(&c, inp.lr_tokens)
                })?;
                tap(&format!("layer{layer}_cross_out"), &out)?;
                ((&h + out)?, &cross.post_cross_ln)
            }
            None => (h, &self.ln),
        };
        let mlp_in = stage("layer/ln+modulate", dev, || {
            ln_modulate(mlp_ln, &h, shift_mlp, scale_mlp)
        })?;
        if inp.fuse_residual {
            return stage("layer/mlp", dev, || self.mlp.forward(&mlp_in, Some(&h)));
        }
        let out = stage("layer/mlp", dev, || self.mlp.forward(&mlp_in, None))?;
        stage("layer/residual", dev, || h + out)
    }

    /// Layer 0's LR cross-attention, which also turns LR pixels into tokens.
    pub fn cross_attention(&self) -> Option<&LrCrossAttention> {
        self.cross.as_ref().map(|c| &c.attn)
    }
}

/// `final_layernorm`, then adaLN (shift first, scale second) on a second non-affine LN,
/// then the linear map to `P·P·C` values per token.
#[derive(Debug, Clone)]
pub struct FinalLayer {
    adaln_modulation: Linear,
    linear: Linear,
    /// The transformer's `final_layernorm` (the config's epsilon).
    final_layernorm: LayerNorm,
    /// The adaLN head's own `norm_final` (a fixed epsilon).
    norm_final: LayerNorm,
}

impl FinalLayer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        Ok(Self {
            adaln_modulation: linear(d, 2 * d, vb.pp("adaLN_modulation.1"))?,
            linear: linear(d, p * p * cfg.out_channels, vb.pp("linear"))?,
            final_layernorm: LayerNorm::no_affine(d, cfg.layernorm_eps, vb.dtype(), vb.device())?,
            norm_final: LayerNorm::no_affine(d, MIXIN_LAYERNORM_EPS, vb.dtype(), vb.device())?,
        })
    }

    pub fn forward(&self, h: &Tensor, emb_act: &Tensor, tap: Tap) -> Result<Tensor> {
        let m = self.adaln_modulation.forward(emb_act)?;
        tap("final_adaln_mod", &m)?;
        let m = split_last(&m, 2)?;
        let h = self.final_layernorm.forward(h)?;
        let y = ln_modulate(&self.norm_final, &h, &m[0], &m[1])?;
        self.linear.forward(&y)
    }
}
