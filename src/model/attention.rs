//! Unidirectional block self-attention (NOTES §5.7) and the neighbour K/V store it reads.
//!
//! Each 32×32-token block attends to four key/value slots: [self, left-top, left, top],
//! missing neighbours at the top/left border replaced by the clamped block. The store
//! lets a batch of blocks find neighbour K/V computed in earlier batches, which is what
//! makes block-by-block inference identical to whole-image inference.

use super::ops::{attention, fused_kernels, linear, rope_interleaved, LayerNorm, Linear};
use crate::config::ModelConfig;
use crate::profile::stage;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
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

/// Post-QK-norm, post-RoPE keys and values of single blocks, `[1, heads, T, hd]`.
type BlockKv = (Tensor, Tensor);

/// A batch's neighbour keys and values where they lie: the batch's own `[n, heads, T, hd]`
/// K/V, the cached blocks it needs (`[e, heads, T, hd]`), and for each slot s and block b
/// the pool block `index[s·n + b]` (below `n`: the batch's own, else cached block
/// `index − n`), whose keys get `slot_embed[s]` added. The CUDA attention kernel reads
/// this in place; elsewhere it is [gathered](Self::gather) into one sequence per block.
#[derive(Debug, Clone)]
pub struct PagedKv {
    pub k: Tensor,
    pub v: Tensor,
    /// Keys and values of the cached blocks that the index reaches, `[blocks, heads, T,
    /// hd]` each; joined along the first dimension they are the second pool.
    pub cached: Vec<(Tensor, Tensor)>,
    /// `[4·n]` u32, slot-major.
    pub index: Tensor,
    /// `[4, heads, hd]`
    pub slot_embed: Tensor,
}

impl PagedKv {
    /// `[n, heads, 4·T, hd]` keys (each slot's embedding added) and values, in slot order.
    pub fn gather(&self) -> Result<(Tensor, Tensor)> {
        let n = self.k.dim(0)?;
        let pool = |own: &Tensor, pick: fn(&(Tensor, Tensor)) -> &Tensor| {
            let parts: Vec<&Tensor> = std::iter::once(own)
                .chain(self.cached.iter().map(pick))
                .collect();
            Tensor::cat(&parts, 0)
        };
        let kp = pool(&self.k, |c| &c.0)?;
        let vp = pool(&self.v, |c| &c.1)?;
        if fused_kernels(&[&kp, &self.slot_embed]) {
            gather_fused(&kp, &vp, &self.index, &self.slot_embed, n)
        } else {
            gather_composed(&kp, &vp, &self.index, &self.slot_embed, n)
        }
    }
}

