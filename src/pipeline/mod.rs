//! The upscaling pipeline: LR image in, upscaled image out, through padding, the exact
//! bicubic conditioning, the image-condition vector, the sampler and the block engine.
//! The CLI and other programs share this one path through [`Upscaler`]:
//!
//! ```
//! use candle_core::{DType, Device};
//! use infdit::pipeline::{OutputSize, UpscaleOptions, Upscaler};
//!
//! // The built-in model with its recommended sampler settings, at twice the size.
//! let (model, defaults) = infdit::default_model::load(DType::F32, &Device::Cpu)?;
//! let options = UpscaleOptions {
//!     size: OutputSize::Scale(2.0),
//!     ..defaults.options()
//! };
//! let upscaler = Upscaler::new(model, None, options)?;
//! let photo = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 30, |x, y| {
//!     image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
//! }));
//! let big = upscaler.upscale(&photo, &mut |p| eprintln!("{}/{} blocks", p.done, p.total))?;
//! assert_eq!((big.width(), big.height()), (80, 60));
//! # anyhow::Ok(())
//! ```

use crate::clip::ClipEncoder;
use crate::engine::memory::{
    available_memory, device_free_memory, format_size, host_image_bytes, MemoryModel,
};
use crate::engine::{Batching, Conditioning, Engine, EngineOptions, Order, Positions};
use crate::imageops::bleed::fill_transparent;
use crate::imageops::io::{from_model_range, to_model_range};
use crate::imageops::resize::resize_bicubic;
use crate::imageops::{reflect, Dihedral, Planar};
use crate::model::InfDit;
use crate::sampler::{sample, SamplerConfig};
use anyhow::{bail, ensure, Result};
use candle_core::Device;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

mod sampling;
mod size;
pub use sampling::SamplingDefaults;
pub use size::{OutputSize, SizePlan};

/// How the batch of blocks per forward is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchChoice {
    /// Largest batch whose estimated memory fits this many bytes.
    Budget(u64),
    /// Exactly this many blocks per forward.
    Fixed(usize),
}

#[derive(Debug, Clone)]
pub struct UpscaleOptions {
    /// The output size: the model reaches the smallest of its [`scales`] that covers it in
    /// passes of at most its trained ratio (8 = 4·2, 16 = 4·4 for a ×4 model), and other
    /// sizes are reduced from that with the antialiased bicubic kernel.
    pub size: OutputSize,
    pub sampler: SamplerConfig,
    /// Seed of the initial noise (see [`initial_noise`]).
    pub seed: u64,
    pub batch: Option<BatchChoice>,
    pub order: Order,
    /// Geometric self-ensemble: upscale this many flips/rotations of the input (1, 2, 4
    /// or 8) and average the results, undone. Each costs a full upscale; the mean is a
    /// better estimate for models whose output is the conditional mean (PSNR-oriented).
    pub self_ensemble: usize,
}

impl Default for UpscaleOptions {
    fn default() -> Self {
        Self {
            size: OutputSize::default(),
            sampler: SamplerConfig::default(),
            seed: 0,
            batch: None,
            order: Order::Auto,
            self_ensemble: 1,
        }
    }
}

/// Progress of one image, in block evaluations.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// Resizes a [0, 1] image with the antialiased bicubic kernel, clamped to [0, 1]: for
/// alpha, which the model does not see, and for sizes between the model's factors.
pub fn resize_clamped(img: &Planar, height: usize, width: usize) -> Planar {
    resize_bicubic(img, height, width, true).map(|v| v.clamp(0.0, 1.0))
}

/// The largest overall factor: beyond it a diffusion model invents rather than restores.
pub const MAX_SCALE: usize = 16;

/// The overall factors a model trained at ×`model_scale` reaches in passes (other sizes
/// are reduced from one of them): 2, 4, 8 and 16 for a ×2, ×4 or ×8 model; 3 and 9 for a
/// ×3 one.
pub fn scales(model_scale: usize) -> Vec<usize> {
    (2..=MAX_SCALE)
        .filter(|&s| passes(s, model_scale).is_ok())
        .collect()
}

/// The per-pass factors for an overall scale with a model trained at ×`model_scale`: the
/// largest pass the model can do first (a pass may enlarge by any divisor of its ratio),
/// so ×8 with a ×4 model is ×4 then ×2, and ×4 with a ×2 model is ×2 twice.
pub fn passes(scale: usize, model_scale: usize) -> Result<Vec<usize>> {
    ensure!(
        (2..=MAX_SCALE).contains(&scale),
        "unsupported scale {scale} (2 to {MAX_SCALE})"
    );
    let mut left = scale;
    let mut out = Vec::new();
    while left > 1 {
        let Some(pass) = (2..=model_scale.min(left))
            .rev()
            .find(|p| model_scale.is_multiple_of(*p) && left.is_multiple_of(*p))
        else {
            bail!("a ×{model_scale} model cannot upscale ×{scale}");
        };
        out.push(pass);
        left /= pass;
    }
    Ok(out)
}

