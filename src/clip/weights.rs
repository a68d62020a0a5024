//! Finding the vision tower in a checkpoint and bringing it to open_clip's layout.
//!
//! Three naming schemes are recognised from the key names alone:
//! - an Inf-DiT checkpoint, where the tower lives under `image_encoder.model.visual.`;
//! - an open_clip checkpoint (`visual.`), or a bare tower state dict (`conv1.weight`, …);
//! - a Hugging Face `transformers` CLIP (`vision_model.…` plus `visual_projection.weight`),
//!   whose separate q/k/v projections are fused and whose projection is transposed.
//!
//! Everything else in the file (text tower, denoiser) is ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::ClipVisionConfig;
use super::ClipEncoder;

/// Where the vision tower came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipWeightFormat {
    /// `image_encoder.model.visual.*` (Inf-DiT / SwissArmyTransformer state dict).
    InfDit,
    /// `visual.*` (open_clip `CLIP` state dict).
    OpenClip,
    /// The tower's own state dict, without prefix.
    OpenClipVisual,
    /// `vision_model.*` + `visual_projection.weight` (Hugging Face transformers).
    HuggingFace,
}

const INFDIT_PREFIX: &str = "image_encoder.model.visual.";
const OPENCLIP_PREFIX: &str = "visual.";
const HF_PREFIX: &str = "vision_model.";
const HF_PROJ: &str = "visual_projection.weight";

impl ClipWeightFormat {
    /// Recognises the scheme from the key names; `None` when there is no vision tower.
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let (mut infdit, mut open_clip, mut hf, mut bare) = (false, false, false, false);
        for name in names {
            infdit |= name.starts_with(INFDIT_PREFIX);
            open_clip |= name.starts_with(OPENCLIP_PREFIX);
            hf |= name.starts_with("vision_model.embeddings.");
            bare |= name == "class_embedding" || name == "conv1.weight";
        }
        if infdit {
            Some(Self::InfDit)
        } else if hf {
            Some(Self::HuggingFace)
        } else if open_clip {
            Some(Self::OpenClip)
        } else if bare {
            Some(Self::OpenClipVisual)
        } else {
            None
        }
    }

    /// Whether `name` (a key of the source file) belongs to the vision tower.
    pub fn is_tower_key(self, name: &str) -> bool {
        match self {
            Self::InfDit => name.starts_with(INFDIT_PREFIX),
            Self::OpenClip => name.starts_with(OPENCLIP_PREFIX),
            Self::OpenClipVisual => true,
            Self::HuggingFace => name.starts_with(HF_PREFIX) || name == HF_PROJ,
        }
    }

    /// The name(s) in the source file that hold the canonical tensor `canonical`.
    pub fn source_name(self, canonical: &str) -> String {
        match self {
            Self::InfDit => format!("{INFDIT_PREFIX}{canonical}"),
            Self::OpenClip => format!("{OPENCLIP_PREFIX}{canonical}"),
            Self::OpenClipVisual => canonical.to_string(),
            Self::HuggingFace => hf_name(canonical),
        }
    }
}

/// Tower-level tensors: open_clip name, Hugging Face name under `vision_model.`.
const HF_TOWER: [(&str, &str); 7] = [
    ("conv1.weight", "embeddings.patch_embedding.weight"),
    ("class_embedding", "embeddings.class_embedding"),
    (
        "positional_embedding",
        "embeddings.position_embedding.weight",
    ),
    ("ln_pre.weight", "pre_layrnorm.weight"),
    ("ln_pre.bias", "pre_layrnorm.bias"),
    ("ln_post.weight", "post_layernorm.weight"),
    ("ln_post.bias", "post_layernorm.bias"),
];

/// Modules of each residual block: open_clip name, Hugging Face name. The attention's
/// input projection is apart: open_clip fuses what Hugging Face keeps as q, k and v.
const HF_BLOCK: [(&str, &str); 5] = [
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
];

const OPENCLIP_BLOCK: &str = "transformer.resblocks.";
const HF_BLOCK_PREFIX: &str = "encoder.layers.";
const QKV: [&str; 3] = ["q", "k", "v"];
const PARAMS: [&str; 2] = ["weight", "bias"];

