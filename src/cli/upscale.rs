//! `infdit upscale`: files, directories and globs in, upscaled images out.

use super::inputs::{collect, is_pattern, is_stdio, Input, STDIO};
use super::{parse_device, usage, DTypeArg};
use crate::checkpoint::ModelSource;
use crate::clip::{load_clip_file, ClipEncoder, ClipLocation, ClipWeights};
use crate::engine::Order;
use crate::fsutil::{first_missing_dir, remove_empty_dirs};
use crate::imageops::io::{
    check_writable, decode_file, decode_named_bytes, encode_bytes, encode_file, peek, peek_file,
    DecodeLimits, DecodedImage, EncodeOptions, InputFormat, OutputFormat,
};
use crate::imageops::Planar;
use crate::model::InfDit;
use crate::pipeline::{BatchChoice, OutputSize, SamplingDefaults, UpscaleOptions, Upscaler};
use crate::sampler::{SamplerConfig, SamplerKind};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  infdit upscale photo.jpg                       # → photo_x4.jpg with the built-in model
  infdit upscale photo.png -o big.png --scale 8  # two passes: ×4 then ×2
  infdit upscale photo.jpg --width 3840          # → photo_w3840.jpg, 3840 px wide
  infdit upscale shots/ -r -o upscaled/ --format webp
  infdit upscale 'scans/*.tif' --model inf-dit/ --clip open_clip_pytorch_model.bin --device cuda --dtype bf16
  infdit upscale huge.png --max-memory 8G --steps 10 --seed 7";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Progress bars on the terminal (stderr).
    Bar,
    /// One JSON object per line on stdout, for GUIs and scripts.
    Json,
    None,
}

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct UpscaleArgs {
    /// Image files, directories or glob patterns (PNG, JPEG, WebP, TIFF, BMP, GIF, TGA, PNM, QOI,
    /// JPEG XL, AVIF, HEIC); `-` reads one image from standard input.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file (one input file) or directory (several inputs, a directory or a pattern;
    /// with -r, subfolders are recreated in it); `-` writes to standard output. Default:
    /// beside each input as NAME_xSCALE.EXT (NAME_wWIDTH, NAME_hHEIGHT, NAME_WIDTHxHEIGHT).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Upscaling factor above 1 and at most 16 (default 4). 2, 4, 8 and 16 are the model's
    /// own (passes of at most its trained ratio, chained); others are reduced from the next
    /// of those with the antialiased bicubic kernel.
    #[arg(long, conflicts_with_all = ["width", "height"], value_parser = super::scale_value)]
    pub scale: Option<f64>,
    /// Output width in pixels; the height follows the aspect ratio (with --height: the
    /// largest size inside WIDTH×HEIGHT).
    #[arg(long, value_parser = super::at_least_one())]
    pub width: Option<usize>,
    /// Output height in pixels; the width follows the aspect ratio.
    #[arg(long, value_parser = super::at_least_one())]
    pub height: Option<usize>,
    /// Sampler steps (default: the model's recommendation; 20 for the released model).
    #[arg(long, value_parser = super::steps_value)]
    pub steps: Option<usize>,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Starting noise level σ_max (default: the model's recommendation; 40 for the released model).
    #[arg(long, value_parser = super::sigma_max_value)]
    pub sigma_max: Option<f32>,
    /// Average the upscales of this many flips/rotations of the input (1, 2, 4 or 8; each
    /// costs a full upscale). Default: the model's recommendation; 1 for the released model.
    #[arg(long, value_parser = super::self_ensemble_value)]
    pub self_ensemble: Option<usize>,
    /// Seed of the initial noise; the same seed and options give the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model directory (config.json + weights) or checkpoint file. Default: the built-in model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// CLIP ViT-L/14 weights for models conditioned on an image embedding (open_clip or
    /// Hugging Face layout). Default: from the checkpoint, or clip.safetensors,
    /// open_clip_model.safetensors or open_clip_pytorch_model.bin beside the model.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Memory budget that sets how many blocks run together, e.g. 8G (default: 80% of
    /// free RAM on the CPU; 8G on a GPU, less on a card with less free memory).
    #[arg(long, value_parser = super::memory_value)]
    pub max_memory: Option<u64>,
    /// Blocks per forward (overrides --max-memory).
    #[arg(long, value_parser = super::at_least_one())]
    pub block_batch: Option<usize>,
    /// Block order (auto walks along the long side so memory follows the short side).
    #[arg(long, value_enum, default_value_t = Order::Auto)]
    pub order: Order,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision (default: f32 on the CPU, bf16 on GPUs, f16 on pre-Ampere CUDA GPUs).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Output format (default: the output file's extension, else the input's format).
    #[arg(long, value_enum, ignore_case = true)]
    pub format: Option<OutputFormat>,
    /// JPEG and WebP quality (1–100).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Write WebP losslessly (larger files; PNG and TIFF always are lossless, JPEG never).
    #[arg(long)]
    pub lossless: bool,
    /// Bits per sample of PNG and TIFF outputs (default: the input's, 16 for 16-bit and
    /// floating-point inputs, else 8). 16 keeps the model's finer output levels; JPEG and
    /// WebP are always 8-bit.
    #[arg(long, value_enum)]
    pub depth: Option<Depth>,
    /// Do not copy the input's EXIF, XMP and IPTC metadata (camera, date, location,
    /// keywords, captions, …) to the output.
    #[arg(long, visible_alias = "no-metadata")]
    pub no_exif: bool,
    /// Replace existing outputs (default: skip them).
    #[arg(long)]
    pub overwrite: bool,
    /// Descend into subdirectories of directory inputs.
    #[arg(short, long)]
    pub recursive: bool,
    /// No progress and no per-file messages; errors are still printed.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t = ProgressMode::Bar)]
    pub progress: ProgressMode,
    /// Refuse inputs with more pixels per side than this.
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_input_side: u32,
}

/// How messages name `path`: `name` when it is `-`.
fn shown(path: &Path, name: &str) -> String {
    if is_stdio(path) {
        name.into()
    } else {
        path.display().to_string()
    }
}

/// What became of one input.
enum Outcome {
    Written(PathBuf),
    Skipped(PathBuf),
}

/// Bits per sample of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Depth {
    #[value(name = "8")]
    Eight,
    #[value(name = "16")]
    Sixteen,
}

