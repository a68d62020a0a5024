//! Model hyper-parameters, read from a `config.json` or taken from the released preset.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Epsilon of the LayerNorms the official code creates in its DiT mixins, where it is
/// fixed instead of following `--layernorm-epsilon`.
pub const MIXIN_LAYERNORM_EPS: f64 = 1e-6;

fn default_rope_theta() -> f64 {
    10000.0
}
fn default_time_max_period() -> f64 {
    10000.0
}

/// Everything the denoiser's shapes and numerics depend on. Field names follow the
/// reference `config.json`; unknown fields in that file are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub mlp_inner_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Side of one attention block in HR pixels (128: 32×32 tokens).
    pub image_block_size_px: usize,
    /// Width of the global image-condition vector (768 for CLIP ViT-L/14; 0 = none).
    pub vector_dim: usize,
    /// Epsilon of the transformer's own LayerNorms (before attention, cross-attention and
    /// MLP, and the final one). The LayerNorms of the DiT additions (QK-norm, the
    /// cross-attention's q/k norms, the norm after cross-attention, the final adaLN's
    /// norm) use [`MIXIN_LAYERNORM_EPS`] whatever this says, as the official code does.
    pub layernorm_eps: f64,
    /// Side of the RoPE table (8·image_size/patch in the official code).
    pub rope_table_size: usize,
    /// Token positions wrap modulo this value.
    pub rope_position_modulus: usize,
    /// HR:LR ratio the model was trained at (4).
    pub sr_scale: usize,
    /// LR pixels per cross-attention token side (2).
    pub lr_patch_size: usize,
    pub time_embed_channels: usize,
    pub sigma_data: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(
        default = "default_time_max_period",
        alias = "time_embed_max_positions"
    )]
    pub time_embed_max_period: f64,
    /// The diffusion runs on the residual HR − bicubic(LR) instead of the HR image: sampling
    /// starts from pure noise and the bicubic upsample is added to the result. infdit's small
    /// built-in model uses it (it then only has to learn the detail bicubic misses); the
    /// released model diffuses the image itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual: bool,
}

impl ModelConfig {
    /// The released Inf-DiT (NOTES §1).
    pub fn released() -> Self {
        Self {
            num_layers: 28,
            hidden_size: 1280,
            num_attention_heads: 16,
            mlp_inner_size: 5120,
            patch_size: 4,
            in_channels: 6,
            out_channels: 3,
            image_block_size_px: 128,
            vector_dim: 768,
            layernorm_eps: 1e-6,
            rope_table_size: 1024,
            rope_position_modulus: 1024,
            sr_scale: 4,
            lr_patch_size: 2,
            time_embed_channels: 192,
            sigma_data: 0.5,
            rope_theta: 10000.0,
            time_embed_max_period: 10000.0,
            residual: false,
        }
    }

