//! `infdit bench engine`: seconds per network evaluation and peak memory of the block
//! engine, for a config with random weights. Each case runs in a child process so its
//! peak RSS is its own.

use super::{as_usage, at_least_one, parse_device, usage, DTypeArg};
use crate::config::ModelConfig;
use crate::engine::memory::{format_size, parse_size, peak_rss};
use crate::engine::{Batching, Conditioning, Engine, EngineOptions, Order, Positions};
use crate::fsutil::{commit, temp_beside};
use crate::imageops::Planar;
use crate::model::kv_cache::{paged_attention, PagedKv};
use crate::model::ops::max_abs_diff;
use crate::model::InfDit;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time D(x, σ) in block and full mode over image sizes and batch sizes.
    Engine(EngineBenchArgs),
    /// Time the attention kernel at one shape (fused where available, and composed), with
    /// its largest difference from an f32 reference.
    Attention(AttentionArgs),
    /// Time the network's primitive operations at one layer's shapes.
    Ops(OpsArgs),
    /// Training pairs per second from the photo pipeline (decode, crop, degradation).
    Data(DataArgs),
    /// Time decoding image files as `upscale` reads them (any input format).
    Decode(DecodeArgs),
    /// One case in this process (used by `engine`).
    #[command(hide = true)]
    EngineOne(OneArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// `released`, `tiny` (the reference test config) or a config.json path.
    #[arg(long, default_value = "tiny")]
    config: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    #[arg(long, value_enum, default_value_t = Order::Auto)]
    order: Order,
    /// Timed evaluations per case (after one untimed warm-up when > 1).
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    repeat: usize,
    /// Budget for `auto` batches.
    #[arg(long, default_value = "8G")]
    max_memory: String,
}

#[derive(Args, Debug)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    common: Common,
    /// Output sizes, `N` for N×N or `WxH`.
    #[arg(long, value_delimiter = ',', default_value = "512,1024")]
    sizes: Vec<String>,
    /// Blocks per forward; `full` is the whole image at once, `auto` the largest batch
    /// the --max-memory budget allows.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,full")]
    batches: Vec<String>,
    /// Write all results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct OneArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    size: String,
    #[arg(long)]
    batch: String,
}

#[derive(Args, Debug)]
pub struct AttentionArgs {
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Blocks (batch entries).
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    blocks: usize,
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    heads: usize,
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    queries: usize,
    /// Keys per block (4096: a block and its three neighbours).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    keys: usize,
    #[arg(long, default_value_t = 80, value_parser = at_least_one())]
    head_dim: usize,
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    repeat: usize,
}

#[derive(Args, Debug)]
pub struct OpsArgs {
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Tokens (65536: 64 blocks of 32×32).
    #[arg(long, default_value_t = 65536, value_parser = at_least_one())]
    tokens: usize,
    /// Hidden size: a multiple of 32, for 16 heads of an even size (RoPE rotates pairs).
    #[arg(long, default_value_t = 1280, value_parser = at_least_one())]
    hidden: usize,
    #[arg(long, default_value_t = 5, value_parser = at_least_one())]
    repeat: usize,
}

/// Milliseconds per call of `f` on `device` over `reps` calls, after one untimed warm-up
/// call; the device is synchronised around the timed calls.
fn time_ms(
    device: &candle_core::Device,
    f: &dyn Fn() -> candle_core::Result<candle_core::Tensor>,
    reps: usize,
) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// One timed operation of `bench ops`.
type OpFn<'a> = Box<dyn Fn() -> candle_core::Result<candle_core::Tensor> + 'a>;

/// The heads `bench ops` splits the hidden size into, as the released model does.
const OPS_HEADS: usize = 16;

/// Tokens per block of `bench ops` (32×32).
const OPS_BLOCK_TOKENS: usize = 1024;