/// The padded side of each pass's output for an input side of `side` px: each pass pads
/// its input to whole LR blocks (`block_px / pass` px) and enlarges it by its factor.
fn padded_sides(
    side: usize,
    passes: &[usize],
    block_px: usize,
) -> impl Iterator<Item = usize> + '_ {
    passes.iter().scan(side, move |side, &s| {
        let m = block_px / s;
        let padded = side.div_ceil(m) * m * s;
        *side *= s;
        Some(padded)
    })
}

/// Pads bottom and right to multiples of `multiple` by reflection (`dcb|abcd|cba`),
/// which continues textures and edges better than repeating the border pixel. The
/// model's blocks need whole multiples; the padding is cropped from the output, so no
/// input pixel is lost (the reference instead crops inputs to a multiple of 32).
pub fn pad_reflect(img: &Planar, multiple: usize) -> Planar {
    let h = img.height.div_ceil(multiple) * multiple;
    let w = img.width.div_ceil(multiple) * multiple;
    if (h, w) == (img.height, img.width) {
        return img.clone();
    }
    let mut data = Vec::with_capacity(img.channels * h * w);
    for c in 0..img.channels {
        for y in 0..h {
            let sy = reflect(y as isize, img.height);
            for x in 0..w {
                data.push(img.at(c, sy, reflect(x as isize, img.width)));
            }
        }
    }
    Planar::new(img.channels, h, w, data)
}

/// A model-range image as the `[0, 1]` image a caller gets back (clamped).
fn output_image(img: Planar) -> Planar {
    from_model_range(img).map(|v| v.clamp(0.0, 1.0))
}

/// The documented initial noise: a ChaCha-based `StdRng` seeded with `seed`, standard
/// normal samples (rand_distr's ziggurat), filled in channel-row-column order. The same
/// seed and size give the same bits on every machine.
pub fn initial_noise(seed: u64, channels: usize, height: usize, width: usize) -> Planar {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = (0..channels * height * width)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Planar::new(channels, height, width, data)
}

/// Refuses a self-ensemble size other than the dihedral subgroups' 1, 2, 4 and 8.
pub fn check_self_ensemble(n: usize) -> Result<()> {
    ensure!(
        matches!(n, 1 | 2 | 4 | 8),
        "self-ensemble size {n} is not 1, 2, 4 or 8"
    );
    Ok(())
}

/// Upscales images with one loaded model.
pub struct Upscaler {
    model: InfDit,
    clip: Option<ClipEncoder>,
    opts: UpscaleOptions,
}

