//! EDM training of Inf-DiT with candle autograd (TRAINING.md): log σ ~ N(P_mean, P_std),
//! loss weight (σ² + σ_d²)/(σ·σ_d)², random RoPE offsets, LR dropout, AdamW, gradient
//! clipping and an EMA of the weights, which is what gets saved for inference.

use super::data::PhotoDataset;
use crate::checkpoint::{embedded_metadata, generate_weights, is_norm_key, Checkpoint};
use crate::config::ModelConfig;
use crate::engine::{gather_blocks, prepare_batch, Conditioning, Positions};
use crate::fsutil::{safetensors_writer, same_path, write_all_atomically, Writer};
use crate::imageops::resize::resize_bicubic;
use crate::imageops::Planar;
use crate::model::{BlockBatch, InfDit, KvCache, Precond};
use crate::profile::stage;
use crate::sampler::MAX_SIGMA;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Hyper-parameters of a run (saved in `train_state.json` beside the checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    /// HR crop side in pixels (a multiple of the model's block size).
    pub crop_px: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub ema_decay: f64,
    /// Probability of replacing a sample's LR image by clipped noise.
    pub lr_dropout: f64,
    pub p_mean: f64,
    pub p_std: f64,
    pub seed: u64,
    pub save_every: usize,
    /// Step from which the learning rate follows a cosine down to `min_learning_rate` at
    /// `steps` (annealing at the end of a run); `None` keeps it constant after warm-up.
    #[serde(default)]
    pub decay_start: Option<usize>,
    #[serde(default)]
    pub min_learning_rate: f64,
    /// Threads preparing examples (decode, crop, degradation) ahead of the device; 0 or 1
    /// prepares them in the training thread. Results depend on the count, not on timing:
    /// example `i` of the run always comes from worker `i mod count`.
    #[serde(default)]
    pub data_workers: usize,
    /// Probability that a crop's LR is a plain bicubic downscale rather than degraded.
    /// Saved so that a resumed run keeps its data mix (runs saved before it was kept
    /// resume with the default).
    #[serde(default = "default_bicubic_prob")]
    pub bicubic_prob: f64,
    /// The photos trained on, saved so that a resumed run keeps its training set and its
    /// held-out photos (runs saved before it was kept have none).
    #[serde(default)]
    pub data: Option<DataSource>,
    /// The options (by flag name: `crop` for `--crop`) that a resumed run took from its
    /// saved state rather than from the command line, so that an error about one says
    /// where its value came from. Not saved.
    #[serde(skip)]
    pub inherited: Vec<&'static str>,
}

/// Where a run's photos come from. The paths are absolute, so that a run resumed from
/// another working folder still finds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub photos: PathBuf,
    /// The manifest whose held-out photos are kept out of training (none: every photo
    /// trains).
    pub manifest: Option<PathBuf>,
}

fn default_bicubic_prob() -> f64 {
    crate::train::degrade::DegradationConfig::default().bicubic_prob
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 4,
            crop_px: 128,
            learning_rate: 3e-4,
            warmup_steps: 100,
            weight_decay: 1e-4,
            grad_clip: 1.0,
            ema_decay: 0.995,
            lr_dropout: 0.07,
            p_mean: -1.0,
            p_std: 1.4,
            seed: 0,
            save_every: 250,
            decay_start: None,
            min_learning_rate: 0.0,
            data_workers: 1,
            bicubic_prob: default_bicubic_prob(),
            data: None,
            inherited: Vec::new(),
        }
    }
}

impl TrainOptions {
    /// Option `flag` (`"min_lr"` for `--min-lr`) with its value, as an error names it:
    /// with where it came from when a resumed run kept it from its saved state.
    pub fn named(&self, flag: &'static str, value: impl std::fmt::Display) -> String {
        let from = if self.inherited.contains(&flag) {
            " (the resumed run's, from its train_state.json)"
        } else {
            ""
        };
        format!("--{} {value}{from}", flag.replace('_', "-"))
    }