/// Keys and values of blocks, per layer, kept only while a later batch needs them.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<HashMap<BlockId, BlockKv>>,
    plan: BatchPlan,
    /// The batch's slot index on its device: each host-to-device copy synchronises the
    /// stream.
    slot_index: Option<(Vec<u32>, Tensor)>,
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
            layers: (0..num_layers).map(|_| HashMap::new()).collect(),
            plan: BatchPlan::default(),
            slot_index: None,
        }
    }

    pub fn set_plan(&mut self, plan: BatchPlan) {
        self.plan = plan;
        self.slot_index = None;
    }

    /// Blocks held for `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.is_empty())
    }

    /// Bytes held over all layers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.values())
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// The keys (slot embeddings added) and values of the four slots of each block of
    /// the batch `ids`, whose own K/V are `k`, `v` (`[n, heads, T, hd]`); then stores the
    /// retained blocks and evicts the expired ones for this layer.
    fn neighbour_kv(
        &mut self,
        layer: usize,
        ids: &[BlockId],
        k: &Tensor,
        v: &Tensor,
        slot_embed: &Tensor,
    ) -> Result<PagedKv> {
        let store = &mut self.layers[layer];
        let in_batch: HashMap<BlockId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut extra: Vec<BlockId> = Vec::new();
        let mut extra_pos: HashMap<BlockId, usize> = HashMap::new();
        let mut index: [Vec<u32>; 4] = Default::default();
        for id in ids {
            for (s, nb) in id.slots().iter().enumerate() {
                let pos = match in_batch.get(nb) {
                    Some(&i) => i,
                    None => {
                        if !store.contains_key(nb) {
                            candle_core::bail!(
                                "block {nb:?} needed by {id:?} is not cached (scheduler bug)"
                            );
                        }
                        let next = ids.len() + extra.len();
                        *extra_pos.entry(*nb).or_insert_with(|| {
                            extra.push(*nb);
                            next
                        })
                    }
                };
                index[s].push(pos as u32);
            }
        }
        let cached = extra.iter().map(|nb| store[nb].clone()).collect();
        let out = PagedKv {
            k: k.clone(),
            v: v.clone(),
            cached,
            index: upload_index(&mut self.slot_index, &index, k.device())?,
            slot_embed: slot_embed.clone(),
        };
        for (i, id) in ids.iter().enumerate() {
            if self.plan.retain.get(i).copied().unwrap_or(false) {
                // A fresh allocation, not a view: a view would keep the whole batch's
                // K/V (on CUDA also its queries) alive for as long as this block is cached.
                store.insert(
                    *id,
                    (
                        k.get(i)?.unsqueeze(0)?.force_contiguous()?,
                        v.get(i)?.unsqueeze(0)?.force_contiguous()?,
                    ),
                );
            }
        }
        for id in &self.plan.evict {
            store.remove(id);
        }
        Ok(out)
    }
}

