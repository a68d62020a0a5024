//! The open_clip `VisionTransformer` forward pass. Parameter names follow open_clip, with the
//! `VarBuilder` rooted at the tower (`conv1.weight`, `transformer.resblocks.N.…`, `proj`).

use candle_core::{bail, IndexOp, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, LayerNormConfig, Linear, VarBuilder};

use super::config::ClipVisionConfig;

fn layer_norm(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<LayerNorm> {
    let ln_cfg = LayerNormConfig {
        eps: cfg.ln_eps,
        ..Default::default()
    };
    candle_nn::layer_norm(cfg.width, ln_cfg, vb)
}

/// `nn.MultiheadAttention` with the q, k and v projections fused into one matrix
/// (`in_proj_weight` rows: q, then k, then v).
#[derive(Debug, Clone)]
pub struct Attention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.width;
        let in_w = vb.get((3 * w, w), "in_proj_weight")?;
        let in_b = vb.get(3 * w, "in_proj_bias")?;
        let out_proj = candle_nn::linear(w, w, vb.pp("out_proj"))?;
        Ok(Self {
            in_proj: Linear::new(in_w, Some(in_b)),
            out_proj,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x`: `[B, T, width]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let qkv = self
            .in_proj
            .forward(x)?
            .reshape((b, t, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?; // [3, B, H, T, D]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (qkv.i(0)?.contiguous()? * scale)?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, w))?;
        self.out_proj.forward(&y)
    }
}

/// `c_fc` → GELU → `c_proj`.
#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    quick_gelu: bool,
}

impl Mlp {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_fc: candle_nn::linear(cfg.width, cfg.mlp_dim, vb.pp("c_fc"))?,
            c_proj: candle_nn::linear(cfg.mlp_dim, cfg.width, vb.pp("c_proj"))?,
            quick_gelu: cfg.quick_gelu,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = if self.quick_gelu {
            (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?
        } else {
            h.gelu_erf()?
        };
        self.c_proj.forward(&h)
    }
}

/// Pre-LN residual block: `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl ResidualAttentionBlock {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln_1: layer_norm(cfg, vb.pp("ln_1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln_2: layer_norm(cfg, vb.pp("ln_2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// The vision tower: patchify, class token, positions, `ln_pre`, the blocks, `ln_post` on the
/// class token, then `proj`.
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    cfg: ClipVisionConfig,
    conv1: Conv2d,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: LayerNorm,
    proj: Tensor,
}

impl ClipVisionTransformer {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            bail!("{e}");
        }
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let conv1 =
            candle_nn::conv2d_no_bias(3, cfg.width, cfg.patch_size, conv_cfg, vb.pp("conv1"))?;
        let class_embedding = vb.get(cfg.width, "class_embedding")?;
        let positional_embedding = vb.get((cfg.num_tokens(), cfg.width), "positional_embedding")?;
        let ln_pre = layer_norm(cfg, vb.pp("ln_pre"))?;
        let vb_blocks = vb.pp("transformer").pp("resblocks");
        let blocks = (0..cfg.layers)
            .map(|i| ResidualAttentionBlock::new(cfg, vb_blocks.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ln_post = layer_norm(cfg, vb.pp("ln_post"))?;
        let proj = vb.get((cfg.width, cfg.embed_dim), "proj")?;
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            class_embedding,
            positional_embedding,
            ln_pre,
            blocks,
            ln_post,
            proj,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// `pixels`: normalised `[B, 3, S, S]` with `S = image_size`. Returns `[B, embed_dim]`,
    /// `ln_post(class token) @ proj`, not normalised.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.cfg.image_size;
        if c != 3 || h != s || w != s {
            bail!(
                "CLIP tower expects [B, 3, {s}, {s}] pixels, got {:?}",
                pixels.shape()
            );
        }
        let width = self.cfg.width;
        // [B, width, G, G] -> [B, G·G, width], patches in row-major order.
        let patches = self
            .conv1
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(&self.positional_embedding.unsqueeze(0)?)?;
        let mut x = self.ln_pre.forward(&x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let pooled = self.ln_post.forward(&x.i((.., 0))?.contiguous()?)?;
        pooled.matmul(&self.proj)
    }
}
