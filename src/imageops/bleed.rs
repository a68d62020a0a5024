//! Colour under fully transparent pixels.
//!
//! A transparent pixel's colour is invisible, and files often store black (or anything)
//! there. Upscaling colour and alpha separately would carry that hidden colour into the
//! half-transparent edge pixels of the result (dark fringes around a sprite on a
//! transparent background). So before upscaling, every fully transparent pixel takes the
//! colour of the nearest visible pixel. Nearest, not an average of the surroundings: beside
//! a thin line the fill is the line's own colour, not a blend with whatever lies further
//! off. Visible pixels, partly transparent ones included, are left as they are.

use super::Planar;

/// `rgb` with each pixel whose `alpha` is 0 given the colour of the nearest visible pixel
/// (unchanged when no pixel, or every pixel, is transparent).
pub fn fill_transparent(rgb: &Planar, alpha: &Planar) -> Planar {
    let (h, w) = (rgb.height, rgb.width);
    assert_eq!(
        (alpha.height, alpha.width),
        (h, w),
        "alpha and colour sizes differ"
    );
    let mut nearest: Vec<Option<(usize, usize)>> = (0..h * w)
        .map(|i| (alpha.data[i] > 0.0).then_some((i / w, i % w)))
        .collect();
    if nearest.iter().all(Option::is_some) || nearest.iter().all(Option::is_none) {
        return rgb.clone();
    }
    // Two sweeps of an 8-neighbour distance transform: each pixel takes whichever of
    // its already-visited neighbours' nearest visible pixels is closest to it. This is
    // not exact (a pixel may get one up to about a pixel farther than the nearest), which
    // a fill no one sees does not need.
    let dist = |(y, x): (usize, usize), (sy, sx): (usize, usize)| {
        y.abs_diff(sy).pow(2) + x.abs_diff(sx).pow(2)
    };
    let mut relax = |y: usize, x: usize, neighbours: [(isize, isize); 4]| {
        for (dy, dx) in neighbours {
            let (ny, nx) = (y as isize + dy, x as isize + dx);
            if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                continue;
            }
            if let Some(source) = nearest[ny as usize * w + nx as usize] {
                let here = &mut nearest[y * w + x];
                if here.is_none_or(|current| dist((y, x), source) < dist((y, x), current)) {
                    *here = Some(source);
                }
            }
        }
    };
    for y in 0..h {
        for x in 0..w {
            relax(y, x, [(0, -1), (-1, -1), (-1, 0), (-1, 1)]);
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            relax(y, x, [(0, 1), (1, 1), (1, 0), (1, -1)]);
        }
    }
    let mut out = rgb.clone();
    let n = h * w;
    for (i, source) in nearest.into_iter().enumerate() {
        let Some((sy, sx)) = source else { continue };
        let j = sy * w + sx;
        if j != i {
            for c in 0..rgb.channels {
                out.data[c * n + i] = rgb.data[c * n + j];
            }
        }
    }
    out
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
        assert_eq!(filled.at(0, 2, 6), 0.5);
    }

    #[test]
    fn thin_lines_keep_their_own_colour_beside_them() {
        // A blue and a yellow column, three transparent columns apart.
        let (h, w) = (4, 7);
        let rgb = planes(h, w, |_, x| match x {
            1 => [0.0, 0.0, 1.0],
            5 => [1.0, 1.0, 0.0],
            _ => [0.0, 0.0, 0.0],
        });
        let alpha = Planar::new(
            1,
            h,
            w,
            (0..h * w)
                .map(|i| if [1, 5].contains(&(i % w)) { 1.0 } else { 0.0 })
                .collect(),
        );
        let filled = fill_transparent(&rgb, &alpha);
        for y in 0..h {
            for (x, want) in [
                (0, [0.0, 0.0, 1.0]),
                (2, [0.0, 0.0, 1.0]),
                (4, [1.0, 1.0, 0.0]),
                (6, [1.0, 1.0, 0.0]),
            ] {
                let got: Vec<f32> = (0..3).map(|c| filled.at(c, y, x)).collect();
                assert_eq!(got, want, "({y}, {x})");
            }
        }
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