impl UpscaleArgs {
    /// Options for scoring an upscaler (`infdit eval --baseline`).
    pub(super) fn for_eval(flags: &super::eval::UpscaleFlags) -> Self {
        Self {
            inputs: vec![],
            output: None,
            scale: None,
            width: None,
            height: None,
            steps: flags.steps,
            sampler: flags.sampler,
            sigma_max: flags.sigma_max,
            self_ensemble: flags.self_ensemble,
            seed: flags.seed.unwrap_or_default(),
            model: flags.model.clone(),
            clip: flags.clip.clone(),
            max_memory: None,
            block_batch: None,
            order: Order::Auto,
            device: flags.device.clone().unwrap_or_else(|| "cpu".into()),
            dtype: None,
            format: None,
            quality: 95,
            lossless: false,
            depth: None,
            no_exif: false,
            overwrite: false,
            recursive: false,
            quiet: true,
            progress: ProgressMode::None,
            max_input_side: 32768,
        }
    }

    /// The upscaler these options describe.
    pub(super) fn build_upscaler(&self) -> Result<Upscaler> {
        let device = parse_device(&self.device)?;
        let dtype: DType = self
            .dtype
            .map_or_else(|| crate::model::default_dtype(&device), Into::into);
        self.load_upscaler(&device, dtype)
    }

