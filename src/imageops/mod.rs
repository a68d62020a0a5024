//! Image handling: the planar float image type the model works on, PyTorch-exact resizing,
//! and decoding/encoding of files.

pub mod bleed;
pub mod density;
pub mod exif;
pub mod io;
pub mod iptc;
pub mod resize;
pub mod xmp;

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

/// Mirror-reflects index `i` into `0..n` without repeating the edge (`dcb|abcd|cba`,
/// period 2(n−1)); every index is 0 for n = 1. For padding that continues textures.
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// A planar (CHW) float image. The pipeline keeps images in this layout on the host so that
/// only the blocks being computed ever move to the compute device.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Planar {
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), channels * height * width, "planar buffer size");
        Self {
            channels,
            height,
            width,
            data,
        }
    }

    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self::new(
            channels,
            height,
            width,
            vec![0.0; channels * height * width],
        )
    }

    /// (channels, height, width).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    /// Applies `f` to every sample.
    pub fn map(mut self, f: impl Fn(f32) -> f32) -> Self {
        self.data.iter_mut().for_each(|v| *v = f(*v));
        self
    }

    /// Combines two images of the same shape sample by sample.
    pub fn zip_map(&self, other: &Planar, f: impl Fn(f32, f32) -> f32) -> Planar {
        assert_eq!(self.shape(), other.shape(), "planar shapes differ");
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(&a, &b)| f(a, b))
            .collect();
        Planar::new(self.channels, self.height, self.width, data)
    }

    /// [`Planar::zip_map`] in place: each sample of `self` becomes `f(self, other)`, so
    /// that full-size updates need no third image.
    pub fn zip_assign(&mut self, other: &Planar, f: impl Fn(f32, f32) -> f32) {
        assert_eq!(self.shape(), other.shape(), "planar shapes differ");
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, &b)| *a = f(*a, b));
    }

    /// Largest |difference| between two images of the same shape.
    pub fn max_abs_diff(&self, other: &Planar) -> f32 {
        self.zip_map(other, |a, b| (a - b).abs())
            .data
            .into_iter()
            .fold(0.0, f32::max)
    }

    /// Copies the window `[y0, y0+h) × [x0, x0+w)`; coordinates outside the image are
    /// clamped to the nearest edge (edge padding).
    pub fn crop_clamped(&self, y0: isize, x0: isize, h: usize, w: usize) -> Planar {
        let mut out = Vec::with_capacity(self.channels * h * w);
        for c in 0..self.channels {
            for y in 0..h {
                let sy = (y0 + y as isize).clamp(0, self.height as isize - 1) as usize;
                let row = &self.data[(c * self.height + sy) * self.width..][..self.width];
                for x in 0..w {
                    let sx = (x0 + x as isize).clamp(0, self.width as isize - 1) as usize;
                    out.push(row[sx]);
                }
            }
        }
        Planar::new(self.channels, h, w, out)
    }

    /// torchvision `CenterCrop`: offsets use Python's `round` (half to even).
    pub fn center_crop(&self, h: usize, w: usize) -> Planar {
        let top = round_half_even((self.height as f64 - h as f64) / 2.0);
        let left = round_half_even((self.width as f64 - w as f64) / 2.0);
        self.crop_clamped(top as isize, left as isize, h, w)
    }

    /// One of the eight flips and rotations of the square (see [`Dihedral`]).
    pub fn dihedral(&self, t: Dihedral) -> Planar {
        let (h, w) = if t.transpose {
            (self.width, self.height)
        } else {
            (self.height, self.width)
        };
        let mut out = Vec::with_capacity(self.data.len());
        for c in 0..self.channels {
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = if t.transpose { (x, y) } else { (y, x) };
                    let sy = if t.flip_y { self.height - 1 - sy } else { sy };
                    let sx = if t.flip_x { self.width - 1 - sx } else { sx };
                    out.push(self.at(c, sy, sx));
                }
            }
        }
        Planar::new(self.channels, h, w, out)
    }

    /// Undoes [`Planar::dihedral`] with the same `t`.
    pub fn undo_dihedral(&self, t: Dihedral) -> Planar {
        self.dihedral(t.inverse())
    }

    /// `[1, C, H, W]` f32 tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (1, self.channels, self.height, self.width),
            device,
        )?)
    }

    /// Reads a `[1, C, H, W]` or `[C, H, W]` tensor back to the host as f32.
    pub fn from_tensor(t: &Tensor) -> Result<Planar> {
        let t = t.to_dtype(candle_core::DType::F32)?;
        let t = if t.rank() == 4 {
            ensure!(t.dim(0)? == 1, "expected batch size 1, got {:?}", t.shape());
            t.squeeze(0)?
        } else {
            t
        };
        let (c, h, w) = t.dims3()?;
        Ok(Planar::new(c, h, w, t.flatten_all()?.to_vec1()?))
    }
}

