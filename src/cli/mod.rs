//! The `infdit` command line.

mod bench;
mod checkpoint_tools;
mod eval;
mod inputs;
mod parity;
mod train;
mod upscale;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, Subcommand};
use std::borrow::Cow;

#[derive(Parser, Debug)]
#[command(
    name = "infdit",
    version,
    about = "Inf-DiT: upscale images of any size with a memory-bounded diffusion transformer"
)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). INFDIT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Upscale images (PNG, JPEG, WebP, TIFF, BMP, GIF, TGA, PNM, QOI, JPEG XL, AVIF, HEIC).
    Upscale(upscale::UpscaleArgs),
    /// List a checkpoint's tensors, parameter counts and the config it matches.
    Inspect(checkpoint_tools::InspectArgs),
    /// Convert a checkpoint (.pt/.pth/.bin/.safetensors) to safetensors.
    Convert(checkpoint_tools::ConvertArgs),
    /// Run reference cases through the port (for parity checks).
    #[command(subcommand)]
    Parity(parity::ParityCommand),
    /// Train a model on photos (EDM objective, degraded LR images).
    Train(train::TrainArgs),
    /// PSNR/SSIM (Y channel) of upscaled images, or of the model against bicubic.
    Eval(eval::EvalArgs),
    /// Benchmarks (speed and memory).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script, e.g. `infdit completions bash > ~/.local/share/bash-completion/completions/infdit`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Decodes one AVIF file for the process that started this one (see
    /// `imageops::io::decode_avif_in_child_process`); not for users.
    #[command(name = "decode-avif", hide = true)]
    DecodeAvif { file: std::path::PathBuf },
}

