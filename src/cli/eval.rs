//! `infdit eval`: PSNR and SSIM on the Y channel (4-px border shaved), per image and mean.

use super::{as_usage, usage};
use crate::eval::{psnr_y, ssim_y, DEFAULT_SHAVE};
use crate::imageops::io::{decode_rgb, image_files};
use crate::imageops::resize::resize_bicubic;
use crate::imageops::Planar;
use crate::pipeline::OutputSize;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// The factor of `--baseline bicubic`: `upscale`'s default.
const BICUBIC_FACTOR: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// Downscale each HR image 4× (bicubic, antialiased), upscale it with the model and
    /// with bicubic, and score both against the HR image.
    Bicubic,
    /// Score one denoiser evaluation D(x + σ·noise, σ) at each `--sigmas` level, with the
    /// same LR (the HR image downscaled by the model's own ratio, trimmed to whole
    /// blocks): from x = the HR image (the denoiser where it was trained) and from x = the
    /// bicubic upsample (where sampling starts). A diagnostic for trained models.
    Denoiser,
}

/// The noise levels of `--baseline denoiser` without `--sigmas`.
const DEFAULT_SIGMAS: [f32; 5] = [0.01, 0.03, 0.1, 0.3, 1.0];

/// The noise levels `--sigmas` takes, a decade beyond the sampler's (0.002 to a few tens):
/// below, the noise is under an 8-bit image's rounding; above, the image is lost in it.
const SIGMA_RANGE: std::ops::RangeInclusive<f32> = 1e-3..=1e3;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground-truth image or directory.
    #[arg(long)]
    hr: PathBuf,
    /// Upscaled images: a directory, or one file when --hr is one image. The upscaled image
    /// of `photo.png` is `photo_x4.png`, or another name `upscale` gives its results
    /// (`photo_x2.5`, `photo_w3840`, `photo_h2160`, `photo_3840x2160`; any image
    /// extension), else `photo.png`: the suffixed one wins, since `upscale` writes beside its
    /// inputs.
    #[arg(
        long,
        required_unless_present = "baseline",
        conflicts_with = "baseline"
    )]
    sr: Option<PathBuf>,
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Upscaler options for --baseline (model, steps, seed, …).
    #[command(flatten)]
    upscale: UpscaleFlags,
    /// Pixels shaved from each border before scoring.
    #[arg(long, default_value_t = DEFAULT_SHAVE)]
    shave: usize,
    /// With --baseline: first shrink each HR photo by this factor (antialiased bicubic),
    /// as training does to hide JPEG artefacts of large photos. Default 1 (none).
    #[arg(long)]
    prescale: Option<f64>,
    /// With --baseline: then score only the central N×N crop (keeps CPU runs short).
    #[arg(long)]
    crop: Option<usize>,
    /// With --baseline denoiser: the noise levels, comma-separated, each in [0.001, 1000].
    /// Default 0.01,0.03,0.1,0.3,1.
    #[arg(long, value_delimiter = ',')]
    sigmas: Option<Vec<f32>>,
}

/// The upscaler options `eval --baseline` takes (see `infdit upscale --help`); those left
/// out take `upscale`'s defaults.
#[derive(Args, Debug)]
pub struct UpscaleFlags {
    /// With --baseline: the model directory or checkpoint (default: the built-in model).
    #[arg(long)]
    pub(super) model: Option<PathBuf>,
    /// With --baseline: CLIP ViT-L/14 weights for a model conditioned on an image
    /// embedding (default: the checkpoint's own, or a known file beside the model).
    #[arg(long)]
    pub(super) clip: Option<PathBuf>,
    /// With --baseline bicubic: sampler steps (default: the model's recommendation).
    #[arg(long, value_parser = super::steps_value)]
    pub(super) steps: Option<usize>,
    /// With --baseline bicubic: the starting noise level.
    #[arg(long, value_parser = super::sigma_max_value)]
    pub(super) sigma_max: Option<f32>,
    /// With --baseline bicubic.
    #[arg(long, value_enum)]
    pub(super) sampler: Option<crate::sampler::SamplerKind>,
    /// With --baseline bicubic: average over this many flips/rotations (1, 2, 4 or 8).
    #[arg(long, value_parser = super::self_ensemble_value)]
    pub(super) self_ensemble: Option<usize>,
    /// With --baseline: the seed of the noise (default 0).
    #[arg(long)]
    pub(super) seed: Option<u64>,
    /// With --baseline: cpu, cuda, cuda:N or metal (default cpu).
    #[arg(long)]
    pub(super) device: Option<String>,
}

