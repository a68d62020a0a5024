//! `infdit train`: trains a model on photos with the EDM objective.

use super::parse_device;
use crate::checkpoint::ModelSource;
use crate::config::ModelConfig;
use crate::train::data::PhotoDataset;
use crate::train::trainer::{saved_options, small_config, Start, TrainOptions, Trainer};
use anyhow::{bail, ensure, Result};
use candle_core::DType;
use clap::Args;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// The manifest of the photos `scripts/fetch-training-photos.sh` fetches.
const DEFAULT_MANIFEST: &str = "scripts/training-photos.manifest.tsv";

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Photo directory (see scripts/fetch-training-photos.sh).
    #[arg(long, default_value = "data/photos")]
    data: PathBuf,
    /// Manifest whose `holdout` photos are kept out of training [default:
    /// scripts/training-photos.manifest.tsv where it exists].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Output directory for config.json, weights.safetensors (EMA) and the loss log.
    #[arg(long, short)]
    out: PathBuf,
    /// Model config.json (default: the small built-in architecture).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run saved in this directory (with its config).
    #[arg(long, conflicts_with_all = ["init", "config", "residual", "sigma_data"])]
    resume: Option<PathBuf>,
    /// Start a new run from this model's weights (directory or checkpoint) instead of
    /// fresh ones, e.g. to fine-tune; its config is used unless --config is given.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Diffuse the residual HR − bicubic(LR) instead of the HR image (sets the config's
    /// `residual`; see README).
    #[arg(long)]
    residual: bool,
    /// The config's σ_data: the standard deviation of what is diffused (0.5 for images).
    #[arg(long)]
    sigma_data: Option<f64>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// HR crop side in pixels (multiple of the block size).
    #[arg(long)]
    crop: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Anneal the learning rate from this step on (cosine down to --min-lr at --steps).
    #[arg(long)]
    decay_start: Option<usize>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Threads preparing training examples ahead of the device (the result depends on
    /// this count; default 1).
    #[arg(long)]
    data_workers: Option<usize>,
    #[arg(long)]
    save_every: Option<usize>,
    /// Mean of log σ for the training noise levels (EDM's P_mean; the official recipe: -1.0).
    #[arg(long, allow_hyphen_values = true)]
    p_mean: Option<f64>,
    /// Standard deviation of log σ (EDM's P_std; the official recipe: 1.4).
    #[arg(long)]
    p_std: Option<f64>,
    /// Probability of replacing a crop's LR image by noise (the official recipe: 0.07).
    #[arg(long)]
    lr_dropout: Option<f64>,
    /// Probability that a crop's LR is a plain bicubic downscale instead of the
    /// Real-ESRGAN-style degradation (default 0.3; a resumed run keeps its own).
    #[arg(long)]
    bicubic_prob: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(short, long)]
    quiet: bool,
}

impl TrainArgs {
    pub fn run(self) -> Result<()> {
        let device = parse_device(&self.device)?;
        // A new run must not overwrite a saved one or a model (weights, state, loss log).
        let resumes_out = self
            .resume
            .as_deref()
            .is_some_and(|r| r.canonicalize().ok() == self.out.canonicalize().ok());
        let holds_model = ["train_state.json", "weights.safetensors"]
            .iter()
            .any(|f| self.out.join(f).is_file());
        if holds_model && !resumes_out {
            bail!(
                "{} holds a model or a saved training run: continue it with --resume {0}, or choose another --out",
                self.out.display()
            );
        }
        let mut opts = match &self.resume {
            Some(dir) => saved_options(dir)?,
            None => TrainOptions::default(),
        };
        macro_rules! set {
            ($($f:ident <- $a:ident),*) => { $(if let Some(v) = self.$a { opts.$f = v; })* };
        }
        set!(steps <- steps, batch_size <- batch_size, crop_px <- crop, learning_rate <- lr, seed <- seed, save_every <- save_every, min_learning_rate <- min_lr, data_workers <- data_workers, p_mean <- p_mean, p_std <- p_std, lr_dropout <- lr_dropout, bicubic_prob <- bicubic_prob);
        opts.decay_start = self.decay_start.or(opts.decay_start);
        let init = self.init.as_deref().map(ModelSource::open).transpose()?;
        let mut cfg = match (&self.config, &self.resume, &init) {
            (Some(p), _, _) => ModelConfig::from_json_file(p)?,
            (None, Some(dir), _) => ModelConfig::from_json_file(&dir.join("config.json"))?,
            (None, None, Some(src)) => src.config.clone(),
            (None, None, None) => small_config(),
        };
        cfg.residual |= self.residual;
        if let Some(sd) = self.sigma_data {
            ensure!(sd > 0.0, "--sigma-data must be positive");
            cfg.sigma_data = sd;
        }
        let start = match (&self.resume, &init) {
            (Some(dir), _) => Start::Resume(dir),
            (None, Some(src)) => Start::Weights(src.checkpoint.model_tensors(
                &cfg,
                DType::F32,
                &candle_core::Device::Cpu,
            )?),
            (None, None) => Start::Scratch,
        };
        // A named manifest must be read; the default one is used where it exists (in a
        // checkout of the repository).
        let default_manifest = Path::new(DEFAULT_MANIFEST);
        let manifest = match &self.manifest {
            Some(m) => Some(m.as_path()),
            None => default_manifest.is_file().then_some(default_manifest),
        };
        let data = PhotoDataset::open(&self.data, manifest)?;
        let mut sample_cfg = data.config().clone();
        sample_cfg.scale = cfg.sr_scale;
        sample_cfg.degradation.bicubic_prob = opts.bicubic_prob;
        let mut data = data.with_config(sample_cfg);
        let mut trainer = Trainer::new(cfg, opts.clone(), device, start)?;
        let bar = ProgressBar::new(opts.steps as u64);
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_style(super::bar_style(
            "[{bar:30}] {pos}/{len} steps {rate} ETA {eta} {msg}",
        ));
        bar.set_position(trainer.step() as u64);
        let crops_per_step = opts.batch_size;
        let mut smooth = None::<f32>;
        let created = crate::fsutil::first_missing_dir(&self.out);
        let run = trainer.run(&mut data, &self.out, &mut |step, loss, _| {
            let s = smooth.map_or(loss, |m| 0.98 * m + 0.02 * loss);
            smooth = Some(s);
            bar.set_position(step as u64);
            bar.set_message(format!("loss {s:.4} ({crops_per_step} crops/step)"));
        });
        if let Some(dir) = created.filter(|_| run.is_err()) {
            // A run that failed before writing anything leaves no empty folder behind.
            crate::fsutil::remove_empty_dirs(&dir);
        }
        run?;
        bar.finish();
        if let Some(table) = crate::profile::report() {
            eprintln!("{table}");
        }
        println!(
            "saved {} (EMA weights) after {} steps",
            self.out.join("weights.safetensors").display(),
            trainer.step()
        );
        Ok(())
    }
}