    /// Refuses settings that cannot train (they would fail deep inside a step otherwise)
    /// and learning-rate schedules that contradict themselves.
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let n = |flag, value: &dyn std::fmt::Display| self.named(flag, value);
        let checks = [
            (
                self.steps >= 1,
                n("steps", &self.steps) + " must be at least 1",
            ),
            (
                self.batch_size >= 1,
                n("batch_size", &self.batch_size) + " must be at least 1",
            ),
            (
                self.crop_px >= 1,
                n("crop", &self.crop_px) + " must be positive",
            ),
            (
                self.save_every >= 1,
                n("save_every", &self.save_every) + " must be at least 1",
            ),
            (
                self.learning_rate.is_finite() && self.learning_rate >= 0.0,
                n("lr", &self.learning_rate) + " must be a finite number, 0 or more",
            ),
            (
                self.min_learning_rate.is_finite() && self.min_learning_rate >= 0.0,
                n("min_lr", &self.min_learning_rate) + " must be a finite number, 0 or more",
            ),
            (
                self.p_mean.abs() <= MAX_SIGMA.ln() as f64,
                n("p_mean", &self.p_mean)
                    + &format!(
                        " must lie within ±{:.1}: it is the mean log σ, and σ past {MAX_SIGMA} is noise no sampler starts from",
                        MAX_SIGMA.ln()
                    ),
            ),
            (
                self.p_std.is_finite() && self.p_std >= 0.0,
                n("p_std", &self.p_std) + " must be a finite number, 0 or more",
            ),
            (
                self.data_workers <= MAX_DATA_WORKERS,
                n("data_workers", &self.data_workers)
                    + &format!(" must be at most {MAX_DATA_WORKERS}"),
            ),
            (
                unit(self.lr_dropout),
                n("lr_dropout", &self.lr_dropout) + " must lie in [0, 1]",
            ),
            (
                unit(self.bicubic_prob),
                n("bicubic_prob", &self.bicubic_prob) + " must lie in [0, 1]",
            ),
            (
                unit(self.ema_decay),
                format!("the EMA decay {} must lie in [0, 1]", self.ema_decay),
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            bail!("{message}");
        }
        // A decay starting at the last step leaves the rate constant: how a resumed run
        // ends the decay it kept.
        match self.decay_start {
            Some(start) => {
                ensure!(
                    start <= self.steps,
                    "{} is past {}: the learning rate would never decay (--decay-start equal to --steps keeps it constant)",
                    n("decay_start", &start),
                    n("steps", &self.steps)
                );
                // A floor the resumed run kept is moot where its decay ends; one given
                // now says the user expects a decay to it.
                let kept_floor_unused = start == self.steps && self.inherited.contains(&"min_lr");
                ensure!(
                    kept_floor_unused || self.min_learning_rate <= self.learning_rate,
                    "{} is above {}: the decay would raise the learning rate",
                    n("min_lr", &self.min_learning_rate),
                    n("lr", &self.learning_rate)
                );
                ensure!(
                    start == self.steps || start >= self.warmup_steps,
                    "{} is inside the {}-step warm-up, where the rate is still below {}: start the decay at step {1} or later",
                    n("decay_start", &start),
                    self.warmup_steps,
                    n("lr", &self.learning_rate)
                );
            }
            None => ensure!(
                self.min_learning_rate == 0.0,
                "{} needs --decay-start: without a decay the learning rate never goes down to it",
                n("min_lr", &self.min_learning_rate)
            ),
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based): linear warm-up, constant, then the
    /// optional cosine decay, which leaves the rate at step `decay_start` (counted from 1,
    /// as `loss.csv` and `--steps` count) and reaches `min_learning_rate` at the last.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        let n = step + 1;
        let warm = (n as f64 / self.warmup_steps.max(1) as f64).min(1.0);
        let base = self.learning_rate * warm;
        match self.decay_start {
            Some(start) if n >= start && self.steps > start => {
                let t = ((n - start) as f64 / (self.steps - start) as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                self.min_learning_rate + (base - self.min_learning_rate) * cos
            }
            _ => base,
        }
    }
}

/// What a checkpoint directory holds besides the EMA weights, to resume a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    step: usize,
    options: TrainOptions,
}

/// The files of a save, in the order they are renamed into place (see [`Trainer::save`]).
const CONFIG_FILE: &str = "config.json";

/// The most threads preparing examples: far more than any machine's cores, and each
/// holds a decoded photo.
pub const MAX_DATA_WORKERS: usize = 256;
const RAW_FILE: &str = "raw_weights.safetensors";
const EMA_FILE: &str = "weights.safetensors";
const STATE_FILE: &str = "train_state.json";

/// The safetensors metadata key under which a run's weight files record the step they
/// were saved at, so that a resume can tell the files of two saves apart.
const STEP_METADATA_KEY: &str = "infdit.train_step";

fn text_writer(text: &str) -> Writer<'_> {
    Box::new(move |p| Ok(std::fs::write(p, text)?))
}

/// The step a resume continues from, given the steps recorded by the state file and by
/// the raw and EMA weight files. A save renames its files raw weights, EMA weights, state
/// (see [`Trainer::save`]), so a save cut short between two renames leaves the EMA
/// weights, the state or both one save behind the raw weights, never ahead: the run goes
/// on from the raw weights, what the optimisation continues, and says which file lags.
/// Its options are the state file's either way, since a run's options change only when
/// it is resumed.
fn resume_step(dir: &Path, state: usize, raw: usize, ema: usize) -> Result<usize> {
    ensure!(
        state <= raw && ema <= raw,
        "cannot resume from {}: its raw weights are from step {raw}, its EMA weights from step {ema} and {STATE_FILE} from step {state}, which no save leaves",
        dir.display()
    );
    if ema < raw {
        tracing::warn!(
            "{}: the EMA weights are from step {ema} and the raw weights from step {raw} (a save was cut short): the average goes on from step {ema}'s",
            dir.display()
        );
    }
    if state < raw {
        tracing::warn!(
            "{}: {STATE_FILE} is from step {state} and the raw weights from step {raw} (a save was cut short): resuming at step {raw}",
            dir.display()
        );
    }
    Ok(raw)
}

/// Initial weights: Xavier-normal matrices, zero biases, unit LayerNorms, small
/// position tables, and zero adaLN and output projections so that every layer starts as
/// an identity and D(x, σ) starts as c_skip·x (as DiT and the reference initialise).
pub fn init_weights(cfg: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    generate_weights(cfg, seed, |name, shape| {
        let zero =
            name.contains("adaLN_modulation") || name.starts_with("mixins.final_layer.linear");
        if is_norm_key(name) {
            (if name.ends_with(".weight") { 1.0 } else { 0.0 }, 0.0)
        } else if zero || name.ends_with(".bias") {
            (0.0, 0.0)
        } else if shape.len() == 1
            || name.contains("position_embedding")
            || name.contains("re_pos_embed")
        {
            (0.0, 0.02)
        } else {
            let fan_in: usize = shape[1..].iter().product();
            (0.0, (2.0 / (fan_in + shape[0]) as f32).sqrt())
        }
    })
}

