//! Memory estimates that choose the block batch for a budget (`--max-memory`).
//!
//! The estimate counts the weights, the K/V cache at its peak for the schedule, the
//! per-block activations of one layer (attention scores dominate), and, on the CPU
//! where they share the memory, the host image buffers of the sampler.

use super::{Order, Schedule};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Parses `8G`, `512M`, `1.5GiB`, `2000000000`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid size `{s}` (e.g. 8G, 512M)"))?;
    let bytes = v * mult as f64;
    // Also refuses NaN, infinity and what rounds down to no byte at all.
    if bytes.is_nan() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        bail!("invalid size `{s}`: must be at least 1 byte and finite");
    }
    Ok(bytes as u64)
}

pub fn format_size(bytes: u64) -> String {
    format_rounded(bytes, f64::round)
}

/// [`format_size`] rounded up, for a least size: a budget of the figure shown suffices.
pub fn format_size_up(bytes: u64) -> String {
    format_rounded(bytes, f64::ceil)
}

/// `bytes` in GiB to a tenth, else in whole MiB or KiB, rounded by `round`.
fn format_rounded(bytes: u64, round: fn(f64) -> f64) -> String {
    let in_unit = |shift: u32| bytes as f64 / (1u64 << shift) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", round(in_unit(30) * 10.0) / 10.0)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", round(in_unit(20)))
    } else if bytes >= 1 << 10 {
        format!("{} KiB", round(in_unit(10)))
    } else {
        format!("{bytes} B")
    }
}

/// Device memory a GPU process holds beyond its tensors: measured ~0.8 GiB on an H100
/// (CUDA context, cuBLAS workspace, stream-ordered allocator slack).
pub const GPU_RUNTIME_BYTES: u64 = 1 << 30;

/// Host memory the process holds beyond the estimate's tensors and images on the CPU: the
/// binary and its libraries, thread stacks and allocator arenas (measured: 61 MB peak RSS
/// for a 16×12 photo through the built-in model, whose estimate is 12 MiB).
pub const CPU_PROCESS_BYTES: u64 = 48 << 20;

/// The parts of the estimate for one image and batch size, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub cache: u64,
    pub activations: u64,
    pub host_images: u64,
    /// The runtime's own memory: on a GPU its context, BLAS workspace and allocator slack;
    /// on the CPU the process's (see [`CPU_PROCESS_BYTES`]).
    pub runtime: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.cache + self.activations + self.host_images + self.runtime
    }
}

/// Sizes an evaluation of an `height × width` HR image with `batch` blocks per forward.
#[derive(Debug, Clone, Copy)]
pub struct MemoryModel<'a> {
    pub cfg: &'a ModelConfig,
    /// Bytes per value of the compute dtype.
    pub dtype_bytes: u64,
    /// Count host image buffers (true when the compute device is the CPU).
    pub include_host: bool,
    /// Attention scores never reach memory (a fused attention kernel serves: f32 on the CPU,
    /// the CUDA kernel on a GPU).
    pub fused_attention: bool,
    /// The attention kernel reads neighbour K/V in place: no gathered 4-slot copy, only
    /// the cached neighbours joined into one pool.
    pub paged_kv: bool,
}

impl<'a> MemoryModel<'a> {
    /// The model of `cfg` evaluated in `dtype` on `device`.
    pub fn new(cfg: &'a ModelConfig, dtype: DType, device: &Device) -> Self {
        Self {
            cfg,
            dtype_bytes: dtype.size_in_bytes() as u64,
            include_host: device.is_cpu(),
            fused_attention: crate::model::ops::fused_attention(device, dtype, cfg.head_dim()),
            paged_kv: crate::model::kv_cache::paged_serves(
                device,
                dtype,
                cfg.head_dim(),
                cfg.block_tokens() * cfg.block_tokens(),
            ),
        }
    }

    pub fn estimate(
        &self,
        height: usize,
        width: usize,
        order: Order,
        batch: usize,
    ) -> MemoryEstimate {
        let cfg = self.cfg;
        let s = cfg.image_block_size_px;
        let schedule = Schedule::new(height / s, width / s, order);
        let e = self.dtype_bytes;
        let t = (cfg.block_tokens() * cfg.block_tokens()) as u64;
        let (d, m, nh) = (
            cfg.hidden_size as u64,
            cfg.mlp_inner_size as u64,
            cfg.num_attention_heads as u64,
        );
        let per_block_layer_kv = 2 * t * d * e;
        let cache_blocks = schedule.peak_cached_blocks(batch) as u64;
        // Residual, LN, qkv, q/k/v, output; MLP hidden twice.
        let per_block_tokens = t * (d * 9 + 2 * m) * e;
        // Scores, scaled scores and softmax (f32), for the blocks of one attention chunk.
        let per_block_scores = if self.fused_attention {
            0
        } else {
            3 * nh * t * 4 * t * 4
        };
        let chunk_blocks =
            (crate::model::ops::MAX_SCORE_BYTES as u64 / (per_block_scores / 3).max(1)).max(1);
        let batch = batch.min(schedule.order.len()) as u64;
        // K/V copies around the attention, in blocks' worth of keys or values: none when
        // the kernel reads the neighbours in place (cached blocks stay in the cache's
        // pool); gathered, the cached neighbours the batch reads (at most n + 3), their
        // join with the batch's own, and the four-slot keys and values (twice over on the
        // CPU, where the composed gather joins per-slot parts).
        let kv_blocks = if self.paged_kv {
            0
        } else {
            let slots = if self.include_host { 16 } else { 8 };
            2 * (batch + 3) + 2 * (2 * batch + 3) + slots * batch
        };
        let activations = batch * per_block_tokens
            + kv_blocks * t * d * e
            + batch.min(chunk_blocks) * per_block_scores;
        MemoryEstimate {
            weights: cfg.parameter_count() as u64 * e,
            cache: cache_blocks * cfg.num_layers as u64 * per_block_layer_kv,
            activations,
            host_images: if self.include_host {
                host_image_bytes(height, width)
            } else {
                0
            },
            runtime: if self.include_host {
                CPU_PROCESS_BYTES
            } else {
                GPU_RUNTIME_BYTES
            },
        }
    }

