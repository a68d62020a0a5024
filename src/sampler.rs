//! EDM samplers (NOTES §6): Karras σ schedule, Heun (2nd order, Euler on the last step)
//! and plain Euler, started from the noised bicubic upsample.

use crate::imageops::Planar;
use anyhow::Result;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    #[default]
    Heun,
    Euler,
}

/// The largest σ_max accepted: far above EDM's 80 for images in [-1, 1], and far below
/// where σ² leaves f32's range and the preconditioning turns to NaN.
pub const MAX_SIGMA: f32 = 1e4;

/// The most sampler steps taken; the schedule is allocated up front.
pub const MAX_STEPS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    pub steps: usize,
    pub sigma_min: f32,
    pub sigma_max: f32,
    pub rho: f32,
}

impl Default for SamplerConfig {
    /// The released configuration: Heun, 20 steps, σ 0.002…40, ρ 7.
    fn default() -> Self {
        Self {
            kind: SamplerKind::Heun,
            steps: 20,
            sigma_min: 0.002,
            sigma_max: 40.0,
            rho: 7.0,
        }
    }
}

impl SamplerConfig {
    /// Refuses settings that give no schedule: no steps, or noise levels that are not
    /// positive, finite and ordered.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.steps == 0 {
            anyhow::bail!("the number of steps must be at least 1");
        }
        if self.steps > MAX_STEPS {
            anyhow::bail!(
                "{} steps are beyond {MAX_STEPS}: past a few hundred, more steps change nothing",
                self.steps
            );
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(self.sigma_max) || !positive(self.sigma_min) || !positive(self.rho) {
            anyhow::bail!(
                "noise levels must be positive and finite (σ_max {}, σ_min {}, ρ {})",
                self.sigma_max,
                self.sigma_min,
                self.rho
            );
        }
        if self.sigma_max < self.sigma_min {
            anyhow::bail!(
                "σ_max {} is below the smallest noise level {}",
                self.sigma_max,
                self.sigma_min
            );
        }
        if self.sigma_max > MAX_SIGMA {
            anyhow::bail!(
                "σ_max {} is beyond {MAX_SIGMA}, where the noise swamps any image",
                self.sigma_max
            );
        }
        Ok(())
    }

    /// `steps` noise levels from σ_max down to σ_min, then a final 0 (f32 as the reference).
    pub fn sigmas(&self) -> Vec<f32> {
        let n = self.steps;
        let inv = 1.0 / self.rho;
        let (hi, lo) = (self.sigma_max.powf(inv), self.sigma_min.powf(inv));
        let mut s: Vec<f32> = (0..n)
            .map(|i| {
                let ramp = if n > 1 {
                    i as f32 / (n - 1) as f32
                } else {
                    0.0
                };
                (hi + ramp * (lo - hi)).powf(self.rho)
            })
            .collect();
        s.push(0.0);
        s
    }

    /// Network evaluations a run takes.
    pub fn nfe(&self) -> usize {
        match self.kind {
            SamplerKind::Heun => (2 * self.steps).saturating_sub(1),
            SamplerKind::Euler => self.steps,
        }
    }
}

/// Runs the sampler from `start + σ_max·noise` (`start` is the bicubic upsample for the
/// released model). `denoise(x, σ)` is D; `on_step(i, x)` sees the state after step `i`.
///
/// The steps are NOTES §6's, computed in place: the state, the derivative (which takes
/// the place of D) and, for Heun, the Euler guess and its D are the only full-size images
/// alive, since at 8192² each is 800 MB.
pub fn sample(
    cfg: &SamplerConfig,
    start: Planar,
    noise: Planar,
    denoise: &mut dyn FnMut(&Planar, f32) -> Result<Planar>,
    on_step: &mut dyn FnMut(usize, &Planar),
) -> Result<Planar> {
    let sigmas = cfg.sigmas();
    let mut x = start;
    x.zip_assign(&noise, |a, n| a + sigmas[0] * n);
    drop(noise);
    for i in 0..cfg.steps {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let h = s_next - s;
        // d = (x − D(x, σ))/σ
        let mut d = denoise(&x, s)?;
        d.zip_assign(&x, |den, x| (x - den) / s);
        if s_next == 0.0 || cfg.kind == SamplerKind::Euler {
            x.zip_assign(&d, |x, d| x + h * d);
        } else {
            let x_euler = x.zip_map(&d, |x, d| x + h * d);
            // d' = (x_e − D(x_e, σ'))/σ', kept in place of D(x_e, σ').
            let mut d2 = denoise(&x_euler, s_next)?;
            d2.zip_assign(&x_euler, |den, xe| (xe - den) / s_next);
            drop(x_euler);
            d.zip_assign(&d2, |d, d2| (d + d2) / 2.0);
            x.zip_assign(&d, |x, d| x + h * d);
        }
        on_step(i, &x);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_without_meaning_are_refused() {
        let ok = SamplerConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplerConfig { steps: 0, ..ok },
            SamplerConfig {
                steps: 100_000_000_000,
                ..ok
            },
            SamplerConfig {
                sigma_max: 0.0,
                ..ok
            },
            SamplerConfig {
                sigma_max: f32::NAN,
                ..ok
            },
            SamplerConfig {
                sigma_max: f32::INFINITY,
                ..ok
            },
            SamplerConfig {
                sigma_max: 0.001,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn four_step_schedule_matches_reference() {
        let cfg = SamplerConfig {
            steps: 4,
            ..Default::default()
        };
        let want = [40.000_01_f32, 5.2237997, 0.29258615, 0.0020000036, 0.0];
        for (a, b) in cfg.sigmas().iter().zip(want) {
            assert!((a - b).abs() <= 1e-5 * b.max(1.0), "{a} vs {b}");
        }
        assert_eq!(cfg.nfe(), 7);
    }

    #[test]
    fn exact_denoiser_reaches_its_target_in_one_euler_step() {
        let target = Planar::new(1, 1, 2, vec![0.3, -0.2]);
        let noise = Planar::new(1, 1, 2, vec![1.0, -1.0]);
        let cfg = SamplerConfig {
            steps: 1,
            kind: SamplerKind::Euler,
            ..Default::default()
        };
        let out = sample(
            &cfg,
            target.clone(),
            noise,
            &mut |_, _| Ok(target.clone()),
            &mut |_, _| {},
        )
        .unwrap();
        for (a, b) in out.data.iter().zip(&target.data) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