fn normal(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
        .collect()
}

/// `hr + σ·ε` with standard normal `ε` drawn from `rng`.
fn noised(hr: &Planar, sigma: f32, rng: &mut impl Rng) -> Planar {
    let eps = Planar::new(
        hr.channels,
        hr.height,
        hr.width,
        normal(rng, hr.data.len(), 1.0),
    );
    hr.zip_map(&eps, |a, e| a + sigma * e)
}

/// EDM loss weight `(σ² + σ_d²)/(σ·σ_d)²`.
fn loss_weight(sigma: f32, sigma_data: f32) -> f32 {
    (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data).powi(2)
}

/// One training example, ready for the network.
struct Example {
    /// What the denoiser should output: the HR crop, or HR − bicubic(LR) for a residual
    /// model.
    target: Planar,
    x: Planar,
    cond: Conditioning,
    sigma: f32,
}

/// Draws one training example: a crop pair, LR dropout, σ, the noised crop and RoPE offsets.
fn make_example(
    cfg: &ModelConfig,
    opts: &TrainOptions,
    rng: &mut rand::rngs::StdRng,
    data: &mut PhotoDataset,
) -> Result<Example> {
    let (hr, lr) = data.sample(rng, opts.crop_px)?;
    let (h, w) = (hr.height, hr.width);
    let up = resize_bicubic(&lr, h, w, true).map(|v| v.clamp(-1.0, 1.0));
    // The residual is taken from the real LR even when the condition is dropped.
    let target = if cfg.residual {
        hr.zip_map(&up, |a, b| a - b)
    } else {
        hr
    };
    let (lr, concat_lr) = if rng.gen_bool(opts.lr_dropout) {
        let noise = |rng: &mut rand::rngs::StdRng, c, h, w| {
            Planar::new(c, h, w, normal(rng, c * h * w, 1.0)).map(|v| v.clamp(-1.0, 1.0))
        };
        (noise(rng, 3, lr.height, lr.width), noise(rng, 3, h, w))
    } else {
        (lr, up)
    };
    let log_sigma = Normal::new(opts.p_mean, opts.p_std)?.sample(rng);
    // The tail of a wide distribution would reach σ whose square leaves f32's range.
    let sigma = (log_sigma.exp() as f32).clamp(1e-3, MAX_SIGMA);
    let x = noised(&target, sigma, rng);
    // Random RoPE offsets so the model sees the whole position table (`--random-position`).
    let tokens = h.max(w) / cfg.patch_size;
    let max_off = cfg.rope_positions().saturating_sub(tokens);
    let positions = Positions::Offset {
        row: rng.gen_range(0..=max_off),
        col: rng.gen_range(0..=max_off),
    };
    let cond = Conditioning {
        concat_lr,
        lr,
        vector: None,
        positions,
    };
    cond.check(cfg, &x)
        .context("the photo sampler's scale is not the model's")?;
    Ok(Example {
        target,
        x,
        cond,
        sigma,
    })
}

/// Where a run's weights come from.
pub enum Start<'a> {
    /// Fresh initial weights ([`init_weights`]).
    Scratch,
    /// Continue the run saved in this directory (raw weights, EMA, step).
    Resume(&'a Path),
    /// A new run (step 0) from these weights, e.g. another model's EMA weights to fine-tune.
    Weights(HashMap<String, Tensor>),
}

pub struct Trainer {
    cfg: ModelConfig,
    opts: TrainOptions,
    device: Device,
    varmap: VarMap,
    model: InfDit,
    ema: HashMap<String, Tensor>,
    step: usize,
    rng: rand::rngs::StdRng,
    /// The folder of the run resumed: its loss log is carried into a new output folder.
    resumed: Option<PathBuf>,
}