    /// The smallest config that still runs every code path (one layer, 8×8-token blocks,
    /// no image-condition vector): for tests of everything around the network.
    pub fn minimal() -> Self {
        Self {
            num_layers: 1,
            hidden_size: 16,
            num_attention_heads: 2,
            mlp_inner_size: 32,
            image_block_size_px: 32,
            vector_dim: 0,
            ..Self::released()
        }
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parses and checks a config (infdit's own or the reference layout), wherever its
    /// text was kept: a `config.json` or a weights file's metadata get the same checks.
    pub fn from_json(text: &str) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(text)?;
        let cfg = Self::deserialize(&json)?;
        cfg.validate()?;
        check_variant(&json, &cfg)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("num_layers", self.num_layers),
            ("hidden_size", self.hidden_size),
            ("mlp_inner_size", self.mlp_inner_size),
            ("image_block_size_px", self.image_block_size_px),
            ("patch_size", self.patch_size),
            ("lr_patch_size", self.lr_patch_size),
            ("sr_scale", self.sr_scale),
            ("time_embed_channels", self.time_embed_channels),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{name} must be positive, not 0");
        }
        // Far beyond any trained model (the released one has 28 layers of 1280), and
        // small enough that the tables and lists sized by them fit in memory.
        let limits = [
            ("num_layers", self.num_layers, 1024),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("mlp_inner_size", self.mlp_inner_size, 1 << 18),
            ("vector_dim", self.vector_dim, 1 << 16),
            ("time_embed_channels", self.time_embed_channels, 1 << 16),
            ("image_block_size_px", self.image_block_size_px, 4096),
            ("rope_table_size", self.rope_table_size, 1 << 20),
            ("rope_position_modulus", self.rope_position_modulus, 1 << 20),
        ];
        if let Some((name, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            bail!("{name} = {v} is beyond any Inf-DiT model (at most {max})");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        ensure!(
            positive(self.sigma_data),
            "sigma_data must be positive, not {}",
            self.sigma_data
        );
        ensure!(
            self.layernorm_eps.is_finite() && self.layernorm_eps >= 0.0,
            "layernorm_eps must not be negative, not {}",
            self.layernorm_eps
        );
        ensure!(
            positive(self.rope_theta) && positive(self.time_embed_max_period),
            "rope_theta and time_embed_max_period must be positive"
        );
        ensure!(
            self.sr_scale >= 2,
            "sr_scale must be at least 2, not {}: infdit upscales",
            self.sr_scale
        );
        ensure!(
            self.out_channels == 3,
            "out_channels must be 3: infdit upscales RGB images"
        );
        ensure!(
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not divisible by num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.head_dim().is_multiple_of(4),
            "head dim {} must be a multiple of 4 for 2D RoPE",
            self.head_dim()
        );
        ensure!(
            self.in_channels == 2 * self.out_channels,
            "in_channels must be noisy image + LR image channels (6)"
        );
        ensure!(
            self.image_block_size_px.is_multiple_of(self.patch_size),
            "image_block_size_px must be a multiple of patch_size"
        );
        ensure!(
            self.image_block_size_px
                .is_multiple_of(self.sr_scale * self.lr_patch_size),
            "image_block_size_px must be a multiple of sr_scale·lr_patch_size"
        );
        ensure!(
            self.rope_position_modulus > 0 && self.rope_table_size > 0,
            "rope_position_modulus and rope_table_size must be positive"
        );
        ensure!(
            self.time_embed_channels.is_multiple_of(2),
            "time_embed_channels must be even"
        );
        if let Some(max) = self.max_image_side() {
            ensure!(
                max >= self.image_block_size_px,
                "rope_table_size {} has positions for {max} px, less than one {} px block \
                 (the rope_position_modulus {} needs a table at least as large)",
                self.rope_table_size,
                self.image_block_size_px,
                self.rope_position_modulus
            );
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Tokens per block side (32).
    pub fn block_tokens(&self) -> usize {
        self.image_block_size_px / self.patch_size
    }

    /// Pixels of the LR image under one block side (32 at 4×).
    pub fn lr_block_px(&self) -> usize {
        self.image_block_size_px / self.sr_scale
    }

    /// LR tokens per block side (16).
    pub fn lr_block_tokens(&self) -> usize {
        self.lr_block_px() / self.lr_patch_size
    }

    /// Distinct RoPE positions a token can take: positions wrap at the modulus, and each
    /// needs an entry in the table.
    pub fn rope_positions(&self) -> usize {
        self.rope_position_modulus.min(self.rope_table_size)
    }

    /// The largest image side in pixels whose token positions all have a RoPE entry, where
    /// that is a limit: only when the modulus exceeds the table. (The official code rounds
    /// the two differently, `8·image_size // patch` against `(image_size // patch)·8`, so
    /// an `--image-size` that is no multiple of the patch gives such a model.)
    pub fn max_image_side(&self) -> Option<usize> {
        (self.rope_position_modulus > self.rope_table_size)
            .then_some(self.rope_table_size * self.patch_size)
    }

    /// Refuses an HR image larger than [`Self::max_image_side`].
    pub fn check_image_side(&self, height: usize, width: usize) -> Result<()> {
        if let Some(max) = self.max_image_side() {
            ensure!(
                height.max(width) <= max,
                "a {width}×{height} image is larger than this model's position table allows ({max} px per side)"
            );
        }
        Ok(())
    }

    /// Number of weights (parameters the forward pass uses).
    pub fn parameter_count(&self) -> usize {
        crate::checkpoint::expected_shapes(self)
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }
}

/// Whether a switch's recorded value is the released model's.
type IsReleased = fn(&serde_json::Value) -> bool;

/// Switches of the official model that change what it computes, as the reference
/// `config.json` records them, with the values of the released model. infdit implements
/// that model; a config with another value is refused rather than computed differently.
const RELEASED_SWITCHES: [(&str, &str, IsReleased); 8] = [
    ("nogate", "adaLN without gates", |v| v == true),
    (
        "cross_adaln",
        "no adaLN from a cross-attention context",
        |v| v == false,
    ),
    ("qk_ln", "QK-norm", |v| v == true),
    ("re_position", "the per-layer slot embeddings", |v| {
        v == true
    }),
    (
        "cross_lr",
        "the layer-0 cross-attention to the LR image",
        |v| v == true,
    ),
    (
        "use_final_layernorm",
        "the transformer's final LayerNorm",
        |v| v == true,
    ),
    // The official layers compute "post" as "pre"; only "sandwich" adds LayerNorms.
    ("layernorm_order", "pre-LayerNorm", |v| {
        v == "pre" || v == "post"
    }),
    ("mlp_activation", "tanh-approximated GELU", |v| {
        v.as_str().is_some_and(|s| s.starts_with("gelu_tanh"))
    }),
];

/// Refuses a config whose recorded switches ask for a model variant infdit does not
/// implement (fields that are absent are taken as the released model's), or whose
/// recorded derived sizes contradict the sizes they derive from.
fn check_variant(json: &serde_json::Value, cfg: &ModelConfig) -> Result<()> {
    for (key, meaning, released) in RELEASED_SWITCHES {
        if let Some(v) = json.get(key) {
            ensure!(
                released(v),
                "{key} = {v} is not supported: infdit implements the released Inf-DiT ({meaning})"
            );
        }
    }
    if let Some(v) = json.get("scale_factor") {
        ensure!(
            v.as_f64() == Some(1.0),
            "scale_factor = {v} is not supported: infdit diffuses pixels as they are (scale_factor 1)"
        );
    }
    for (key, derived) in [
        ("head_dim", cfg.head_dim()),
        ("block_size_tokens", cfg.block_tokens()),
        ("lr_block_size_tokens", cfg.lr_block_tokens()),
    ] {
        if let Some(v) = json.get(key) {
            ensure!(
                v.as_u64() == Some(derived as u64),
                "{key} = {v} contradicts the other sizes, which give {derived}"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reference_tiny_config() {
        let cfg =
            ModelConfig::from_json_file(Path::new("tests/fixtures/tiny/config.json")).unwrap();
        assert_eq!(cfg.num_layers, 2);
        assert_eq!(cfg.hidden_size, 64);
        assert_eq!(cfg.head_dim(), 16);
        assert_eq!(cfg.block_tokens(), 32);
        assert_eq!(cfg.lr_block_tokens(), 16);
        assert_eq!(cfg.vector_dim, 768);
    }

    #[test]
    fn a_modulus_past_the_table_limits_the_image_side() {
        // The official code with `--image-size 34` and patch 4: table 64, modulus 68.
        let cfg = ModelConfig {
            rope_table_size: 64,
            rope_position_modulus: 68,
            ..ModelConfig::minimal()
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.max_image_side(), Some(256));
        assert_eq!(cfg.rope_positions(), 64);
        cfg.check_image_side(256, 96).unwrap();
        let e = cfg.check_image_side(96, 288).unwrap_err().to_string();
        assert!(e.contains("288×96") && e.contains("256 px"), "{e}");
        assert_eq!(ModelConfig::released().max_image_side(), None);
    }

    #[test]
    fn other_model_variants_are_refused() {
        let text = std::fs::read_to_string("tests/fixtures/tiny/config.json").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for (from, to, needle) in [
            ("\"nogate\": true", "\"nogate\": false", "nogate = false"),
            ("\"qk_ln\": true", "\"qk_ln\": false", "QK-norm"),
            (
                "\"layernorm_order\": \"pre\"",
                "\"layernorm_order\": \"sandwich\"",
                "sandwich",
            ),
            (
                "\"scale_factor\": 1",
                "\"scale_factor\": 0.18215",
                "scale_factor",
            ),
            (
                "\"layernorm_order\": \"pre\"",
                "\"layernorm_order\": \"foo\"",
                "pre-LayerNorm",
            ),
            ("\"gelu_tanh (", "\"gelu (", "tanh-approximated GELU"),
            (
                "\"head_dim\": 16",
                "\"head_dim\": 32",
                "head_dim = 32 contradicts",
            ),
            (
                "\"sigma_data\": 0.5",
                "\"sigma_data\": 0",
                "sigma_data must be positive",
            ),
            (
                "\"layernorm_eps\": 1e-06",
                "\"layernorm_eps\": -1",
                "must not be negative",
            ),
            ("\"out_channels\": 3", "\"out_channels\": 1", "RGB"),
            (
                "\"sr_scale\": 4",
                "\"sr_scale\": 1",
                "sr_scale must be at least 2",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(&path, text.replace(from, to)).unwrap();
            let e = format!("{:#}", ModelConfig::from_json_file(&path).unwrap_err());
            assert!(e.contains(needle), "{e}");
        }
        // "post" is what the official layers compute as "pre": only sandwich differs.
        let post = text.replace(
            "\"layernorm_order\": \"pre\"",
            "\"layernorm_order\": \"post\"",
        );
        std::fs::write(&path, post).unwrap();
        ModelConfig::from_json_file(&path).unwrap();
    }

    /// Zero sizes are refused before anything divides by them.
    #[test]
    fn zero_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let base = serde_json::to_value(ModelConfig::minimal()).unwrap();
        for key in [
            "image_block_size_px",
            "lr_patch_size",
            "num_layers",
            "patch_size",
        ] {
            let mut json = base.clone();
            json[key] = 0.into();
            if key == "image_block_size_px" {
                json["lr_patch_size"] = 0.into();
            }
            std::fs::write(&path, json.to_string()).unwrap();
            let e = format!("{:#}", ModelConfig::from_json_file(&path).unwrap_err());
            assert!(e.contains("must be positive"), "{key}: {e}");
        }
    }

    /// Sizes far past any model are refused before tables or key lists are built for them.
    #[test]
    fn absurd_sizes_are_refused() {
        for (cfg, needle) in [
            (
                ModelConfig {
                    num_layers: 100_000,
                    ..ModelConfig::minimal()
                },
                "num_layers = 100000 is beyond",
            ),
            (
                ModelConfig {
                    rope_table_size: 1_000_000_000,
                    rope_position_modulus: 1_000_000_000,
                    ..ModelConfig::minimal()
                },
                "rope_table_size = 1000000000 is beyond",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    /// A position table smaller than one block could run no image at all.
    #[test]
    fn a_table_smaller_than_a_block_is_refused() {
        let cfg = ModelConfig {
            rope_table_size: 4,
            rope_position_modulus: 64,
            ..ModelConfig::minimal()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("less than one 32 px block"), "{e}");
    }

    #[test]
    fn released_preset_is_valid() {
        let cfg = ModelConfig::released();
        cfg.validate().unwrap();
        assert_eq!(cfg.head_dim(), 80);
        // NOTES §2: DiT proper minus unused position_embeddings and k_layer_norm.
        assert_eq!(cfg.parameter_count(), 753_762_928 - 332_160);
    }
}
