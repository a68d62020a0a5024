//! `infdit eval`: PSNR and SSIM on the Y channel (4-px border shaved), per image and mean.

use crate::eval::{psnr_y, ssim_y, DEFAULT_SHAVE};
use crate::imageops::io::{decode_rgb, image_files};
use crate::imageops::resize::resize_bicubic;
use crate::imageops::Planar;
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

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground-truth image or directory.
    #[arg(long)]
    hr: PathBuf,
    /// Upscaled image or directory (matched to HR files by name: `photo.png` or
    /// `photo_x4.png` for `photo.png`).
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
    /// as training does to hide JPEG artefacts of large photos.
    #[arg(long, default_value_t = 1.0)]
    prescale: f64,
    /// With --baseline: then score only the central N×N crop (keeps CPU runs short).
    #[arg(long)]
    crop: Option<usize>,
    /// With --baseline denoiser: the noise levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.03,0.1,0.3,1")]
    sigmas: Vec<f32>,
}

/// The upscaler options `eval --baseline` takes (see `infdit upscale --help`).
#[derive(Args, Debug)]
pub struct UpscaleFlags {
    #[arg(long)]
    pub(super) model: Option<PathBuf>,
    #[arg(long)]
    pub(super) steps: Option<usize>,
    #[arg(long)]
    pub(super) sigma_max: Option<f32>,
    #[arg(long, value_enum)]
    pub(super) sampler: Option<crate::sampler::SamplerKind>,
    #[arg(long)]
    pub(super) self_ensemble: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    #[arg(long, default_value = "cpu")]
    pub(super) device: String,
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

/// The upscaled file of the HR image named `stem`: the file of the same stem, else the
/// one whose stem continues it after a separator (`photo_x4`, `photo-sr`, `photo.out`), so
/// that `p.png` is not paired with `photo_x4.png`. Several of the latter are ambiguous.
fn upscaled_of<'a>(stem: &str, files: &'a [PathBuf]) -> Result<&'a PathBuf> {
    let stem_of = |f: &PathBuf| f.file_stem().map(|s| s.to_string_lossy().into_owned());
    if let Some(exact) = files.iter().find(|f| stem_of(f).is_some_and(|s| s == stem)) {
        return Ok(exact);
    }
    let continued: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            stem_of(f).is_some_and(|s| {
                s.strip_prefix(stem)
                    .is_some_and(|rest| rest.starts_with(['_', '-', '.', ' ']))
            })
        })
        .collect();
    match continued[..] {
        [one] => Ok(one),
        [] => bail!("no upscaled image for {stem}"),
        _ => bail!(
            "several upscaled images could be {stem}'s: {}",
            continued
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
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

    /// Refuses settings that cannot give scores (they would panic or print NaN later).
    fn validate(&self) -> Result<()> {
        if !(self.prescale > 0.0 && self.prescale <= 1.0) {
            bail!(
                "--prescale {} must lie in (0, 1]: it is the factor HR images are shrunk by",
                self.prescale
            );
        }
        let least = self.least_hr_side(BICUBIC_FACTOR);
        if let Some(n) = self.crop.filter(|&n| n < least) {
            bail!(
                "--crop {n} is too small to score: at least {least} with --shave {}",
                self.shave
            );
        }
        let u = &self.upscale;
        let upscaler_flags = u.model.is_some()
            || u.steps.is_some()
            || u.sigma_max.is_some()
            || u.sampler.is_some()
            || u.self_ensemble.is_some();
        if self.baseline.is_none() && upscaler_flags {
            bail!("--model, --steps, --sigma-max, --sampler and --self-ensemble apply only with --baseline");
        }
        if let Some(s) = self.sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!("--sigmas: noise level {s} must be positive");
        }
        Ok(())
    }

    pub fn run(self) -> Result<std::process::ExitCode> {
        self.validate()?;
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
                eprintln!("error: {file}: {}", super::failure_message(&file, &e));
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
                            self.sigmas
                                .iter()
                                .flat_map(|s| [format!("hr+{s}"), format!("bic+{s}")]),
                        )
                        .collect(),
                };
                for f in &hr_files {
                    let scores = self.baseline_scores(f, baseline, &up);
                    if scores.is_ok() {
                        eprintln!("{}: done", f.display());
                    }
                    record(f, scores);
                }
            }
            (Some(sr), None) => {
                header = vec!["sr".into()];
                let sr_files = images_in(sr)?;
                for f in &hr_files {
                    record(f, self.sr_scores(f, sr, &sr_files));
                }
            }
            (None, None) => bail!("give --sr or --baseline"),
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
                for &sigma in &self.sigmas {
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
        let (h, w) = (
            (hr.height as f64 * self.prescale) as usize,
            (hr.width as f64 * self.prescale) as usize,
        );
        let least = self.least_hr_side(multiple);
        if h < least || w < least {
            let shrunk = if self.prescale == 1.0 {
                String::new()
            } else {
                format!(" (shrunk to {w}x{h} by --prescale {})", self.prescale)
            };
            bail!(
                "{}x{}{shrunk} is too small for --baseline: at least {least}x{least} px with --shave {}",
                hr.width,
                hr.height,
                self.shave
            );
        }
        if self.prescale != 1.0 {
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

/// A computed image as the 8-bit file it would be written as.
fn quantized(x: Planar) -> Planar {
    x.map(|v| (v * 255.0).round() / 255.0)
}

/// One row per image and the mean of each column.
fn print_table(header: &[String], rows: &[(String, Scores)]) {
    print!("{:<50}", "image");
    for h in header {
        print!(" {:>10} {:>8}", format!("PSNR-{h}"), "SSIM");
    }
    println!();
    for (name, vals) in rows {
        print!("{:<50}", name);
        for (p, s) in vals {
            print!(" {p:>10.3} {s:>8.4}");
        }
        println!();
    }
    print!("{:<50}", "mean");
    for k in 0..header.len() {
        let n = rows.len() as f64;
        let p: f64 = rows.iter().map(|r| r.1[k].0).sum::<f64>() / n;
        let s: f64 = rows.iter().map(|r| r.1[k].1).sum::<f64>() / n;
        print!(" {p:>10.3} {s:>8.4}");
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscaled_files_are_matched_by_whole_name() {
        let files: Vec<PathBuf> = [
            "sr/photo_x4.png",
            "sr/p.png",
            "sr/pic-sr.jpg",
            "sr/photo2.png",
        ]
        .map(PathBuf::from)
        .into();
        let of = |stem| upscaled_of(stem, &files).ok().map(|p| p.to_str().unwrap());
        assert_eq!(of("p"), Some("sr/p.png"));
        assert_eq!(of("photo"), Some("sr/photo_x4.png"));
        assert_eq!(of("pic"), Some("sr/pic-sr.jpg"));
        assert_eq!(of("ph"), None);
        let two = [PathBuf::from("a_x2.png"), PathBuf::from("a_x4.png")];
        let err = upscaled_of("a", &two).unwrap_err().to_string();
        assert!(err.contains("several"), "{err}");
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