impl OpsArgs {
    /// Refuses shapes the ops cannot take, before the first of them is timed.
    fn validate(&self) -> Result<()> {
        if !self.hidden.is_multiple_of(2 * OPS_HEADS) {
            bail!(
                "--hidden {} must be a multiple of {}: it is split into {OPS_HEADS} heads, \
                 whose size must be even for RoPE",
                self.hidden,
                2 * OPS_HEADS
            );
        }
        if self.tokens > OPS_BLOCK_TOKENS && !self.tokens.is_multiple_of(OPS_BLOCK_TOKENS) {
            bail!(
                "--tokens {} must be at most {OPS_BLOCK_TOKENS} (one block) or whole \
                 {OPS_BLOCK_TOKENS}-token blocks",
                self.tokens
            );
        }
        Ok(())
    }

    fn run(self) -> Result<()> {
        use crate::model::ops::{modulate, LayerNorm};
        use candle_core::{DType, Module, Tensor};
        self.validate().map_err(as_usage)?;
        let device = parse_device(&self.device)?;
        let dtype: DType = self.dtype.into();
        let (n, d) = (self.tokens, self.hidden);
        let blocks = (n / OPS_BLOCK_TOKENS).max(1);
        let rnd = |shape: &[usize]| -> candle_core::Result<Tensor> {
            Tensor::randn(0f32, 1.0, shape, &device)?.to_dtype(dtype)
        };
        let x = rnd(&[blocks, n / blocks, d])?;
        let w = rnd(&[3 * d, d])?;
        let b = rnd(&[3 * d])?;
        let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let y = lin.forward(&x)?;
        let shift = rnd(&[blocks, 1, d])?;
        let scale = rnd(&[blocks, 1, d])?;
        let ln = LayerNorm::no_affine(d, 1e-6, dtype, &device)?;
        let h4 = rnd(&[blocks, n / blocks, 4 * d])?;
        // The model's own Linear: on CUDA the bias pass is fused (or, with INFDIT_GEMM=lt,
        // bias, GELU and residual sit in the GEMM epilogue).
        let qkv = crate::model::ops::Linear::new(w.clone(), Some(b.clone()));
        let fc1 = crate::model::ops::Linear::new(rnd(&[4 * d, d])?, Some(rnd(&[4 * d])?));
        let dense = crate::model::ops::Linear::new(rnd(&[d, d])?, Some(rnd(&[d])?));
        let ops: Vec<(&str, OpFn)> = vec![
            (
                "matmul x·Wᵀ (qkv)",
                Box::new(|| x.reshape((n, d))?.matmul(&w.t()?)),
            ),
            ("linear with bias (qkv)", Box::new(|| lin.forward(&x))),
            ("model linear (qkv)", Box::new(|| qkv.forward(&x))),
            ("model linear+gelu (fc1)", Box::new(|| fc1.forward_gelu(&x))),
            (
                "model linear+residual",
                Box::new(|| dense.forward_add(&x, &x)),
            ),
            ("bias broadcast_add", Box::new(|| y.broadcast_add(&b))),
            ("add (contiguous)", Box::new(|| &x + &x)),
            ("layer_norm", Box::new(|| ln.forward(&x))),
            ("modulate", Box::new(|| modulate(&x, &shift, &scale))),
            ("gelu (4D)", Box::new(|| crate::model::fused::gelu(&h4))),
            (
                "transpose+contiguous",
                Box::new(|| {
                    x.reshape((blocks, n / blocks, OPS_HEADS, d / OPS_HEADS))?
                        .transpose(1, 2)?
                        .contiguous()
                }),
            ),
        ];
        println!("{:<26} {:>10}", "op", "ms");
        for (name, f) in &ops {
            let ms = time_ms(&device, f, self.repeat)?;
            println!("{name:<26} {ms:>10.3}");
        }
        self.check_fused(&device, dtype, &x, (&shift, &scale))
    }

