//! Reading Inf-DiT checkpoints: safetensors with the official key names, and PyTorch
//! zip-pickle files (plain state dicts or DeepSpeed checkpoints under `module`).
//!
//! Pickles are parsed by candle's reader, which interprets the opcode stream as data and
//! never imports or calls anything, so a checkpoint cannot run code.

mod keys;
mod pickle;
mod pth;

pub use keys::{expected_shapes, is_ignored_key};
pub use pth::PthTensors;

use crate::config::ModelConfig;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// All tensors of a checkpoint file, on the CPU in their stored dtype.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    /// Tensors of the file that could not be read (a storage type candle has not got, such
    /// as int32 or bool), by name, with why.
    pub unreadable: BTreeMap<String, String>,
}

/// Where a checkpoint's model config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `config.json` beside the weights.
    File,
    /// The weights file's own metadata.
    Stored,
    /// The tensor shapes, with the released model's values for the rest.
    Inferred,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::File => "from config.json",
            Self::Stored => "stored in the file",
            Self::Inferred => {
                "inferred from the shapes; σ_data, residual, eps and RoPE settings are the released model's"
            }
        })
    }
}

/// Prefixes under which training frameworks nest a state dict, tried in order.
const PICKLE_ROOT_KEYS: [&str; 3] = ["module", "state_dict", "model"];

