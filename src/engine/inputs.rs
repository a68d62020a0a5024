//! Moving blocks between host images and the compute device.

use crate::config::ModelConfig;
use crate::imageops::Planar;
use crate::model::{BlockBatch, BlockId, InfDit};
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// RoPE positions of the tokens.
#[derive(Debug, Clone, Default)]
pub enum Positions {
    /// `(row, col)` of the token in the image's token grid, plus fixed offsets (what
    /// inference uses: offsets 0; training uses random offsets).
    #[default]
    Grid,
    Offset {
        row: usize,
        col: usize,
    },
    /// Explicit `(row, col)` per token, row-major over a grid `width` tokens wide.
    Explicit {
        width: usize,
        ids: Vec<(usize, usize)>,
    },
}

impl Positions {
    fn at(&self, row: usize, col: usize) -> (usize, usize) {
        match self {
            Positions::Grid => (row, col),
            Positions::Offset { row: r0, col: c0 } => (row + r0, col + c0),
            Positions::Explicit { width, ids } => ids[row * width + col],
        }
    }
}

/// Everything about the image that stays fixed across sampler steps.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Bicubic-upsampled LR at HR size, clipped to [-1, 1].
    pub concat_lr: Planar,
    /// The LR image the cross-attention reads (HR / sr_scale per side), raw [-1, 1].
    pub lr: Planar,
    /// Image-condition vector `[1, vector_dim]` (None for models without one).
    pub vector: Option<Tensor>,
    pub positions: Positions,
}

impl Conditioning {
    pub fn check(&self, cfg: &ModelConfig, x: &Planar) -> Result<()> {
        ensure!(
            (self.concat_lr.height, self.concat_lr.width) == (x.height, x.width),
            "concat_lr is {}×{}, image is {}×{}",
            self.concat_lr.width,
            self.concat_lr.height,
            x.width,
            x.height
        );
        ensure!(
            self.lr.height * cfg.sr_scale == x.height && self.lr.width * cfg.sr_scale == x.width,
            "LR image {}×{} is not 1/{} of {}×{}",
            self.lr.width,
            self.lr.height,
            cfg.sr_scale,
            x.width,
            x.height
        );
        ensure!(
            x.channels + self.concat_lr.channels == cfg.in_channels,
            "channel count mismatch"
        );
        Ok(())
    }
}

/// Copies `s×s` blocks out of a host image: `[n, C, s, s]` values.
pub fn gather_blocks(img: &Planar, blocks: &[(usize, usize)], s: usize, out: &mut Vec<f32>) {
    for &(i, j) in blocks {
        out.extend(
            img.crop_clamped((i * s) as isize, (j * s) as isize, s, s)
                .data,
        );
    }
}

