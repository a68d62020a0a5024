//! Colour under fully transparent pixels.
//!
//! A transparent pixel's colour is invisible, and files often store black (or anything)
//! there. Upscaling colour and alpha separately would carry that hidden colour into the
//! half-transparent edge pixels of the result (dark fringes around a sprite on a
//! transparent background). So before upscaling, every fully transparent pixel takes the
//! colour of the visible pixels around it, by pull-push: a pyramid of averages over
//! visible pixels is built up, and the holes are filled from the finest level that has
//! colour there. Visible pixels, partly transparent ones included, are left as they are.

use super::Planar;

/// `rgb` with each pixel whose `alpha` is 0 given the colour of the nearest visible pixels
/// (unchanged when no pixel, or every pixel, is transparent).
pub fn fill_transparent(rgb: &Planar, alpha: &Planar) -> Planar {
    assert_eq!(
        (alpha.height, alpha.width),
        (rgb.height, rgb.width),
        "alpha and colour sizes differ"
    );
    let visible: Vec<f32> = alpha
        .plane(0)
        .iter()
        .map(|&a| if a > 0.0 { 1.0 } else { 0.0 })
        .collect();
    if visible.iter().all(|&v| v == 1.0) || visible.iter().all(|&v| v == 0.0) {
        return rgb.clone();
    }
    let base = Level {
        h: rgb.height,
        w: rgb.width,
        weight: visible,
        colour: rgb.data.clone(),
    };
    let mut levels = vec![base];
    while levels.last().is_some_and(|l| l.h > 1 || l.w > 1) {
        let next = levels.last().unwrap().pull();
        levels.push(next);
    }
    for i in (0..levels.len() - 1).rev() {
        let (fine, coarse) = levels.split_at_mut(i + 1);
        fine[i].push(&coarse[0]);
    }
    let base = levels.swap_remove(0);
    Planar::new(rgb.channels, rgb.height, rgb.width, base.colour)
}

/// One pyramid level: colour (3 planes, the average over visible pixels where `weight`
/// is above 0) and the share of it that is known, in [0, 1].
struct Level {
    h: usize,
    w: usize,
    weight: Vec<f32>,
    colour: Vec<f32>,
}

impl Level {
    /// The next coarser level: each pixel is the weighted average of a 2×2 block.
    fn pull(&self) -> Level {
        let (h, w) = (self.h.div_ceil(2), self.w.div_ceil(2));
        let (n, fine_n) = (h * w, self.h * self.w);
        let mut weight = vec![0.0; n];
        let mut colour = vec![0.0; 3 * n];
        for y in 0..self.h {
            for x in 0..self.w {
                let (i, j) = (y * self.w + x, (y / 2) * w + x / 2);
                let wt = self.weight[i];
                weight[j] += wt;
                for c in 0..3 {
                    colour[c * n + j] += wt * self.colour[c * fine_n + i];
                }
            }
        }
        for j in 0..n {
            if weight[j] > 0.0 {
                for c in 0..3 {
                    colour[c * n + j] /= weight[j];
                }
            }
            weight[j] = weight[j].min(1.0);
        }
        Level {
            h,
            w,
            weight,
            colour,
        }
    }

    /// Fills the unknown share of each pixel from `coarse`, the level above.
    fn push(&mut self, coarse: &Level) {
        let (n, coarse_n) = (self.h * self.w, coarse.h * coarse.w);
        for y in 0..self.h {
            for x in 0..self.w {
                let (i, j) = (y * self.w + x, (y / 2) * coarse.w + x / 2);
                let wt = self.weight[i];
                if wt < 1.0 {
                    for c in 0..3 {
                        let known = self.colour[c * n + i];
                        self.colour[c * n + i] =
                            wt * known + (1.0 - wt) * coarse.colour[c * coarse_n + j];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(h: usize, w: usize, rgb: impl Fn(usize, usize) -> [f32; 3]) -> Planar {
        let mut data = vec![0.0; 3 * h * w];
        for y in 0..h {
            for x in 0..w {
                for (c, v) in rgb(y, x).into_iter().enumerate() {
                    data[c * h * w + y * w + x] = v;
                }
            }
        }
        Planar::new(3, h, w, data)
    }

    #[test]
    fn transparent_pixels_take_the_colour_around_them() {
        // White opaque on the left, black fully transparent on the right, one column of
        // half-transparent grey between.
        let (h, w) = (5, 11);
        let rgb = planes(h, w, |_, x| match x {
            0..=4 => [1.0, 1.0, 1.0],
            5 => [0.5, 0.4, 0.3],
            _ => [0.0, 0.0, 0.0],
        });
        let alpha = Planar::new(
            1,
            h,
            w,
            (0..h * w)
                .map(|i| match i % w {
                    0..=4 => 1.0,
                    5 => 0.5,
                    _ => 0.0,
                })
                .collect(),
        );
        let filled = fill_transparent(&rgb, &alpha);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = filled.at(c, y, x);
                    if x <= 5 {
                        assert_eq!(v, rgb.at(c, y, x), "visible pixels stay");
                    } else {
                        // A mix of white and the grey column, never the hidden black.
                        assert!((0.3..=1.0).contains(&v), "({y}, {x}, {c}): {v}");
                    }
                }
            }
        }
        // Right beside the visible pixels the fill is their colour, not a far average.
        assert!(filled.at(0, 2, 6) >= 0.5);
    }

    #[test]
    fn nothing_to_fill_leaves_the_image_alone() {
        let rgb = planes(3, 4, |y, x| [y as f32 / 3.0, x as f32 / 4.0, 0.5]);
        for a in [1.0, 0.0] {
            let alpha = Planar::new(1, 3, 4, vec![a; 12]);
            assert_eq!(fill_transparent(&rgb, &alpha), rgb);
        }
        // One visible pixel colours the whole image.
        let mut alpha = vec![0.0; 12];
        alpha[5] = 1.0;
        let filled = fill_transparent(&rgb, &Planar::new(1, 3, 4, alpha));
        for c in 0..3 {
            let want = rgb.at(c, 1, 1);
            assert!(filled.plane(c).iter().all(|&v| (v - want).abs() < 1e-6));
        }
    }
}