    pub fn run(mut self) -> Result<std::process::ExitCode> {
        let named_again = self.drop_repeated_args();
        let (mut inputs, mut failures, earlier) =
            collect(&self.inputs, self.output.as_deref(), self.recursive);
        let (seen, found_again) = drop_repeated(&mut inputs);
        let listed_twice = named_again + found_again;
        if listed_twice > 0 && !self.quiet {
            eprintln!(
                "note: {listed_twice} input(s) name a file already listed (another spelling or a link to it) and are upscaled once"
            );
        }
        if earlier > 0 && !self.quiet {
            eprintln!(
                "note: passing over {earlier} earlier result(s) (NAME_x4 and the like beside NAME); name them one by one to upscale them"
            );
        }
        // Files named or found, readable or not: a summary line only when there are several.
        let listed = inputs.len() + failures.len();
        if listed == 0 {
            let named: Vec<_> = self
                .inputs
                .iter()
                .map(|i| i.display().to_string())
                .collect();
            bail!("no images found in {}", named.join(", "));
        }
        self.check_output_flags()?;
        // An output directory this run creates (with the parents it creates) is removed
        // again if no image lands in it.
        let new_output_dir = self
            .output
            .as_deref()
            .filter(|o| !is_stdio(o))
            .and_then(first_missing_dir);
        let upscaler = self.build_upscaler()?;
        tracing::debug!(
            "model: {} ({:?}), sampler {:?}",
            self.model
                .as_deref()
                .map_or("built-in".into(), |m| m.display().to_string()),
            upscaler.model().config(),
            upscaler.options().sampler
        );
        let json = self.progress == ProgressMode::Json && !self.quiet;
        let bars = self.progress == ProgressMode::Bar && !self.quiet;
        let multi = MultiProgress::new();
        if !bars {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let total_bar = (inputs.len() > 1).then(|| {
            let b = multi.add(ProgressBar::new(inputs.len() as u64));
            b.set_style(super::bar_style(
                "{prefix:>8} [{bar:30}] {pos}/{len} images, ETA {eta}",
            ));
            b.set_prefix("total");
            b
        });
        let (mut written, mut skipped) = (0, 0);
        // Outputs of this run, by the input they came from: two inputs that differ only in
        // extension (a.png, a.bmp) would otherwise share a name and one result be lost.
        let mut produced = HashMap::new();
        for item in &inputs {
            let input = &item.path;
            match self.process(item, &upscaler, &multi, json, &produced, &seen) {
                Ok(Outcome::Written(out)) => {
                    written += 1;
                    produced.insert(out.clone(), input.clone());
                    self.say(
                        &multi,
                        json,
                        "done",
                        input,
                        serde_json::json!({ "output": out.display().to_string() }),
                        || format!("{} → {}", shown(input, "<stdin>"), shown(&out, "<stdout>")),
                    );
                }
                Ok(Outcome::Skipped(out)) => {
                    skipped += 1;
                    self.say(
                        &multi,
                        json,
                        "skipped",
                        input,
                        serde_json::json!({ "output": out.display().to_string() }),
                        || {
                            format!(
                                "{}: skipped, {} exists (use --overwrite)",
                                shown(input, "<stdin>"),
                                out.display()
                            )
                        },
                    );
                }
                Err(e) => {
                    let file = shown(input, "<stdin>");
                    let msg = super::failure_message(&file, &e);
                    failures.push((file, msg));
                }
            }
            if let Some(b) = &total_bar {
                b.inc(1);
            }
        }
        if let Some(b) = total_bar {
            b.finish_and_clear();
        }
        if let Some(dir) = new_output_dir.filter(|_| written == 0) {
            remove_empty_dirs(&dir);
        }
        let summary = (listed > 1).then(|| {
            format!(
                "{written} upscaled, {skipped} skipped, {} failed",
                failures.len()
            )
        });
        Ok(self.finish(&failures, summary, json))
    }

    /// Reports the files that failed (after the progress bars are gone, so no line is
    /// lost among them), the stage profile and the summary; the exit code says whether
    /// any file failed.
    fn finish(
        &self,
        failures: &[(String, String)],
        summary: Option<String>,
        json: bool,
    ) -> std::process::ExitCode {
        for (file, err) in failures {
            if json {
                emit("error", file, serde_json::json!({ "error": err }));
            }
            eprintln!(
                "error: {}: {}",
                super::printable(file, false),
                super::printable(err, false)
            );
        }
        if let Some(table) = crate::profile::report() {
            eprintln!("{table}");
        }
        if let Some(summary) = summary.filter(|_| !self.quiet) {
            eprintln!("{summary}");
        }
        if failures.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }

    /// Drops the files named again on the command line, however spelt (`a.png ./a.png`,
    /// `- -`), so that what `-o` names does not depend on the repetition; returns how many.
    /// What directories and patterns find is deduplicated once found ([`drop_repeated`]).
    fn drop_repeated_args(&mut self) -> usize {
        let mut seen = HashSet::new();
        let before = self.inputs.len();
        self.inputs.retain(|i| {
            if is_stdio(i) {
                seen.insert(i.clone())
            } else if i.exists() && !i.is_dir() {
                seen.insert(i.canonicalize().unwrap_or_else(|_| i.clone()))
            } else {
                true
            }
        });
        before - self.inputs.len()
    }

    /// Refuses, before the model is loaded, output flags that contradict each other or
    /// the inputs.
    fn check_output_flags(&self) -> Result<()> {
        let named_output = self.output.as_deref().filter(|o| !is_stdio(o));
        if let Some(out) = named_output {
            let names_a_file =
                out.is_file() || !out.is_dir() && OutputFormat::from_path(out).is_some();
            if names_a_file && !self.one_named_file() {
                return Err(usage(format!(
                    "-o {} names a file, but a directory, a pattern or several inputs need an output directory",
                    out.display()
                )));
            }
        }
        if let Some(out) = self.output_file() {
            // Only the errors matter here; the source's format is not known yet.
            self.output_file_format(out, OutputFormat::Png)
                .map_err(super::as_usage)?;
        }
        if self.output.is_none() && self.inputs.iter().any(|i| is_stdio(i)) {
            return Err(usage(
                "an image from standard input needs -o (a file, or - for standard output)",
            ));
        }
        let named_format = self
            .format
            .or_else(|| named_output.and_then(OutputFormat::from_path));
        if self.lossless && named_format == Some(OutputFormat::Jpeg) {
            return Err(usage(
                "--lossless: JPEG output is always lossy (write PNG, TIFF or WebP)",
            ));
        }
        if let Some(format) = named_format.filter(|f| self.ignores_depth(*f)) {
            return Err(usage(format!(
                "--depth 16: {} output is always 8-bit (write PNG or TIFF)",
                format.name()
            )));
        }
        if self.to_stdout() {
            if !self.one_named_file() {
                return Err(usage("-o - writes one image: give exactly one input file"));
            }
            if self.progress == ProgressMode::Json && !self.quiet {
                return Err(usage(
                    "--progress json writes to standard output, which -o - takes for the image",
                ));
            }
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(usage(
                    "-o - would write the image to the terminal: redirect or pipe standard output",
                ));
            }
        }
        Ok(())
    }