impl Checkpoint {
    /// Reads a PyTorch zip checkpoint (`.pt`, `.pth`, `.bin`, `.ckpt`; told by content)
    /// or a safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let (mut tensors, unreadable) = if is_zip_file(path)? {
            read_pickle(path)?
        } else if is_legacy_torch_file(path)? {
            bail!(
                "{} is in PyTorch's legacy format (before 1.6), which infdit does not read: save it again with torch.save in a current PyTorch",
                path.display()
            )
        } else if looks_like_pytorch(path) {
            bail!(
                "{} is not a readable PyTorch checkpoint (not a zip archive)",
                path.display()
            )
        } else {
            let tensors = match candle_core::safetensors::load(path, &Device::Cpu) {
                Ok(tensors) => tensors,
                Err(e) => match not_weights(path) {
                    Some(what) => bail!("{} is {what}", path.display()),
                    None => Err(e).with_context(|| {
                        format!("{} is not a readable safetensors file", path.display())
                    })?,
                },
            };
            (tensors, BTreeMap::new())
        };
        if tensors.is_empty() && unreadable.is_empty() {
            bail!("{}: no tensors found", path.display());
        }
        strip_wrapper_prefixes(&mut tensors);
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            unreadable,
        })
    }

    /// The tensors among `names` that hold a NaN or an infinity, sorted: weights a failed
    /// training run can leave, which make every output NaN.
    pub fn non_finite<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>> {
        non_finite(
            names
                .into_iter()
                .filter_map(|n| Some((n, self.tensors.get(n)?))),
        )
    }

    /// Shapes of every tensor, sorted by name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect()
    }

    /// Checks the checkpoint against `cfg`: every missing or mis-shaped key is reported
    /// at once. Keys the forward pass never reads are ignored when on the explicit list;
    /// any other extra key is returned so the caller can warn about it.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<Vec<String>> {
        let expected = expected_shapes(cfg);
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                None => match self.unreadable.get(name) {
                    Some(why) => problems.push(format!("{name} cannot be read: {why}")),
                    None => problems.push(format!("missing {name} (expected shape {shape:?})")),
                },
                Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.dims()
                )),
                // Integer weights would be cast silently into nonsense values.
                Some(t) if !t.dtype().is_float() => problems.push(format!(
                    "{name} is stored as {:?}; model weights must be floating point",
                    t.dtype()
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            // A config far from the weights would list every tensor.
            const SHOWN: usize = 40;
            let total = problems.len();
            if total > SHOWN {
                problems.truncate(SHOWN);
                problems.push(format!("… and {} more", total - SHOWN));
            }
            bail!(
                "{} does not match the model config ({total} problem{}):\n  {}",
                self.path.display(),
                if total == 1 { "" } else { "s" },
                problems.join("\n  ")
            );
        }
        let mut unknown: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !expected.contains_key(*k) && !is_ignored_key(k))
            .cloned()
            .collect();
        unknown.sort();
        Ok(unknown)
    }

    /// Tensors the model reads, converted to `dtype` on `device`.
    pub fn model_tensors(
        &self,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let unknown = self.validate(cfg)?;
        if !unknown.is_empty() {
            tracing::warn!(
                "ignoring {} unexpected tensors, e.g. {}",
                unknown.len(),
                unknown[0]
            );
        }
        expected_shapes(cfg)
            .keys()
            .map(|k| {
                Ok((
                    k.clone(),
                    self.tensors[k].to_dtype(dtype)?.to_device(device)?,
                ))
            })
            .collect()
    }

    /// The model config of these weights: from `config_json` if that file exists, else
    /// the one stored in the checkpoint ([`save_model_weights`]), else inferred from the
    /// tensor shapes, with a warning.
    pub fn config(&self, config_json: &Path) -> Result<ModelConfig> {
        let (cfg, source) = self.config_and_source(config_json)?;
        if source == ConfigSource::Inferred {
            tracing::warn!(
                "{}: no config.json beside it and none stored in the file: the config is \
                 inferred from tensor shapes, with the released model's σ_data, residual \
                 flag, eps and RoPE settings (put the model's config.json beside the weights \
                 if it was trained with others)",
                self.path.display()
            );
        }
        Ok(cfg)
    }

    /// [`Checkpoint::config`], silently, and where the config came from.
    /// A `config.json` beside the file takes precedence, so a stored config that cannot
    /// be used is then only warned about.
    pub fn config_and_source(&self, config_json: &Path) -> Result<(ModelConfig, ConfigSource)> {
        if config_json.is_file() {
            let cfg = ModelConfig::from_json_file(config_json)?;
            match embedded_config(&self.path) {
                Ok(Some(stored)) if stored != cfg => tracing::warn!(
                    "{} differs from the config stored in {}; using {0}",
                    config_json.display(),
                    self.path.display()
                ),
                Err(e) => tracing::warn!("{e:#}; using {}", config_json.display()),
                Ok(_) => {}
            }
            return Ok((cfg, ConfigSource::File));
        }
        if let Some(cfg) = embedded_config(&self.path)? {
            return Ok((cfg, ConfigSource::Stored));
        }
        Ok((self.infer_config()?, ConfigSource::Inferred))
    }

    /// Infers the model config from tensor shapes, so a bare checkpoint file is usable.
    /// Values that leave no trace in the weights (eps, RoPE table, σ_data, sr scale,
    /// residual) take the released model's values; the RoPE table side is read from its
    /// buffer if present.
    pub fn infer_config(&self) -> Result<ModelConfig> {
        // The shape of `name`, which must have `rank` dimensions.
        let dims = |name: &str, rank: usize| -> Result<Vec<usize>> {
            let t = self.tensors.get(name).with_context(|| {
                format!(
                    "{}: missing {name}; not an Inf-DiT checkpoint",
                    self.path.display()
                )
            })?;
            ensure!(
                t.rank() == rank,
                "{}: {name} has shape {:?}; an Inf-DiT checkpoint has {rank} dimensions there",
                self.path.display(),
                t.dims()
            );
            Ok(t.dims().to_vec())
        };
        let [num_layers, _, heads, head_dim] = dims(ANCHOR_KEY, 4)?[..] else {
            unreachable!("rank checked")
        };
        let patch = dims("mixins.patch_embed.proj.weight", 4)?;
        let mlp = dims("transformer.layers.0.mlp.dense_h_to_4h.weight", 2)?;
        let time = dims("time_embed.mlp.0.weight", 2)?;
        let lr_q = dims("mixins.adaln_layer.lr_query_position_embedding", 4)?;
        let proj_lr = dims("mixins.adaln_layer.proj_lr.weight", 4)?;
        let lr_k = dims("mixins.adaln_layer.lr_key_position_embedding", 4)?;
        let vector_dim = match self.tensors.get("cond_embed.map_vector.0.weight") {
            Some(t) => t.dim(1)?,
            None => 0,
        };
        let block_tokens = isqrt(lr_q[1]);
        let lr_window_tokens = isqrt(lr_k[1]);
        let mut cfg = ModelConfig::released();
        cfg.num_layers = num_layers;
        cfg.hidden_size = heads * head_dim;
        cfg.num_attention_heads = heads;
        cfg.mlp_inner_size = mlp[0];
        cfg.patch_size = patch[2];
        cfg.in_channels = patch[1];
        cfg.out_channels = patch[1] / 2;
        cfg.image_block_size_px = block_tokens * patch[2];
        cfg.vector_dim = vector_dim;
        cfg.time_embed_channels = time[1];
        cfg.lr_patch_size = proj_lr[2];
        // The LR window is 3 blocks wide: lr_block_tokens = window / 3.
        let lr_block_px = lr_window_tokens / 3 * proj_lr[2];
        cfg.sr_scale = cfg.image_block_size_px / lr_block_px.max(1);
        if let Some(t) = self.tensors.get("mixins.adaln_layer.rope.freqs_cos") {
            cfg.rope_table_size = t.dim(0)?;
            cfg.rope_position_modulus = t.dim(0)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A tensor every Inf-DiT checkpoint has, by which its key names are recognised.
const ANCHOR_KEY: &str = "mixins.adaln_layer.re_pos_embed";

/// Names under which wrappers nest a model, so that every key starts with them:
/// DataParallel's `module.`, Lightning's `model.`, or both.
const WRAPPER_NAMES: [&str; 2] = ["module", "model"];

/// Removes a prefix of wrapper names that every key carries, but only where the Inf-DiT key
/// names appear under it: other files keep their names.
fn strip_wrapper_prefixes(tensors: &mut HashMap<String, Tensor>) {
    let Some(prefix) = tensors
        .keys()
        .find_map(|k| k.strip_suffix(ANCHOR_KEY))
        .map(str::to_owned)
    else {
        return;
    };
    let wrapped = prefix
        .strip_suffix('.')
        .is_some_and(|p| p.split('.').all(|name| WRAPPER_NAMES.contains(&name)));
    if wrapped && tensors.keys().all(|k| k.starts_with(&prefix)) {
        *tensors = std::mem::take(tensors)
            .into_iter()
            .map(|(k, t)| (k[prefix.len()..].to_string(), t))
            .collect();
    }
}

fn isqrt(n: usize) -> usize {
    (n as f64).sqrt().round() as usize
}

/// The names of the tensors among `tensors` that hold a NaN or an infinity, sorted.
/// Computed in each tensor's own dtype and on its device: x − x is 0 for every finite x
/// and NaN for NaN and ±∞, so the sum of the differences is exact in any float type.
pub fn non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let sum = t
            .sub(t)?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if sum.is_nan() {
            found.push(name.to_string());
        }
    }
    found.sort();
    Ok(found)
}