/// A flip or rotation of the image plane: flip columns, then rows, then transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dihedral {
    pub flip_x: bool,
    pub flip_y: bool,
    pub transpose: bool,
}

impl Dihedral {
    pub const IDENTITY: Dihedral = Dihedral {
        flip_x: false,
        flip_y: false,
        transpose: false,
    };

    /// The transform that undoes this one. Flips are their own inverses; after a
    /// transpose, the flip of columns acts on what were rows, so the two swap.
    pub fn inverse(self) -> Dihedral {
        if self.transpose {
            Dihedral {
                flip_x: self.flip_y,
                flip_y: self.flip_x,
                transpose: true,
            }
        } else {
            self
        }
    }

    /// The first `n` of the eight transforms, most different first: a 180° rotation
    /// second, because it reverses both directions the block attention looks in.
    pub fn first(n: usize) -> impl Iterator<Item = Dihedral> {
        const ORDER: [(bool, bool, bool); 8] = [
            (false, false, false),
            (true, true, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
            (true, true, true),
            (true, false, true),
            (false, true, true),
        ];
        ORDER
            .into_iter()
            .take(n)
            .map(|(flip_x, flip_y, transpose)| Dihedral {
                flip_x,
                flip_y,
                transpose,
            })
    }
}

/// Python's `round` for non-negative halves: ties go to the even neighbour.
pub fn round_half_even(v: f64) -> i64 {
    let f = v.floor();
    let diff = v - f;
    let fi = f as i64;
    if diff > 0.5 || (diff == 0.5 && fi % 2 != 0) {
        fi + 1
    } else {
        fi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_matches_python() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(37.0), 37);
        assert_eq!(round_half_even(2.6), 3);
    }

    #[test]
    fn center_crop_offsets() {
        let img = Planar::new(1, 1, 7, (0..7).map(|v| v as f32).collect());
        // (7-4)/2 = 1.5 -> 2
        assert_eq!(img.center_crop(1, 4).data, vec![2.0, 3.0, 4.0, 5.0]);
        // (7-2)/2 = 2.5 -> 2
        assert_eq!(img.center_crop(1, 2).data, vec![2.0, 3.0]);
    }

    #[test]
    fn dihedral_transforms_are_distinct_and_undone() {
        // 2×3 image, two channels: [[0 1 2] [3 4 5]] and its negative.
        let img = Planar::new(
            2,
            2,
            3,
            (0..6).chain((0..6).map(|v| -v)).map(|v| v as f32).collect(),
        );
        let flip_xy = Dihedral {
            flip_x: true,
            flip_y: true,
            transpose: false,
        };
        assert_eq!(
            img.dihedral(flip_xy).plane(0),
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
        );
        let t = img.dihedral(Dihedral {
            transpose: true,
            ..Dihedral::IDENTITY
        });
        assert_eq!((t.height, t.width), (3, 2));
        assert_eq!(t.plane(0), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let all: Vec<Dihedral> = Dihedral::first(8).collect();
        assert_eq!(all[0], Dihedral::IDENTITY);
        assert_eq!(all[1], flip_xy);
        let images: Vec<Planar> = all.iter().map(|&t| img.dihedral(t)).collect();
        for (i, a) in images.iter().enumerate() {
            assert_eq!(a.undo_dihedral(all[i]), img);
            assert!(images[i + 1..].iter().all(|b| b != a));
        }
    }
}