    fn say(
        &self,
        multi: &MultiProgress,
        json: bool,
        event: &str,
        input: &Path,
        fields: serde_json::Value,
        text: impl FnOnce() -> String,
    ) {
        if json {
            emit(event, &input.display().to_string(), fields);
        } else if !self.quiet {
            // indicatif drops `println` while its target is hidden (stderr is not a
            // terminal, or --progress none), which would silence these lines in logs.
            let text = text();
            let text = super::printable(&text, false);
            if multi.is_hidden() {
                eprintln!("{text}");
            } else {
                let _ = multi.println(text);
            }
        }
    }

    fn load_upscaler(&self, device: &Device, dtype: DType) -> Result<Upscaler> {
        if let Some(clip) = self.clip.as_deref().filter(|c| !c.exists()) {
            bail!("--clip {}: no such file", clip.display());
        }
        let (model, clip, defaults) = match &self.model {
            Some(path) => {
                let src = ModelSource::open(path)?;
                let model = InfDit::from_source(&src, dtype, device)?;
                let clip = if src.config.vector_dim > 0 {
                    self.find_clip(&src, device, dtype)?
                } else {
                    None
                };
                let defaults = SamplingDefaults::of_model(&src.checkpoint.path)?;
                (model, clip, defaults)
            }
            None => {
                let (model, defaults) = crate::default_model::load(dtype, device)?;
                (model, None, defaults)
            }
        };
        if self.clip.is_some() && clip.is_none() {
            tracing::warn!("--clip is not used: this model takes no image embedding");
        }
        let sampler = SamplerConfig {
            kind: self.sampler.unwrap_or(defaults.sampler),
            steps: self.steps.unwrap_or(defaults.steps),
            sigma_max: self.sigma_max.unwrap_or(defaults.sigma_max),
            ..SamplerConfig::default()
        };
        let batch = match (self.block_batch, self.max_memory) {
            (Some(b), _) => Some(BatchChoice::Fixed(b)),
            (None, Some(m)) => Some(BatchChoice::Budget(m)),
            (None, None) => None,
        };
        let opts = UpscaleOptions {
            size: self.size(),
            sampler,
            seed: self.seed,
            batch,
            order: self.order,
            self_ensemble: self.self_ensemble.unwrap_or(defaults.self_ensemble),
        };
        Upscaler::new(model, clip, opts)
    }

