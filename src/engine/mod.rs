//! The block engine: evaluates the denoiser `D(x, σ)` over an image of any size, a batch
//! of blocks at a time, with a K/V cache holding only the blocks later batches still read.
//!
//! Blocks are visited along the image's long side (row-major for tall images,
//! column-major for wide ones), so the cache holds about one short-side line of blocks
//! per layer: memory grows with the shorter side, not the area. Any contiguous run of
//! that order is a valid batch, because every neighbour a block reads (left, top,
//! left-top) comes earlier in both orders and is either cached or in the same batch.
//! With one batch holding every block this is exactly the whole-image ("full") forward.

mod inputs;
pub mod memory;

pub use inputs::{gather_blocks, prepare_batch, Conditioning, HostBatch, Positions};

use crate::imageops::Planar;
use crate::model::{BatchPlan, BlockId, InfDit, KvCache, Precond, Tap};
use crate::profile::stage;
use anyhow::{ensure, Result};
use std::collections::{HashMap, HashSet};

/// Visiting order of the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Order {
    /// Along the long side, so the cache spans the short side.
    #[default]
    Auto,
    RowMajor,
    ColumnMajor,
}

impl Order {
    /// The same walk over a transposed image: its rows are the columns here.
    pub fn transposed(self) -> Self {
        match self {
            Self::Auto => Self::Auto,
            Self::RowMajor => Self::ColumnMajor,
            Self::ColumnMajor => Self::RowMajor,
        }
    }
}

/// How many blocks go through the network together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Every block in one forward: the reference "full" mode.
    Full,
    /// At most this many blocks per forward.
    Blocks(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub batching: Batching,
    pub order: Order,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batching: Batching::Blocks(4),
            order: Order::Auto,
        }
    }
}

/// The block visiting schedule for an `rows × cols` block grid.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub rows: usize,
    pub cols: usize,
    pub order: Vec<(usize, usize)>,
    /// Index in `order` of the last block that reads each block's K/V (None: no reader).
    last_reader: HashMap<(usize, usize), Option<usize>>,
}

impl Schedule {
    pub fn new(rows: usize, cols: usize, order: Order) -> Self {
        let row_major = match order {
            Order::RowMajor => true,
            Order::ColumnMajor => false,
            Order::Auto => cols <= rows,
        };
        let order: Vec<(usize, usize)> = if row_major {
            (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (i, j)))
                .collect()
        } else {
            (0..cols)
                .flat_map(|j| (0..rows).map(move |i| (i, j)))
                .collect()
        };
        let pos: HashMap<(usize, usize), usize> =
            order.iter().enumerate().map(|(k, b)| (*b, k)).collect();
        let last_reader = order
            .iter()
            .map(|&(i, j)| {
                let readers = [(i, j + 1), (i + 1, j), (i + 1, j + 1)];
                (
                    (i, j),
                    readers.iter().filter_map(|r| pos.get(r).copied()).max(),
                )
            })
            .collect();
        Self {
            rows,
            cols,
            order,
            last_reader,
        }
    }

    /// The batches of `batch` blocks in order, each with what the K/V cache keeps and
    /// drops around it.
    pub fn steps(&self, batch: usize) -> Vec<Step<'_>> {
        let batch = batch.max(1);
        let mut cached: HashSet<(usize, usize)> = HashSet::new();
        self.order
            .chunks(batch)
            .enumerate()
            .map(|(k, blocks)| {
                let end = k * batch + blocks.len() - 1;
                let live = |b: &(usize, usize)| self.last_reader[b].is_some_and(|r| r > end);
                let retain: Vec<bool> = blocks.iter().map(live).collect();
                let evict: Vec<(usize, usize)> =
                    cached.iter().filter(|b| !live(b)).copied().collect();
                let held = cached.len() + retain.iter().filter(|&&r| r).count();
                cached.retain(live);
                cached.extend(blocks.iter().filter(|b| live(b)));
                Step {
                    blocks,
                    retain,
                    evict,
                    cached: held,
                }
            })
            .collect()
    }

    /// Cache blocks the schedule holds at most per layer with batches of `batch` blocks.
    pub fn peak_cached_blocks(&self, batch: usize) -> usize {
        self.steps(batch)
            .iter()
            .map(|s| s.cached)
            .max()
            .unwrap_or(0)
    }
}

