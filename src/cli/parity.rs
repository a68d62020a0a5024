//! `infdit parity …`: the reference cases through the port, outputs as safetensors.

use super::{parse_device, DTypeArg};
use crate::checkpoint::ModelSource;
use crate::clip::{l2_normalize, load_clip_file, ClipVisionConfig};
use crate::engine::{Batching, EngineOptions, Order};
use crate::imageops::resize::{resize_bicubic, resize_short_side};
use crate::model::InfDit;
use crate::parity::{denoise, sample_case, write_tensors, Case};
use crate::sampler::{SamplerConfig, SamplerKind};
use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ParityCommand {
    /// One denoiser call D(x, σ): writes `denoised` and `net_out_F`.
    Denoise(ModelCaseArgs),
    /// A sampler run from the case's `init_noise`: writes `sample` and `x_after_step0`.
    Sample {
        #[command(flatten)]
        common: ModelCaseArgs,
        #[arg(long)]
        steps: usize,
        #[arg(long, value_enum, default_value_t = SamplerKind::Heun)]
        sampler: SamplerKind,
    },
    /// The pipeline's bicubic resizes on `up_in` (×4) and `dn_in` (short side 224).
    Resize {
        #[arg(long)]
        case: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Largest absolute difference of every tensor two safetensors files share.
    Diff { a: PathBuf, b: PathBuf },
    /// The CLIP image encoder on `lr_image`: writes `preprocessed`, `visual_out`, `embedding`.
    Clip {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        case: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The whole image in one forward (the reference).
    Full,
    /// Block by block with the K/V cache.
    Blocks,
}

#[derive(Args, Debug)]
pub struct ModelCaseArgs {
    /// Directory with config.json and weights.safetensors.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    case: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    mode: Mode,
    /// Blocks per forward in blocks mode.
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one())]
    block_batch: usize,
    #[arg(long, value_enum, default_value_t = Order::Auto)]
    order: Order,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
}

impl ModelCaseArgs {
    fn load(&self) -> Result<(InfDit, Case, EngineOptions)> {
        let src = ModelSource::open(&self.model)?;
        let model = InfDit::from_source(&src, self.dtype.into(), &parse_device(&self.device)?)?;
        let batching = match self.mode {
            Mode::Full => Batching::Full,
            Mode::Blocks => Batching::Blocks(self.block_batch),
        };
        Ok((
            model,
            Case::open(&self.case)?,
            EngineOptions {
                batching,
                order: self.order,
            },
        ))
    }
}

impl ParityCommand {
    pub fn run(self) -> Result<()> {
        let dev = Device::Cpu;
        match self {
            ParityCommand::Denoise(a) => {
                let (model, case, opts) = a.load()?;
                let (den, f) = denoise(&model, &case, opts)?;
                write_tensors(
                    &a.out,
                    &[
                        ("denoised", den.to_tensor(&dev)?),
                        ("net_out_F", f.to_tensor(&dev)?),
                    ],
                )
            }
            ParityCommand::Sample {
                common,
                steps,
                sampler,
            } => {
                let (model, case, opts) = common.load()?;
                let cfg = SamplerConfig {
                    steps,
                    kind: sampler,
                    ..Default::default()
                };
                let (out, first) = sample_case(&model, &case, &cfg, opts)?;
                write_tensors(
                    &common.out,
                    &[
                        ("sample", out.to_tensor(&dev)?),
                        ("x_after_step0", first.to_tensor(&dev)?),
                    ],
                )
            }
            ParityCommand::Resize { case, out } => {
                let case = Case::open(&case)?;
                let up = case.planar("up_in")?;
                let dn = case.planar("dn_in")?;
                let (uh, uw) = (4 * up.height, 4 * up.width);
                let up_aa = resize_bicubic(&up, uh, uw, true);
                let up_plain = resize_bicubic(&up, uh, uw, false);
                let dn_aa = resize_short_side(&dn, 224, true);
                let dn_plain = resize_short_side(&dn, 224, false);
                let dn_crop = dn_aa.center_crop(224, 224);
                write_tensors(
                    &out,
                    &[
                        ("up_x4_tv_antialias_true", up_aa.to_tensor(&dev)?),
                        ("up_x4_tv_antialias_false", up_plain.to_tensor(&dev)?),
                        (
                            "up_x4_F_interpolate_bicubic_alignFalse",
                            up_plain.to_tensor(&dev)?,
                        ),
                        ("dn_resize224_tv_antialias_true", dn_aa.to_tensor(&dev)?),
                        ("dn_resize224_tv_antialias_false", dn_plain.to_tensor(&dev)?),
                        (
                            "dn_resize224_centercrop224_tv_antialias_true",
                            dn_crop.to_tensor(&dev)?,
                        ),
                    ],
                )
            }
            ParityCommand::Diff { a: pa, b: pb } => {
                let (a, b) = (Case::open(&pa)?, Case::open(&pb)?);
                let mut names: Vec<&String> = a.0.keys().filter(|k| b.0.contains_key(*k)).collect();
                names.sort();
                anyhow::ensure!(!names.is_empty(), "the files share no tensor names");
                for n in names {
                    let (ta, tb) = (a.get(n)?, b.get(n)?);
                    anyhow::ensure!(
                        ta.dims() == tb.dims(),
                        "{n}: shape {:?} in {}, {:?} in {}",
                        ta.dims(),
                        pa.display(),
                        tb.dims(),
                        pb.display()
                    );
                    let d = crate::model::ops::max_abs_diff(ta, tb)?;
                    println!("{n}: max |diff| {d:.3e}");
                }
                Ok(())
            }
            ParityCommand::Clip {
                config,
                weights,
                case,
                out,
            } => {
                let cfg = ClipVisionConfig::from_json_file(&config)?;
                let encoder = load_clip_file(&weights, Some(&cfg), &dev, DType::F32)?;
                let pixels = encoder.preprocess(&Case::open(&case)?.planar("lr_image")?)?;
                let visual = encoder.visual(&pixels)?;
                let embedding = l2_normalize(&visual)?;
                write_tensors(
                    &out,
                    &[
                        ("preprocessed", pixels.to_tensor(&dev)?),
                        ("visual_out", visual),
                        ("embedding", embedding),
                    ],
                )
            }
        }
    }
}