/// Canonical (open_clip, tower-rooted) name → Hugging Face name, for error messages.
fn hf_name(canonical: &str) -> String {
    if canonical == "proj" {
        return HF_PROJ.to_string();
    }
    if let Some((_, hf)) = HF_TOWER.iter().find(|(oc, _)| *oc == canonical) {
        return format!("{HF_PREFIX}{hf}");
    }
    let block = canonical
        .strip_prefix(OPENCLIP_BLOCK)
        .and_then(|rest| rest.split_once('.'));
    if let Some((idx, sub)) = block {
        let sub = match sub.strip_prefix("attn.in_proj_") {
            Some(param) => format!("self_attn.{{q,k,v}}_proj.{param}"),
            None => {
                let (module, param) = sub.rsplit_once('.').unwrap_or((sub, ""));
                let module = HF_BLOCK
                    .iter()
                    .find(|(oc, _)| *oc == module)
                    .map_or(module, |(_, hf)| hf);
                format!("{module}.{param}")
            }
        };
        return format!("{HF_PREFIX}{HF_BLOCK_PREFIX}{idx}.{sub}");
    }
    canonical.to_string()
}

/// Names of every tensor the tower reads, open_clip layout, rooted at the tower.
pub fn canonical_keys(layers: usize) -> Vec<String> {
    let mut keys: Vec<String> = [
        "conv1.weight",
        "class_embedding",
        "positional_embedding",
        "ln_pre.weight",
        "ln_pre.bias",
        "ln_post.weight",
        "ln_post.bias",
        "proj",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..layers {
        for sub in [
            "ln_1.weight",
            "ln_1.bias",
            "attn.in_proj_weight",
            "attn.in_proj_bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        ] {
            keys.push(format!("{OPENCLIP_BLOCK}{i}.{sub}"));
        }
    }
    keys
}

/// A vision tower in canonical open_clip layout (names rooted at the tower, e.g.
/// `transformer.resblocks.0.attn.in_proj_weight`), remembering its source scheme.
#[derive(Debug, Clone)]
pub struct ClipWeights {
    pub format: ClipWeightFormat,
    pub tensors: HashMap<String, Tensor>,
}

impl ClipWeights {
    /// Detects the naming scheme and converts. Keys outside the vision tower are dropped.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self> {
        let format = ClipWeightFormat::detect(tensors.keys().map(String::as_str)).context(
            "no CLIP vision tower found: expected keys under `image_encoder.model.visual.`, \
             `visual.`, `vision_model.` or a bare open_clip tower (`conv1.weight`, `class_embedding`)",
        )?;
        let tensors = match format {
            ClipWeightFormat::InfDit => strip_prefix(tensors, INFDIT_PREFIX),
            ClipWeightFormat::OpenClip => strip_prefix(tensors, OPENCLIP_PREFIX),
            ClipWeightFormat::OpenClipVisual => tensors,
            ClipWeightFormat::HuggingFace => from_hf(tensors)?,
        };
        Ok(Self { format, tensors })
    }

    fn missing(&self, keys: impl IntoIterator<Item = String>) -> Vec<String> {
        keys.into_iter()
            .filter(|k| !self.tensors.contains_key(k))
            .map(|k| self.format.source_name(&k))
            .collect()
    }

    /// Reads the configuration off the tensor shapes. Heads cannot be seen in the weights:
    /// this assumes open_clip's head width of 64, true for all its standard ViTs. LayerNorm
    /// eps is 1e-5 and the activation exact GELU; give a config for anything else.
    pub fn infer_config(&self) -> Result<ClipVisionConfig> {
        let needed = [
            "class_embedding",
            "conv1.weight",
            "positional_embedding",
            "proj",
            "transformer.resblocks.0.mlp.c_fc.weight",
        ];
        let missing = self.missing(needed.iter().map(|s| s.to_string()));
        ensure!(
            missing.is_empty(),
            "CLIP weights are missing {}",
            missing.join(", ")
        );
        let dims = |k: &str| self.tensors[k].dims().to_vec();
        let ce = dims("class_embedding");
        ensure!(
            ce.len() == 1,
            "class_embedding has shape {ce:?}, expected [width]"
        );
        let width = ce[0];
        let layers = self
            .tensors
            .keys()
            .filter_map(|k| {
                k.strip_prefix("transformer.resblocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        let conv = dims("conv1.weight");
        ensure!(
            conv.len() == 4 && conv[0] == width && conv[1] == 3 && conv[2] == conv[3],
            "conv1.weight has shape {conv:?}, expected [{width}, 3, p, p]"
        );
        let patch_size = conv[2];
        let pos = dims("positional_embedding");
        ensure!(
            pos.len() == 2 && pos[1] == width,
            "positional_embedding has shape {pos:?}, expected [T, {width}]"
        );
        let grid = (pos[0].saturating_sub(1) as f64).sqrt().round() as usize;
        ensure!(
            grid * grid + 1 == pos[0],
            "positional_embedding has {} rows, not a square grid plus a class token",
            pos[0]
        );
        let proj = dims("proj");
        ensure!(
            proj.len() == 2 && proj[0] == width,
            "proj has shape {proj:?}, expected [{width}, embed_dim]"
        );
        let fc = dims("transformer.resblocks.0.mlp.c_fc.weight");
        ensure!(fc.len() == 2, "mlp.c_fc.weight has shape {fc:?}");
        ensure!(
            width % 64 == 0,
            "cannot infer the number of heads for width {width} (not a multiple of 64); give a config"
        );
        let cfg = ClipVisionConfig {
            width,
            layers,
            heads: width / 64,
            patch_size,
            image_size: grid * patch_size,
            mlp_dim: fc[0],
            embed_dim: proj[1],
            ln_eps: 1e-5,
            quick_gelu: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fails, naming every offender, when a tensor of `cfg`'s tower is absent or a tower
    /// tensor is not used by it (such as layer scale or extra blocks). Shapes are checked
    /// when the tower is built.
    pub fn check(&self, cfg: &ClipVisionConfig) -> Result<()> {
        let expected = canonical_keys(cfg.layers);
        let missing = self.missing(expected.iter().cloned());
        ensure!(
            missing.is_empty(),
            "CLIP weights ({:?}) are missing {} tensor(s): {}",
            self.format,
            missing.len(),
            missing.join(", ")
        );
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let mut unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !expected.contains(k.as_str()))
            .map(|k| self.format.source_name(k))
            .collect();
        unused.sort();
        ensure!(
            unused.is_empty(),
            "CLIP weights ({:?}) hold tensors this tower does not use: {}",
            self.format,
            unused.join(", ")
        );
        Ok(())
    }

    /// A `VarBuilder` rooted at the tower, converting to `dtype` on `device`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors, dtype, device)
    }
}

fn strip_prefix(tensors: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v)))
        .collect()
}