/// The slot-major block index on `dev`, uploaded once per batch: it is the same for every
/// layer, and `last` keeps the previous upload.
fn upload_index(
    last: &mut Option<(Vec<u32>, Tensor)>,
    index: &[Vec<u32>; 4],
    dev: &Device,
) -> Result<Tensor> {
    let flat = index.concat();
    Ok(match last {
        Some((cached, t)) if *cached == flat => t.clone(),
        _ => {
            let t = Tensor::new(flat.as_slice(), dev)?;
            *last = Some((flat, t.clone()));
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

/// Attention of the `[n, heads, T, hd]` queries over their blocks' neighbour slots: read
/// in place where the kernel can, else gathered first.
pub fn attend(q: &Tensor, kv: &PagedKv) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if paged_attention(&kv.k) {
        return super::flash_attention::forward_paged(q, kv);
    }
    let (k_all, v_all) = kv.gather()?;
    attention(q, &k_all, &v_all)
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

/// `qkv` `[n, T, 3·D]` → q, k, v `[n, heads, T, hd]`, with `qk_norm` and the interleaved
/// RoPE (`rope`: `[n, T, hd/2]` tables) applied to q and k; in one CUDA kernel when `fused`.
pub fn split_qkv(
    qkv: &Tensor,
    qk_norm: &LayerNorm,
    rope: (&Tensor, &Tensor),
    heads: usize,
    fused: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if fused {
        return super::fused_ops::qkv_norm_rope(qkv, qk_norm.parts(), rope, heads);
    }
    let _ = fused;
    let (n, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let part = |i: usize| -> Result<Tensor> {
        let y = qkv.narrow(2, i * d, d)?.reshape((n, t, heads, d / heads))?;
        y.transpose(1, 2)
    };
    Ok((
        rope_interleaved(&qk_norm.forward(&part(0)?)?, rope.0, rope.1)?,
        rope_interleaved(&qk_norm.forward(&part(1)?)?, rope.0, rope.1)?,
        part(2)?.contiguous()?,
    ))
}

/// `attention.query_key_value` / `attention.dense` with QK-LayerNorm, RoPE and the
/// per-slot key embedding `re_pos_embed[layer]`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    query_key_value: Linear,
    dense: Linear,
    /// `q_layer_norm[layer]`, applied to queries **and** keys (the reference never
    /// reads `k_layer_norm`).
    qk_norm: LayerNorm,
    /// `[4, heads, hd]`
    slot_embed: Tensor,
    layer: usize,
    heads: usize,
}

impl SelfAttention {
    pub fn new(cfg: &ModelConfig, layer: usize, vb: VarBuilder, adaln: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let re = adaln.get(
            (cfg.num_layers, 4, cfg.num_attention_heads, hd),
            "re_pos_embed",
        )?;
        Ok(Self {
            query_key_value: linear(d, 3 * d, vb.pp("query_key_value"))?,
            dense: linear(d, d, vb.pp("dense"))?,
            qk_norm: LayerNorm::new(
                hd,
                cfg.layernorm_eps,
                adaln.pp(format!("q_layer_norm.{layer}")),
            )?,
            slot_embed: re.get(layer)?,
            layer,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x`: `[n, T, D]` tokens of the blocks `ids`; `rope`: `[n, T, hd/2]` tables.
    /// The attention output, plus `residual` when given (added in the output projection's
    /// epilogue where that is fused).
    pub fn forward(
        &self,
        x: &Tensor,
        ids: &[BlockId],
        rope: (&Tensor, &Tensor),
        cache: &mut KvCache,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let dev = x.device();
        let qkv = stage("attn/qkv", dev, || self.query_key_value.forward(x))?;
        let (q, k, v) = stage("attn/qk_norm+rope", dev, || {
            let fused = fused_kernels(&[&qkv, self.qk_norm.parts().0, rope.0]);
            split_qkv(&qkv, &self.qk_norm, rope, self.heads, fused)
        })?;
        let kv = stage("attn/neighbour_kv", dev, || {
            cache.neighbour_kv(self.layer, ids, &k, &v, &self.slot_embed)
        })?;
        let y = stage("attn/core", dev, || attend(&q, &kv))?;
        stage("attn/dense", dev, || {
            let y = y.transpose(1, 2)?.reshape((n, t, d))?;
            match residual {
                Some(r) => self.dense.forward_add(&y, r),
                None => self.dense.forward(&y),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Storage;

    /// Elements held by the storage behind `t` (not just its view).
    fn storage_len(t: &Tensor) -> usize {
        match &*t.storage_and_layout().0 {
            Storage::Cpu(s) => s.as_slice::<f32>().unwrap().len(),
            _ => unreachable!("CPU test"),
        }
    }

    #[test]
    fn cached_blocks_hold_only_their_own_keys_and_values() -> Result<()> {
        let dev = Device::Cpu;
        let (n, h, t, hd) = (4, 2, 8, 4);
        let k = Tensor::randn(0f32, 1.0, (n, h, t, hd), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (n, h, t, hd), &dev)?;
        let slot_embed = Tensor::zeros((4, h, hd), DType::F32, &dev)?;
        let ids: Vec<BlockId> = (0..n).map(|c| BlockId::new(0, 0, c)).collect();
        let mut cache = KvCache::new(1);
        cache.set_plan(BatchPlan {
            retain: vec![false, false, false, true],
            evict: vec![],
        });
        let (k_all, _) = cache.neighbour_kv(0, &ids, &k, &v, &slot_embed)?.gather()?;
        assert_eq!(k_all.dims(), [n, h, 4 * t, hd]);
        let (ck, cv) = &cache.layers[0][&ids[3]];
        assert_eq!(storage_len(ck), h * t * hd);
        assert_eq!(storage_len(cv), h * t * hd);
        let diff = (ck - k.get(3)?.unsqueeze(0)?)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
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
            let max = |x: Tensor| -> Result<f32> { x.abs()?.flatten_all()?.max(0)?.to_scalar() };
            assert_eq!(max((got_k - want_k)?)?, 0.0, "keys of slot {s}");
            assert_eq!(max((got_v - v.get(b)?)?)?, 0.0, "values of slot {s}");
        }
        Ok(())
    }
}