impl Cli {
    pub fn run(self) -> Result<std::process::ExitCode> {
        match self.command {
            Command::Upscale(a) => return a.run(),
            Command::Inspect(a) => return a.run(),
            Command::Convert(a) => a.run(),
            Command::Parity(c) => c.run(),
            Command::Bench(c) => c.run(),
            Command::Train(a) => a.run(),
            Command::Eval(a) => return a.run(),
            Command::DecodeAvif { file } => return Ok(crate::imageops::io::avif_child_main(&file)),
            Command::Completions { shell } => {
                // Generated in memory: clap_complete panics on a failed write.
                let mut script = Vec::new();
                completions(shell, &mut script);
                std::io::Write::write_all(&mut std::io::stdout().lock(), &script)
                    .context("cannot write to standard output")?;
                Ok(())
            }
        }?;
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// Writes the completion script of `shell` for every command and flag.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "infdit", out);
}

/// A flag's parser for a count or size that must be positive.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

// Parsers that check a flag's value as the pipeline will, so that a value out of range is
// refused as a usage error, named by its flag, before anything is loaded or read.

/// A flag's value parsed, then checked by `check`.
fn checked_value<T: std::str::FromStr + Copy>(
    s: &str,
    check: impl Fn(T) -> anyhow::Result<()>,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v: T = s.trim().parse().map_err(|e| format!("{e}"))?;
    check(v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// `--scale`: above 1 and at most 16.
fn scale_value(s: &str) -> Result<f64, String> {
    checked_value(s, |v| crate::pipeline::OutputSize::Scale(v).validate())
}

/// `--steps`: 1 to [`crate::sampler::MAX_STEPS`], checked as the sampler checks it.
fn steps_value(s: &str) -> Result<usize, String> {
    use crate::sampler::SamplerConfig;
    checked_value(s, |steps| {
        SamplerConfig {
            steps,
            ..SamplerConfig::default()
        }
        .validate()
    })
}

/// `--sigma-max`: a noise level the sampler can start from.
fn sigma_max_value(s: &str) -> Result<f32, String> {
    use crate::sampler::SamplerConfig;
    checked_value(s, |sigma_max| {
        SamplerConfig {
            sigma_max,
            ..SamplerConfig::default()
        }
        .validate()
    })
}

/// `--self-ensemble`: 1, 2, 4 or 8.
fn self_ensemble_value(s: &str) -> Result<usize, String> {
    checked_value(s, crate::pipeline::check_self_ensemble)
}

/// `--max-memory`: a size such as `8G` or `512M`.
fn memory_value(s: &str) -> Result<u64, String> {
    crate::engine::memory::parse_size(s).map_err(|e| e.to_string())
}

/// A command line that cannot be carried out as given (flags that contradict each other
/// or the inputs): exit status 2, like the values the flag parsers refuse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] saying `msg`.
pub(super) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// `e`, a check of the command line that reports with `bail!`, as a [`UsageError`].
pub(super) fn as_usage(e: anyhow::Error) -> anyhow::Error {
    usage(error_text(&e))
}

/// The exit status for a command that failed with `e`: 2 for a usage error, else 1.
pub fn failure_status(e: &anyhow::Error) -> std::process::ExitCode {
    if e.chain().any(|c| c.is::<UsageError>()) {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `e` and its causes on one line, `outer: inner: …`, each cause once: some error types
/// print their cause in their own message and also report it as their source.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The message of `e`, the failure of one input `file` in a batch, for a line that names
/// the file itself: decoding errors begin with the file's name, which is then left out.
fn failure_message(file: &str, e: &anyhow::Error) -> String {
    let msg = error_text(e);
    match msg.strip_prefix(&format!("{file}: ")) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`, …) for a terminal: a file
/// name may hold any of them, and printed raw one would split the line or drive the
/// terminal. `keep_newlines` keeps the line breaks of a message written in lines.
pub fn printable(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A progress bar style from `template`, which may use `{rate}`: items per second to two
/// or three significant digits (indicatif's `{per_sec}` prints four decimals).
fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .expect("a valid progress template")
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let r = s.per_sec();
                let digits = if r >= 10.0 {
                    0
                } else if r >= 1.0 {
                    1
                } else {
                    2
                };
                let _ = write!(w, "{r:.digits$}/s");
            },
        )
        .progress_chars("=> ")
}

/// `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(s: &str) -> Result<Device> {
    const CUDA: (&str, bool) = ("cuda", cfg!(feature = "cuda"));
    const METAL: (&str, bool) = ("metal", cfg!(feature = "metal"));
    let ((feature, built), device) = match s {
        "cpu" => return Ok(Device::Cpu),
        "metal" => (METAL, Device::new_metal(0)),
        "cuda" => (CUDA, Device::new_cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => (CUDA, Device::new_cuda(i)),
            _ => {
                return Err(usage(format!(
                    "unknown device `{s}` (expected cpu, cuda, cuda:N or metal)"
                )))
            }
        },
    };
    if !built {
        return Err(usage(format!(
            "this infdit was built without {feature} support: rebuild with \
             `cargo build --release --features {feature}` (README: GPUs)"
        )));
    }
    device.with_context(|| format!("cannot open device `{s}`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help texts name every input format there is.
    #[test]
    fn help_names_every_input_format() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let upscale = cli.find_subcommand_mut("upscale").unwrap();
        let about = upscale.get_about().unwrap().to_string();
        let inputs = upscale
            .get_arguments()
            .find(|a| a.get_id() == "inputs")
            .and_then(|a| a.get_help())
            .unwrap()
            .to_string();
        let names = crate::imageops::io::input_format_names();
        assert!(about.contains(&names), "{about}");
        assert!(inputs.replace('\n', " ").contains(&names), "{inputs}");
    }

    /// The subcommand a parent process runs to decode AVIF files is the one declared.
    #[test]
    fn avif_child_command_exists() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let child = cli
            .find_subcommand(crate::imageops::io::AVIF_CHILD_COMMAND)
            .unwrap();
        assert!(child.is_hide_set());
    }

    /// An error that prints its cause in its own message and also reports it as its
    /// source (as an I/O error wrapped by a writer does) says it once.
    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "write failed: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::other("No space left on device");
        let e = anyhow::Error::new(Wrapper(io)).context("writing out.png");
        assert_eq!(
            error_text(&e),
            "writing out.png: write failed: No space left on device"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert!(matches!(printable("plain é", false), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\nb\u{1b}[31m\t\u{9b}", false),
            "a\\nb\\u{1b}[31m\\t\\u{9b}"
        );
        assert_eq!(printable("problems:\n  one\r", true), "problems:\n  one\\r");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_know_the_commands_and_flags() {
        use clap_complete::Shell;
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::PowerShell,
            Shell::Elvish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["upscale", "convert", "max-memory", "self-ensemble", "width"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }
}