    /// The largest batch (capped at `cap`) whose estimate fits `budget`; an error naming
    /// the smallest budget that works when even one block does not fit.
    pub fn choose_batch(
        &self,
        height: usize,
        width: usize,
        order: Order,
        budget: u64,
        cap: usize,
    ) -> Result<usize> {
        let one = self.estimate(height, width, order, 1);
        if one.total() > budget {
            bail!(
                "a {width}×{height} model pass (the image padded to whole {}-px blocks) needs at least {} (weights {}, K/V cache {}, activations {}, images {}, runtime {}) but the memory budget is {}; raise --max-memory",
                self.cfg.image_block_size_px,
                format_size_up(one.total()),
                format_size(one.weights),
                format_size(one.cache),
                format_size(one.activations),
                format_size(one.host_images),
                format_size(one.runtime),
                format_size(budget)
            );
        }
        let s = self.cfg.image_block_size_px;
        let blocks = (height / s) * (width / s);
        let mut best = 1;
        for b in 2..=cap.min(blocks) {
            if self.estimate(height, width, order, b).total() <= budget {
                best = b;
            } else {
                break;
            }
        }
        // As many forwards, all of one size: a smaller peak, and no odd-sized last batch
        // whose allocations the allocator cannot reuse.
        Ok(blocks.div_ceil(blocks.div_ceil(best).max(1)).max(1))
    }
}

/// The sampler's host image buffers for an `height × width` output: seven f32 RGB images.
/// Heun's step holds five at once (the conditioning, the state, the derivative, the Euler
/// guess and the denoiser's output at it); the self-ensemble's sum is a sixth, and the
/// seventh covers the smaller buffers around them (measured: 71 bytes per pixel).
pub fn host_image_bytes(height: usize, width: usize) -> u64 {
    7 * 3 * (height * width) as u64 * 4
}