impl Trainer {
    pub fn new(cfg: ModelConfig, opts: TrainOptions, device: Device, start: Start) -> Result<Self> {
        cfg.validate()?;
        opts.validate()?;
        // Training draws no CLIP embeddings of its crops.
        ensure!(
            cfg.vector_dim == 0,
            "training models conditioned on an image embedding (vector_dim {}) is not supported; use a config with vector_dim 0",
            cfg.vector_dim
        );
        if !opts.crop_px.is_multiple_of(cfg.image_block_size_px) {
            bail!(
                "{} must be a multiple of the block size {}",
                opts.named("crop", opts.crop_px),
                cfg.image_block_size_px
            );
        }
        let resumed = match &start {
            Start::Resume(dir) => Some(dir.to_path_buf()),
            _ => None,
        };
        let (weights, ema, step) = match start {
            Start::Resume(dir) => {
                let state = read_state(dir)?;
                // Every weight the config needs, of its shape: a missing one would
                // otherwise be created fresh without a word. Files saved before steps
                // were recorded are taken to be the state's.
                let load = |name: &str| {
                    let path = dir.join(name);
                    (|| {
                        let weights = Checkpoint::open(&path)?.model_tensors(
                            &cfg,
                            DType::F32,
                            &Device::Cpu,
                        )?;
                        let step = match embedded_metadata(&path, STEP_METADATA_KEY)? {
                            Some(s) => s.parse().with_context(|| {
                                format!("{}: unreadable step {s:?}", path.display())
                            })?,
                            None => state.step,
                        };
                        anyhow::Ok((weights, step))
                    })()
                    .with_context(|| format!("cannot resume from {}", dir.display()))
                };
                let (raw, raw_step) = load(RAW_FILE)?;
                let (ema, ema_step) = load(EMA_FILE)?;
                (raw, ema, resume_step(dir, state.step, raw_step, ema_step)?)
            }
            Start::Scratch => {
                let w = init_weights(&cfg, opts.seed)?;
                (w.clone(), w, 0)
            }
            Start::Weights(w) => (w.clone(), w, 0),
        };
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("var map lock");
            for (name, t) in &weights {
                data.insert(
                    name.clone(),
                    Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&device)?)?,
                );
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = InfDit::new(&cfg, vb)?;
        let ema = ema
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&device)?)))
            .collect::<Result<_>>()?;
        // Each resumed run continues the random stream at a distinct point.
        let rng = rand::rngs::StdRng::seed_from_u64(opts.seed.wrapping_add(step as u64 * 7919));
        Ok(Self {
            cfg,
            opts,
            device,
            varmap,
            model,
            ema,
            step,
            rng,
            resumed,
        })
    }

    /// EDM loss of one batch of examples (differentiable).
    fn loss(&self, examples: &[Example]) -> Result<Tensor> {
        let s = self.cfg.image_block_size_px;
        let sd = self.cfg.sigma_data as f32;
        let mut batches = Vec::new();
        let (mut x_blocks, mut target_blocks) = (Vec::new(), Vec::new());
        let (mut c_skip, mut c_out, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        for (k, ex) in examples.iter().enumerate() {
            let pre = Precond::new(ex.sigma, sd);
            let blocks: Vec<(usize, usize)> = (0..ex.x.height / s)
                .flat_map(|i| (0..ex.x.width / s).map(move |j| (i, j)))
                .collect();
            let emb = self.model.emb_act(&[pre.c_noise], None)?;
            let emb = emb
                .broadcast_as((blocks.len(), 1, self.cfg.hidden_size))?
                .contiguous()?;
            batches.push(
                prepare_batch(&self.model, k, &blocks, &ex.x, &ex.cond, pre.c_in)?
                    .upload(&self.model, &emb)?,
            );
            gather_blocks(&ex.x, &blocks, s, &mut x_blocks);
            gather_blocks(&ex.target, &blocks, s, &mut target_blocks);
            let w = loss_weight(ex.sigma, sd);
            for _ in &blocks {
                c_skip.push(pre.c_skip);
                c_out.push(pre.c_out);
                weight.push(w);
            }
        }
        let cat = |f: fn(&BlockBatch) -> &Tensor| {
            Tensor::cat(&batches.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let batch = BlockBatch {
            ids: batches.iter().flat_map(|b| b.ids.clone()).collect(),
            x: cat(|b| &b.x)?,
            lr: cat(|b| &b.lr)?,
            lr_mask: cat(|b| &b.lr_mask)?,
            rope_cos: cat(|b| &b.rope_cos)?,
            rope_sin: cat(|b| &b.rope_sin)?,
            emb_act: cat(|b| &b.emb_act)?,
        };
        let n = batch.ids.len();
        let dev = &self.device;
        let per_block = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), dev);
        let f = self
            .model
            .forward_blocks(&batch, &mut KvCache::new(self.cfg.num_layers))?;
        let x = Tensor::from_vec(x_blocks, (n, 3, s, s), dev)?;
        let target = Tensor::from_vec(target_blocks, (n, 3, s, s), dev)?;
        let denoised =
            (f.broadcast_mul(&per_block(c_out)?)? + x.broadcast_mul(&per_block(c_skip)?)?)?;
        let err = (denoised - target)?.sqr()?;
        Ok(err.broadcast_mul(&per_block(weight)?)?.mean_all()?)
    }

    /// Runs to `opts.steps`, saving into `out` every `save_every` steps and at the end.
    pub fn run(
        &mut self,
        data: &mut PhotoDataset,
        out: &Path,
        on_step: &mut dyn FnMut(usize, f32, f64),
    ) -> Result<()> {
        if self.step >= self.opts.steps {
            bail!(
                "the run is already at step {} of --steps {}: nothing to train (give more --steps)",
                self.step,
                self.opts.steps
            );
        }
        let workers = self.opts.data_workers;
        if workers <= 1 {
            let (cfg, opts) = (self.cfg.clone(), self.opts.clone());
            return self.train_loop(out, on_step, &mut |rng| {
                make_example(&cfg, &opts, rng, data)
            });
        }
        std::thread::scope(|scope| {
            let receivers: Vec<_> = (0..workers)
                .map(|i| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(self.opts.batch_size);
                    let (cfg, opts) = (self.cfg.clone(), self.opts.clone());
                    let mut data = data.fresh_copy();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        self.opts.seed
                            ^ (self.step as u64).wrapping_mul(7919)
                            ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    scope.spawn(move || {
                        // Ends when the training loop drops the receiver.
                        while tx
                            .send(make_example(&cfg, &opts, &mut rng, &mut data))
                            .is_ok()
                        {}
                    });
                    rx
                })
                .collect();
            let mut next = 0usize;
            let mut draw = |_: &mut rand::rngs::StdRng| -> Result<Example> {
                let rx = &receivers[next % workers];
                next += 1;
                rx.recv().context("a data worker stopped")?
            };
            self.train_loop(out, on_step, &mut draw)
        })
    }

    /// The optimisation loop; `draw` makes the next example (from the trainer's RNG or a
    /// data worker).
    fn train_loop(
        &mut self,
        out: &Path,
        on_step: &mut dyn FnMut(usize, f32, f64),
        draw: &mut dyn FnMut(&mut rand::rngs::StdRng) -> Result<Example>,
    ) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let vars = self.varmap.all_vars();
        let mut opt = AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: self.opts.learning_rate,
                weight_decay: self.opts.weight_decay,
                ..Default::default()
            },
        )?;
        let names = self.named_vars();
        let log_path = out.join("loss.csv");
        // Resumed into another folder, the run keeps its history there.
        let history = self.resumed.as_ref().map(|dir| dir.join("loss.csv"));
        if let Some(history) = history.filter(|h| h.is_file()) {
            if !log_path.exists() {
                std::fs::copy(&history, &log_path)
                    .with_context(|| format!("copying {}", history.display()))?;
            }
        }
        // A resumed run continues from its last checkpoint: drop rows logged after it.
        if let Ok(text) = std::fs::read_to_string(&log_path) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.split(',')
                        .next()
                        .and_then(|s| s.parse::<usize>().ok())
                        .is_none_or(|s| s <= self.step)
                })
                .collect();
            std::fs::write(&log_path, kept.join("\n") + "\n")?;
        }
        // Opened at the first logged step: a run that fails before it leaves no log.
        let mut log = None;
        // The step whose save `out` holds: a run resumed in place starts with its own.
        let mut saved = self
            .resumed
            .as_deref()
            .filter(|dir| same_path(dir, out))
            .map(|_| self.step);
        let start = Instant::now();
        while self.step < self.opts.steps {
            let lr = self.opts.learning_rate_at(self.step);
            opt.set_learning_rate(lr);
            let dev = self.device.clone();
            // `stage` returns candle errors; these results stay anyhow errors inside it so
            // that their causes are kept.
            let examples = stage("train/data", &dev, || {
                Ok((0..self.opts.batch_size)
                    .map(|_| draw(&mut self.rng))
                    .collect::<Result<Vec<_>>>())
            })??;
            let loss = stage("train/forward", &dev, || Ok(self.loss(&examples)))??;
            let mut grads = stage("train/backward", &dev, || loss.backward())?;
            let loss_v = loss.to_scalar::<f32>()?;
            // One device-to-host read for the norm, not one per parameter (each is a sync).
            let squares = vars
                .iter()
                .filter_map(|v| grads.get(v.as_tensor()))
                .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
                .collect::<candle_core::Result<Vec<_>>>()?;
            let norm = Tensor::stack(&squares, 0)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?
                .sqrt();
            // A NaN or infinite step would poison every weight and each later save.
            if !(loss_v.is_finite() && norm.is_finite()) {
                let kept = match saved {
                    Some(s) => format!("{} keeps the save of step {s}", out.display()),
                    None => format!(
                        "nothing was saved in {} (its loss.csv logs the steps run)",
                        out.display()
                    ),
                };
                bail!(
                    "training diverged at step {}: loss {loss_v}, gradient norm {norm}; this step is not applied and {kept} (a lower --lr may help)",
                    self.step + 1
                );
            }
            if norm > self.opts.grad_clip {
                let k = self.opts.grad_clip / norm;
                for v in &vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), (g * k)?);
                    }
                }
            }
            opt.step(&grads)?;
            let d = self
                .opts
                .ema_decay
                .min((1 + self.step) as f64 / (10 + self.step) as f64);
            for (name, var) in &names {
                let e = &self.ema[name];
                let updated = ((e * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
                self.ema.insert(name.clone(), updated);
            }
            self.step += 1;
            let log = match &mut log {
                Some(log) => log,
                None => log.insert(open_log(&log_path)?),
            };
            writeln!(
                log,
                "{},{loss_v},{norm},{lr},{:.1}",
                self.step,
                start.elapsed().as_secs_f64()
            )?;
            on_step(self.step, loss_v, norm);
            if self.step.is_multiple_of(self.opts.save_every) || self.step == self.opts.steps {
                self.save(out)?;
                saved = Some(self.step);
                tracing::info!("saved step {} in {}", self.step, out.display());
            }
        }
        Ok(())
    }

    /// Writes `config.json`, EMA `weights.safetensors` (the inference model), and the raw
    /// weights and `train_state.json` (step and options) for resuming.
    ///
    /// A save is one step's: every file is written to a temporary file first and renamed
    /// into place only when all are written, so an error or an interrupt while writing
    /// leaves the previous save whole. The renames go config, raw weights, EMA weights,
    /// state, and both weight files record their step, so that a save cut short between
    /// two renames leaves files that a resume can tell apart and order (`resume_step`):
    /// the state is never ahead of the weights it describes. The loss log is appended at
    /// every step and cut back to the resumed step on resume.
    pub fn save(&self, out: &Path) -> Result<()> {
        let cfg_json = serde_json::to_string_pretty(&self.cfg)?;
        let state = serde_json::to_string_pretty(&TrainState {
            step: self.step,
            options: self.opts.clone(),
        })?;
        let mut metadata = crate::checkpoint::model_metadata(&self.cfg)?;
        metadata.insert(STEP_METADATA_KEY.to_string(), self.step.to_string());
        let raw: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        write_all_atomically(vec![
            (out.join(CONFIG_FILE), text_writer(&cfg_json)),
            (
                out.join(RAW_FILE),
                safetensors_writer(&raw, Some(metadata.clone())),
            ),
            (
                out.join(EMA_FILE),
                safetensors_writer(&self.ema, Some(metadata)),
            ),
            (out.join(STATE_FILE), text_writer(&state)),
        ])
    }

    pub fn step(&self) -> usize {
        self.step
    }

    /// The trainable variables with their checkpoint names.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("var map lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Opens the loss log for appending; a new log starts with its header.
