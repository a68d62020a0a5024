//! The neighbour K/V store the block self-attention reads (NOTES §5.7).
//!
//! Each 32×32-token block attends to four key/value slots: [self, left-top, left, top],
//! missing neighbours at the top/left border replaced by the clamped block. The store
//! lets a batch of blocks find neighbour K/V computed in earlier batches, which is what
//! makes block-by-block inference identical to whole-image inference.

use super::ops::fused_kernels;
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

/// A block of one image: `(image, block row, block column)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub image: usize,
    pub row: usize,
    pub col: usize,
}

impl BlockId {
    pub fn new(image: usize, row: usize, col: usize) -> Self {
        Self { image, row, col }
    }

    /// The four key/value slots in the trained order: self, left-top, left, top, with
    /// missing neighbours clamped to the border (duplicates are kept).
    pub fn slots(&self) -> [BlockId; 4] {
        let up = self.row.saturating_sub(1);
        let left = self.col.saturating_sub(1);
        let b = |row, col| BlockId::new(self.image, row, col);
        [*self, b(up, left), b(self.row, left), b(up, self.col)]
    }
}

/// A batch's neighbour keys and values where they lie: the batch's own `[n, heads, T, hd]`
/// K/V, a pool of cached blocks (`[m, heads, T, hd]` each), and for each slot s and block
/// b the block `index[s·n + b]` (below `n`: the batch's own, else pool block `index − n`),
/// whose keys get `slot_embed[s]` added. The CUDA attention kernel reads this in place
/// (the pool is then the layer's whole cache); elsewhere the pool holds just the cached
/// blocks the batch reads and everything is [gathered](Self::gather) into one sequence per
/// block.
#[derive(Debug, Clone)]
pub struct PagedKv {
    pub k: Tensor,
    pub v: Tensor,
    /// Keys and values of the pool, absent when no slot reads a cached block.
    pub pool: Option<(Tensor, Tensor)>,
    /// `[4·n]` u32, slot-major.
    pub index: Tensor,
    /// `[4, heads, hd]`
    pub slot_embed: Tensor,
}

impl PagedKv {
    /// `[n, heads, 4·T, hd]` keys (each slot's embedding added) and values, in slot order.
    pub fn gather(&self) -> Result<(Tensor, Tensor)> {
        let n = self.k.dim(0)?;
        let (kp, vp) = match &self.pool {
            Some((pk, pv)) => (
                Tensor::cat(&[&self.k, pk], 0)?,
                Tensor::cat(&[&self.v, pv], 0)?,
            ),
            None => (self.k.clone(), self.v.clone()),
        };
        if fused_kernels(&[&kp, &self.slot_embed]) {
            gather_fused(&kp, &vp, &self.index, &self.slot_embed, n)
        } else {
            gather_composed(&kp, &vp, &self.index, &self.slot_embed, n)
        }
    }
}

/// One layer's cached blocks: K and V pools `[capacity, heads, T, hd]` of single-block
/// slots. A retained block is copied into a free slot, and the slot is reused once the
/// block is evicted, so the cache allocates once (not per block) and the attention kernel
/// reads cached neighbours straight from the pool (no per-batch join of them).
#[derive(Debug, Default)]
struct LayerStore {
    slots: HashMap<BlockId, usize>,
    free: Vec<usize>,
    pool: Option<(Tensor, Tensor)>,
}

impl LayerStore {
    fn capacity(&self) -> usize {
        self.pool.as_ref().map_or(0, |(k, _)| k.dims()[0])
    }

    /// A free slot for one block of `k` (`[n, heads, T, hd]`); when none is left the pool
    /// grows to at least `hint` slots and at least doubles, keeping its blocks.
    fn alloc(&mut self, k: &Tensor, hint: usize) -> Result<usize> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        let cap = self.capacity();
        let new_cap = (2 * cap).max(hint).max(cap + 1);
        let (_, h, t, hd) = k.dims4()?;
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let pool = Tensor::zeros((new_cap, h, t, hd), k.dtype(), k.device())?;
            if let Some(old) = old {
                pool.slice_set(old, 0, 0)?;
            }
            Ok(pool)
        };
        let pool = (
            grow(self.pool.as_ref().map(|p| &p.0))?,
            grow(self.pool.as_ref().map(|p| &p.1))?,
        );
        self.pool = Some(pool);
        // Lowest slots first.
        self.free.extend((cap + 1..new_cap).rev());
        Ok(cap)
    }
}

