//! Hyperparameters of the open_clip vision tower.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn default_ln_eps() -> f64 {
    1e-5
}

/// Shape and numerics of an open_clip `VisionTransformer` (class-token pooling, `ln_pre`,
/// `ln_post` and a bias-free output projection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Token width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Side of the square patches cut by `conv1` (also its stride).
    pub patch_size: usize,
    /// Side of the square input image.
    pub image_size: usize,
    /// Hidden width of the MLP (`int(width · mlp_ratio)` in open_clip).
    pub mlp_dim: usize,
    /// Output width of `proj`.
    pub embed_dim: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps")]
    pub ln_eps: f64,
    /// `x·sigmoid(1.702x)` instead of the exact erf GELU (OpenAI-trained towers).
    #[serde(default)]
    pub quick_gelu: bool,
}

impl ClipVisionConfig {
    /// open_clip `ViT-L-14`, the tower used by the released Inf-DiT model.
    pub fn vit_l_14() -> Self {
        Self {
            width: 1024,
            layers: 24,
            heads: 16,
            patch_size: 14,
            image_size: 224,
            mlp_dim: 4096,
            embed_dim: 768,
            ln_eps: 1e-5,
            quick_gelu: false,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Sequence length: the patches plus the class token.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Rejects configurations the tower cannot be built with.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.width > 0 && self.layers > 0 && self.heads > 0,
            "CLIP config: width, layers and heads must be positive ({self:?})"
        );
        ensure!(
            self.width.is_multiple_of(self.heads),
            "CLIP config: width {} is not divisible by heads {}",
            self.width,
            self.heads
        );
        ensure!(
            self.patch_size > 0 && self.image_size >= self.patch_size,
            "CLIP config: bad patch_size {} / image_size {}",
            self.patch_size,
            self.image_size
        );
        ensure!(
            self.image_size.is_multiple_of(self.patch_size),
            "CLIP config: image_size {} is not a multiple of patch_size {}",
            self.image_size,
            self.patch_size
        );
        ensure!(
            self.mlp_dim > 0 && self.embed_dim > 0,
            "CLIP config: mlp_dim and embed_dim must be positive"
        );
        Ok(())
    }

    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text)
            .with_context(|| format!("parsing CLIP config {}", path.display()))
    }

    /// Parses any of these layouts:
    /// - this struct's own fields (`width`, `layers`, `heads`, `patch_size`, `image_size`,
    ///   `mlp_dim`, `embed_dim`, optional `ln_eps`, `quick_gelu`);
    /// - an open_clip model config (`embed_dim` + `vision_cfg` with `width`, `layers`,
    ///   `head_width`, `patch_size`, `image_size`, `mlp_ratio`; `quick_gelu` beside them),
    ///   either at the top level or under `open_clip_CLIP_kwargs` / `open_clip_model_config`.
    ///   Top-level `heads` and `ln_eps` are honoured when present;
    /// - a Hugging Face `CLIPConfig` (`vision_config` + `projection_dim`) or
    ///   `CLIPVisionConfig`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)?;
        let cfg = Self::from_json_value(&root)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_json_value(root: &Value) -> Result<Self> {
        ensure!(root.is_object(), "CLIP config must be a JSON object");
        for key in ["open_clip_CLIP_kwargs", "open_clip_model_config"] {
            if let Some(inner) = root.get(key) {
                return parse_open_clip(inner, root);
            }
        }
        if root.get("vision_cfg").is_some() {
            return parse_open_clip(root, root);
        }
        if let Some(vision) = root.get("vision_config") {
            return parse_hf(vision, root);
        }
        if root.get("hidden_size").is_some() && root.get("num_hidden_layers").is_some() {
            return parse_hf(root, root);
        }
        Ok(serde_json::from_value(root.clone())?)
    }
}

fn get_usize(obj: &Value, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n as usize)),
            None => bail!("`{key}` must be a non-negative integer, got {v}"),
        },
    }
}

fn get_f64(obj: &Value, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .with_context(|| format!("`{key}` must be a number, got {v}")),
    }
}

fn get_bool(obj: &Value, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .with_context(|| format!("`{key}` must be a boolean, got {v}")),
    }
}

fn required(obj: &Value, key: &str, section: &str) -> Result<usize> {
    get_usize(obj, key)?.with_context(|| format!("missing `{key}` in {section}"))
}

/// open_clip allows `image_size` / `patch_size` to be `[h, w]`; only square ones are supported.
fn square_size(obj: &Value, key: &str, section: &str) -> Result<usize> {
    match obj.get(key) {
        Some(Value::Array(items)) => {
            let sides: Vec<_> = items.iter().filter_map(Value::as_u64).collect();
            ensure!(
                sides.len() == 2 && sides[0] == sides[1] && items.len() == 2,
                "`{key}` {items:?} in {section}: only square sizes are supported"
            );
            Ok(sides[0] as usize)
        }
        _ => required(obj, key, section),
    }
}