/// True when `path` starts with the zip signature (PyTorch's checkpoint container).
pub fn is_zip_file(path: &Path) -> Result<bool> {
    Ok(file_head(path, 4)?.starts_with(b"PK\x03\x04"))
}

/// Whether the file opens with the magic number of PyTorch's pre-zip `torch.save` format:
/// a pickle (protocol 2 to 5; from 4 on, in a frame) of the long 0x1950a86a20f9469cfc6c.
fn is_legacy_torch_file(path: &Path) -> Result<bool> {
    const MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    const FRAME: u8 = 0x95;
    let head = file_head(path, 2 + 9 + MAGIC.len())?;
    let body = match head.as_slice() {
        [0x80, 2..=3, body @ ..] => body,
        [0x80, 4..=5, FRAME, rest @ ..] => rest.get(8..).unwrap_or_default(),
        _ => return Ok(false),
    };
    Ok(body.starts_with(&MAGIC))
}

/// What a file that does not read as safetensors is instead, when that is plain: the
/// config or an image given where the weights are wanted.
fn not_weights(path: &Path) -> Option<&'static str> {
    let head = file_head(path, 64).ok()?;
    if head.trim_ascii_start().starts_with(b"{") {
        Some("a JSON file, not model weights: give the model's folder or its weights file")
    } else if crate::imageops::io::InputFormat::detect(&head, path).is_some() {
        Some("an image, not model weights")
    } else if matches!(head[..], [0x80, 2..=5, ..]) {
        Some(
            "a bare pickle, not a checkpoint infdit reads: it reads the zip archives torch.save \
             writes and safetensors files",
        )
    } else {
        None
    }
}