/// Keys and values of blocks, per layer, kept only while a later batch needs them.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerStore>,
    plan: BatchPlan,
    /// Pool size to allocate at once (the schedule's peak), instead of growing to it.
    capacity_hint: usize,
    /// The batch's slot index on its device: each host-to-device copy synchronises the
    /// stream, and every layer of a batch has the same index.
    slot_index: Option<(Vec<u32>, Tensor)>,
    /// The pool slots a gathered batch reads, on its device (likewise the same per layer).
    gather_slots: Option<(Vec<u32>, Tensor)>,
}

/// What the current batch keeps and drops (set by the scheduler before each forward).
#[derive(Debug, Default, Clone)]
pub struct BatchPlan {
    /// Batch blocks whose K/V later batches read.
    pub retain: Vec<bool>,
    /// Cached blocks no later batch reads; dropped once this batch has read them.
    pub evict: Vec<BlockId>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerStore::default()).collect(),
            ..Default::default()
        }
    }

    /// Allocates each layer's pool for `blocks` cached blocks when first needed.
    pub fn with_capacity(mut self, blocks: usize) -> Self {
        self.capacity_hint = blocks;
        self
    }

    pub fn set_plan(&mut self, plan: BatchPlan) {
        self.plan = plan;
        self.slot_index = None;
        self.gather_slots = None;
    }

    /// Blocks held for `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.slots.len())
    }

    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.slots.is_empty())
    }

    /// Bytes the pools hold over all layers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|l| l.pool.as_ref())
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// The keys (slot embeddings added) and values of the four slots of each block of
    /// the batch `ids`, whose own K/V are `k`, `v` (`[n, heads, T, hd]`); then stores the
    /// retained blocks and evicts the expired ones for this layer.
    pub(super) fn neighbour_kv(
        &mut self,
        layer: usize,
        ids: &[BlockId],
        k: &Tensor,
        v: &Tensor,
        slot_embed: &Tensor,
    ) -> Result<PagedKv> {
        let in_place = paged_attention(k);
        let n = ids.len();
        let store = &mut self.layers[layer];
        let in_batch: HashMap<BlockId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        // The pool slots of the cached neighbours, in order of first use.
        let mut used: Vec<u32> = Vec::new();
        let mut used_pos: HashMap<usize, usize> = HashMap::new();
        let mut index: [Vec<u32>; 4] = Default::default();
        for id in ids {
            for (s, nb) in id.slots().iter().enumerate() {
                let pos = match in_batch.get(nb) {
                    Some(&i) => i,
                    None => {
                        let Some(&slot) = store.slots.get(nb) else {
                            candle_core::bail!(
                                "block {nb:?} needed by {id:?} is not cached (scheduler bug)"
                            );
                        };
                        let compact = *used_pos.entry(slot).or_insert_with(|| {
                            used.push(slot as u32);
                            used.len() - 1
                        });
                        n + if in_place { slot } else { compact }
                    }
                };
                index[s].push(pos as u32);
            }
        }
        let pool = match &store.pool {
            Some(_) if used.is_empty() => None,
            Some((pk, pv)) if in_place => Some((pk.clone(), pv.clone())),
            Some((pk, pv)) => {
                let sel = upload(&mut self.gather_slots, used, k.device())?;
                Some((pk.index_select(&sel, 0)?, pv.index_select(&sel, 0)?))
            }
            None => None,
        };
        let out = PagedKv {
            k: k.clone(),
            v: v.clone(),
            pool,
            index: upload(&mut self.slot_index, index.concat(), k.device())?,
            slot_embed: slot_embed.clone(),
        };
        // Retained blocks go to free slots, which this batch's index never reads; evicted
        // slots are freed only afterwards, so no slot this batch reads is overwritten
        // before the batch has read it (device work runs in order).
        for (i, id) in ids.iter().enumerate() {
            if self.plan.retain.get(i).copied().unwrap_or(false) {
                let slot = store.alloc(k, self.capacity_hint)?;
                let (pk, pv) = store.pool.as_ref().expect("allocated with the slot");
                pk.slice_set(&k.narrow(0, i, 1)?.contiguous()?, 0, slot)?;
                pv.slice_set(&v.narrow(0, i, 1)?.contiguous()?, 0, slot)?;
                store.slots.insert(*id, slot);
            }
        }
        for id in &self.plan.evict {
            if let Some(slot) = store.slots.remove(id) {
                store.free.push(slot);
            }
        }
        Ok(out)
    }
}

/// `values` on `dev`, reusing `last` when it holds the same values (one upload per batch
/// for what every layer of the batch shares).
fn upload(last: &mut Option<(Vec<u32>, Tensor)>, values: Vec<u32>, dev: &Device) -> Result<Tensor> {
    Ok(match last {
        Some((cached, t)) if *cached == values => t.clone(),
        _ => {
            let t = Tensor::new(values.as_slice(), dev)?;
            *last = Some((values, t.clone()));
            t
        }
    })
}

