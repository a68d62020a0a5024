//! open_clip ViT image encoder: the global conditioning vector of the released model.
//!
//! The LR image is preprocessed like open_clip's eval transform ([`preprocess`]), run through
//! the vision tower ([`ClipVisionTransformer`]) and L2-normalised ([`ClipEncoder::encode`]).
//! Weights can come from an Inf-DiT checkpoint, an open_clip checkpoint or a Hugging Face
//! CLIP ([`weights`]).

pub mod config;
pub mod model;
pub mod weights;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

pub use config::ClipVisionConfig;
pub use model::ClipVisionTransformer;
pub use weights::{load_clip_file, read_clip_tensors, ClipWeightFormat, ClipWeights};

use crate::imageops::io::from_model_range;
use crate::imageops::resize::resize_short_side;
use crate::imageops::Planar;

/// The names under which CLIP weights are found beside a model's weights, in order of
/// preference. A model folder may hold one of them beside its own weights file.
pub const FILES_BESIDE_MODEL: [&str; 3] = [
    "clip.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
];

/// Where a model's own CLIP weights are, when no file is named for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipLocation {
    /// In the model's checkpoint, as the released one keeps them (`image_encoder.model.visual.*`).
    Checkpoint,
    /// In a file beside the model's weights named as in [`FILES_BESIDE_MODEL`].
    Beside(std::path::PathBuf),
}

impl ClipLocation {
    /// The CLIP weights that go with the model in `checkpoint`, if any are there.
    pub fn find(checkpoint: &crate::checkpoint::Checkpoint) -> Option<Self> {
        if checkpoint
            .tensors
            .keys()
            .any(|k| k.starts_with("image_encoder.model.visual."))
        {
            return Some(Self::Checkpoint);
        }
        let dir = checkpoint.path.parent().unwrap_or(std::path::Path::new(""));
        FILES_BESIDE_MODEL
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .map(Self::Beside)
    }
}

/// open_clip's `OPENAI_DATASET_MEAN`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// open_clip's `OPENAI_DATASET_STD`. The digits are open_clip's; like torch, they are
/// rounded to f32.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The encoder's input transform for an RGB image in `[-1, 1]`: `(x+1)/2`, torchvision
/// `Resize(image_size, BICUBIC)` of the short side (antialiased), `CenterCrop(image_size)`,
/// then per-channel `(x - mean) / std`. Returns a `3 × image_size × image_size` image.
pub fn preprocess(lr: &Planar, image_size: usize) -> Result<Planar> {
    ensure!(
        lr.channels == 3,
        "CLIP preprocessing expects an RGB image, got {} channels",
        lr.channels
    );
    ensure!(
        lr.height > 0 && lr.width > 0 && image_size > 0,
        "empty image or size"
    );
    let x = from_model_range(lr.clone());
    // torchvision returns the input untouched when the size already matches.
    let x = if x.height.min(x.width) == image_size {
        x
    } else {
        resize_short_side(&x, image_size, true)
    };
    let mut x = x.center_crop(image_size, image_size);
    let n = image_size * image_size;
    for (c, plane) in x.data.chunks_exact_mut(n).enumerate() {
        let (m, s) = (CLIP_MEAN[c], CLIP_STD[c]);
        plane.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
    Ok(x)
}

/// `x / max(‖x‖₂, 1e-12)` along the last dimension (`torch.nn.functional.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

/// The image-conditioning encoder: preprocessing plus the vision tower.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    pub cfg: ClipVisionConfig,
    pub tower: ClipVisionTransformer,
    pub device: Device,
    pub dtype: DType,
}

impl ClipEncoder {
    /// Builds the tower from a `VarBuilder` rooted at the tower in open_clip layout.
    pub fn new(cfg: ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let tower = ClipVisionTransformer::new(&cfg, vb.clone())?;
        Ok(Self {
            cfg,
            tower,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Builds the tower from converted weights, inferring the config from the shapes when
    /// `cfg` is `None`. Every missing tensor is named in the error.
    pub fn from_weights(
        cfg: Option<ClipVisionConfig>,
        weights: ClipWeights,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let cfg = match cfg {
            Some(cfg) => {
                cfg.validate()?;
                cfg
            }
            None => weights
                .infer_config()
                .context("inferring the CLIP config from the weights")?,
        };
        weights.check(&cfg)?;
        // candle's CPU matmul has no bf16 kernel; the one encoder forward per pass costs
        // little in f32.
        let dtype = if device.is_cpu() && dtype == DType::BF16 {
            DType::F32
        } else {
            dtype
        };
        let format = weights.format;
        Self::new(cfg, weights.into_var_builder(dtype, device))
            .with_context(|| format!("building the CLIP tower from {format:?} weights"))
    }

    /// [`preprocess`] at this tower's input size.
    pub fn preprocess(&self, lr: &Planar) -> Result<Planar> {
        preprocess(lr, self.cfg.image_size)
    }

    /// Tower output for an already preprocessed image: `[1, embed_dim]` f32, not normalised.
    pub fn visual(&self, pixels: &Planar) -> Result<Tensor> {
        let x = pixels.to_tensor(&self.device)?.to_dtype(self.dtype)?;
        Ok(self.tower.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// The conditioning vector of an RGB image in `[-1, 1]` of any size: `[1, embed_dim]`,
    /// f32, unit L2 norm.
    pub fn encode(&self, lr: &Planar) -> Result<Tensor> {
        l2_normalize(&self.visual(&self.preprocess(lr)?)?)
    }
}
