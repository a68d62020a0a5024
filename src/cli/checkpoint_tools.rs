//! `infdit inspect` and `infdit convert`.

use super::{as_usage, usage, DTypeArg};
use crate::checkpoint::{
    expected_shapes, is_ignored_key, non_finite, weights_path, Checkpoint, ConfigSource,
};
use crate::clip::ClipLocation;
use crate::pipeline::SamplingDefaults;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint file (.safetensors, .pt, .pth, .bin) or model directory.
    pub checkpoint: PathBuf,
    /// Print every tensor, not only the summary.
    #[arg(long)]
    pub all: bool,
}

impl InspectArgs {
    /// Prints the report; fails (after it) where `--model` would refuse the checkpoint.
    pub fn run(self) -> Result<std::process::ExitCode> {
        let path = weights_path(&self.checkpoint)?;
        let ck = Checkpoint::open(&path)?;
        let shapes = ck.shapes();
        let config = ck.config_and_source(&path.with_file_name("config.json"));
        // The denoiser's own tensors, where the config is known.
        let expected = config.as_ref().ok().map(|(cfg, _)| expected_shapes(cfg));
        let mut groups: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        let mut dtypes: std::collections::BTreeMap<String, usize> = Default::default();
        for (name, t) in &ck.tensors {
            let group = if name.starts_with("image_encoder.model.visual.") {
                "image encoder (CLIP visual)"
            } else if name.starts_with("image_encoder.") {
                "image encoder (unused text leftovers)"
            } else if name.contains("rope.freqs_") {
                "RoPE buffers (recomputed)"
            } else if is_ignored_key(name) {
                "unused by the forward pass"
            } else if expected.as_ref().is_some_and(|e| !e.contains_key(name)) {
                "unexpected (ignored)"
            } else {
                "denoiser"
            };
            let e = groups.entry(group).or_default();
            e.0 += 1;
            e.1 += t.elem_count();
            *dtypes.entry(format!("{:?}", t.dtype())).or_default() += 1;
        }
        println!("{}: {} tensors", path.display(), shapes.len());
        for (g, (n, p)) in &groups {
            println!("  {g:<40} {n:>5} tensors {p:>14} values");
        }
        println!(
            "  dtypes: {}",
            dtypes
                .iter()
                .map(|(d, n)| format!("{d} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, why) in &ck.unreadable {
            println!("  cannot read {name}: {why}");
        }
        if self.all {
            for (name, shape) in &shapes {
                println!("  {name:<70} {shape:?} {:?}", ck.tensors[name].dtype());
            }
        }
        let usable = match config {
            Ok((cfg, source)) => {
                let preset = if cfg == crate::config::ModelConfig::released() {
                    ", the released Inf-DiT"
                } else {
                    ""
                };
                println!(
                    "config ({source}{preset}): {} layers, hidden {}, {} heads, MLP {}, patch {}, block {} px, vector {}, sr ×{}, σ_data {}, {}",
                    cfg.num_layers,
                    cfg.hidden_size,
                    cfg.num_attention_heads,
                    cfg.mlp_inner_size,
                    cfg.patch_size,
                    cfg.image_block_size_px,
                    cfg.vector_dim,
                    cfg.sr_scale,
                    cfg.sigma_data,
                    if cfg.residual { "residual" } else { "not residual" }
                );
                let weights_usable = match ck.validate(&cfg) {
                    Ok(unknown) => {
                        println!(
                            "all {} denoiser tensors present with the right shapes",
                            expected_shapes(&cfg).len()
                        );
                        if !unknown.is_empty() {
                            println!(
                                "{} unexpected tensors (ignored): {}",
                                unknown.len(),
                                unknown.join(", ")
                            );
                        }
                        let shapes = expected_shapes(&cfg);
                        let broken = ck.non_finite(shapes.keys().map(String::as_str))?;
                        if !broken.is_empty() {
                            println!(
                                "NaN or infinite values in {} tensor(s): {}",
                                broken.len(),
                                broken.join(", ")
                            );
                        }
                        broken.is_empty()
                    }
                    Err(e) => {
                        println!("{}", super::error_text(&e));
                        false
                    }
                };
                if cfg.vector_dim > 0 {
                    report_clip(&ck);
                }
                weights_usable & report_sampling(&path)
            }
            Err(e) => {
                println!(
                    "not an Inf-DiT denoiser checkpoint: {}",
                    super::error_text(&e)
                );
                false
            }
        };
        Ok(if usable {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        })
    }
}

/// Prints where the CLIP weights a conditioned model needs come from.
fn report_clip(ck: &Checkpoint) {
    let found = match ClipLocation::find(ck) {
        Some(ClipLocation::Checkpoint) => "in the checkpoint".to_string(),
        Some(ClipLocation::Beside(p)) => format!("beside it, {}", p.display()),
        None => "none in the checkpoint or beside it: upscale needs --clip FILE".into(),
    };
    println!("CLIP image encoder weights: {found}");
}

/// Prints the sampling settings the model carries; false where they are unusable.
fn report_sampling(weights: &Path) -> bool {
    match SamplingDefaults::stored(weights) {
        Ok(stored) => {
            let s = stored.clone().unwrap_or_default();
            println!(
                "sampling ({}): {}, {} step{} from σ {}, self-ensemble {}",
                if stored.is_some() {
                    "the model's own"
                } else {
                    "defaults"
                },
                format!("{:?}", s.sampler).to_lowercase(),
                s.steps,
                if s.steps == 1 { "" } else { "s" },
                s.sigma_max,
                s.self_ensemble
            );
            true
        }
        Err(e) => {
            println!("{}", super::error_text(&e));
            false
        }
    }
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input checkpoint (.pt, .pth, .bin, .safetensors) or model directory.
    pub input: PathBuf,
    /// Output .safetensors file.
    pub output: PathBuf,
    /// Store tensors in this dtype (default: as stored).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Keep the RoPE table buffers (deterministic, 2×84 M values in the released model;
    /// dropped by default because they are recomputed).
    #[arg(long)]
    pub keep_rope_buffers: bool,
    /// Replace an existing output file (never the input).
    #[arg(long)]
    pub overwrite: bool,
}

/// Refuses output paths that `--model` and `inspect` would not read back as safetensors.
fn check_output_name(output: &Path) -> Result<()> {
    if output.as_os_str() == "-" {
        bail!("convert writes a file, not standard output: give an output path ending in .safetensors");
    }
    if output
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "{}: the output is safetensors and its name must end in .safetensors",
            output.display()
        );
    }
    Ok(())
}

