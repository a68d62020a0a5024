//! Unidirectional block self-attention (NOTES §5.7): each block's queries attend to the
//! keys and values of its four slots, which [`KvCache`] finds in the batch or the cache.

use super::kv_cache::{BlockId, KvCache, PagedKv};
use super::ops::{attention, fused_kernels, linear, rope_interleaved, LayerNorm, Linear};
use crate::config::{ModelConfig, MIXIN_LAYERNORM_EPS};
use crate::profile::stage;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Attention of the `[n, heads, T, hd]` queries over their blocks' neighbour slots: read
/// in place where the kernel can, else gathered first.
pub fn attend(q: &Tensor, kv: &PagedKv) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::kv_cache::paged_attention(&kv.k) {
        return super::flash_attention::forward_paged(q, kv);
    }
    let (k_all, v_all) = kv.gather()?;
    attention(q, &k_all, &v_all)
}

/// `qkv` `[n, T, 3·D]` → q, k, v `[n, heads, T, hd]`, with `qk_norm` and the interleaved
/// RoPE (`rope`: `[n, T, hd/2]` tables) applied to q and k; in one CUDA kernel when `fused`.
pub fn split_qkv(
    qkv: &Tensor,
    qk_norm: &LayerNorm,
    rope: (&Tensor, &Tensor),
    heads: usize,
    fused: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if fused {
        return super::fused_ops::qkv_norm_rope(qkv, qk_norm.parts(), rope, heads);
    }
    let _ = fused;
    let (n, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let part = |i: usize| -> Result<Tensor> {
        let y = qkv.narrow(2, i * d, d)?.reshape((n, t, heads, d / heads))?;
        y.transpose(1, 2)
    };
    Ok((
        rope_interleaved(&qk_norm.forward(&part(0)?)?, rope.0, rope.1)?,
        rope_interleaved(&qk_norm.forward(&part(1)?)?, rope.0, rope.1)?,
        part(2)?.contiguous()?,
    ))
}

/// `attention.query_key_value` / `attention.dense` with QK-LayerNorm, RoPE and the
/// per-slot key embedding `re_pos_embed[layer]`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    query_key_value: Linear,
    dense: Linear,
    /// `q_layer_norm[layer]`, applied to queries **and** keys (the reference never
    /// reads `k_layer_norm`).
    qk_norm: LayerNorm,
    /// `[4, heads, hd]`
    slot_embed: Tensor,
    layer: usize,
    heads: usize,
}

impl SelfAttention {
    pub fn new(cfg: &ModelConfig, layer: usize, vb: VarBuilder, adaln: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let re = adaln.get(
            (cfg.num_layers, 4, cfg.num_attention_heads, hd),
            "re_pos_embed",
        )?;
        Ok(Self {
            query_key_value: linear(d, 3 * d, vb.pp("query_key_value"))?,
            dense: linear(d, d, vb.pp("dense"))?,
            qk_norm: LayerNorm::new(
                hd,
                MIXIN_LAYERNORM_EPS,
                adaln.pp(format!("q_layer_norm.{layer}")),
            )?,
            slot_embed: re.get(layer)?,
            layer,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x`: `[n, T, D]` tokens of the blocks `ids`; `rope`: `[n, T, hd/2]` tables.
    /// The attention output, plus `residual` when given (added in the output projection's
    /// epilogue where that is fused).
    pub fn forward(
        &self,
        x: &Tensor,
        ids: &[BlockId],
        rope: (&Tensor, &Tensor),
        cache: &mut KvCache,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let dev = x.device();
        let qkv = stage("attn/qkv", dev, || self.query_key_value.forward(x))?;
        let (q, k, v) = stage("attn/qk_norm+rope", dev, || {
            let fused = fused_kernels(&[&qkv, self.qk_norm.parts().0, rope.0]);
            split_qkv(&qkv, &self.qk_norm, rope, self.heads, fused)
        })?;
        let kv = stage("attn/neighbour_kv", dev, || {
            cache.neighbour_kv(self.layer, ids, &k, &v, &self.slot_embed)
        })?;
        let y = stage("attn/core", dev, || attend(&q, &kv))?;
        stage("attn/dense", dev, || {
            let y = y.transpose(1, 2)?.reshape((n, t, d))?;
            match residual {
                Some(r) => self.dense.forward_add(&y, r),
                None => self.dense.forward(&y),
            }
        })
    }
}