    /// CLIP weights: `--clip`, the checkpoint itself, or a known file beside the model.
    fn find_clip(
        &self,
        src: &ModelSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Option<ClipEncoder>> {
        if let Some(p) = &self.clip {
            return Ok(Some(load_clip_file(p, None, device, dtype)?));
        }
        Ok(match ClipLocation::find(&src.checkpoint) {
            Some(ClipLocation::Checkpoint) => {
                let w = ClipWeights::from_tensors(src.checkpoint.tensors.clone())?;
                Some(ClipEncoder::from_weights(None, w, device, dtype)?)
            }
            Some(ClipLocation::Beside(p)) => Some(load_clip_file(&p, None, device, dtype)?),
            None => None,
        })
    }

    /// The output size the flags ask for.
    fn size(&self) -> OutputSize {
        match (self.width, self.height) {
            (Some(width), Some(height)) => OutputSize::Within { width, height },
            (Some(width), None) => OutputSize::Width(width),
            (None, Some(height)) => OutputSize::Height(height),
            (None, None) => self
                .scale
                .map_or_else(OutputSize::default, OutputSize::Scale),
        }
    }

    /// Whether the inputs are one file named directly, the one case where `-o` names a
    /// file; a directory or pattern input makes `-o` a directory even when it finds one image.
    fn one_named_file(&self) -> bool {
        // A device or a named pipe counts as a file: it gives one image. So does a missing
        // name that is no pattern: the run reports it missing.
        matches!(self.inputs.as_slice(), [one] if is_stdio(one)
            || !one.is_dir() && (one.exists() || !is_pattern(one)))
    }

    /// `-o`, where it names the output file of the one input.
    fn output_file(&self) -> Option<&Path> {
        self.output.as_deref().filter(|out| {
            !is_stdio(out)
                && self.one_named_file()
                && !out.is_dir()
                && !out.to_string_lossy().ends_with(std::path::MAIN_SEPARATOR)
        })
    }

    /// The format of the output file `out` (see [`Self::output_file`]): `--format`, else
    /// the name's, else, for a name without an extension, `by_source`.
    fn output_file_format(&self, out: &Path, by_source: OutputFormat) -> Result<OutputFormat> {
        let named_format = OutputFormat::from_path(out);
        Ok(match (self.format, named_format) {
            // Also an image extension that is not written (`.bmp`).
            (Some(f), named)
                if named.is_some_and(|n| n != f)
                    || named.is_none() && InputFormat::from_path(out).is_some() =>
            {
                bail!(
                    "--format {f} does not match the name {}: change one of them",
                    out.display()
                )
            }
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) if out.extension().is_none() => by_source,
            (None, None) => match InputFormat::from_path(out) {
                Some(read) => bail!(
                    "cannot write {}: {read} is an input format only; use .png, .jpg, .webp or .tiff",
                    out.display()
                ),
                None => bail!(
                    "cannot tell the output format from {}: use .png, .jpg, .webp or .tiff, or --format",
                    out.display()
                ),
            },
        })
    }