    /// Times the model's fused LayerNorm + modulation and QKV split (QK-norm + RoPE) at
    /// this shape and prints how far they are from candle's composed ops in f32: the
    /// check for kernels whose fast paths only serve the released shapes.
    fn check_fused(
        &self,
        device: &candle_core::Device,
        dtype: candle_core::DType,
        x: &candle_core::Tensor,
        (shift, scale): (&candle_core::Tensor, &candle_core::Tensor),
    ) -> Result<()> {
        use crate::model::attention::split_qkv;
        use crate::model::ops::{
            fused_kernels, layer_norm_composed, ln_modulate, modulate_composed,
        };
        use candle_core::{DType, Tensor};
        let (blocks, t, d) = x.dims3()?;
        let (heads, hd) = (OPS_HEADS, d / OPS_HEADS);
        let rnd = |shape: &[usize], mean: f32, std: f32| -> candle_core::Result<Tensor> {
            Tensor::randn(mean, std, shape, device)?.to_dtype(dtype)
        };
        let ln = crate::model::ops::LayerNorm::from_parts(
            rnd(&[d], 1.0, 0.1)?,
            rnd(&[d], 0.0, 0.1)?,
            1e-6,
        );
        let qk_norm = crate::model::ops::LayerNorm::from_parts(
            rnd(&[hd], 1.0, 0.1)?,
            rnd(&[hd], 0.0, 0.1)?,
            1e-6,
        );
        let qkv = rnd(&[blocks, t, 3 * d], 0.0, 1.0)?;
        let angle = Tensor::rand(0f32, std::f32::consts::TAU, (blocks, t, hd / 2), device)?;
        let (cos, sin) = (angle.cos()?.to_dtype(dtype)?, angle.sin()?.to_dtype(dtype)?);
        let fused = fused_kernels(&[x]);
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32);
        let (w, b, eps) = ln.parts();
        let reference = modulate_composed(
            &layer_norm_composed(&f32_of(x)?, &f32_of(w)?, &f32_of(b)?, eps)?,
            &f32_of(shift)?,
            &f32_of(scale)?,
        )?;
        let ln_diff = max_abs_diff(&ln_modulate(&ln, x, shift, scale)?, &reference)?;
        let ln_ms = time_ms(device, &|| ln_modulate(&ln, x, shift, scale), self.repeat)?;
        let rope = (&cos, &sin);
        let (q, k, v) = split_qkv(&qkv, &qk_norm, rope, heads, fused)?;
        let f32_norm = crate::model::ops::LayerNorm::from_parts(
            f32_of(qk_norm.parts().0)?,
            f32_of(qk_norm.parts().1)?,
            1e-6,
        );
        let (rq, rk, rv) = split_qkv(
            &f32_of(&qkv)?,
            &f32_norm,
            (&f32_of(&cos)?, &f32_of(&sin)?),
            heads,
            false,
        )?;
        let qkv_diff = max_abs_diff(&q, &rq)?
            .max(max_abs_diff(&k, &rk)?)
            .max(max_abs_diff(&v, &rv)?);
        let qkv_ms = time_ms(
            device,
            &|| split_qkv(&qkv, &qk_norm, rope, heads, fused).map(|(q, _, _)| q),
            self.repeat,
        )?;
        println!(
            "{:<26} {:>10} {:>22}",
            "model op", "ms", "max |diff| vs f32 ops"
        );
        println!("{:<26} {ln_ms:>10.3} {ln_diff:>22.2e}", "ln+modulate");
        println!(
            "{:<26} {qkv_ms:>10.3} {qkv_diff:>22.2e}",
            "qkv split+qk-norm+rope"
        );
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[arg(long, default_value = "data/photos")]
    data: PathBuf,
    #[arg(long, default_value_t = 128)]
    crop: usize,
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    count: usize,
}