/// Whether the attention kernel reads the neighbour slots of `k`'s blocks in place.
pub fn paged_attention(k: &Tensor) -> bool {
    let (t, hd) = (k.dim(2).unwrap_or(0), k.dim(3).unwrap_or(0));
    !k.track_op() && paged_serves(k.device(), k.dtype(), hd, t)
}

/// Whether neighbour slots of blocks of `tokens` keys are read in place on `device` in
/// `dtype` (the CUDA kernel, when blocks are whole kernel tiles; `INFDIT_PAGED=0` gathers
/// them first instead).
pub fn paged_serves(device: &Device, dtype: DType, head_dim: usize, tokens: usize) -> bool {
    #[cfg(feature = "cuda")]
    return super::flash_attention::paged_enabled()
        && super::flash_attention::serves(device, dtype, head_dim)
        && tokens > 0
        && tokens.is_multiple_of(super::flash_attention::PAGE_MULTIPLE);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (device, dtype, head_dim, tokens);
        false
    }
}

/// Keys (plus each slot's embedding) and values of every block's four slots, in slot
/// order; `index`: the slot-major `[4·n]` pool block indices.
fn gather_composed(
    kp: &Tensor,
    vp: &Tensor,
    index: &Tensor,
    slot_embed: &Tensor,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    let mut keys = Vec::with_capacity(4);
    let mut vals = Vec::with_capacity(4);
    for s in 0..slot_embed.dim(0)? {
        let idx = index.narrow(0, s * n, n)?;
        let emb = slot_embed.get(s)?.unsqueeze(1)?; // [heads, 1, hd]
        keys.push(kp.index_select(&idx, 0)?.broadcast_add(&emb)?);
        vals.push(vp.index_select(&idx, 0)?);
    }
    Ok((Tensor::cat(&keys, 2)?, Tensor::cat(&vals, 2)?))
}

