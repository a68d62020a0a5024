//! `infdit train`: trains a model on photos with the EDM objective.

use super::{as_usage, parse_device, usage};
use crate::checkpoint::ModelSource;
use crate::config::ModelConfig;
use crate::fsutil::same_path;
use crate::train::data::PhotoDataset;
use crate::train::trainer::{
    saved_options, small_config, DataSource, Start, TrainOptions, Trainer,
};
use anyhow::{Context, Result};
use candle_core::DType;
use clap::Args;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// The manifest of the photos `scripts/fetch-training-photos.sh` fetches.
const DEFAULT_MANIFEST: &str = "scripts/training-photos.manifest.tsv";

/// The photo folder of a new run.
const DEFAULT_DATA: &str = "data/photos";

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Photo folder, searched recursively (see scripts/fetch-training-photos.sh)
    /// [default: data/photos].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Manifest whose `holdout` photos are kept out of training [default:
    /// scripts/training-photos.manifest.tsv, where it exists, for data/photos].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Output directory for config.json, weights.safetensors (EMA) and the loss log.
    #[arg(long, short)]
    out: PathBuf,
    /// Model config.json (default: the small built-in architecture).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run saved in this directory, with its config; options not given keep
    /// the run's values, its photos and manifest included (the defaults shown are a new
    /// run's).
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
    /// Step to train to (a resumed run counts the steps it has done) [default: 2000].
    #[arg(long)]
    steps: Option<usize>,
    /// Crops per optimiser step [default: 4].
    #[arg(long)]
    batch_size: Option<usize>,
    /// HR crop side in pixels (multiple of the block size); photos smaller than it once
    /// halved are skipped [default: 128].
    #[arg(long)]
    crop: Option<usize>,
    /// Peak learning rate (AdamW), reached by a linear warm-up over the first 100 steps
    /// [default: 0.0003].
    #[arg(long)]
    lr: Option<f64>,
    /// Anneal the learning rate from this step on (cosine down to --min-lr at --steps);
    /// equal to --steps, it stays constant (ends a resumed run's decay) [default: none].
    #[arg(long)]
    decay_start: Option<usize>,
    /// Learning rate at --steps when --decay-start is given (at most --lr) [default: 0].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Seed of the initial weights and of the random stream [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Threads preparing training examples ahead of the device; 0 or 1 prepares them in
    /// the training thread (the result depends on this count) [default: 1].
    #[arg(long)]
    data_workers: Option<usize>,
    /// Save every this many steps (and at the last) [default: 250].
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
    /// Real-ESRGAN-style degradation [default: 0.3].
    #[arg(long)]
    bicubic_prob: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar and no closing line; warnings and errors still show.
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
            .is_some_and(|r| same_path(r, &self.out));
        let holds_model = ["train_state.json", "weights.safetensors"]
            .iter()
            .any(|f| self.out.join(f).is_file());
        if holds_model && !resumes_out {
            return Err(usage(format!(
                "{} holds a model or a saved training run: continue it with --resume {0}, or choose another --out",
                self.out.display()
            )));
        }
        let mut opts = match &self.resume {
            Some(dir) => saved_options(dir)?,
            None => TrainOptions::default(),
        };
        // An option not given keeps the resumed run's value, noted for error messages.
        macro_rules! set {
            ($($f:ident <- $a:ident),*) => { $(match self.$a {
                Some(v) => opts.$f = v.into(),
                None if self.resume.is_some() => opts.inherited.push(stringify!($a)),
                None => {}
            })* };
        }
        set!(steps <- steps, batch_size <- batch_size, crop_px <- crop, learning_rate <- lr, seed <- seed, save_every <- save_every, min_learning_rate <- min_lr, decay_start <- decay_start, data_workers <- data_workers, p_mean <- p_mean, p_std <- p_std, lr_dropout <- lr_dropout, bicubic_prob <- bicubic_prob);
        opts.validate().map_err(as_usage)?;
        opts.data = Some(self.data_source(opts.data.take())?);
        let init = self.init.as_deref().map(ModelSource::open).transpose()?;
        let mut cfg = match (&self.config, &self.resume, &init) {
            (Some(p), _, _) => ModelConfig::from_json_file(p)?,
            (None, Some(dir), _) => ModelConfig::from_json_file(&dir.join("config.json"))?,
            (None, None, Some(src)) => src.config.clone(),
            (None, None, None) => small_config(),
        };
        cfg.residual |= self.residual;
        if let Some(sd) = self.sigma_data {
            if sd.is_nan() || sd <= 0.0 {
                return Err(usage("--sigma-data must be positive"));
            }
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
        let source = opts.data.as_ref().expect("set above");
        let data = PhotoDataset::open(&source.photos, source.manifest.as_deref());
        // Name what the resumed run supplied, where the error may lie in it.
        let kept = match (self.resume.is_some(), &self.data, &self.manifest) {
            (false, _, _) | (true, Some(_), Some(_)) => None,
            (true, None, None) => Some("the photo folder and manifest are"),
            (true, None, Some(_)) => Some("the photo folder is"),
            (true, Some(_), None) => Some("the manifest is"),
        };
        let data = match kept {
            Some(what) => data.with_context(|| {
                format!("{what} the resumed run's (give --data or --manifest for others)")
            })?,
            None => data?,
        };
        tracing::info!(
            "{} photos under {}: {} for training, {} held out{}",
            data.len() + data.holdout_files().len(),
            source.photos.display(),
            data.len(),
            data.holdout_files().len(),
            source
                .manifest
                .as_ref()
                .map(|m| format!(" by {}", m.display()))
                .unwrap_or_default()
        );
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
        if !self.quiet {
            println!(
                "saved {} (EMA weights) after {} steps",
                self.out.join("weights.safetensors").display(),
                trainer.step()
            );
        }
        Ok(())
    }

    /// The photos to train on: those given, else the resumed run's, else the defaults. The
    /// default manifest lists the photos the fetch script puts in the default folder, so
    /// it goes with that folder only, where it exists (in a checkout of the repository).
    /// Paths are made absolute for the run's state; one given in place of the resumed
    /// run's is allowed (photos move) but warned about, since it changes what the run
    /// trains on or holds out.
    fn data_source(&self, saved: Option<DataSource>) -> Result<DataSource> {
        let absolute = |p: &Path| {
            std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
        };
        let default_data = absolute(Path::new(DEFAULT_DATA))?;
        let photos = match (&self.data, &saved) {
            (Some(d), _) => absolute(d)?,
            (None, Some(s)) => s.photos.clone(),
            (None, None) => default_data.clone(),
        };
        let default_manifest = Path::new(DEFAULT_MANIFEST);
        let manifest = match (&self.manifest, &saved) {
            (Some(m), _) => Some(absolute(m)?),
            (None, Some(s)) => s.manifest.clone(),
            (None, None) if default_manifest.is_file() && same_path(&photos, &default_data) => {
                Some(absolute(default_manifest)?)
            }
            (None, None) => None,
        };
        let source = DataSource { photos, manifest };
        if let Some(saved) = saved {
            let shown = |m: &Option<PathBuf>| {
                m.as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string())
            };
            if !same_path(&source.photos, &saved.photos) {
                tracing::warn!(
                    "--data {} replaces the resumed run's photo folder {}",
                    source.photos.display(),
                    saved.photos.display()
                );
            }
            let same_manifest = match (&source.manifest, &saved.manifest) {
                (Some(a), Some(b)) => same_path(a, b),
                (a, b) => a == b,
            };
            if !same_manifest {
                tracing::warn!(
                    "--manifest {} replaces the resumed run's manifest ({}): the held-out photos may change",
                    shown(&source.manifest),
                    shown(&saved.manifest)
                );
            }
        }
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the help states are the ones a new run takes.
    #[test]
    fn help_states_the_defaults() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("train")
            .expect("train command")
            .render_long_help()
            .to_string();
        // The long help gives each option a paragraph.
        let paragraphs: Vec<String> = help
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .map(|p| p.trim_start_matches("Options: ").to_string())
            .collect();
        let d = TrainOptions::default();
        for (flag, value) in [
            ("steps", d.steps.to_string()),
            ("batch-size", d.batch_size.to_string()),
            ("crop", d.crop_px.to_string()),
            ("lr", d.learning_rate.to_string()),
            ("min-lr", d.min_learning_rate.to_string()),
            ("seed", d.seed.to_string()),
            ("data-workers", d.data_workers.to_string()),
            ("save-every", d.save_every.to_string()),
            ("bicubic-prob", d.bicubic_prob.to_string()),
            ("data", DEFAULT_DATA.to_string()),
        ] {
            let text = paragraphs
                .iter()
                .find(|p| p.starts_with(&format!("--{flag} <")))
                .unwrap_or_else(|| panic!("--{flag} in {help}"));
            assert!(text.contains(&format!("[default: {value}")), "{text}");
        }
        let help = paragraphs.join(" ");
        assert!(help.contains(&format!("warm-up over the first {} steps", d.warmup_steps)));
    }
}