fn parse_open_clip(model: &Value, outer: &Value) -> Result<ClipVisionConfig> {
    let vision = model.get("vision_cfg").context("missing `vision_cfg`")?;
    let section = "vision_cfg";
    // Options that change the architecture away from the tower implemented here.
    if vision.get("timm_model_name").is_some_and(|v| !v.is_null()) {
        bail!("timm-based open_clip vision towers are not supported");
    }
    if vision.get("ls_init_value").is_some_and(|v| !v.is_null()) {
        bail!("open_clip towers with layer scale (`ls_init_value`) are not supported");
    }
    for flag in ["attentional_pool", "no_ln_pre", "final_ln_after_pool"] {
        if get_bool(vision, flag)? == Some(true) {
            bail!("open_clip vision option `{flag}` is not supported");
        }
    }
    if let Some(pool) = vision.get("pool_type").and_then(Value::as_str) {
        ensure!(
            pool == "tok",
            "open_clip pool_type `{pool}` is not supported (only `tok`)"
        );
    }

    let width = required(vision, "width", section)?;
    let layers = required(vision, "layers", section)?;
    let patch_size = square_size(vision, "patch_size", section)?;
    let image_size = square_size(vision, "image_size", section)?;
    let head_width = get_usize(vision, "head_width")?.unwrap_or(64);
    ensure!(
        head_width > 0 && width % head_width == 0,
        "width {width} is not a multiple of head_width {head_width}"
    );
    let mut heads = width / head_width;
    for obj in [vision, model, outer] {
        if let Some(h) = get_usize(obj, "heads")? {
            ensure!(
                h == heads,
                "`heads` {h} disagrees with width / head_width = {heads}"
            );
            heads = h;
        }
    }
    let mlp_ratio = get_f64(vision, "mlp_ratio")?.unwrap_or(4.0);
    let mlp_dim = (width as f64 * mlp_ratio) as usize;
    let embed_dim = get_usize(model, "embed_dim")?
        .or(get_usize(outer, "embed_dim")?)
        .context("missing `embed_dim`")?;
    let quick_gelu = get_bool(model, "quick_gelu")?
        .or(get_bool(outer, "quick_gelu")?)
        .unwrap_or(false);
    let ln_eps = get_f64(model, "ln_eps")?
        .or(get_f64(outer, "ln_eps")?)
        .unwrap_or(default_ln_eps());
    Ok(ClipVisionConfig {
        width,
        layers,
        heads,
        patch_size,
        image_size,
        mlp_dim,
        embed_dim,
        ln_eps,
        quick_gelu,
    })
}

/// Hugging Face `CLIPVisionConfig`. Its JSON may leave out fields equal to the library's
/// defaults, so those defaults apply here too.
fn parse_hf(vision: &Value, outer: &Value) -> Result<ClipVisionConfig> {
    let width = get_usize(vision, "hidden_size")?.unwrap_or(768);
    let act = vision
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("quick_gelu");
    let quick_gelu = match act {
        "quick_gelu" => true,
        "gelu" => false,
        other => bail!("unsupported CLIP activation `{other}`"),
    };
    let embed_dim = get_usize(outer, "projection_dim")?
        .or(get_usize(vision, "projection_dim")?)
        .unwrap_or(512);
    Ok(ClipVisionConfig {
        width,
        layers: get_usize(vision, "num_hidden_layers")?.unwrap_or(12),
        heads: get_usize(vision, "num_attention_heads")?.unwrap_or(12),
        patch_size: get_usize(vision, "patch_size")?.unwrap_or(32),
        image_size: get_usize(vision, "image_size")?.unwrap_or(224),
        mlp_dim: get_usize(vision, "intermediate_size")?.unwrap_or(3072),
        embed_dim,
        ln_eps: get_f64(vision, "layer_norm_eps")?.unwrap_or(default_ln_eps()),
        quick_gelu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_vit_l_14_json_matches_preset() {
        let json = r#"{"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24,
            "width": 1024, "patch_size": 14}, "text_cfg": {"width": 768}}"#;
        assert_eq!(
            ClipVisionConfig::from_json_str(json).unwrap(),
            ClipVisionConfig::vit_l_14()
        );
    }

    #[test]
    fn flat_layout_round_trips() {
        let cfg = ClipVisionConfig {
            quick_gelu: true,
            ..ClipVisionConfig::vit_l_14()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(ClipVisionConfig::from_json_str(&json).unwrap(), cfg);
    }

    #[test]
    fn hf_config_uses_its_defaults() {
        let json = r#"{"projection_dim": 768, "vision_config": {"hidden_size": 1024,
            "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
            "patch_size": 14}}"#;
        let cfg = ClipVisionConfig::from_json_str(json).unwrap();
        assert_eq!(
            cfg,
            ClipVisionConfig {
                quick_gelu: true,
                ..ClipVisionConfig::vit_l_14()
            }
        );
    }

    #[test]
    fn rejects_inconsistent_heads_and_unsupported_options() {
        let json = r#"{"heads": 3, "open_clip_CLIP_kwargs": {"embed_dim": 8,
            "vision_cfg": {"image_size": 28, "layers": 1, "width": 64, "head_width": 16, "patch_size": 14}}}"#;
        assert!(ClipVisionConfig::from_json_str(json).is_err());
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 28, "layers": 1,
            "width": 64, "patch_size": 14, "ls_init_value": 0.1}}"#;
        assert!(ClipVisionConfig::from_json_str(json).is_err());
    }
}