/// [`gather_composed`] as one pass per tensor on CUDA.
/// `index`: the slot-major block indices (`[4·n]` u32, every entry < `kp.dim(0)`).
fn gather_fused(
    kp: &Tensor,
    vp: &Tensor,
    index: &Tensor,
    slot_embed: &Tensor,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    {
        Ok((
            super::fused_ops::gather_slots(kp, index, Some(slot_embed), n)?,
            super::fused_ops::gather_slots(vp, index, None, n)?,
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (kp, vp, index, slot_embed, n);
        unreachable!("fused kernels exist only with the cuda feature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(x: Tensor) -> Result<f32> {
        x.abs()?.flatten_all()?.max(0)?.to_scalar()
    }

    /// The cached K and V of `id` in `layer`, `[1, heads, T, hd]` each.
    fn cached(cache: &KvCache, layer: usize, id: &BlockId) -> Result<(Tensor, Tensor)> {
        let store = &cache.layers[layer];
        let slot = store.slots[id];
        let (k, v) = store.pool.as_ref().expect("a pool");
        Ok((k.narrow(0, slot, 1)?, v.narrow(0, slot, 1)?))
    }

    #[test]
    fn the_pool_holds_retained_blocks_and_reuses_evicted_slots() -> Result<()> {
        let dev = Device::Cpu;
        let (h, t, hd) = (2, 8, 4);
        let kv = |n: usize, seed: f64| -> Result<(Tensor, Tensor)> {
            let k = (Tensor::randn(0f32, 1.0, (n, h, t, hd), &dev)? + seed)?;
            Ok((k.clone(), (k * 3.0)?))
        };
        let slot_embed = Tensor::zeros((4, h, hd), DType::F32, &dev)?;
        let blocks = |r: usize, cols: usize| -> Vec<BlockId> {
            (0..cols).map(|c| BlockId::new(0, r, c)).collect()
        };
        let check = |cache: &KvCache, id: &BlockId, k: &Tensor, v: &Tensor, i: usize| {
            let (ck, cv) = cached(cache, 0, id)?;
            assert_eq!(max_abs((ck - k.narrow(0, i, 1)?)?)?, 0.0, "keys of {id:?}");
            assert_eq!(
                max_abs((cv - v.narrow(0, i, 1)?)?)?,
                0.0,
                "values of {id:?}"
            );
            Result::Ok(())
        };
        let mut cache = KvCache::new(1);
        // Row 0, all kept: the pool grows (1, 2, 4 slots) and keeps every block.
        let (k0, v0) = kv(4, 0.0)?;
        cache.set_plan(BatchPlan {
            retain: vec![true; 4],
            evict: vec![],
        });
        let (k_all, _) = cache
            .neighbour_kv(0, &blocks(0, 4), &k0, &v0, &slot_embed)?
            .gather()?;
        assert_eq!(k_all.dims(), [4, h, 4 * t, hd]);
        assert_eq!(cache.layers[0].capacity(), 4);
        for (i, id) in blocks(0, 4).iter().enumerate() {
            check(&cache, id, &k0, &v0, i)?;
        }
        // Row 1 reads row 0, keeps two blocks, then drops row 0: the two new blocks need
        // slots before row 0's are free (it is still being read), so the pool grows once.
        let (k1, v1) = kv(4, 10.0)?;
        cache.set_plan(BatchPlan {
            retain: vec![true, true, false, false],
            evict: blocks(0, 4),
        });
        cache.neighbour_kv(0, &blocks(1, 4), &k1, &v1, &slot_embed)?;
        assert_eq!((cache.len(0), cache.layers[0].capacity()), (2, 8));
        // Row 2's first two blocks reuse freed slots: no growth.
        let (k2, v2) = kv(2, 20.0)?;
        cache.set_plan(BatchPlan {
            retain: vec![true, true],
            evict: blocks(1, 2),
        });
        cache.neighbour_kv(0, &blocks(2, 2), &k2, &v2, &slot_embed)?;
        assert_eq!((cache.len(0), cache.layers[0].capacity()), (2, 8));
        for (i, id) in blocks(2, 2).iter().enumerate() {
            check(&cache, id, &k2, &v2, i)?;
        }
        Ok(())
    }

    #[test]
    fn a_capacity_hint_allocates_the_pool_once() -> Result<()> {
        let dev = Device::Cpu;
        let (n, h, t, hd) = (3, 1, 4, 8);
        let k = Tensor::randn(0f32, 1.0, (n, h, t, hd), &dev)?;
        let slot_embed = Tensor::zeros((4, h, hd), DType::F32, &dev)?;
        let mut cache = KvCache::new(2).with_capacity(5);
        for r in 0..2 {
            let ids: Vec<BlockId> = (0..n).map(|c| BlockId::new(0, r, c)).collect();
            cache.set_plan(BatchPlan {
                retain: vec![true; n],
                evict: vec![],
            });
            for layer in 0..2 {
                cache.neighbour_kv(layer, &ids, &k, &k, &slot_embed)?;
            }
        }
        // Six blocks exceed the hint of five: one growth to ten, never per block.
        assert_eq!(cache.layers[0].capacity(), 10);
        assert_eq!(cache.bytes(), 2 * 2 * 10 * h * t * hd * 4);
        Ok(())
    }

    #[test]
    fn slots_read_the_batch_and_the_cached_blocks_with_their_embeddings() -> Result<()> {
        let dev = Device::Cpu;
        let (h, t, hd) = (2, 4, 8);
        let kv = |seed: f64| -> Result<(Tensor, Tensor)> {
            let k = (Tensor::randn(0f32, 1.0, (2, h, t, hd), &dev)? + seed)?;
            Ok((k.clone(), (k * 2.0)?))
        };
        let slot_embed = Tensor::randn(0f32, 1.0, (4, h, hd), &dev)?;
        let row = |r: usize| -> Vec<BlockId> { (0..2).map(|c| BlockId::new(0, r, c)).collect() };
        let mut cache = KvCache::new(1);
        let (k0, v0) = kv(0.0)?;
        cache.set_plan(BatchPlan {
            retain: vec![true, true],
            evict: vec![],
        });
        cache.neighbour_kv(0, &row(0), &k0, &v0, &slot_embed)?;
        let (k1, v1) = kv(10.0)?;
        cache.set_plan(BatchPlan {
            retain: vec![false, false],
            evict: row(0),
        });
        let paged = cache.neighbour_kv(0, &row(1), &k1, &v1, &slot_embed)?;
        assert!(cache.is_empty());
        let (k_all, v_all) = paged.gather()?;
        // Block (1, 1): self, left-top (0, 0), left (1, 0), top (0, 1).
        let expected = [(&k1, &v1, 1), (&k0, &v0, 0), (&k1, &v1, 0), (&k0, &v0, 1)];
        for (s, (k, v, b)) in expected.into_iter().enumerate() {
            let want_k = k.get(b)?.broadcast_add(&slot_embed.get(s)?.unsqueeze(1)?)?;
            let got_k = k_all.get(1)?.narrow(1, s * t, t)?;
            let got_v = v_all.get(1)?.narrow(1, s * t, t)?;
            assert_eq!(max_abs((got_k - want_k)?)?, 0.0, "keys of slot {s}");
            assert_eq!(max_abs((got_v - v.get(b)?)?)?, 0.0, "values of slot {s}");
        }
        Ok(())
    }
}