impl ConvertArgs {
    pub fn run(self) -> Result<()> {
        check_output_name(&self.output).map_err(as_usage)?;
        let input = weights_path(&self.input)?;
        crate::fsutil::check_replaceable(&self.output, &input, &Default::default())?;
        if self.output.exists() && !self.overwrite {
            return Err(usage(format!(
                "{} exists; pass --overwrite to replace it",
                self.output.display()
            )));
        }
        let ck = Checkpoint::open(&input)?;
        // Writing the rest would pass for a complete conversion.
        if !ck.unreadable.is_empty() {
            bail!(
                "{}: {} tensor{} cannot be read, so it cannot be converted whole: {}",
                input.display(),
                ck.unreadable.len(),
                if ck.unreadable.len() == 1 { "" } else { "s" },
                ck.unreadable
                    .iter()
                    .map(|(name, why)| format!("{name} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let dtype: Option<DType> = self.dtype.map(Into::into);
        let tensors: HashMap<String, Tensor> = ck
            .tensors
            .iter()
            .filter(|(k, _)| self.keep_rope_buffers || !k.contains("rope.freqs_"))
            .map(|(k, t)| {
                let t = match dtype {
                    Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
                    _ => t.clone(),
                };
                Ok((k.clone(), t))
            })
            .collect::<Result<_>>()?;
        let broken = non_finite(tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
        if !broken.is_empty() {
            let list = broken.join(", ");
            if ck.non_finite(broken.iter().map(String::as_str))?.is_empty() {
                bail!(
                    "{} tensor(s) hold values beyond the range of {:?}: {list}; convert to bf16 or f32 instead",
                    broken.len(),
                    dtype.unwrap_or(DType::F32)
                );
            }
            bail!(
                "{}: NaN or infinite values in {} tensor(s): {list}; the weights are broken (a diverged training run?)",
                input.display(),
                broken.len()
            );
        }
        // The config and sampling settings travel inside the file where they are known,
        // so the result loads as the same model wherever it is put; not a config that
        // would only be inferred from the shapes (storing a guess would hide that it is
        // one).
        let mut metadata = HashMap::new();
        if let Some(sampling) = SamplingDefaults::stored(&input)? {
            metadata.insert(
                SamplingDefaults::METADATA_KEY.to_string(),
                sampling.to_json(),
            );
        }
        let config_file = input.with_file_name("config.json");
        match ck.config_and_source(&config_file) {
            Ok((cfg, ConfigSource::File | ConfigSource::Stored)) => {
                ck.validate(&cfg)?;
                crate::checkpoint::save_model_weights_with(&self.output, &tensors, &cfg, metadata)?
            }
            // A config given beside the weights must be one the model loads with.
            Err(e) if config_file.exists() => return Err(e),
            unknown => {
                if let Err(e) = unknown {
                    tracing::warn!("no model config stored in the output: {e:#}");
                }
                crate::fsutil::save_safetensors_with_metadata(
                    &self.output,
                    &tensors,
                    Some(metadata),
                )?
            }
        }
        println!(
            "wrote {} tensors to {}",
            tensors.len(),
            self.output.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_outputs_must_be_safetensors_files() {
        for ok in [
            "a.safetensors",
            "dir/b.safetensors",
            "/abs/c.safetensors",
            "D.SafeTensors",
        ] {
            assert!(check_output_name(Path::new(ok)).is_ok(), "{ok}");
        }
        let e = check_output_name(Path::new("-")).unwrap_err();
        assert!(e.to_string().contains("standard output"), "{e}");
        for bad in ["out.bin", "out.pt", "out", "dir/"] {
            let e = check_output_name(Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains(".safetensors"), "{bad}: {e}");
        }
    }
}