/// A batch's network inputs in host memory, built apart from the upload so the engine can
/// prepare the next batch while the device runs the current one.
pub struct HostBatch {
    ids: Vec<BlockId>,
    x: Vec<f32>,
    lr: Vec<f32>,
    lr_channels: usize,
    lr_mask: Vec<f32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

impl HostBatch {
    /// Copies the inputs to the model's device.
    pub fn upload(self, model: &InfDit, emb_act: &Tensor) -> Result<BlockBatch> {
        let cfg = model.config();
        let (dev, dtype) = (model.device(), model.dtype());
        let n = self.ids.len();
        let (s, bt, l) = (
            cfg.image_block_size_px,
            cfg.block_tokens(),
            cfg.lr_block_px(),
        );
        let lt = l / cfg.lr_patch_size;
        let rope_shape = (n, bt * bt, cfg.head_dim() / 2);
        Ok(BlockBatch {
            ids: self.ids,
            x: Tensor::from_vec(self.x, (n, cfg.in_channels, s, s), dev)?,
            lr: Tensor::from_vec(self.lr, (n, self.lr_channels, 3 * l, 3 * l), dev)?,
            lr_mask: Tensor::from_vec(self.lr_mask, (n, 9 * lt * lt, 1), dev)?,
            rope_cos: Tensor::from_vec(self.rope_cos, rope_shape, dev)?.to_dtype(dtype)?,
            rope_sin: Tensor::from_vec(self.rope_sin, rope_shape, dev)?.to_dtype(dtype)?,
            emb_act: emb_act.clone(),
        })
    }
}

/// Gathers the network inputs of `blocks` (block row, column) of image number `image`
/// from host images.
pub fn prepare_batch(
    model: &InfDit,
    image: usize,
    blocks: &[(usize, usize)],
    x: &Planar,
    cond: &Conditioning,
    c_in: f32,
) -> Result<HostBatch> {
    let cfg = model.config();
    let n = blocks.len();
    let s = cfg.image_block_size_px;
    let bt = cfg.block_tokens();
    let l = cfg.lr_block_px();
    let lp = cfg.lr_patch_size;
    let lt = l / lp;
    let (lr_rows, lr_cols) = (cond.lr.height / l, cond.lr.width / l);

    let mut xin = Vec::with_capacity(n * cfg.in_channels * s * s);
    let mut lr = Vec::with_capacity(n * cond.lr.channels * 9 * l * l);
    let mut mask = Vec::with_capacity(n * 9 * lt * lt);
    let mut pos = Vec::with_capacity(n * bt * bt);
    for &(i, j) in blocks {
        let start = xin.len();
        gather_blocks(x, &[(i, j)], s, &mut xin);
        gather_blocks(&cond.concat_lr, &[(i, j)], s, &mut xin);
        xin[start..].iter_mut().for_each(|v| *v *= c_in);
        // 3×3-block LR window; pixels outside the image are zeroed and masked out.
        let (y0, x0) = (i as isize - 1, j as isize - 1);
        let window = cond
            .lr
            .crop_clamped(y0 * l as isize, x0 * l as isize, 3 * l, 3 * l);
        let inside = |bi: isize, bj: isize| {
            bi >= 0 && bj >= 0 && (bi as usize) < lr_rows && (bj as usize) < lr_cols
        };
        for c in 0..window.channels {
            for y in 0..3 * l {
                for xx in 0..3 * l {
                    let keep = inside(y0 + (y / l) as isize, x0 + (xx / l) as isize);
                    lr.push(if keep { window.at(c, y, xx) } else { 0.0 });
                }
            }
        }
        for ty in 0..3 * lt {
            for tx in 0..3 * lt {
                mask.push(
                    if inside(y0 + (ty / lt) as isize, x0 + (tx / lt) as isize) {
                        1f32
                    } else {
                        0.0
                    },
                );
            }
        }
        for r in 0..bt {
            for c in 0..bt {
                pos.push(cond.positions.at(i * bt + r, j * bt + c));
            }
        }
    }
    let (rope_cos, rope_sin) = model.rope().lookup(&pos)?;
    Ok(HostBatch {
        ids: blocks
            .iter()
            .map(|&(i, j)| BlockId::new(image, i, j))
            .collect(),
        x: xin,
        lr,
        lr_channels: cond.lr.channels,
        lr_mask: mask,
        rope_cos,
        rope_sin,
    })
}

/// Writes `[n, C, S, S]` block outputs into `out` at their block positions.
pub(super) fn scatter_blocks(
    f: &Tensor,
    blocks: &[(usize, usize)],
    s: usize,
    out: &mut Planar,
) -> Result<()> {
    let f = f
        .to_dtype(candle_core::DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    let c = f.dim(1)?;
    let data: Vec<f32> = f.flatten_all()?.to_vec1()?;
    for (k, &(i, j)) in blocks.iter().enumerate() {
        for ch in 0..c {
            for y in 0..s {
                let src = &data[((k * c + ch) * s + y) * s..][..s];
                let row = (ch * out.height + i * s + y) * out.width + j * s;
                out.data[row..row + s].copy_from_slice(src);
            }
        }
    }
    Ok(())
}