    /// Whether `--depth 16` was asked for and `format` cannot store it.
    fn ignores_depth(&self, format: OutputFormat) -> bool {
        self.depth == Some(Depth::Sixteen) && !format.supports_sixteen_bit()
    }

    fn to_stdout(&self) -> bool {
        self.output.as_deref().is_some_and(is_stdio)
    }

    fn output_path(
        &self,
        item: &Input,
        source_format: Option<InputFormat>,
    ) -> Result<(PathBuf, OutputFormat)> {
        let input = &item.path;
        let by_source = source_format.map_or(OutputFormat::Png, InputFormat::default_output);
        // The stem is kept as the OS gave it, so names that are not UTF-8 stay distinct.
        let named = |dir: &Path, format: OutputFormat| {
            let mut name = match input.file_stem() {
                _ if is_stdio(input) => "stdin".into(),
                Some(stem) => stem.to_os_string(),
                None => "image".into(),
            };
            // The input's own spelling of the extension where it names the format
            // written (`.JPG`, `.jpeg`, `.tif`), else the conventional one.
            let ext = match input.extension().and_then(|e| e.to_str()) {
                Some(ext) if OutputFormat::from_path(input) == Some(format) => ext,
                _ => format.extension(),
            };
            name.push(format!("_{}.{ext}", self.size().suffix()));
            dir.join(name)
        };
        let beside = input.parent().map(Path::to_path_buf).unwrap_or_default();
        if self.to_stdout() {
            return Ok((PathBuf::from(STDIO), self.format.unwrap_or(by_source)));
        }
        if let Some(out) = self.output_file() {
            return Ok((out.to_path_buf(), self.output_file_format(out, by_source)?));
        }
        match &self.output {
            Some(dir) => {
                let dir = &dir.join(&item.subdir);
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create output directory {}", dir.display()))?;
                let format = self.format.unwrap_or(by_source);
                Ok((named(dir, format), format))
            }
            None => {
                let format = self.format.unwrap_or(by_source);
                Ok((named(&beside, format), format))
            }
        }
    }