/// Memory this process can still take, if known: the least of the system's available
/// memory (Linux `MemAvailable`), what the memory limit of its cgroup (a container's)
/// leaves, and the address space `RLIMIT_AS` (`ulimit -v`) leaves. Past any of them an
/// allocation fails, and a failed allocation aborts the process.
pub fn available_memory() -> Option<u64> {
    [
        status_kib("/proc/meminfo", "MemAvailable:"),
        cgroup_headroom(),
        address_space_headroom(),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// A `Name: N kB` line of a `/proc` status file, in bytes.
fn status_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What the memory limit of this process's cgroup leaves (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`); `None` without a limit.
fn cgroup_headroom() -> Option<u64> {
    let read =
        |path: String| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (limit, usage) = match controllers {
            "" => (
                read(format!("/sys/fs/cgroup{path}/memory.max")),
                read(format!("/sys/fs/cgroup{path}/memory.current")),
            ),
            c if c.split(',').any(|c| c == "memory") => {
                let dir = format!("/sys/fs/cgroup/memory{path}");
                (
                    read(format!("{dir}/memory.limit_in_bytes"))
                        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes".into())),
                    read(format!("{dir}/memory.usage_in_bytes"))
                        .or_else(|| read("/sys/fs/cgroup/memory/memory.usage_in_bytes".into())),
                )
            }
            _ => continue,
        };
        // v1 spells "no limit" as a huge number (v2 as "max", which does not parse).
        if let (Some(limit), Some(usage)) = (limit, usage) {
            if limit < 1 << 60 {
                return Some(limit.saturating_sub(usage));
            }
        }
    }
    None
}

/// Address space left under `RLIMIT_AS`; `None` when unlimited.
fn address_space_headroom() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one plain struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        let used = status_kib("/proc/self/status", "VmSize:")?;
        Some(limit.rlim_cur.saturating_sub(used))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Free memory on a CUDA device (the driver's count, after what this process already
/// holds); `None` on other devices.
pub fn device_free_memory(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        _ => None,
    }
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    status_kib("/proc/self/status", "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        for bad in ["0.5", "inf", "1e400", "nan", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn least_sizes_round_up() {
        let just_over = (68 << 20) + (1 << 18);
        assert_eq!(format_size(just_over), "68 MiB");
        assert_eq!(format_size_up(just_over), "69 MiB");
        assert_eq!(format_size_up(68 << 20), "68 MiB");
        assert_eq!(format_size_up((3 << 29) + 1), "1.6 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1000), "1000 B");
    }

    /// A budget between two batch sizes that take as many forwards gets the smaller: a
    /// 3×4-block image with room for 9 blocks runs two batches of 6, not 9 and 3.
    #[test]
    fn batches_are_evened_out() {
        let cfg = ModelConfig::minimal();
        let mm = MemoryModel::new(&cfg, DType::F32, &candle_core::Device::Cpu);
        let s = cfg.image_block_size_px;
        let (h, w) = (3 * s, 4 * s);
        let budget = mm.estimate(h, w, Order::Auto, 9).total();
        assert_eq!(mm.choose_batch(h, w, Order::Auto, budget, 64).unwrap(), 6);
        assert_eq!(mm.choose_batch(h, w, Order::Auto, budget, 5).unwrap(), 4);
        assert_eq!(
            mm.choose_batch(h, w, Order::Auto, u64::MAX, 64).unwrap(),
            12
        );
    }

    #[test]
    fn budget_picks_batches_and_refuses_clearly() {
        let cfg = ModelConfig::released();
        let mm = MemoryModel {
            cfg: &cfg,
            dtype_bytes: 2,
            include_host: false,
            fused_attention: false,
            paged_kv: false,
        };
        let b = mm
            .choose_batch(4096, 4096, Order::Auto, 8 << 30, 64)
            .unwrap();
        assert!(b >= 1);
        assert!(mm.estimate(4096, 4096, Order::Auto, b).total() <= 8 << 30);
        let err = mm
            .choose_batch(4096, 4096, Order::Auto, 1 << 30, 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs at least"), "{err}");
        // The cache follows the short side: a 4096×512 strip caches far less than 4096².
        let strip = mm.estimate(512, 4096, Order::Auto, 1).cache;
        let square = mm.estimate(4096, 4096, Order::Auto, 1).cache;
        assert!(strip * 4 < square);
    }

    /// The CPU budget counts the process itself; a GPU one the runtime on the card.
    #[test]
    fn the_runtime_is_counted_on_every_device() {
        let cfg = ModelConfig::minimal();
        let cpu = MemoryModel::new(&cfg, DType::F32, &Device::Cpu);
        let gpu = MemoryModel {
            include_host: false,
            ..cpu
        };
        let (c, g) = (
            cpu.estimate(64, 64, Order::Auto, 1),
            gpu.estimate(64, 64, Order::Auto, 1),
        );
        assert_eq!(
            (c.runtime, g.runtime),
            (CPU_PROCESS_BYTES, GPU_RUNTIME_BYTES)
        );
        assert_eq!(c.host_images, host_image_bytes(64, 64));
        assert!(c.total() >= c.weights + c.activations + CPU_PROCESS_BYTES);
    }

    #[test]
    fn fused_attention_frees_the_score_memory() {
        let cfg = ModelConfig::released();
        let composed = MemoryModel::new(&cfg, DType::BF16, &Device::Cpu);
        assert!(!composed.fused_attention);
        assert!(MemoryModel::new(&cfg, DType::F32, &Device::Cpu).fused_attention);
        let fused = MemoryModel {
            fused_attention: true,
            ..MemoryModel::new(&cfg, DType::BF16, &Device::Cpu)
        };
        let (a, b) = (
            composed.estimate(2048, 2048, Order::Auto, 8),
            fused.estimate(2048, 2048, Order::Auto, 8),
        );
        assert_eq!(a.cache, b.cache);
        // One block's scores for 16 heads at 1024×4096 in f32 are 256 MiB each.
        assert!(a.activations >= b.activations + (256 << 20));
        let budget = 12 << 30;
        assert!(
            fused
                .choose_batch(4096, 4096, Order::Auto, budget, 64)
                .unwrap()
                >= composed
                    .choose_batch(4096, 4096, Order::Auto, budget, 64)
                    .unwrap()
        );
    }

    #[test]
    fn neighbours_read_in_place_need_no_gathered_copy() {
        let cfg = ModelConfig::released();
        let gathered = MemoryModel {
            fused_attention: true,
            ..MemoryModel::new(&cfg, DType::BF16, &Device::Cpu)
        };
        let paged = MemoryModel {
            paged_kv: true,
            ..gathered
        };
        let (a, b) = (
            gathered.estimate(2048, 2048, Order::Auto, 8),
            paged.estimate(2048, 2048, Order::Auto, 8),
        );
        assert_eq!(a.cache, b.cache);
        // Gathered on the CPU, 8 blocks: the 11 cached neighbours' K and V, their join with
        // the batch (19 blocks, K and V) and the composed 4-slot copies (16 per block).
        let blocks = 2 * 11 + 2 * 19 + 16 * 8;
        assert_eq!(a.activations - b.activations, blocks * 1024 * 1280 * 2);
    }
}