/// A named file, or the image files of a directory.
fn images_in(p: &Path) -> Result<Vec<PathBuf>> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    if !p.exists() {
        bail!("{} does not exist", p.display());
    }
    image_files(p, false)
}

/// The smallest side that can be scored: SSIM's 11×11 window has to fit inside the
/// shaved image.
fn least_side(shave: usize) -> usize {
    shave.saturating_mul(2).saturating_add(11)
}

/// The upscaled image of the HR image named `stem` among `files`: `stem_SUFFIX.*` with a
/// SUFFIX `upscale` names its results with (`x4`, `x2.5`, `w3840`, …), else `stem.*`. The
/// suffixed one wins because `upscale` writes its results beside its inputs, so a folder
/// of LR inputs holds both; two of the same kind are ambiguous.
fn upscaled_of<'a>(stem: &str, files: &'a [PathBuf]) -> Result<&'a PathBuf> {
    let stem_of = |f: &PathBuf| f.file_stem().map(|s| s.to_string_lossy().into_owned());
    let suffixed = |s: &str| {
        s.strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(OutputSize::is_suffix)
    };
    let same = |s: &str| s == stem;
    for named in [&suffixed as &dyn Fn(&str) -> bool, &same] {
        let found: Vec<&PathBuf> = files
            .iter()
            .filter(|f| stem_of(f).is_some_and(|s| named(&s)))
            .collect();
        match found[..] {
            [] => continue,
            [one] => return Ok(one),
            _ => bail!(
                "several upscaled images could be {stem}'s: {}",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    bail!("no upscaled image for {stem} ({stem}_x4.* and the like, or {stem}.*)")
}

/// Crops both to their common size (upscalers may round sizes by a few pixels); sizes
/// further apart mean the wrong pair of files, and too small a common size cannot be scored.
fn common(a: &Planar, b: &Planar, shave: usize) -> Result<(Planar, Planar)> {
    let close = |x: usize, y: usize| x.abs_diff(y) <= 4.max(x.max(y) / 100);
    if !close(a.height, b.height) || !close(a.width, b.width) {
        bail!(
            "sizes differ: {}x{} and {}x{}",
            a.width,
            a.height,
            b.width,
            b.height
        );
    }
    let (h, w) = (a.height.min(b.height), a.width.min(b.width));
    let least = least_side(shave);
    if h < least || w < least {
        bail!("{w}x{h} is too small to score: at least {least}x{least} with --shave {shave}");
    }
    Ok((a.crop_clamped(0, 0, h, w), b.crop_clamped(0, 0, h, w)))
}

/// PSNR and SSIM of each column, for one image.
type Scores = Vec<(f64, f64)>;

impl EvalArgs {
    /// The smallest HR side `--baseline` can score: [`least_side`] in whole multiples of
    /// `multiple` (the HR image is trimmed to them).
    fn least_hr_side(&self, multiple: usize) -> usize {
        least_side(self.shave)
            .div_ceil(multiple)
            .saturating_mul(multiple)
    }

    fn prescale(&self) -> f64 {
        self.prescale.unwrap_or(1.0)
    }

    fn sigmas(&self) -> &[f32] {
        self.sigmas.as_deref().unwrap_or(&DEFAULT_SIGMAS)
    }

    /// Refuses settings that cannot give scores (they would panic or print NaN later).
    fn validate(&self) -> Result<()> {
        self.refuse_unused()?;
        let prescale = self.prescale();
        if !(prescale > 0.0 && prescale <= 1.0) {
            bail!("--prescale {prescale} must lie in (0, 1]: it is the factor HR images are shrunk by");
        }
        let least = self.least_hr_side(BICUBIC_FACTOR);
        if let Some(n) = self.crop.filter(|&n| n < least) {
            bail!(
                "--crop {n} is too small to score: at least {least} with --shave {}",
                self.shave
            );
        }
        if let Some(s) = self.sigmas().iter().find(|s| !SIGMA_RANGE.contains(s)) {
            bail!(
                "--sigmas: noise level {s} must lie in [{}, {}]",
                SIGMA_RANGE.start(),
                SIGMA_RANGE.end()
            );
        }
        Ok(())
    }

    /// Refuses options the chosen mode would ignore, rather than print scores of settings
    /// other than those asked for.
    fn refuse_unused(&self) -> Result<()> {
        let u = &self.upscale;
        let baseline = self.baseline.is_some();
        let sampled = self.baseline == Some(Baseline::Bicubic);
        let denoiser = self.baseline == Some(Baseline::Denoiser);
        let unused: Vec<&str> = [
            ("--model", u.model.is_some(), baseline),
            ("--clip", u.clip.is_some(), baseline),
            ("--seed", u.seed.is_some(), baseline),
            ("--device", u.device.is_some(), baseline),
            ("--prescale", self.prescale.is_some(), baseline),
            ("--crop", self.crop.is_some(), baseline),
            ("--steps", u.steps.is_some(), sampled),
            ("--sigma-max", u.sigma_max.is_some(), sampled),
            ("--sampler", u.sampler.is_some(), sampled),
            ("--self-ensemble", u.self_ensemble.is_some(), sampled),
            ("--sigmas", self.sigmas.is_some(), denoiser),
        ]
        .into_iter()
        .filter(|&(_, given, applies)| given && !applies)
        .map(|(name, ..)| name)
        .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let mode = match self.baseline {
            None => "--sr, which scores the given files as they are",
            Some(Baseline::Bicubic) => "--baseline bicubic",
            Some(Baseline::Denoiser) => {
                "--baseline denoiser, which evaluates the denoiser once per --sigmas level instead of sampling"
            }
        };
        bail!(
            "{} {} no effect with {mode}",
            unused.join(", "),
            if unused.len() == 1 { "has" } else { "have" }
        )
    }

    pub fn run(self) -> Result<std::process::ExitCode> {
        self.validate().map_err(as_usage)?;
        let hr_files = images_in(&self.hr)?;
        if hr_files.is_empty() {
            bail!("no images in {}", self.hr.display());
        }
        let header: Vec<String>;
        let mut rows: Vec<(String, Scores)> = Vec::new();
        let mut failed = 0;
        let mut record = |f: &Path, scores: Result<Scores>| match scores {
            Ok(scores) => rows.push((f.display().to_string(), scores)),
            Err(e) => {
                // As `upscale` reports a failed input.
                failed += 1;
                let file = f.display().to_string();
                let msg = super::failure_message(&file, &e);
                eprintln!(
                    "error: {}: {}",
                    super::printable(&file, false),
                    super::printable(&msg, false)
                );
            }
        };
        match (&self.sr, self.baseline) {
            (_, Some(baseline)) => {
                let args = super::upscale::UpscaleArgs::for_eval(&self.upscale);
                let up = args.build_upscaler()?;
                header = match baseline {
                    Baseline::Bicubic => vec!["model".into(), "bicubic".into()],
                    Baseline::Denoiser => std::iter::once("bicubic".to_string())
                        .chain(
                            self.sigmas()
                                .iter()
                                .map(|&s| compact(s))
                                .flat_map(|s| [format!("hr+{s}"), format!("bic+{s}")]),
                        )
                        .collect(),
                };
                for f in &hr_files {
                    let scores = self.baseline_scores(f, baseline, &up);
                    if scores.is_ok() {
                        let file = f.display().to_string();
                        eprintln!("{}: done", super::printable(&file, false));
                    }
                    record(f, scores);
                }
            }
            (Some(sr), None) => {
                header = vec!["sr".into()];
                let sr_files = images_in(sr)?;
                if sr.is_file() && hr_files.len() > 1 {
                    return Err(usage(format!(
                        "--sr {} is one image but --hr {} holds {}: give --sr the folder of upscaled images",
                        sr.display(),
                        self.hr.display(),
                        hr_files.len()
                    )));
                }
                for f in &hr_files {
                    record(f, self.sr_scores(f, sr, &sr_files));
                }
            }
            (None, None) => return Err(usage("give --sr or --baseline")),
        }
        if !rows.is_empty() {
            print_table(&header, &rows);
        }
        if failed == 0 {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        if hr_files.len() > 1 {
            eprintln!(
                "{failed} of {} images failed{}",
                hr_files.len(),
                if rows.is_empty() {
                    String::new()
                } else {
                    format!("; the mean is over the other {}", rows.len())
                }
            );
        }
        Ok(std::process::ExitCode::FAILURE)
    }

    /// Scores of one HR image against its upscaled file in `sr` (a file or a directory
    /// whose `sr_files` are matched by name, see [`upscaled_of`]).
    fn sr_scores(&self, f: &Path, sr: &Path, sr_files: &[PathBuf]) -> Result<Scores> {
        let stem = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let m = if sr.is_file() {
            sr
        } else {
            upscaled_of(&stem, sr_files).with_context(|| format!("in {}", sr.display()))?
        };
        let hr = decode_rgb(f)?;
        let sr = decode_rgb(m)?;
        let scored = score(&hr, &sr, self.shave)
            .with_context(|| format!("compared with {}", m.display()))?;
        // Only sizes close enough to be scored get here.
        if (sr.height, sr.width) != (hr.height, hr.width) {
            tracing::warn!(
                "{} is {}x{}, {} is {}x{}: scoring the part they share",
                m.display(),
                sr.width,
                sr.height,
                f.display(),
                hr.width,
                hr.height
            );
        }
        Ok(vec![scored])
    }

    /// Scores of the model (or the denoiser) and of bicubic on the test pair of `f`.
    fn baseline_scores(
        &self,
        f: &Path,
        baseline: Baseline,
        up: &crate::pipeline::Upscaler,
    ) -> Result<Scores> {
        let cfg = up.model().config();
        let (factor, multiple) = match baseline {
            Baseline::Bicubic => (BICUBIC_FACTOR, BICUBIC_FACTOR),
            // One denoiser call takes whole blocks at the model's own ratio.
            Baseline::Denoiser => (cfg.sr_scale, cfg.image_block_size_px),
        };
        let (hr, lr) = self.test_pair(f, factor, multiple)?;
        let bic = resize_bicubic(&lr, hr.height, hr.width, true).map(|v| v.clamp(0.0, 1.0));
        let scored = |b: Planar| score(&hr, &quantized(b), self.shave);
        let mut scores = Vec::new();
        match baseline {
            Baseline::Bicubic => {
                scores.push(scored(up.upscale_rgb(&lr, &mut |_| {})?)?);
                scores.push(scored(bic)?);
            }
            Baseline::Denoiser => {
                scores.push(scored(bic.clone())?);
                for &sigma in self.sigmas() {
                    for start in [&hr, &bic] {
                        scores.push(scored(up.denoise_once(&lr, start, sigma)?)?);
                    }
                }
            }
        }
        Ok(scores)
    }

    /// A test pair for the baselines: the HR image (shrunk by `--prescale`, cropped to
    /// `--crop`, trimmed to whole multiples of `multiple`) and its antialiased bicubic
    /// downscale by `factor`.
    fn test_pair(&self, f: &Path, factor: usize, multiple: usize) -> Result<(Planar, Planar)> {
        let mut hr = decode_rgb(f)?;
        let prescale = self.prescale();
        let (h, w) = (
            (hr.height as f64 * prescale) as usize,
            (hr.width as f64 * prescale) as usize,
        );
        let least = self.least_hr_side(multiple);
        if h < least || w < least {
            let shrunk = if prescale == 1.0 {
                String::new()
            } else {
                format!(" (shrunk to {w}x{h} by --prescale {prescale})")
            };
            bail!(
                "{}x{}{shrunk} is too small for --baseline: at least {least}x{least} px with --shave {}",
                hr.width,
                hr.height,
                self.shave
            );
        }
        if prescale != 1.0 {
            hr = resize_bicubic(&hr, h, w, true).map(|v| v.clamp(0.0, 1.0));
        }
        if let Some(n) = self.crop {
            hr = hr.center_crop(n.min(hr.height), n.min(hr.width));
        }
        if hr.height < multiple || hr.width < multiple {
            bail!(
                "a {}x{} crop holds no whole {multiple}-px block of the model",
                hr.width,
                hr.height
            );
        }
        // Whole multiples so that the LR maps back exactly.
        let (h, w) = (
            hr.height / multiple * multiple,
            hr.width / multiple * multiple,
        );
        let hr = hr.crop_clamped(0, 0, h, w);
        let lr = resize_bicubic(&hr, h / factor, w / factor, true).map(|v| v.clamp(0.0, 1.0));
        Ok((hr, lr))
    }
}

/// PSNR and SSIM of `b` against `a`, cropped to their common size.
fn score(a: &Planar, b: &Planar, shave: usize) -> Result<(f64, f64)> {
    let (a, b) = common(a, b, shave)?;
    Ok((psnr_y(&a, &b, shave), ssim_y(&a, &b, shave)))
}

/// `v` in its shorter spelling, plain or scientific (`0.01`, `1e-4`), for column headers.
fn compact(v: f32) -> String {
    let (plain, sci) = (format!("{v}"), format!("{v:e}"));
    if sci.len() < plain.len() {
        sci
    } else {
        plain
    }
}

/// A computed image as the 8-bit file it would be written as.
fn quantized(x: Planar) -> Planar {
    x.map(|v| (v * 255.0).round() / 255.0)
}

/// One row per image and the mean of each column; a PSNR column is as wide as its header.
fn print_table(header: &[String], rows: &[(String, Scores)]) {
    let labels: Vec<String> = header.iter().map(|h| format!("PSNR-{h}")).collect();
    let widths: Vec<usize> = labels.iter().map(|l| l.chars().count().max(10)).collect();
    let print_row = |name: &str, vals: &mut dyn Iterator<Item = (f64, f64)>| {
        print!("{:<50}", super::printable(name, false));
        for ((p, s), w) in vals.zip(&widths) {
            print!(" {p:>w$.3} {s:>8.4}");
        }
        println!();
    };
    print!("{:<50}", "image");
    for (l, w) in labels.iter().zip(&widths) {
        print!(" {l:>w$} {:>8}", "SSIM");
    }
    println!();
    for (name, vals) in rows {
        print_row(name, &mut vals.iter().copied());
    }
    let n = rows.len() as f64;
    let mean = |k: usize| {
        let p: f64 = rows.iter().map(|r| r.1[k].0).sum::<f64>() / n;
        let s: f64 = rows.iter().map(|r| r.1[k].1).sum::<f64>() / n;
        (p, s)
    };
    print_row("mean", &mut (0..header.len()).map(mean));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscaled_files_are_matched_by_upscale_names_then_by_stem() {
        let files: Vec<PathBuf> = [
            "sr/photo_x4.png",
            "sr/p.png",
            "sr/pic-sr.jpg",
            "sr/photo2.png",
            "sr/a_b_x4.png",
            "sr/h0.png",
            "sr/h0_x4.png",
            "sr/wide_w3840.jpg",
        ]
        .map(PathBuf::from)
        .into();
        let of = |stem| upscaled_of(stem, &files).ok().map(|p| p.to_str().unwrap());
        assert_eq!(of("p"), Some("sr/p.png"));
        assert_eq!(of("photo"), Some("sr/photo_x4.png"));
        assert_eq!(of("a_b"), Some("sr/a_b_x4.png"));
        // An upscale's result beside its input is the one scored.
        assert_eq!(of("h0"), Some("sr/h0_x4.png"));
        assert_eq!(of("wide"), Some("sr/wide_w3840.jpg"));
        // Another image's result, or a name upscale does not write, is no match.
        for other in ["a", "pic", "ph"] {
            assert_eq!(of(other), None, "{other}");
        }
        let two = [PathBuf::from("a_x2.png"), PathBuf::from("a_x4.png")];
        let err = upscaled_of("a", &two).unwrap_err().to_string();
        assert!(err.contains("several"), "{err}");
    }

    #[test]
    fn sigma_headers_are_compact() {
        assert_eq!(compact(0.01), "0.01");
        assert_eq!(compact(1.0), "1");
        assert_eq!(compact(1e30), "1e30");
        assert_eq!(compact(0.000125), "1.25e-4");
    }

    fn flat(h: usize, w: usize) -> Planar {
        Planar::new(3, h, w, vec![0.5; 3 * h * w])
    }

    #[test]
    fn common_size_tolerates_rounding_only() {
        let (a, b) = common(&flat(64, 64), &flat(62, 64), 4).unwrap();
        assert_eq!((a.height, a.width, b.height, b.width), (62, 64, 62, 64));
        let e = common(&flat(64, 64), &flat(16, 16), 4).unwrap_err();
        assert!(e.to_string().contains("sizes differ"), "{e}");
        let e = common(&flat(18, 18), &flat(18, 18), 4).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        assert!(common(&flat(19, 19), &flat(19, 19), 4).is_ok());
    }
}