/// One batch of a [`Schedule`].
#[derive(Debug, Clone)]
pub struct Step<'s> {
    pub blocks: &'s [(usize, usize)],
    /// For each block of the batch, whether a later batch reads its K/V.
    pub retain: Vec<bool>,
    /// Cached blocks this batch reads for the last time.
    pub evict: Vec<(usize, usize)>,
    /// Blocks in the cache while the batch runs: those from before and those it adds.
    pub cached: usize,
}

/// Evaluates `D(x, σ)` block by block.
pub struct Engine<'m> {
    model: &'m InfDit,
    options: EngineOptions,
    peak_cache_bytes: std::cell::Cell<usize>,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m InfDit, options: EngineOptions) -> Self {
        Self {
            model,
            options,
            peak_cache_bytes: Default::default(),
        }
    }

    /// Largest K/V cache held so far, in bytes.
    pub fn peak_cache_bytes(&self) -> usize {
        self.peak_cache_bytes.get()
    }

    pub fn model(&self) -> &InfDit {
        self.model
    }

    /// Blocks per side for an HR image of `height × width`.
    pub fn block_grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let s = self.model.config().image_block_size_px;
        ensure!(
            height.is_multiple_of(s) && width.is_multiple_of(s) && height > 0 && width > 0,
            "image {width}×{height} is not a whole number of {s}-px blocks"
        );
        self.model.config().check_image_side(height, width)?;
        Ok((height / s, width / s))
    }

    /// The denoised image `D(x, σ) = F·c_out + x·c_skip`. `on_blocks` is told how many
    /// blocks each finished batch held.
    pub fn denoise(
        &self,
        x: &Planar,
        sigma: f32,
        cond: &Conditioning,
        on_blocks: &mut dyn FnMut(usize),
    ) -> Result<Planar> {
        let (f, pre) = self.network_output(x, sigma, cond, on_blocks)?;
        Ok(pre.denoised(f, x))
    }

    /// The raw network output F (before the c_out/c_skip mix) and the preconditioning.
    pub fn network_output(
        &self,
        x: &Planar,
        sigma: f32,
        cond: &Conditioning,
        on_blocks: &mut dyn FnMut(usize),
    ) -> Result<(Planar, Precond)> {
        self.network_output_impl(x, sigma, cond, on_blocks, None)
    }

    /// [`Self::network_output`], passing every batch's intermediates to `tap`.
    pub fn network_output_tapped(
        &self,
        x: &Planar,
        sigma: f32,
        cond: &Conditioning,
        on_blocks: &mut dyn FnMut(usize),
        tap: Tap,
    ) -> Result<(Planar, Precond)> {
        self.network_output_impl(x, sigma, cond, on_blocks, Some(tap))
    }

    fn network_output_impl(
        &self,
        x: &Planar,
        sigma: f32,
        cond: &Conditioning,
        on_blocks: &mut dyn FnMut(usize),
        mut tap: Option<Tap>,
    ) -> Result<(Planar, Precond)> {
        let cfg = self.model.config();
        let (rows, cols) = self.block_grid(x.height, x.width)?;
        cond.check(cfg, x)?;
        let pre = Precond::new(sigma, cfg.sigma_data as f32);
        let emb_act = self.model.emb_act(&[pre.c_noise], cond.vector.as_ref())?;
        let schedule = Schedule::new(rows, cols, self.options.order);
        let batch = match self.options.batching {
            Batching::Full => schedule.order.len(),
            Batching::Blocks(b) => b.clamp(1, schedule.order.len()),
        };
        let mut out = Planar::zeros(cfg.out_channels, x.height, x.width);
        let steps = schedule.steps(batch);
        let peak = steps.iter().map(|s| s.cached).max().unwrap_or(0);
        let mut cache = KvCache::new(cfg.num_layers).with_capacity(peak);
        let dev = self.model.device();
        let prepare =
            |step: &Step| inputs::prepare_batch(self.model, 0, step.blocks, x, cond, pre.c_in);
        let mut next = steps.first().map(prepare);
        for (k, step) in steps.iter().enumerate() {
            cache.set_plan(BatchPlan {
                retain: step.retain.clone(),
                evict: step
                    .evict
                    .iter()
                    .map(|&(i, j)| BlockId::new(0, i, j))
                    .collect(),
            });
            let host = next.take().expect("prepared before use")?;
            let blocks = stage("engine/inputs", dev, || {
                host.upload(self.model, &emb_act)
                    .map_err(candle_core::Error::wrap)
            })?;
            let f = stage("engine/network", dev, || match &mut tap {
                Some(tap) => self
                    .model
                    .forward_blocks_tapped(&blocks, &mut cache, &mut **tap),
                None => self.model.forward_blocks(&blocks, &mut cache),
            })?;
            // The next batch's host inputs are built while the device runs this one.
            next = steps.get(k + 1).map(prepare);
            stage("engine/outputs", dev, || {
                inputs::scatter_blocks(&f, step.blocks, cfg.image_block_size_px, &mut out)
                    .map_err(candle_core::Error::wrap)
            })?;
            self.peak_cache_bytes
                .set(self.peak_cache_bytes.get().max(cache.bytes()));
            on_blocks(step.blocks.len());
        }
        debug_assert!(cache.is_empty(), "every cached block must be consumed");
        Ok((out, pre))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_long_side_and_bounds_cache() {
        let wide = Schedule::new(2, 8, Order::Auto);
        assert_eq!(wide.order[..3], [(0, 0), (1, 0), (0, 1)]);
        let tall = Schedule::new(8, 2, Order::Auto);
        assert_eq!(tall.order[..3], [(0, 0), (0, 1), (1, 0)]);
        // One short-side line plus two blocks (the one being read for the last time and
        // the one just written), whatever the long side.
        assert_eq!(Schedule::new(3, 40, Order::Auto).peak_cached_blocks(1), 5);
        assert_eq!(Schedule::new(40, 3, Order::Auto).peak_cached_blocks(1), 5);
        assert_eq!(
            Schedule::new(40, 3, Order::ColumnMajor).peak_cached_blocks(1),
            42
        );
    }

    #[test]
    fn every_retained_block_is_evicted_once_after_its_last_reader() {
        for (r, c, batch) in [(3, 5, 1), (5, 3, 4), (4, 4, 3), (1, 6, 2), (2, 2, 9)] {
            let s = Schedule::new(r, c, Order::Auto);
            let steps = s.steps(batch);
            let mut evicted_at = HashMap::new();
            for (k, step) in steps.iter().enumerate() {
                for b in &step.evict {
                    assert!(evicted_at.insert(*b, k).is_none(), "{b:?} evicted twice");
                }
            }
            for (k, step) in steps.iter().enumerate() {
                for (b, &kept) in step.blocks.iter().zip(&step.retain) {
                    let read_by = s.last_reader[b].map(|r| r / batch);
                    assert_eq!(kept, read_by.is_some_and(|later| later > k), "{b:?}");
                    if kept {
                        assert_eq!(evicted_at[b], read_by.unwrap());
                    }
                }
            }
            assert_eq!(
                evicted_at.len(),
                steps.iter().flat_map(|s| &s.retain).filter(|&&r| r).count()
            );
        }
    }

    #[test]
    fn every_block_is_read_after_it_is_written() {
        for (r, c, o) in [
            (3, 5, Order::RowMajor),
            (5, 3, Order::ColumnMajor),
            (1, 6, Order::Auto),
        ] {
            let s = Schedule::new(r, c, o);
            let pos: HashMap<_, _> = s.order.iter().enumerate().map(|(k, b)| (*b, k)).collect();
            for (&b, &k) in &pos {
                for nb in BlockId::new(0, b.0, b.1).slots() {
                    assert!(pos[&(nb.row, nb.col)] <= k);
                }
            }
        }
    }
}