/// Hugging Face CLIP → open_clip names: q/k/v fused into `in_proj_*`, projection transposed.
fn from_hf(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    // layer → [q, k, v] for each of PARAMS
    let mut qkv: BTreeMap<usize, [[Option<Tensor>; 3]; 2]> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, t) in tensors {
        if name == HF_PROJ {
            out.insert("proj".to_string(), t.t()?.contiguous()?);
            continue;
        }
        let Some(rest) = name.strip_prefix(HF_PREFIX) else {
            continue;
        };
        // A persistent buffer holding 0..T, not a parameter.
        if rest == "embeddings.position_ids" {
            continue;
        }
        if let Some((canonical, _)) = HF_TOWER.iter().find(|(_, hf)| *hf == rest) {
            out.insert(canonical.to_string(), t);
            continue;
        }
        let layer = rest.strip_prefix(HF_BLOCK_PREFIX).and_then(|r| {
            let (idx, sub) = r.split_once('.')?;
            Some((idx.parse::<usize>().ok()?, sub.rsplit_once('.')?))
        });
        let Some((idx, (module, param))) = layer else {
            unknown.push(name);
            continue;
        };
        let projection = module
            .strip_prefix("self_attn.")
            .and_then(|m| m.strip_suffix("_proj"))
            .and_then(|m| QKV.iter().position(|&x| x == m));
        let param_slot = PARAMS.iter().position(|&p| p == param);
        if let (Some(which), Some(p)) = (projection, param_slot) {
            qkv.entry(idx).or_default()[p][which] = Some(t);
            continue;
        }
        match HF_BLOCK.iter().find(|(_, hf)| *hf == module) {
            Some((canonical, _)) => {
                out.insert(format!("{OPENCLIP_BLOCK}{idx}.{canonical}.{param}"), t);
            }
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        bail!(
            "unrecognised Hugging Face CLIP vision tensors: {}",
            unknown.join(", ")
        );
    }
    let mut missing = Vec::new();
    for (idx, by_param) in qkv {
        for (param, parts) in PARAMS.iter().zip(by_param) {
            if let [Some(q), Some(k), Some(v)] = parts {
                out.insert(
                    format!("{OPENCLIP_BLOCK}{idx}.attn.in_proj_{param}"),
                    Tensor::cat(&[q, k, v], 0)?,
                );
                continue;
            }
            for (which, part) in QKV.iter().zip(&parts) {
                if part.is_none() {
                    missing.push(format!(
                        "{HF_PREFIX}{HF_BLOCK_PREFIX}{idx}.self_attn.{which}_proj.{param}"
                    ));
                }
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "Hugging Face CLIP weights are missing {}",
        missing.join(", ")
    );
    Ok(out)
}

/// Reads the vision-tower tensors of a `.safetensors` file or a PyTorch zip checkpoint
/// (`.bin`, `.pt`, `.pth`, `.ckpt`; format told by content, not by extension). Only the
/// tower's tensors are loaded, so a full Inf-DiT checkpoint is fine. PyTorch files are read
/// by candle's pickle reader, which only interprets the data and runs no code; a state dict
/// nested under `module`, `state_dict` or `model` is found too.
pub fn read_clip_tensors(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    if crate::checkpoint::is_zip_file(path)? {
        read_pth(path, device)
    } else {
        read_safetensors(path, device)
    }
    .with_context(|| format!("loading CLIP weights from {}", path.display()))
}

fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    // SAFETY: the file is mapped read-only and must not be modified while it is read; the
    // tensors are copied out before the mapping is dropped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
    let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let format = ClipWeightFormat::detect(names.iter().map(String::as_str));
    let mut out = HashMap::new();
    for name in names {
        if format.is_none_or(|f| f.is_tower_key(&name)) {
            let t = st.load(&name, device)?;
            out.insert(name, t);
        }
    }
    Ok(out)
}

fn read_pth(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut pth = crate::checkpoint::open_pth(path)?;
    let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
    let Some(format) = ClipWeightFormat::detect(names.iter().map(String::as_str)) else {
        names.sort();
        names.truncate(10);
        bail!(
            "no CLIP vision tower in this PyTorch file (first keys: {})",
            names.join(", ")
        );
    };
    let mut out = HashMap::new();
    for name in names.into_iter().filter(|n| format.is_tower_key(n)) {
        let t = pth
            .get(&name)?
            .with_context(|| format!("reading tensor {name}"))?;
        out.insert(name, t.to_device(device)?);
    }
    Ok(out)
}

/// Loads a CLIP image encoder from a weight file in any recognised scheme. Without
/// `config`, the configuration is inferred from the tensor shapes
/// ([`ClipWeights::infer_config`]).
pub fn load_clip_file(
    path: impl AsRef<Path>,
    config: Option<&ClipVisionConfig>,
    device: &Device,
    dtype: DType,
) -> Result<ClipEncoder> {
    let path = path.as_ref();
    let tensors = read_clip_tensors(path, device)?;
    let weights =
        ClipWeights::from_tensors(tensors).with_context(|| format!("in {}", path.display()))?;
    ClipEncoder::from_weights(config.cloned(), weights, device, dtype)
        .with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names shown in messages are the names read: every canonical tensor, spelt the
    /// Hugging Face way, comes back under its own name (the fused q/k/v from three parts).
    #[test]
    fn hugging_face_names_round_trip() {
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let mut hf = HashMap::new();
        for key in canonical_keys(2) {
            let name = hf_name(&key);
            match name.split_once("{q,k,v}") {
                Some((head, tail)) => {
                    for x in QKV {
                        hf.insert(format!("{head}{x}{tail}"), t.clone());
                    }
                }
                None => {
                    hf.insert(name, t.clone());
                }
            }
        }
        let mut back: Vec<String> = from_hf(hf).unwrap().into_keys().collect();
        back.sort();
        let mut expected = canonical_keys(2);
        expected.sort();
        assert_eq!(back, expected);
    }
}