impl Upscaler {
    /// `clip` is required when the model has an image-condition vector.
    pub fn new(model: InfDit, clip: Option<ClipEncoder>, opts: UpscaleOptions) -> Result<Self> {
        opts.size.validate()?;
        // A factor can be checked before any image (a size depends on the image).
        if let OutputSize::Scale(s) = opts.size {
            let model_scale = model.config().sr_scale;
            let reached = scales(model_scale);
            ensure!(
                reached.iter().any(|&f| f as f64 >= s),
                "a ×{model_scale} model cannot upscale ×{s}: it reaches {}",
                reached
                    .iter()
                    .map(|f| format!("×{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        opts.sampler.validate()?;
        check_self_ensemble(opts.self_ensemble)?;
        if model.config().vector_dim > 0 && clip.is_none() {
            bail!(
                "this model is conditioned on a CLIP image embedding ({}-d) but no CLIP weights were given: \
                 pass --clip with open_clip ViT-L-14 weights (laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K, \
                 open_clip_pytorch_model.bin or model.safetensors on the Hugging Face hub), or place them \
                 beside the model as {}",
                model.config().vector_dim,
                crate::clip::FILES_BESIDE_MODEL.join(", ")
            );
        }
        if let Some(clip) = clip.as_ref().filter(|_| model.config().vector_dim > 0) {
            ensure!(
                clip.cfg.embed_dim == model.config().vector_dim,
                "the CLIP weights give {}-d embeddings but the model takes {}-d ones: they do not belong together",
                clip.cfg.embed_dim,
                model.config().vector_dim
            );
        }
        Ok(Self { model, clip, opts })
    }

    pub fn options(&self) -> &UpscaleOptions {
        &self.opts
    }

    pub fn model(&self) -> &InfDit {
        &self.model
    }

    /// The output size (height, width) of an LR image of `height`×`width`.
    pub fn output_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let plan = self.plan(height, width)?;
        Ok((plan.height, plan.width))
    }

    /// How an LR image of `height`×`width` reaches the output size.
    fn plan(&self, height: usize, width: usize) -> Result<SizePlan> {
        let scales = scales(self.model.config().sr_scale);
        self.opts.size.plan(height, width, &scales)
    }

    /// The padded output size of each pass for an LR image, checked against the largest
    /// image the model's position table allows.
    fn pass_sizes(&self, height: usize, width: usize) -> Result<Vec<(usize, usize)>> {
        let cfg = self.model.config();
        let scale = self.plan(height, width)?.scale;
        let passes = passes(scale, cfg.sr_scale)?;
        let sizes: Vec<_> = padded_sides(height, &passes, cfg.image_block_size_px)
            .zip(padded_sides(width, &passes, cfg.image_block_size_px))
            .collect();
        if let Some(max) = cfg.max_image_side() {
            let fits =
                |side| padded_sides(side, &passes, cfg.image_block_size_px).all(|s| s <= max);
            if !fits(height.max(width)) {
                // The sides of the padded passes mean little to a user; the input does.
                let largest = (1..=max).rev().find(|&side| fits(side)).unwrap_or(0);
                bail!(
                    "a {width}×{height} input is too large to upscale ×{scale} with this model: \
                     its position table allows images of {max} px per side, so inputs of at \
                     most {largest} px per side"
                );
            }
        }
        Ok(sizes)
    }

    /// Total block evaluations for an LR image, for progress bars.
    pub fn work(&self, height: usize, width: usize) -> Result<usize> {
        let block = self.model.config().image_block_size_px;
        let blocks: usize = self
            .pass_sizes(height, width)?
            .into_iter()
            .map(|(h, w)| (h / block) * (w / block))
            .sum();
        Ok(blocks * self.opts.sampler.nfe() * self.opts.self_ensemble)
    }

    /// Refuses, before any work, an image that cannot be upscaled in memory: one whose
    /// sampler buffers cannot fit in the host's memory (an allocation that fails aborts
    /// the process; on the CPU the memory budget counts them already, a GPU budget covers
    /// only the device), or one with a pass of which not even one block fits the memory
    /// budget. Every pass is checked, in every orientation the self-ensemble gives it, so
    /// that no pass runs only for a later one to fail.
    pub fn check_memory(&self, height: usize, width: usize) -> Result<()> {
        let sizes = self.pass_sizes(height, width)?;
        // The last pass is the largest.
        if let (Some(available), Some(&(h, w))) = (available_memory(), sizes.last()) {
            let needed = host_image_bytes(h, w);
            if needed > available {
                bail!(
                    "a {w}×{h} output needs about {} of memory for its image buffers but {} is available",
                    format_size(needed),
                    format_size(available)
                );
            }
        }
        let transposed = Dihedral::first(self.opts.self_ensemble).any(|t| t.transpose);
        for (h, w) in sizes {
            self.batch_size(h, w, self.opts.order)?;
            if transposed {
                self.batch_size(w, h, self.opts.order.transposed())?;
            }
        }
        Ok(())
    }

    /// Upscales an in-memory image: colour through the model, alpha (if any) with the
    /// same bicubic kernel; bit depth and grayscale are kept.
    pub fn upscale(
        &self,
        img: &image::DynamicImage,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<image::DynamicImage> {
        use crate::imageops::io::{image_to_planes, is_deep, planes_to_image};
        let (rgb, alpha) = image_to_planes(img);
        let (out, alpha) = self.upscale_planes(&rgb, alpha.as_ref(), progress)?;
        let color = img.color();
        Ok(planes_to_image(
            &out,
            alpha.as_ref(),
            is_deep(color),
            !color.has_color(),
        ))
    }

    /// Upscales colour and, if there is one, an alpha plane (values in [0, 1]). Colour
    /// under fully transparent pixels is first replaced by the nearest visible colour
    /// ([`fill_transparent`]), so that the hidden colour does not fringe the edges.
    pub fn upscale_planes(
        &self,
        rgb: &Planar,
        alpha: Option<&Planar>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Planar, Option<Planar>)> {
        let Some(alpha) = alpha else {
            return Ok((self.upscale_rgb(rgb, progress)?, None));
        };
        let out = self.upscale_rgb(&fill_transparent(rgb, alpha), progress)?;
        let alpha = resize_clamped(alpha, out.height, out.width);
        Ok((out, Some(alpha)))
    }

    /// Upscales an RGB image with values in [0, 1]; returns values in [0, 1].
    pub fn upscale_rgb(&self, rgb: &Planar, progress: &mut dyn FnMut(Progress)) -> Result<Planar> {
        let total = self.work(rgb.height, rgb.width)?;
        self.check_memory(rgb.height, rgb.width)?;
        let plan = self.plan(rgb.height, rgb.width)?;
        let mut done = 0;
        let signed = to_model_range(rgb.clone());
        let n = self.opts.self_ensemble;
        let mut sum: Option<Planar> = None;
        for t in Dihedral::first(n) {
            let mut img = signed.dihedral(t);
            for (k, s) in passes(plan.scale, self.model.config().sr_scale)?
                .into_iter()
                .enumerate()
            {
                img = self.pass(&img, s, k as u64, self.order_in(t), &mut |b| {
                    done += b;
                    progress(Progress { done, total });
                })?;
            }
            let img = output_image(if t == Dihedral::IDENTITY {
                img
            } else {
                img.undo_dihedral(t)
            });
            match &mut sum {
                Some(acc) => acc.zip_assign(&img, |a, b| a + b),
                None => sum = Some(img),
            }
        }
        let mean = sum.expect("at least one transform").map(|v| v / n as f32);
        Ok(if plan.resamples(rgb.height, rgb.width) {
            resize_clamped(&mean, plan.height, plan.width)
        } else {
            mean
        })
    }

    /// The block order for the image turned by `t`: the order asked for, as it walks the
    /// image itself, so that a transposed orientation keeps its cache across the same side.
    fn order_in(&self, t: Dihedral) -> Order {
        if t.transpose {
            self.opts.order.transposed()
        } else {
            self.opts.order
        }
    }

    /// One pass of a factor dividing the model's ratio on a [-1, 1] image, walked in
    /// `order`; the result is clamped to [-1, 1], as an image written between two passes
    /// would be.
    fn pass(
        &self,
        lr: &Planar,
        scale: usize,
        pass: u64,
        order: Order,
        on_blocks: &mut dyn FnMut(usize),
    ) -> Result<Planar> {
        let cond = self.conditioning(lr, scale)?;
        let (hh, hw) = (cond.concat_lr.height, cond.concat_lr.width);
        let engine = self.engine(hh, hw, order)?;
        let channels = self.model.config().out_channels;
        let noise = initial_noise(self.opts.seed.wrapping_add(pass), channels, hh, hw);
        let out = sample(
            &self.opts.sampler,
            self.diffused(cond.concat_lr.clone(), &cond),
            noise,
            &mut |x, sigma| engine.denoise(x, sigma, &cond, on_blocks),
            &mut |_, _| {},
        )?;
        // Clamping would turn NaN into black and hide weights or a config that are broken.
        ensure!(
            out.data.iter().all(|v| v.is_finite()),
            "the model's output holds NaN or infinite values: its weights or config are broken"
        );
        let (h, w) = (lr.height * scale, lr.width * scale);
        let out = self.image(out, &cond);
        drop(cond);
        let out = if out.shape() == (out.channels, h, w) {
            out
        } else {
            out.crop_clamped(0, 0, h, w)
        };
        Ok(out.map(|v| v.clamp(-1.0, 1.0)))
    }

    /// What the model diffuses for the image `img`: the image itself, or for a residual
    /// model its difference from the bicubic upsample (so sampling from the bicubic
    /// upsample starts a residual model at zero).
    fn diffused(&self, mut img: Planar, cond: &Conditioning) -> Planar {
        if self.model.config().residual {
            img.zip_assign(&cond.concat_lr, |a, b| a - b);
        }
        img
    }

    /// The image a diffused sample stands for (the inverse of [`Self::diffused`]).
    fn image(&self, mut sample: Planar, cond: &Conditioning) -> Planar {
        if self.model.config().residual {
            sample.zip_assign(&cond.concat_lr, |a, b| a + b);
        }
        sample
    }

    /// The model's inputs for a ×`scale` pass over the [-1, 1] image `lr`, padded to whole
    /// blocks.
    fn conditioning(&self, lr: &Planar, scale: usize) -> Result<Conditioning> {
        let cfg = self.model.config();
        // A pass may enlarge less than the trained ratio: the model's LR is then the
        // input shrunk so that HR:LR stays the trained ratio (NOTES §3.4).
        if scale > cfg.sr_scale || !cfg.sr_scale.is_multiple_of(scale) {
            bail!(
                "this model was trained at ×{}; a ×{scale} pass is not possible",
                cfg.sr_scale
            );
        }
        let padded = pad_reflect(lr, cfg.image_block_size_px / scale);
        let (hh, hw) = (padded.height * scale, padded.width * scale);
        let concat_lr = resize_bicubic(&padded, hh, hw, true).map(|v| v.clamp(-1.0, 1.0));
        // The model always sees a 4:1 HR:LR ratio; in ×2 mode its LR is the halved input.
        let model_lr = if scale == cfg.sr_scale {
            padded
        } else {
            resize_bicubic(&padded, hh / cfg.sr_scale, hw / cfg.sr_scale, true)
        };
        let vector = match &self.clip {
            Some(clip) if cfg.vector_dim > 0 => {
                // The embedding is of the image, not of its padding (the reference crops
                // where infdit pads, so its encoder sees only the image): the model's LR
                // view cropped to the input's part, all of it for an image of whole blocks.
                let side = |n: usize| (n * scale).div_ceil(cfg.sr_scale);
                let image = model_lr.crop_clamped(0, 0, side(lr.height), side(lr.width));
                Some(clip.encode(&image)?.to_device(self.model.device())?)
            }
            _ => None,
        };
        Ok(Conditioning {
            concat_lr,
            lr: model_lr,
            vector,
            positions: Positions::Grid,
        })
    }

    fn engine(&self, height: usize, width: usize, order: Order) -> Result<Engine<'_>> {
        let batch = self.batch_size(height, width, order)?;
        tracing::debug!(
            "{width}×{height} pass: {} blocks per forward, order {:?}, {:?} {:?}",
            batch,
            order,
            self.model.device(),
            self.model.dtype()
        );
        let batching = Batching::Blocks(batch);
        Ok(Engine::new(&self.model, EngineOptions { batching, order }))
    }

    /// One denoiser evaluation D(start + σ·noise, σ) for the LR image `lr`, with `start` at
    /// the model's output size (both in [0, 1], output too; the noise is [`initial_noise`]
    /// of the seed). From `start` = the HR image it measures the denoiser where it was
    /// trained; from the bicubic upsample, where sampling starts.
    pub fn denoise_once(&self, lr: &Planar, start: &Planar, sigma: f32) -> Result<Planar> {
        let cfg = self.model.config();
        let m = cfg.image_block_size_px / cfg.sr_scale;
        if !lr.height.is_multiple_of(m) || !lr.width.is_multiple_of(m) {
            bail!(
                "the LR image must be whole blocks ({m}-px multiples) for a single denoiser evaluation"
            );
        }
        let (hh, hw) = (lr.height * cfg.sr_scale, lr.width * cfg.sr_scale);
        if (start.height, start.width) != (hh, hw) {
            bail!("the start image must be {hw}×{hh}");
        }
        let cond = self.conditioning(&to_model_range(lr.clone()), cfg.sr_scale)?;
        let noise = initial_noise(self.opts.seed, start.channels, hh, hw);
        let mut x = self.diffused(to_model_range(start.clone()), &cond);
        x.zip_assign(&noise, |a, n| a + sigma * n);
        let out = self
            .engine(hh, hw, self.opts.order)?
            .denoise(&x, sigma, &cond, &mut |_| {})?;
        Ok(output_image(self.image(out, &cond)))
    }

    fn batch_size(&self, height: usize, width: usize, order: Order) -> Result<usize> {
        const GPU_DEFAULT_BUDGET: u64 = 8 << 30;
        let mm = MemoryModel::new(self.model.config(), self.model.dtype(), self.model.device());
        match self.opts.batch {
            Some(BatchChoice::Fixed(b)) => Ok(b.max(1)),
            Some(BatchChoice::Budget(bytes)) => mm.choose_batch(height, width, order, bytes, 64),
            None => {
                let budget = match self.model.device() {
                    Device::Cpu => available_memory().map_or(4 << 30, |m| m / 10 * 8),
                    // 8 GiB, or less on a card with less free: what the process holds
                    // already (weights, runtime) plus 90% of what is free.
                    device => {
                        let held = mm.estimate(height, width, order, 1);
                        device_free_memory(device).map_or(GPU_DEFAULT_BUDGET, |free| {
                            GPU_DEFAULT_BUDGET.min(held.weights + held.runtime + free / 10 * 9)
                        })
                    }
                };
                // On the CPU larger batches buy no speed; cap them to keep memory low.
                let cap = if matches!(self.model.device(), Device::Cpu) {
                    4
                } else {
                    64
                };
                mm.choose_batch(height, width, order, budget, cap)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use std::path::Path;

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        let img = Planar::new(1, 1, 3, vec![1.0, 2.0, 3.0]);
        let padded = pad_reflect(&img, 8);
        assert_eq!((padded.height, padded.width), (8, 8));
        assert_eq!(padded.data[..8], [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0]);
        let col = Planar::new(1, 3, 1, vec![1.0, 2.0, 3.0]);
        let padded: Vec<f32> = pad_reflect(&col, 4)
            .data
            .iter()
            .step_by(4)
            .copied()
            .collect();
        assert_eq!(padded, [1.0, 2.0, 3.0, 2.0]);
        let one = Planar::new(1, 1, 1, vec![5.0]);
        assert_eq!(pad_reflect(&one, 4).data, vec![5.0; 16]);
    }

    /// An upscaler taking one Euler step from `sigma_max`.
    /// A model of `cfg` with random weights and its output layer's bias replaced by
    /// `bias` of it.
    fn with_output_bias(
        cfg: &crate::config::ModelConfig,
        bias: impl Fn(&candle_core::Tensor) -> candle_core::Tensor,
    ) -> InfDit {
        let mut weights = crate::checkpoint::random_weights(cfg, 7).unwrap();
        let b = weights.get_mut("mixins.final_layer.linear.bias").unwrap();
        *b = bias(b);
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        InfDit::new(cfg, vb).unwrap()
    }

    fn one_step(model: InfDit, sigma_max: f32) -> Upscaler {
        one_step_to(model, sigma_max, OutputSize::default())
    }

    fn one_step_to(model: InfDit, sigma_max: f32, size: OutputSize) -> Upscaler {
        let sampler = SamplerConfig {
            steps: 1,
            sigma_max,
            kind: crate::sampler::SamplerKind::Euler,
            ..Default::default()
        };
        let opts = UpscaleOptions {
            sampler,
            size,
            ..Default::default()
        };
        Upscaler::new(model, None, opts).unwrap()
    }

    /// A size between the model's factors is the reduction of the next factor's upscale,
    /// alpha included.
    #[test]
    fn other_sizes_reduce_the_covering_upscale() {
        let cfg = crate::config::ModelConfig::minimal();
        let model = || InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let lr = Planar::new(3, 5, 9, (0..135).map(|i| (i % 17) as f32 / 16.0).collect());
        let x4 = one_step(model(), 2.0)
            .upscale_rgb(&lr, &mut |_| {})
            .unwrap();
        let up = one_step_to(model(), 2.0, OutputSize::Scale(3.0));
        let x3 = up.upscale_rgb(&lr, &mut |_| {}).unwrap();
        assert_eq!((x3.height, x3.width), (15, 27));
        assert_eq!(x3.data, resize_clamped(&x4, 15, 27).data);
        let rgba = image::DynamicImage::ImageRgba8(image::ImageBuffer::from_fn(9, 5, |x, _| {
            image::Rgba([x as u8 * 20, 30, 9, 128])
        }));
        let out = up.upscale(&rgba, &mut |_| {}).unwrap();
        assert_eq!((out.width(), out.height()), (27, 15));
        assert!(out.as_rgba8().unwrap().pixels().all(|p| p[3] == 128));
    }

    /// An order asked for walks every self-ensemble orientation the same way over the
    /// image: a transposed one is walked with rows and columns swapped, so it needs no
    /// more memory than the image itself.
    #[test]
    fn transposed_orientations_keep_the_order_asked_for() {
        let cfg = crate::config::ModelConfig::minimal();
        let (block, m) = (
            cfg.image_block_size_px,
            cfg.image_block_size_px / cfg.sr_scale,
        );
        let (h, w) = (2 * block, 8 * block);
        let mm = MemoryModel::new(&cfg, DType::F32, &Device::Cpu);
        let budget = mm.estimate(h, w, Order::ColumnMajor, 1).total();
        assert!(mm.estimate(w, h, Order::ColumnMajor, 1).total() > budget);
        let upscaler = |order| {
            let opts = UpscaleOptions {
                order,
                self_ensemble: 8,
                batch: Some(BatchChoice::Budget(budget)),
                ..Default::default()
            };
            let model = InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
            Upscaler::new(model, None, opts).unwrap()
        };
        upscaler(Order::ColumnMajor)
            .check_memory(2 * m, 8 * m)
            .unwrap();
        // Along the long side the cache spans it, in every orientation.
        assert!(upscaler(Order::RowMajor)
            .check_memory(2 * m, 8 * m)
            .is_err());
    }

    #[test]
    fn library_upscale_keeps_depth_alpha_and_gray() {
        let cfg = crate::config::ModelConfig::minimal();
        let model = InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let up = one_step(model, 0.01);
        let rgba16 = image::DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(9, 5, |x, _| {
            image::Rgba([x as u16 * 7000, 300, 9, 65535])
        }));
        let out = up.upscale(&rgba16, &mut |_| {}).unwrap();
        assert_eq!(
            (out.width(), out.height(), out.color()),
            (36, 20, image::ColorType::Rgba16)
        );
        assert!(out.as_rgba16().unwrap().pixels().all(|p| p[3] == 65535));
        let gray = image::DynamicImage::ImageLuma8(image::GrayImage::new(3, 2));
        let mut calls = 0;
        let out = up
            .upscale(&gray, &mut |p| {
                calls += 1;
                assert!(p.done <= p.total)
            })
            .unwrap();
        assert_eq!(
            (out.width(), out.height(), out.color()),
            (12, 8, image::ColorType::L8)
        );
        assert!(calls > 0);
    }

    /// A model whose output layer is zero has D(x, σ) = c_skip·x, which vanishes for a
    /// large σ: one Euler step from there gives the bicubic upsample for a residual model
    /// and a flat grey for one that diffuses the image.
    #[test]
    fn a_residual_model_adds_its_sample_to_the_bicubic_upsample() {
        let lr = Planar::new(
            3,
            8,
            8,
            (0..192).map(|i| (i * 37 % 101) as f32 / 100.0).collect(),
        );
        let up = resize_bicubic(&lr.clone().map(|v| 2.0 * v - 1.0), 32, 32, true)
            .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0));
        let max_diff = |residual: bool, reference: &Planar| {
            let cfg = crate::config::ModelConfig {
                residual,
                ..crate::config::ModelConfig::minimal()
            };
            let weights = crate::train::trainer::init_weights(&cfg, 1).unwrap();
            let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
            let model = InfDit::new(&cfg, vb).unwrap();
            one_step(model, 80.0)
                .upscale_rgb(&lr, &mut |_| {})
                .unwrap()
                .max_abs_diff(reference)
        };
        assert!(max_diff(true, &up) < 0.01);
        assert!(max_diff(false, &Planar::new(3, 32, 32, vec![0.5; 3 * 32 * 32])) < 0.01);
    }

    /// NaN weights must fail the upscale, not give a black image (clamping maps NaN to 0).
    #[test]
    fn a_model_that_outputs_nan_is_an_error() {
        let cfg = crate::config::ModelConfig::minimal();
        let model = with_output_bias(&cfg, |b| (b.ones_like().unwrap() * f64::NAN).unwrap());
        let lr = Planar::new(3, 8, 8, vec![0.5; 192]);
        let e = one_step(model, 1.0)
            .upscale_rgb(&lr, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
    }

    #[test]
    fn self_ensemble_averages_the_undone_upscales_of_flipped_inputs() {
        let cfg = crate::config::ModelConfig::minimal();
        let lr = Planar::new(
            3,
            5,
            7,
            (0..105).map(|i| (i * 29 % 97) as f32 / 96.0).collect(),
        );
        let upscaler = |n: usize| {
            let mut up = one_step(
                InfDit::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap(),
                1.0,
            );
            up.opts.self_ensemble = n;
            up
        };
        let single = upscaler(1);
        let mut total = 0;
        let pair = upscaler(2)
            .upscale_rgb(&lr, &mut |p| total = p.total)
            .unwrap();
        assert_eq!(total, 2 * single.work(5, 7).unwrap());
        let rot = Dihedral::first(2).last().unwrap();
        let a = single.upscale_rgb(&lr, &mut |_| {}).unwrap();
        let b = single
            .upscale_rgb(&lr.dihedral(rot), &mut |_| {})
            .unwrap()
            .undo_dihedral(rot);
        assert!(a.max_abs_diff(&b) > 1e-3, "the flip must change the output");
        assert!(pair.max_abs_diff(&a.zip_map(&b, |x, y| (x + y) / 2.0)) < 1e-5);
        let opts = UpscaleOptions {
            self_ensemble: 3,
            ..Default::default()
        };
        let model = InfDit::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
        assert!(Upscaler::new(model, None, opts).is_err());
    }

    #[test]
    fn noise_is_seeded() {
        assert_eq!(initial_noise(3, 3, 4, 5), initial_noise(3, 3, 4, 5));
        assert_ne!(initial_noise(3, 3, 4, 5), initial_noise(4, 3, 4, 5));
    }

    #[test]
    fn scales_chain_passes() {
        assert_eq!(passes(16, 4).unwrap(), vec![4, 4]);
        assert_eq!(passes(8, 4).unwrap(), vec![4, 2]);
        assert_eq!(passes(2, 4).unwrap(), vec![2]);
        assert_eq!(passes(4, 2).unwrap(), vec![2, 2]);
        assert_eq!(passes(8, 2).unwrap(), vec![2, 2, 2]);
        assert!(passes(3, 4).is_err());
        assert!(passes(2, 3).is_err());
        assert_eq!(passes(9, 3).unwrap(), vec![3, 3]);
        for model in [2, 4, 8] {
            assert_eq!(scales(model), [2, 4, 8, 16]);
        }
        assert_eq!(scales(3), [3, 9]);
        assert_eq!(scales(6), [2, 3, 4, 6, 8, 9, 12, 16]);
    }

    /// A ×3 model upscales ×3 in one pass and other factors from ×3 or ×9.
    #[test]
    fn a_three_times_model_reaches_its_own_factors() {
        let cfg = crate::config::ModelConfig {
            sr_scale: 3,
            image_block_size_px: 24,
            ..crate::config::ModelConfig::minimal()
        };
        cfg.validate().unwrap();
        let model = || InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let lr = Planar::new(3, 5, 7, (0..105).map(|i| (i % 13) as f32 / 12.0).collect());
        for (scale, size) in [(3.0, (15, 21)), (2.0, (10, 14)), (4.0, (20, 28))] {
            let out = one_step_to(model(), 2.0, OutputSize::Scale(scale))
                .upscale_rgb(&lr, &mut |_| {})
                .unwrap();
            assert_eq!((out.height, out.width), size, "×{scale}");
        }
        let opts = UpscaleOptions {
            size: OutputSize::Scale(10.0),
            ..Default::default()
        };
        let e = Upscaler::new(model(), None, opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("reaches ×3, ×9"), "{e}");
    }

    /// A pass that cannot fit the memory budget is refused before the first pass runs,
    /// in the orientation the self-ensemble gives it too.
    #[test]
    fn every_pass_is_checked_against_the_budget_before_any_runs() {
        let cfg = crate::config::ModelConfig::minimal();
        let up = |budget, self_ensemble| {
            let model = InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
            let opts = UpscaleOptions {
                size: OutputSize::Scale(16.0),
                batch: Some(BatchChoice::Budget(budget)),
                order: Order::RowMajor,
                self_ensemble,
                ..Default::default()
            };
            Upscaler::new(model, None, opts).unwrap()
        };
        let mm = MemoryModel::new(&cfg, DType::F32, &Device::Cpu);
        let need = |(h, w)| mm.estimate(h, w, Order::RowMajor, 1).total();
        // A 2×40 strip upscaled ×16 in two ×4 passes, the second the larger.
        let sizes = up(u64::MAX, 1).pass_sizes(2, 40).unwrap();
        let (first, last) = (sizes[0], sizes[1]);
        assert!(need(first) < need(last));
        let mut calls = 0;
        let e = up(need(first), 1)
            .upscale_rgb(&Planar::new(3, 2, 40, vec![0.5; 240]), &mut |_| calls += 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}×{}", last.1, last.0)), "{e}");
        assert_eq!(calls, 0, "no block may run");
        up(need(last), 1).check_memory(2, 40).unwrap();
    }

    /// A model whose position table limits the image side names the largest input it
    /// takes at the scale asked for, not the sizes of its padded passes.
    #[test]
    fn a_limited_position_table_names_the_largest_input() {
        let cfg = crate::config::ModelConfig {
            rope_table_size: 64,
            rope_position_modulus: 68,
            ..crate::config::ModelConfig::minimal()
        };
        let up = |scale| {
            let model = InfDit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
            one_step_to(model, 2.0, OutputSize::Scale(scale))
        };
        // 256 px per side: 64 px at ×4 (in 8-px blocks), 128 at ×2 (16-px blocks).
        up(4.0).pass_sizes(64, 10).unwrap();
        let e = up(4.0).pass_sizes(65, 10).unwrap_err().to_string();
        assert!(
            e.contains("a 10×65 input") && e.contains("at most 64 px"),
            "{e}"
        );
        up(2.0).pass_sizes(128, 128).unwrap();
        let e = up(2.0).pass_sizes(7, 129).unwrap_err().to_string();
        assert!(e.contains("at most 128 px"), "{e}");
        let e = up(16.0).pass_sizes(17, 3).unwrap_err().to_string();
        assert!(e.contains("at most 16 px"), "{e}");
    }

    /// Passes hand on a clamped image, as if the image had been written between them.
    #[test]
    fn chained_passes_match_passes_run_one_after_the_other() {
        let cfg = crate::config::ModelConfig::minimal();
        // A large output bias makes the outputs overshoot [0, 1].
        let model = || with_output_bias(&cfg, |b| (b * 50.0).unwrap());
        let lr = Planar::new(3, 3, 5, (0..45).map(|i| (i % 5) as f32 / 4.0).collect());
        let by_hand = |size, seed| UpscaleOptions {
            size,
            seed,
            sampler: one_step(model(), 2.0).opts.sampler,
            ..Default::default()
        };
        let x4 = Upscaler::new(model(), None, by_hand(OutputSize::Scale(4.0), 0)).unwrap();
        let x2 = Upscaler::new(model(), None, by_hand(OutputSize::Scale(2.0), 1)).unwrap();
        let x8 = Upscaler::new(model(), None, by_hand(OutputSize::Scale(8.0), 0)).unwrap();
        let first = x4.upscale_rgb(&lr, &mut |_| {}).unwrap();
        let clipped = first.data.iter().filter(|&&v| v == 0.0 || v == 1.0).count();
        assert!(
            clipped > 0 && clipped < first.data.len(),
            "some values clip, not all"
        );
        let chained = x2.upscale_rgb(&first, &mut |_| {}).unwrap();
        let direct = x8.upscale_rgb(&lr, &mut |_| {}).unwrap();
        assert!(direct.max_abs_diff(&chained) < 1e-5);
    }

    /// The image embedding is of the input, not of the padding that makes it whole blocks.
    #[test]
    fn the_image_embedding_sees_the_unpadded_input() {
        let dev = Device::Cpu;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/clip_tiny_visual.safetensors"
        );
        let clip = crate::clip::load_clip_file(Path::new(path), None, &dev, DType::F32).unwrap();
        let cfg = crate::config::ModelConfig {
            vector_dim: clip.cfg.embed_dim,
            ..crate::config::ModelConfig::minimal()
        };
        let model = InfDit::random(&cfg, 3, DType::F32, &dev).unwrap();
        let up = Upscaler::new(model, Some(clip), UpscaleOptions::default()).unwrap();
        let clip = up.clip.as_ref().unwrap();
        let embedding = |cond: Conditioning| cond.vector.unwrap().flatten_all().unwrap();
        let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // 5×7 px, padded to 8×8 for the 32-px blocks of a ×4 pass.
        let lr = Planar::new(
            3,
            5,
            7,
            (0..105).map(|i| (i % 9) as f32 / 4.0 - 1.0).collect(),
        );
        let cond = up.conditioning(&lr, 4).unwrap();
        assert_eq!((cond.lr.height, cond.lr.width), (8, 8));
        let own = clip.encode(&lr).unwrap().flatten_all().unwrap();
        assert_eq!(diff(&embedding(cond), &own), 0.0);
        let padded = clip
            .encode(&pad_reflect(&lr, 8))
            .unwrap()
            .flatten_all()
            .unwrap();
        assert!(
            diff(&own, &padded) > 1e-4,
            "the padding must matter to the test"
        );
        // An image of whole blocks in a ×2 pass: the model's halved LR, as the reference.
        let whole = Planar::new(
            3,
            16,
            16,
            (0..768).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect(),
        );
        let cond = up.conditioning(&whole, 2).unwrap();
        let model_lr = clip.encode(&cond.lr).unwrap().flatten_all().unwrap();
        assert_eq!(diff(&embedding(cond), &model_lr), 0.0);
    }
}
