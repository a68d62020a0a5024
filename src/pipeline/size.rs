//! The output size a user asks for, and how it is reached: the model upscales by the
//! smallest supported factor that covers it, and an antialiased bicubic reduction takes
//! the result to the exact size. Reducing a larger model output keeps the model's detail,
//! which a bicubic enlargement of a smaller one would not.

use super::MAX_SCALE;
use anyhow::{bail, Result};

/// The size of an upscaled image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputSize {
    /// Both sides times this factor (above 1, at most 16), rounded to whole pixels.
    Scale(f64),
    /// This width; the height follows the aspect ratio.
    Width(usize),
    /// This height; the width follows the aspect ratio.
    Height(usize),
    /// As large as fits inside the box, aspect ratio kept (like ImageMagick's `WxH`).
    Within { width: usize, height: usize },
}

impl Default for OutputSize {
    fn default() -> Self {
        Self::Scale(4.0)
    }
}

/// How one image reaches its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizePlan {
    /// The model's overall factor (one of the scales the plan was given).
    pub scale: usize,
    pub height: usize,
    pub width: usize,
}

impl SizePlan {
    /// Whether the model's output must be reduced to reach the size.
    pub fn resamples(&self, lr_height: usize, lr_width: usize) -> bool {
        (self.height, self.width) != (lr_height * self.scale, lr_width * self.scale)
    }
}

impl OutputSize {
    /// Refuses sizes no image can have.
    pub fn validate(&self) -> Result<()> {
        let max = MAX_SCALE as f64;
        match *self {
            Self::Scale(s) if !(s.is_finite() && s > 1.0 && s <= max) => {
                bail!("scale {s} is not above 1 and at most {max}")
            }
            Self::Width(0) | Self::Height(0) => bail!("an output side of 0 px"),
            Self::Within { width, height } if width == 0 || height == 0 => {
                bail!("an output side of 0 px")
            }
            _ => Ok(()),
        }
    }

    /// The plan for an input of `height`×`width` pixels and a model that reaches the
    /// factors `scales` (ascending).
    pub fn plan(&self, height: usize, width: usize, scales: &[usize]) -> Result<SizePlan> {
        self.validate()?;
        let (h, w) = (height as f64, width as f64);
        let factor = match *self {
            Self::Scale(s) => s,
            Self::Width(tw) => tw as f64 / w,
            Self::Height(th) => th as f64 / h,
            Self::Within {
                width: tw,
                height: th,
            } => (tw as f64 / w).min(th as f64 / h),
        };
        let side = |n: f64| ((n * factor).round() as usize).max(1);
        // The side a size names is exact, whatever the other side's rounding.
        let (out_h, out_w) = match *self {
            Self::Scale(_) => (side(h), side(w)),
            Self::Width(tw) => (side(h), tw),
            Self::Height(th) => (th, side(w)),
            Self::Within {
                width: tw,
                height: th,
            } => (side(h).min(th), side(w).min(tw)),
        };
        if out_h <= height && out_w <= width {
            bail!("{out_w}×{out_h} does not enlarge the {width}×{height} input");
        }
        let Some(&scale) = scales
            .iter()
            .find(|&&s| s * height >= out_h && s * width >= out_w)
        else {
            let max = scales.last().copied().unwrap_or(1);
            bail!(
                "{out_w}×{out_h} is more than {max}× the {width}×{height} input{}",
                if max < MAX_SCALE {
                    ", the most this model reaches"
                } else {
                    ""
                }
            );
        };
        Ok(SizePlan {
            scale,
            height: out_h,
            width: out_w,
        })
    }

    /// Whether `s` has the form of a [`OutputSize::suffix`], of any size.
    pub fn is_suffix(s: &str) -> bool {
        let number = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let factor = |t: &str| {
            let (whole, fraction) = t.split_once('.').unwrap_or((t, "0"));
            number(whole) && number(fraction)
        };
        if let Some((w, h)) = s.split_once('x').filter(|(w, _)| !w.is_empty()) {
            return number(w) && number(h);
        }
        match s.split_at_checked(1) {
            Some(("x", rest)) => factor(rest),
            Some(("w" | "h", rest)) => number(rest),
            _ => false,
        }
    }