fn open_log(path: &Path) -> Result<std::fs::File> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    if log.metadata()?.len() == 0 {
        writeln!(log, "step,loss,grad_norm,learning_rate,seconds")?;
    }
    Ok(log)
}

/// The step and options of the run saved in `dir`.
fn read_state(dir: &Path) -> Result<TrainState> {
    if !dir.is_dir() {
        let why = if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        bail!("cannot resume from {}: {why}", dir.display());
    }
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        bail!(
            "cannot resume from {}: it holds no save ({STATE_FILE} is missing)",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot resume: reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("cannot resume: parsing {}", path.display()))
}

/// Where a resumed run's options come from.
pub fn saved_options(dir: &Path) -> Result<TrainOptions> {
    Ok(read_state(dir)?.options)
}

/// The small config the built-in model uses: 64-px blocks (16×16 tokens) keep attention
/// affordable on a CPU while keeping the block attention and LR cross-attention intact.
pub fn small_config() -> ModelConfig {
    ModelConfig {
        num_layers: 4,
        hidden_size: 128,
        num_attention_heads: 4,
        mlp_inner_size: 512,
        image_block_size_px: 64,
        vector_dim: 0,
        ..ModelConfig::released()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Batching, Engine, EngineOptions, Order};

    #[test]
    fn unusable_options_are_refused() {
        assert!(TrainOptions::default().validate().is_ok());
        let bad = [
            TrainOptions {
                steps: 0,
                ..Default::default()
            },
            TrainOptions {
                batch_size: 0,
                ..Default::default()
            },
            TrainOptions {
                learning_rate: -1.0,
                ..Default::default()
            },
            TrainOptions {
                p_std: -0.5,
                ..Default::default()
            },
            TrainOptions {
                p_mean: f64::NAN,
                ..Default::default()
            },
            TrainOptions {
                p_mean: 30.0,
                ..Default::default()
            },
            TrainOptions {
                data_workers: 1_000_000,
                ..Default::default()
            },
            TrainOptions {
                bicubic_prob: 1.5,
                ..Default::default()
            },
            TrainOptions {
                lr_dropout: f64::NAN,
                ..Default::default()
            },
            // Schedules that contradict themselves.
            TrainOptions {
                learning_rate: 1e-4,
                min_learning_rate: 1.0,
                decay_start: Some(10),
                ..Default::default()
            },
            TrainOptions {
                decay_start: Some(2001),
                ..Default::default()
            },
            TrainOptions {
                min_learning_rate: 1e-5,
                ..Default::default()
            },
        ];
        for opts in bad {
            let e = Trainer::new(
                ModelConfig::minimal(),
                opts.clone(),
                Device::Cpu,
                Start::Scratch,
            )
            .err()
            .unwrap_or_else(|| panic!("accepted {opts:?}"));
            assert!(e.to_string().starts_with("--"), "{e}");
        }
    }

    /// A decay starting at the last step keeps the rate constant, whatever floor the
    /// resumed run kept: how a resumed run ends the decay it kept. A floor given anew must
    /// not exceed the rate, and a decay may not start inside the warm-up.
    #[test]
    fn schedules_are_checked_against_each_other() {
        let opts = TrainOptions {
            steps: 100,
            decay_start: Some(100),
            learning_rate: 1e-4,
            min_learning_rate: 1e-3,
            inherited: vec!["min_lr"],
            ..Default::default()
        };
        opts.validate().unwrap();
        assert_eq!(opts.learning_rate_at(99), 1e-4);
        let e = TrainOptions {
            inherited: Vec::new(),
            ..opts.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--min-lr 0.001 is above --lr 0.0001: the decay would raise the learning rate"
        );
        let e = TrainOptions {
            steps: 300,
            decay_start: Some(60),
            min_learning_rate: 0.0,
            ..opts.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--decay-start 60 is inside the 100-step warm-up"),
            "{e}"
        );
        TrainOptions {
            steps: 300,
            decay_start: Some(100),
            min_learning_rate: 0.0,
            ..opts.clone()
        }
        .validate()
        .unwrap();
        // A kept floor that a decay would go to is refused too.
        let e = TrainOptions {
            decay_start: Some(50),
            ..opts.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--min-lr 0.001 (the resumed run's, from its train_state.json) is above --lr 0.0001: the decay would raise the learning rate"
        );
        let e = TrainOptions {
            decay_start: Some(101),
            inherited: vec!["decay_start"],
            ..opts
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--decay-start 101 (the resumed run's, from its train_state.json) is past --steps 100:"),
            "{e}"
        );
    }

    /// An error about a value a resumed run kept says so, rather than blaming a flag the
    /// user did not give.
    #[test]
    fn errors_name_where_a_value_came_from() {
        let opts = TrainOptions {
            crop_px: 65,
            ..Default::default()
        };
        let refuse = |opts: &TrainOptions| {
            Trainer::new(
                ModelConfig::minimal(),
                opts.clone(),
                Device::Cpu,
                Start::Scratch,
            )
            .err()
            .expect("refused")
            .to_string()
        };
        assert_eq!(
            refuse(&opts),
            "--crop 65 must be a multiple of the block size 32"
        );
        let kept = TrainOptions {
            inherited: vec!["crop", "lr"],
            ..opts
        };
        assert_eq!(
            refuse(&kept),
            "--crop 65 (the resumed run's, from its train_state.json) must be a multiple of the block size 32"
        );
    }

    /// A save cut short between its renames leaves the EMA weights or the state one save
    /// behind the raw weights, and the run resumes at the raw weights' step; files in an
    /// order no save leaves are refused.
    #[test]
    fn resuming_after_a_save_cut_short() -> Result<()> {
        let cfg = ModelConfig::minimal();
        let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let opts = TrainOptions::default();
        let mut trainer = Trainer::new(cfg.clone(), opts.clone(), Device::Cpu, Start::Scratch)?;
        trainer.step = 1;
        trainer.save(one.path())?;
        trainer.step = 2;
        trainer.save(two.path())?;
        // The files of `newer` from the second save, the others from the first.
        let resume = |newer: &[&str]| -> Result<usize> {
            let dir = tempfile::tempdir()?;
            for f in [CONFIG_FILE, RAW_FILE, EMA_FILE, STATE_FILE] {
                let from = if newer.contains(&f) { &two } else { &one };
                std::fs::copy(from.path().join(f), dir.path().join(f))?;
            }
            let t = Trainer::new(
                cfg.clone(),
                opts.clone(),
                Device::Cpu,
                Start::Resume(dir.path()),
            )?;
            Ok(t.step)
        };
        assert_eq!(resume(&[])?, 1);
        assert_eq!(resume(&[RAW_FILE])?, 2);
        assert_eq!(resume(&[RAW_FILE, EMA_FILE])?, 2);
        assert_eq!(resume(&[RAW_FILE, EMA_FILE, STATE_FILE])?, 2);
        for newer in [&[EMA_FILE][..], &[STATE_FILE], &[EMA_FILE, STATE_FILE]] {
            let e = resume(newer).unwrap_err().to_string();
            assert!(e.contains("which no save leaves"), "{newer:?}: {e}");
        }
        Ok(())
    }

    #[test]
    fn models_conditioned_on_an_image_embedding_are_refused() {
        let cfg = ModelConfig {
            vector_dim: 16,
            ..ModelConfig::minimal()
        };
        let e = Trainer::new(cfg, TrainOptions::default(), Device::Cpu, Start::Scratch)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("image embedding"), "{e}");
    }

    /// A saved run whose weights lack one the config needs, or hold one of another
    /// shape, is refused with the name; before, the weight was made afresh and the EMA
    /// update panicked.
    #[test]
    fn resuming_checks_the_saved_weights_against_the_config() -> Result<()> {
        let cfg = ModelConfig::minimal();
        let dir = tempfile::tempdir()?;
        Trainer::new(
            cfg.clone(),
            TrainOptions::default(),
            Device::Cpu,
            Start::Scratch,
        )?
        .save(dir.path())?;
        let resume = |cfg: &ModelConfig| {
            Trainer::new(
                cfg.clone(),
                TrainOptions::default(),
                Device::Cpu,
                Start::Resume(dir.path()),
            )
            .map(|_| ())
        };
        resume(&cfg)?;
        let wider = ModelConfig {
            mlp_inner_size: cfg.mlp_inner_size * 2,
            ..cfg.clone()
        };
        let e = format!("{:#}", resume(&wider).expect_err("refused"));
        assert!(
            e.contains("cannot resume") && e.contains("dense_h_to_4h"),
            "{e}"
        );
        let deeper = ModelConfig {
            num_layers: cfg.num_layers + 1,
            ..cfg
        };
        let e = format!("{:#}", resume(&deeper).expect_err("refused"));
        assert!(e.contains("missing transformer.layers."), "{e}");
        Ok(())
    }

    /// A ×2 model trains on ×2 pairs; pairs of another ratio are an error, not windows
    /// of the wrong LR.
    #[test]
    fn examples_follow_the_models_scale() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let img = image::RgbImage::from_fn(200, 160, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 5 + x) as u8, ((x ^ y) & 255) as u8])
        });
        img.save(dir.path().join("p.png"))?;
        let cfg = ModelConfig {
            sr_scale: 2,
            ..ModelConfig::minimal()
        };
        let opts = TrainOptions {
            crop_px: 64,
            ..Default::default()
        };
        let draw = |scale: usize| {
            let data = PhotoDataset::open(dir.path(), None)?;
            let mut sample_cfg = data.config().clone();
            sample_cfg.scale = scale;
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            make_example(&cfg, &opts, &mut rng, &mut data.with_config(sample_cfg))
        };
        let ex = draw(2)?;
        assert_eq!((ex.cond.lr.height, ex.cond.lr.width), (32, 32));
        let e = format!("{:#}", draw(4).err().expect("refused"));
        assert!(e.contains("not 1/2"), "{e}");
        Ok(())
    }

    /// Config, trainer, its weights and two examples.
    type Setup = (ModelConfig, Trainer, HashMap<String, Tensor>, Vec<Example>);

    /// A trainer on the minimal config with non-zero random weights (so that every
    /// parameter matters) and two examples at different noise levels.
    fn setup() -> Result<Setup> {
        let cfg = ModelConfig::minimal();
        let trainer = Trainer::new(
            cfg.clone(),
            TrainOptions::default(),
            Device::Cpu,
            Start::Scratch,
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (h, w) = (2 * cfg.image_block_size_px, 3 * cfg.image_block_size_px);
        let weights: HashMap<String, Tensor> = init_weights(&cfg, 1)?
            .into_iter()
            .map(|(k, t)| {
                let noise = Tensor::randn_like(&t, 0.0, 0.05)?;
                Ok((k, (t + noise)?))
            })
            .collect::<Result<_>>()?;
        for (name, var) in trainer.varmap.data().lock().expect("var map lock").iter() {
            var.set(&weights[name])?;
        }
        let examples: Vec<Example> = [0.05f32, 0.7]
            .into_iter()
            .map(|sigma| {
                let hr = Planar::new(3, h, w, normal(&mut rng, 3 * h * w, 0.4));
                let lr = resize_bicubic(&hr, h / cfg.sr_scale, w / cfg.sr_scale, true);
                let concat_lr = resize_bicubic(&lr, h, w, true).map(|v| v.clamp(-1.0, 1.0));
                let x = noised(&hr, sigma, &mut rng);
                let cond = Conditioning {
                    concat_lr,
                    lr,
                    vector: None,
                    positions: Positions::Offset { row: 5, col: 9 },
                };
                Example {
                    target: hr,
                    x,
                    cond,
                    sigma,
                }
            })
            .collect();
        Ok((cfg, trainer, weights, examples))
    }

    /// Every parameter must receive the true gradient of the loss: a kernel without a
    /// backward pass would silently cut the graph (the attention softmax once did).
    #[test]
    fn every_parameter_gets_the_gradient_of_the_loss() -> Result<()> {
        let (_, trainer, weights, examples) = setup()?;
        let grads = trainer.loss(&examples)?.backward()?;
        let vars = trainer.named_vars();
        let mut analytic = 0f64;
        let mut dirs = HashMap::new();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0, "zero gradient for {name}");
            let d = Tensor::randn_like(var.as_tensor(), 0.0, 1e-3)?;
            analytic += (g * &d)?.sum_all()?.to_scalar::<f32>()? as f64;
            dirs.insert(name.clone(), d);
        }
        // Central difference of the loss along the random direction.
        let loss_at = |sign: f64| -> Result<f64> {
            for (name, var) in &vars {
                var.set(&(&weights[name] + (&dirs[name] * sign)?)?)?;
            }
            Ok(trainer.loss(&examples)?.to_scalar::<f32>()? as f64)
        };
        let numeric = (loss_at(1.0)? - loss_at(-1.0)?) / 2.0;
        assert!(
            (numeric - analytic).abs() < 0.02 * analytic.abs() + 1e-6,
            "directional derivative: numeric {numeric}, analytic {analytic}"
        );
        Ok(())
    }

    /// The loss the trainer differentiates must be the EDM loss of the very denoiser
    /// inference runs, for several images of one batch at different noise levels.
    #[test]
    fn training_loss_equals_the_loss_of_the_inference_denoiser() -> Result<()> {
        let (cfg, trainer, weights, examples) = setup()?;
        let trained = trainer.loss(&examples)?.to_scalar::<f32>()?;

        let model = InfDit::new(
            &cfg,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        let engine = Engine::new(
            &model,
            EngineOptions {
                batching: Batching::Blocks(2),
                order: Order::Auto,
            },
        );
        let sd = cfg.sigma_data as f32;
        let mut reference = 0f64;
        for ex in &examples {
            let d = engine.denoise(&ex.x, ex.sigma, &ex.cond, &mut |_| {})?;
            let weight = loss_weight(ex.sigma, sd);
            let mse = d
                .data
                .iter()
                .zip(&ex.target.data)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / d.data.len() as f64;
            reference += weight as f64 * mse / examples.len() as f64;
        }
        let rel = (trained as f64 - reference).abs() / reference;
        assert!(rel < 1e-4, "trainer {trained} vs inference {reference}");
        Ok(())
    }

    /// A residual model's target is HR − bicubic(LR) of the same crop, drawn with the
    /// same random stream as the HR target of an image model.
    #[test]
    fn residual_examples_target_the_difference_from_the_bicubic_upsample() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let img = image::RgbImage::from_fn(200, 160, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 5 + x) as u8, ((x ^ y) & 255) as u8])
        });
        img.save(dir.path().join("p.png"))?;
        let opts = TrainOptions {
            crop_px: 64,
            lr_dropout: 0.0,
            ..Default::default()
        };
        let draw = |residual: bool| -> Result<Example> {
            let cfg = ModelConfig {
                residual,
                ..ModelConfig::minimal()
            };
            let mut data = PhotoDataset::open(dir.path(), None)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            make_example(&cfg, &opts, &mut rng, &mut data)
        };
        let (image, residual) = (draw(false)?, draw(true)?);
        assert_eq!(image.sigma, residual.sigma);
        let restored = residual
            .target
            .zip_map(&residual.cond.concat_lr, |r, u| r + u);
        let err = restored.max_abs_diff(&image.target);
        assert!(err < 1e-6, "{err}");
        let t = &residual.target;
        let spread = t.max_abs_diff(&Planar::zeros(t.channels, t.height, t.width));
        assert!(spread > 0.01, "the residual is not trivially zero");
        Ok(())
    }

    #[test]
    fn learning_rate_warms_up_holds_then_decays_to_the_floor() {
        let mut o = TrainOptions {
            steps: 1000,
            learning_rate: 1e-3,
            warmup_steps: 100,
            ..Default::default()
        };
        assert!((o.learning_rate_at(0) - 1e-5).abs() < 1e-12);
        assert_eq!(o.learning_rate_at(99), 1e-3);
        assert_eq!(o.learning_rate_at(999), 1e-3);
        o.decay_start = Some(600);
        o.min_learning_rate = 1e-4;
        // Step 600 (index 599) still at the full rate, step 800 halfway down, the last
        // step (1000) at the floor.
        assert_eq!(o.learning_rate_at(598), 1e-3);
        assert_eq!(o.learning_rate_at(599), 1e-3);
        assert!(o.learning_rate_at(600) < 1e-3);
        assert!((o.learning_rate_at(799) - 5.5e-4).abs() < 1e-12);
        assert!((o.learning_rate_at(999) - 1e-4).abs() < 1e-15);
    }
}