/// The first `n` bytes of a file (all of it if shorter).
fn file_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(head)
}

fn looks_like_pytorch(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["pt", "pth", "bin", "ckpt"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The tensors of a PyTorch zip checkpoint: the state dict at the top level or nested
/// under one of `PICKLE_ROOT_KEYS` (DeepSpeed's `module`, Lightning's `state_dict`).
pub fn open_pth(path: &Path) -> Result<PthTensors> {
    match PthTensors::open(path, &PICKLE_ROOT_KEYS)
        .with_context(|| format!("{} is not a readable PyTorch checkpoint", path.display()))?
    {
        Some(pth) => Ok(pth),
        None => bail!(
            "{}: the pickle holds no tensors (only tensor data is read; any code in a pickle is never run)",
            path.display()
        ),
    }
}

/// The readable tensors of a PyTorch checkpoint, and the unreadable ones with why.
fn read_pickle(path: &Path) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let mut pth = open_pth(path)?;
    let names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
    let tensors = names
        .into_iter()
        .map(|name| {
            let t = pth
                .get(&name)?
                .with_context(|| format!("{}: tensor {name} vanished", path.display()))?;
            Ok((name, t))
        })
        .collect::<Result<_>>()?;
    Ok((tensors, pth.unreadable().clone()))
}

/// A model directory (`config.json` + weights) or a single checkpoint file.
pub struct ModelSource {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
}

impl ModelSource {
    /// Loads `path`: a directory holding `config.json` and `weights.safetensors` (or one
    /// other checkpoint file), or a checkpoint file whose config is read from a
    /// `config.json` beside it or inferred from its shapes.
    pub fn open(path: &Path) -> Result<Self> {
        let weights = weights_path(path)?;
        let checkpoint = Checkpoint::open(&weights)?;
        let config = checkpoint.config(&weights.with_file_name("config.json"))?;
        checkpoint.validate(&config)?;
        Ok(Self { config, checkpoint })
    }

    /// The folder of the weights file, where files that go with the model (`config.json`,
    /// `sampling.json`, CLIP weights) are looked for.
    pub fn dir(&self) -> &Path {
        self.checkpoint.path.parent().unwrap_or(Path::new(""))
    }
}

/// The safetensors metadata key under which saved weights carry their model config, so
/// that a weights file moved away from its `config.json` still loads as the model it is:
/// σ_data and the residual flag, for one, leave no trace in the tensor shapes.
pub const CONFIG_METADATA_KEY: &str = "infdit.config";

/// Saves model weights as safetensors, atomically, with `cfg` in the file's metadata.
pub fn save_model_weights(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    cfg: &ModelConfig,
) -> Result<()> {
    save_model_weights_with(path, tensors, cfg, HashMap::new())
}

/// [`save_model_weights`] with more metadata entries (such as the sampling settings).
pub fn save_model_weights_with(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    cfg: &ModelConfig,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    metadata.extend(model_metadata(cfg)?);
    crate::fsutil::save_safetensors_with_metadata(path, tensors, Some(metadata))
}

/// The metadata [`save_model_weights`] stores: the model config.
pub fn model_metadata(cfg: &ModelConfig) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([(
        CONFIG_METADATA_KEY.to_string(),
        serde_json::to_string(cfg)?,
    )]))
}