    /// The suffix of output file names: `x4`, `x2.5`, `w3840`, `h2160`, `3840x2160`.
    pub fn suffix(&self) -> String {
        match *self {
            Self::Scale(s) => format!("x{s}"),
            Self::Width(w) => format!("w{w}"),
            Self::Height(h) => format!("h{h}"),
            Self::Within { width, height } => format!("{width}x{height}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X4: &[usize] = &[2, 4, 8, 16];

    fn plan(size: OutputSize, h: usize, w: usize) -> (usize, usize, usize) {
        let p = size.plan(h, w, X4).unwrap();
        (p.scale, p.height, p.width)
    }

    #[test]
    fn suffixes_are_recognised() {
        for size in [
            OutputSize::Scale(4.0),
            OutputSize::Scale(2.5),
            OutputSize::Width(3840),
            OutputSize::Height(2160),
            OutputSize::Within {
                width: 3840,
                height: 2160,
            },
        ] {
            assert!(OutputSize::is_suffix(&size.suffix()), "{size:?}");
        }
        for other in [
            "", "x", "x2.", "w", "h12a", "4x", "x4x", "final", "v2", "2024",
        ] {
            assert!(!OutputSize::is_suffix(other), "{other}");
        }
    }

    #[test]
    fn supported_factors_need_no_resampling() {
        for &s in X4 {
            let p = OutputSize::Scale(s as f64).plan(30, 50, X4).unwrap();
            assert_eq!((p.scale, p.height, p.width), (s, 30 * s, 50 * s));
            assert!(!p.resamples(30, 50));
        }
    }

    #[test]
    fn other_factors_reduce_the_next_larger_model_output() {
        assert_eq!(plan(OutputSize::Scale(3.0), 30, 50), (4, 90, 150));
        assert_eq!(plan(OutputSize::Scale(1.5), 3, 5), (2, 5, 8));
        assert_eq!(plan(OutputSize::Scale(4.5), 10, 10), (8, 45, 45));
        assert_eq!(plan(OutputSize::Scale(12.0), 2, 3), (16, 24, 36));
        assert!(OutputSize::Scale(3.0)
            .plan(30, 50, X4)
            .unwrap()
            .resamples(30, 50));
    }

    #[test]
    fn a_width_or_height_keeps_the_aspect_ratio_and_both_fit_inside() {
        use OutputSize::{Height, Width, Within};
        assert_eq!(plan(Width(400), 100, 200), (2, 200, 400));
        assert_eq!(plan(Height(300), 100, 200), (4, 300, 600));
        let within = |width, height| Within { width, height };
        assert_eq!(plan(within(1000, 300), 100, 200), (4, 300, 600));
        assert_eq!(plan(within(500, 1000), 100, 200), (4, 250, 500));
        assert_eq!(plan(Width(1920), 135, 240), (8, 1080, 1920));
        assert_eq!(plan(Width(100), 3, 7), (16, 43, 100));
    }

    #[test]
    fn impossible_sizes_are_refused() {
        for bad in [0.5, 1.0, 16.5, f64::NAN, f64::INFINITY] {
            assert!(OutputSize::Scale(bad).plan(10, 10, X4).is_err(), "{bad}");
        }
        assert!(OutputSize::Width(0).plan(10, 10, X4).is_err());
        let within = OutputSize::Within {
            width: 0,
            height: 5,
        };
        assert!(within.plan(10, 10, X4).is_err());
        let err = OutputSize::Width(100)
            .plan(10, 200, X4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not enlarge"), "{err}");
        let err = OutputSize::Width(1700)
            .plan(10, 100, X4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 16×"), "{err}");
    }

    #[test]
    fn file_name_suffixes() {
        assert_eq!(OutputSize::Scale(4.0).suffix(), "x4");
        assert_eq!(OutputSize::Scale(2.5).suffix(), "x2.5");
        assert_eq!(OutputSize::Width(3840).suffix(), "w3840");
        assert_eq!(OutputSize::Height(2160).suffix(), "h2160");
        let within = OutputSize::Within {
            width: 3840,
            height: 2160,
        };
        assert_eq!(within.suffix(), "3840x2160");
    }
}