impl DataArgs {
    fn run(self) -> Result<()> {
        let mut data = crate::train::data::PhotoDataset::open(&self.data, None)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let start = Instant::now();
        for _ in 0..self.count {
            data.sample(&mut rng, self.crop)?;
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{} crops of {} px in {s:.2} s: {:.1} crops/s",
            self.count,
            self.crop,
            self.count as f64 / s
        );
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Image files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Timed decodes per file.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    repeat: usize,
}

impl DecodeArgs {
    fn run(self) -> Result<()> {
        let limits = crate::imageops::io::DecodeLimits::default();
        let mut failed = 0;
        for file in &self.files {
            let mut times = Vec::with_capacity(self.repeat);
            let mut shape = String::new();
            for _ in 0..self.repeat {
                let start = Instant::now();
                let img = match crate::imageops::io::decode_file(file, &limits) {
                    Ok(img) => img,
                    Err(e) => {
                        println!("error: {e}");
                        failed += 1;
                        break;
                    }
                };
                times.push(start.elapsed().as_secs_f64());
                shape = format!(
                    "{} {}x{}{}",
                    img.format,
                    img.rgb.width,
                    img.rgb.height,
                    if img.sixteen_bit { " 16-bit" } else { "" }
                );
            }
            if times.is_empty() {
                continue;
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{}: {shape}: {:.3} s (best {:.3}, worst {:.3}, {} runs)",
                file.display(),
                times[times.len() / 2],
                times[0],
                times[times.len() - 1],
                times.len()
            );
        }
        anyhow::ensure!(failed == 0, "{failed} of {} files failed", self.files.len());
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttentionResult {
    pub shape: [usize; 5],
    pub dtype: String,
    pub fused: bool,
    pub ms: f64,
    pub tflops: f64,
    pub composed_ms: f64,
    /// Largest |difference| from f32 composed attention over the first two blocks.
    pub max_abs_diff: f32,
    /// Where the kernel reads neighbour slots in place (keys split into four pages, half
    /// of them from a second pool, with slot embeddings): its time, and its largest
    /// |difference| from the same slots gathered first (which rounds keys + embedding to
    /// 16 bits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paged_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paged_max_abs_diff: Option<f32>,
}

impl AttentionArgs {
    /// Refuses a shape whose tensors do not fit in the memory available, before any is
    /// made: q, k and v in f32 and in the dtype timed, the output, and the whole score
    /// tensor of the composed attention it is compared with.
    fn check_memory(&self) -> Result<()> {
        let (n, h, tq, tk, d) = (
            self.blocks as u64,
            self.heads as u64,
            self.queries as u64,
            self.keys as u64,
            self.head_dim as u64,
        );
        let bytes = (|| {
            let rows = tq.checked_add(tk)?.checked_mul(2)?;
            let qkvo = n.checked_mul(h)?.checked_mul(rows)?;
            let tensors = qkvo.checked_mul(d)?.checked_mul(2)?;
            let scores = n.checked_mul(h)?.checked_mul(tq)?.checked_mul(tk)?;
            tensors.checked_add(scores)?.checked_mul(4)
        })();
        let available = crate::engine::memory::available_memory();
        match (bytes, available) {
            (None, _) => bail!("this attention shape has more elements than memory can address"),
            (Some(b), Some(a)) if b > a => bail!(
                "this attention shape needs about {} of memory but {} is available",
                format_size(b),
                format_size(a)
            ),
            _ => Ok(()),
        }
    }

    fn run(self) -> Result<AttentionResult> {
        use crate::model::attention::attend;
        use crate::model::ops::{attention, attention_composed, fused_attention};
        use candle_core::{DType, Tensor};
        let device = parse_device(&self.device)?;
        let dtype: DType = self.dtype.into();
        let (n, h, tq, tk, d) = (
            self.blocks,
            self.heads,
            self.queries,
            self.keys,
            self.head_dim,
        );
        self.check_memory()?;
        let q = Tensor::randn(0f32, 1.0, (n, h, tq, d), &device)?;
        let k = Tensor::randn(0f32, 1.0, (n, h, tk, d), &device)?;
        let v = Tensor::randn(0f32, 1.0, (n, h, tk, d), &device)?;
        let (qc, kc, vc) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
        let m = n.min(2);
        let reference = attention_composed(
            &q.narrow(0, 0, m)?,
            &k.narrow(0, 0, m)?,
            &v.narrow(0, 0, m)?,
        )?;
        let ours = attention(
            &qc.narrow(0, 0, m)?,
            &kc.narrow(0, 0, m)?,
            &vc.narrow(0, 0, m)?,
        )?;
        let diff_to_reference = max_abs_diff(&ours, &reference)?;
        let ms = time_ms(&device, &|| attention(&qc, &kc, &vc), self.repeat)?;
        let composed_ms = time_ms(
            &device,
            &|| attention_composed(&qc, &kc, &vc),
            self.repeat.min(3),
        )?;
        let flops = 4.0 * (n * h * tq * tk * d) as f64;
        let (paged_ms, paged_max_abs_diff) = match self.paged_kv(&kc)? {
            Some(kv) => {
                let (k_all, v_all) = kv.gather()?;
                let diff = max_abs_diff(&attend(&qc, &kv)?, &attention(&qc, &k_all, &v_all)?)?;
                let ms = time_ms(&device, &|| attend(&qc, &kv), self.repeat)?;
                (Some(ms), Some(diff))
            }
            None => (None, None),
        };
        Ok(AttentionResult {
            shape: [n, h, tq, tk, d],
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            fused: fused_attention(&device, dtype, d),
            ms,
            tflops: flops / (ms * 1e-3) / 1e12,
            composed_ms,
            max_abs_diff: diff_to_reference,
            paged_ms,
            paged_max_abs_diff,
        })
    }

    /// Four neighbour slots of `keys / 4` tokens per block, like the block attention's:
    /// each block's own page, one of a cached pool, and its successor's two. `None` where
    /// the kernel does not read slots in place.
    fn paged_kv(&self, like: &candle_core::Tensor) -> Result<Option<PagedKv>> {
        use candle_core::Tensor;
        let (n, h, d) = (self.blocks, self.heads, self.head_dim);
        if !paged_attention(like) || !self.keys.is_multiple_of(4) {
            return Ok(None);
        }
        let page = self.keys / 4;
        let (dev, dt) = (like.device(), like.dtype());
        let pool = || Tensor::randn(0f32, 1.0, (n, h, page, d), dev)?.to_dtype(dt);
        let index: Vec<u32> = (0..4)
            .flat_map(|s| {
                (0..n).map(move |b| {
                    let block = if s < 2 { b } else { (b + 1) % n };
                    (block + if s % 2 == 1 { n } else { 0 }) as u32
                })
            })
            .collect();
        Ok(Some(PagedKv {
            k: pool()?,
            v: pool()?,
            pool: Some((pool()?, pool()?)),
            index: Tensor::new(index.as_slice(), dev)?,
            slot_embed: (Tensor::randn(0f32, 1.0, (4, h, d), dev)? * 0.1)?.to_dtype(dt)?,
        }))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub width: usize,
    pub height: usize,
    pub batch: String,
    pub seconds_per_nfe: f64,
    pub peak_rss_bytes: Option<u64>,
    pub peak_kv_cache_bytes: usize,
    pub device: String,
    pub dtype: String,
}

fn load_config(name: &str) -> Result<ModelConfig> {
    match name {
        "released" => Ok(ModelConfig::released()),
        "tiny" => {
            let mut c = ModelConfig::released();
            (
                c.num_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.mlp_inner_size,
            ) = (2, 64, 4, 256);
            Ok(c)
        }
        path => ModelConfig::from_json_file(std::path::Path::new(path)).with_context(|| {
            format!(
                "--config takes `tiny`, `released` or a model config JSON file (a model's \
                 config.json), not a weights file; {path} is none of them"
            )
        }),
    }
}

fn parse_wh(s: &str) -> Result<(usize, usize)> {
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .with_context(|| format!("invalid size `{s}` (expected N or WxH)"))
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => Ok((parse(s)?, parse(s)?)),
    }
}

/// A bench image size (`N` or `WxH`): whole blocks of `cfg`.
fn case_size(s: &str, cfg: &ModelConfig) -> Result<(usize, usize)> {
    let (w, h) = parse_wh(s).map_err(as_usage)?;
    let b = cfg.image_block_size_px;
    if w == 0 || h == 0 || !w.is_multiple_of(b) || !h.is_multiple_of(b) {
        return Err(usage(format!(
            "invalid size `{s}`: bench sizes must be positive multiples of {b} px"
        )));
    }
    Ok((w, h))
}

/// A `--batches` entry.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BatchArg {
    Full,
    Auto,
    Blocks(usize),
}

fn parse_batch(b: &str) -> Result<BatchArg> {
    match b {
        "full" => Ok(BatchArg::Full),
        "auto" => Ok(BatchArg::Auto),
        _ => match b.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(BatchArg::Blocks(n)),
            _ => Err(usage(format!(
                "invalid batch `{b}` (expected a positive number, full or auto)"
            ))),
        },
    }
}

impl BenchCommand {
    pub fn run(self) -> Result<()> {
        match self {
            BenchCommand::Engine(a) => a.run(),
            BenchCommand::Data(a) => a.run(),
            BenchCommand::Decode(a) => a.run(),
            BenchCommand::Ops(a) => a.run(),
            BenchCommand::Attention(a) => {
                let r = a.run()?;
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }
            BenchCommand::EngineOne(a) => {
                let r = a.run()?;
                println!("{}", serde_json::to_string(&r)?);
                if let Some(table) = crate::profile::report() {
                    eprintln!("{table}");
                }
                Ok(())
            }
        }
    }
}

impl EngineBenchArgs {
    fn run(self) -> Result<()> {
        let exe = std::env::current_exe()?;
        let c = &self.common;
        // Arguments every case shares are checked once, here, rather than failing each case.
        let cfg = load_config(&c.config)?;
        parse_size(&c.max_memory)
            .context("--max-memory")
            .map_err(as_usage)?;
        let sizes = self
            .sizes
            .iter()
            .map(|s| case_size(s, &cfg).context("--sizes"))
            .collect::<Result<Vec<_>>>()?;
        for batch in &self.batches {
            parse_batch(batch).context("--batches")?;
        }
        // Opened and closed again, before the cases open it in their own processes.
        parse_device(&c.device)?;
        // Created now so that a path that cannot be written fails before the cases run.
        let json = match &self.json {
            Some(p) if p.is_dir() => {
                return Err(usage(format!("--json {} is a folder", p.display())))
            }
            Some(p) => Some((
                p,
                temp_beside(p).with_context(|| format!("--json {}", p.display()))?,
            )),
            None => None,
        };
        let mut results = Vec::new();
        let mut failed = 0;
        println!(
            "{:>11} {:>6} {:>10} {:>12} {:>12}",
            "size", "batch", "s/NFE", "peak RSS", "K/V cache"
        );
        for &(w, h) in &sizes {
            let size = format!("{w}x{h}");
            for batch in &self.batches {
                let out = std::process::Command::new(&exe)
                    .args([
                        "bench",
                        "engine-one",
                        "--config",
                        &c.config,
                        "--device",
                        &c.device,
                    ])
                    .args([
                        "--dtype",
                        &format!("{:?}", c.dtype).to_lowercase(),
                        "--order",
                        &format!("{:?}", c.order)
                            .to_lowercase()
                            .replace("major", "-major"),
                    ])
                    .args([
                        "--repeat",
                        &c.repeat.to_string(),
                        "--max-memory",
                        &c.max_memory,
                        "--size",
                        &size,
                        "--batch",
                        batch,
                    ])
                    .output()?;
                if !out.status.success() {
                    failed += 1;
                    println!(
                        "{size:>11} {batch:>6} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    continue;
                }
                let r: CaseResult =
                    serde_json::from_slice(&out.stdout).context("reading a bench case result")?;
                println!(
                    "{:>11} {:>6} {:>10.3} {:>12} {:>12}",
                    format!("{}x{}", r.width, r.height),
                    r.batch,
                    r.seconds_per_nfe,
                    r.peak_rss_bytes
                        .map(format_size)
                        .unwrap_or_else(|| "n/a".into()),
                    format_size(r.peak_kv_cache_bytes as u64)
                );
                results.push(r);
            }
        }
        if let Some((path, tmp)) = json {
            std::fs::write(tmp.path(), serde_json::to_vec_pretty(&results)?)
                .and_then(|()| commit(tmp, path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if failed > 0 {
            bail!(
                "{failed} of {} cases failed",
                sizes.len() * self.batches.len()
            );
        }
        Ok(())
    }
}

impl OneArgs {
    fn run(self) -> Result<CaseResult> {
        let c = &self.common;
        let cfg = load_config(&c.config)?;
        let device = parse_device(&c.device)?;
        let (w, h) = case_size(&self.size, &cfg)?;
        let batch = parse_batch(&self.batch)?;
        let batching = match batch {
            BatchArg::Full => Batching::Full,
            BatchArg::Auto => {
                let mm = crate::engine::memory::MemoryModel::new(&cfg, c.dtype.into(), &device);
                Batching::Blocks(mm.choose_batch(
                    h,
                    w,
                    c.order,
                    parse_size(&c.max_memory).context("--max-memory")?,
                    256,
                )?)
            }
            BatchArg::Blocks(n) => Batching::Blocks(n),
        };
        let model = InfDit::random(&cfg, 1, c.dtype.into(), &device)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut img = |c, h, w| {
            Planar::new(
                c,
                h,
                w,
                (0..c * h * w)
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect(),
            )
        };
        let x = img(3, h, w);
        let concat_lr = img(3, h, w);
        let lr = img(3, h / cfg.sr_scale, w / cfg.sr_scale);
        let vector = if cfg.vector_dim > 0 {
            Some(candle_core::Tensor::ones(
                (1, cfg.vector_dim),
                candle_core::DType::F32,
                &device,
            )?)
        } else {
            None
        };
        let cond = Conditioning {
            concat_lr,
            lr,
            vector,
            positions: Positions::Grid,
        };
        let engine = Engine::new(
            &model,
            EngineOptions {
                batching,
                order: c.order,
            },
        );
        if c.repeat > 1 {
            engine.denoise(&x, 1.0, &cond, &mut |_| {})?;
        }
        let start = Instant::now();
        for _ in 0..c.repeat {
            engine.denoise(&x, 1.0, &cond, &mut |_| {})?;
        }
        device.synchronize()?;
        Ok(CaseResult {
            width: w,
            height: h,
            batch: match batching {
                Batching::Blocks(b) if batch == BatchArg::Auto => format!("auto:{b}"),
                _ => self.batch.clone(),
            },
            seconds_per_nfe: start.elapsed().as_secs_f64() / c.repeat as f64,
            peak_rss_bytes: peak_rss(),
            peak_kv_cache_bytes: engine.peak_cache_bytes(),
            device: format!("{device:?}"),
            dtype: format!("{:?}", c.dtype).to_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_bench_sizes_and_batches_are_checked() {
        let cfg = load_config("tiny").unwrap();
        let b = cfg.image_block_size_px;
        assert_eq!(case_size(&b.to_string(), &cfg).unwrap(), (b, b));
        assert_eq!(
            case_size(&format!("{}x{b}", 2 * b), &cfg).unwrap(),
            (2 * b, b)
        );
        for bad in ["abc", "0", "", &format!("{}", b + 1), &format!("{b}x0")] {
            assert!(case_size(bad, &cfg).is_err(), "{bad}");
        }
        assert_eq!(parse_batch("full").unwrap(), BatchArg::Full);
        assert_eq!(parse_batch("auto").unwrap(), BatchArg::Auto);
        assert_eq!(parse_batch("4").unwrap(), BatchArg::Blocks(4));
        for bad in ["0", "-1", "many", ""] {
            assert!(parse_batch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attention_shape_counts_must_be_positive() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            bench: BenchCommand,
        }
        for flag in ["--blocks", "--heads", "--queries", "--keys", "--head-dim"] {
            let args = ["bench", "attention", flag, "0"];
            assert!(Cli::try_parse_from(args).is_err(), "{flag} 0 accepted");
            let args = ["bench", "attention", flag, "1"];
            assert!(Cli::try_parse_from(args).is_ok(), "{flag} 1 refused");
        }
    }
}