/// The model config stored in a safetensors file's metadata by [`save_model_weights`], if
/// any. PyTorch files and safetensors written by other tools have none.
pub fn embedded_config(path: &Path) -> Result<Option<ModelConfig>> {
    let Some(text) = embedded_metadata(path, CONFIG_METADATA_KEY)? else {
        return Ok(None);
    };
    let cfg = ModelConfig::from_json(&text)
        .with_context(|| format!("{}: invalid stored model config", path.display()))?;
    Ok(Some(cfg))
}

/// The metadata entry `key` of a safetensors file, if any: PyTorch files and damaged
/// headers have none (the tensor reader reports the damage).
pub fn embedded_metadata(path: &Path, key: &str) -> Result<Option<String>> {
    use std::io::Read;
    if is_zip_file(path)? {
        return Ok(None);
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    // The header is JSON; a length beyond any real header means a damaged file, which
    // the tensor reader reports.
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Ok(None);
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header)?;
    let header: serde_json::Value = match serde_json::from_slice(&header) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    Ok(header["__metadata__"][key].as_str().map(str::to_owned))
}

/// The weights file of a model path: `path` itself, or the one in a model directory.
/// Its config is the `config.json` beside it.
pub fn weights_path(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        find_weights(path)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        bail!("model {} does not exist", path.display())
    }
}

fn find_weights(dir: &Path) -> Result<PathBuf> {
    let preferred = dir.join("weights.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("safetensors" | "pt" | "pth" | "bin" | "ckpt")
            )
        })
        // CLIP weights kept beside the model are not the model.
        .filter(|p| {
            p.file_name()
                .is_none_or(|n| !crate::clip::FILES_BESIDE_MODEL.iter().any(|c| n == *c))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => bail!(
            "{} holds no weights file (weights.safetensors, *.pt, *.bin)",
            dir.display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "{} holds several weights files ({}); name one with the model path",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Seeded weights for every tensor of `cfg`: `init(name, shape)` gives each tensor's
/// (mean, std) of a normal distribution (std 0 for constants).
pub fn generate_weights(
    cfg: &ModelConfig,
    seed: u64,
    init: impl Fn(&str, &[usize]) -> (f32, f32),
) -> Result<HashMap<String, Tensor>> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    expected_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let numel: usize = shape.iter().product();
            let (mean, std) = init(&name, &shape);
            let data: Vec<f32> = if std == 0.0 {
                vec![mean; numel]
            } else {
                (0..numel)
                    .map(|_| {
                        mean + std
                            * <StandardNormal as Distribution<f32>>::sample(
                                &StandardNormal,
                                &mut rng,
                            )
                    })
                    .collect()
            };
            Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
        })
        .collect()
}

/// True for LayerNorm parameters (by their official names).
pub fn is_norm_key(name: &str) -> bool {
    name.contains("layer_norm") || name.contains("_ln.") || name.contains("layernorm")
}

/// Seeded random weights for `cfg`, distributed like the reference fixtures' (LayerNorm
/// weights 1+0.1·N, embeddings 0.2·N, other matrices 0.1·N, vectors 0.05·N): for tests
/// and benchmarks without a trained checkpoint.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    generate_weights(cfg, seed, |name, shape| {
        if is_norm_key(name) && name.ends_with(".weight") {
            (1.0, 0.1)
        } else if name.contains("position_embedding") || name.contains("re_pos_embed") {
            (0.0, 0.2)
        } else if shape.len() >= 2 {
            (0.0, 0.1)
        } else {
            (0.0, 0.05)
        }
    })
}