    fn process(
        &self,
        item: &Input,
        up: &Upscaler,
        multi: &MultiProgress,
        json: bool,
        produced: &HashMap<PathBuf, PathBuf>,
        inputs: &HashSet<PathBuf>,
    ) -> Result<Outcome> {
        let input = &item.path;
        let limits = DecodeLimits {
            max_width: self.max_input_side,
            max_height: self.max_input_side,
            ..DecodeLimits::default()
        };
        let piped = read_if_stream(input, &limits)?;
        // The output name needs the source format, and the size check below the size:
        // both come from the header, before decoding.
        let peeked = match &piped {
            Some((bytes, name)) => peek(bytes, name),
            None => peek_file(input),
        };
        let (out, out_format) = self.output_path(item, peeked.map(|p| p.format))?;
        self.warn_unused_flags(out_format);
        let stdout = is_stdio(&out);
        if !stdout {
            crate::fsutil::check_replaceable(&out, input, inputs)?;
        }
        if let Some(earlier) = produced.get(&out) {
            bail!(
                "its output {} was already written from {} in this run (rename one of the inputs)",
                out.display(),
                earlier.display()
            );
        }
        if !stdout && out.exists() && !self.overwrite {
            return Ok(Outcome::Skipped(out));
        }
        if !stdout {
            check_writable(&out)?;
        }
        // A size that cannot be upscaled, or not in this machine's memory, is refused from
        // the header, before a large image is decoded.
        if let Some((h, w)) = peeked.and_then(|p| p.size) {
            check_output_size(up, (h, w), out_format)?;
            up.work(h, w)?;
            up.check_memory(h, w)?;
        }
        let img = match &piped {
            Some((bytes, name)) => decode_named_bytes(bytes, name, &limits)?,
            None => decode_file(input, &limits)?,
        };
        tracing::debug!(
            "{}: {:?}, {}×{}{}{}{} → {}",
            input.display(),
            img.format,
            img.rgb.width,
            img.rgb.height,
            if img.alpha.is_some() { ", alpha" } else { "" },
            if img.grayscale { ", gray" } else { "" },
            if img.sixteen_bit { ", 16-bit" } else { "" },
            out.display()
        );
        check_output_size(up, (img.rgb.height, img.rgb.width), out_format)?;
        let (rgb, alpha) = upscale_with_progress(up, &img, input, multi, json)?;
        let opts = self.encode_options(out_format, &img);
        if stdout {
            let bytes = encode_bytes(Path::new("<stdout>"), &rgb, alpha.as_ref(), &opts)?;
            let mut w = std::io::stdout().lock();
            w.write_all(&bytes)
                .and_then(|()| w.flush())
                .context("cannot write to standard output")?;
        } else {
            encode_file(&out, &rgb, alpha.as_ref(), &opts)?;
        }
        Ok(Outcome::Written(out))
    }

    /// Warns once a run about a flag an output's format does not use. (Where the format
    /// is named on the command line, `check_output_flags` refuses the pair instead.)
    fn warn_unused_flags(&self, format: OutputFormat) {
        if self.lossless && format == OutputFormat::Jpeg {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "--lossless applies to WebP: JPEG outputs are written at --quality {}",
                    self.quality
                )
            });
        }
        if self.ignores_depth(format) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "--depth 16 applies to PNG and TIFF: JPEG and WebP outputs are 8-bit"
                )
            });
        }
    }

    /// How the result of `img` is written as `format`: what the source keeps (depth,
    /// colour, metadata) as the flags amend it.
    fn encode_options(&self, format: OutputFormat, img: &DecodedImage) -> EncodeOptions {
        let mut opts = EncodeOptions::matching(format, img);
        opts.quality = self.quality;
        opts.lossless = self.lossless;
        if let Some(depth) = self.depth {
            opts.sixteen_bit = depth == Depth::Sixteen;
        }
        if self.no_exif {
            opts.exif = None;
            opts.xmp = None;
            opts.iptc = None;
        }
        opts
    }
}

/// Standard input, and streams named as files (`<(…)`, a named pipe), can be read only
/// once: they are read into memory (with the name to report them by), where the format is
/// sniffed and decoded. A regular file gives `None`: it is read where it lies.
fn read_if_stream<'a>(
    input: &'a Path,
    limits: &DecodeLimits,
) -> Result<Option<(Vec<u8>, &'a Path)>> {
    if is_stdio(input) {
        let name = Path::new("<stdin>");
        return Ok(Some((
            read_stream(std::io::stdin().lock(), name, limits)?,
            name,
        )));
    }
    if std::fs::metadata(input).is_ok_and(|m| !m.is_file()) {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read {}", input.display()))?;
        return Ok(Some((read_stream(file, input, limits)?, input)));
    }
    Ok(None)
}

/// Upscales `img` while a progress bar (and, with `json`, progress lines at most four a
/// second) follows its blocks.
fn upscale_with_progress(
    up: &Upscaler,
    img: &DecodedImage,
    input: &Path,
    multi: &MultiProgress,
    json: bool,
) -> Result<(Planar, Option<Planar>)> {
    let total = up.work(img.rgb.height, img.rgb.width)?;
    let bar = multi.add(ProgressBar::new(total as u64));
    bar.set_style(super::bar_style(
        "{prefix:>8} [{bar:30}] {pos}/{len} blocks {rate} ETA {eta} {msg}",
    ));
    bar.set_prefix("image");
    bar.set_message(
        input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let mut last_json = Instant::now() - Duration::from_secs(1);
    let name = input.display().to_string();
    // Alpha is upscaled even for a format that cannot keep it (JPEG): the encoder then
    // composites the result over white.
    let result = up.upscale_planes(&img.rgb, img.alpha.as_ref(), &mut |p| {
        bar.set_position(p.done as u64);
        if json && (last_json.elapsed() >= Duration::from_millis(250) || p.done == p.total) {
            last_json = Instant::now();
            let counts = serde_json::json!({ "done": p.done, "total": p.total });
            emit("progress", &name, counts);
        }
    });
    bar.finish_and_clear();
    multi.remove(&bar);
    result
}

/// Drops the inputs that name a file already listed, however spelt (another path, a link
/// to it): each file is upscaled once. Returns the files listed, canonical, and how many
/// were dropped.
fn drop_repeated(inputs: &mut Vec<Input>) -> (HashSet<PathBuf>, usize) {
    let mut seen = HashSet::new();
    let before = inputs.len();
    inputs.retain(|i| seen.insert(i.path.canonicalize().unwrap_or_else(|_| i.path.clone())));
    let dropped = before - inputs.len();
    (seen, dropped)
}

/// Refuses, before any work, an output larger than its format stores (WebP's 16383 px a
/// side, JPEG's 65535).
fn check_output_size(
    up: &Upscaler,
    (height, width): (usize, usize),
    format: OutputFormat,
) -> Result<()> {
    let (h, w) = up.output_size(height, width)?;
    if let Some(max) = format.max_side().filter(|&max| h.max(w) > max) {
        bail!(
            "its {w}×{h} output is larger than {} stores ({max} px a side): write PNG or TIFF, or choose a smaller size",
            format.name()
        );
    }
    Ok(())
}

/// Reads an image from a stream (standard input, a pipe) that comes from `name`. Its first
/// bytes must open an accepted format, and it may not be larger than an image within the
/// decoding limits can be, nor than half the memory free: endless or non-image input is
/// refused as it arrives instead of filling memory.
fn read_stream(mut stream: impl Read, name: &Path, limits: &DecodeLimits) -> Result<Vec<u8>> {
    const HEAD: u64 = 64;
    let encoded = limits.max_encoded_bytes();
    let cap = encoded.min(
        crate::engine::memory::available_memory().map_or(u64::MAX, |free| (free / 2).max(HEAD)),
    );
    let mut bytes = Vec::new();
    let mut read = |bytes: &mut Vec<u8>, n: u64| {
        (&mut stream)
            .take(n)
            .read_to_end(bytes)
            .with_context(|| format!("cannot read {}", name.display()))
    };
    read(&mut bytes, HEAD)?;
    if InputFormat::detect(&bytes, name).is_none() {
        // The decoder words the refusal.
        decode_named_bytes(&bytes, name, limits)?;
    }
    read(&mut bytes, cap.saturating_sub(HEAD) + 1)?;
    if bytes.len() as u64 > cap {
        let bound = if cap < encoded {
            "half the memory free"
        } else if cap < limits.max_alloc {
            "an image within --max-input-side takes"
        } else {
            "an image within the decoding limits takes"
        };
        bail!(
            "{} holds more than {}, more than {bound}",
            name.display(),
            crate::engine::memory::format_size(cap),
        );
    }
    Ok(bytes)
}

/// One `--progress json` line: `event` and `input`, then the event's own `fields` (an
/// object).
fn emit(event: &str, input: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({ "event": event, "input": input });
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    println!("{line}");
}
