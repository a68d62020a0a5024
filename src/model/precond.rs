//! EDM preconditioning (NOTES §5.1).

/// Scalars turning the network output F into the denoised image:
/// `D = F·c_out + x·c_skip`, network input scaled by `c_in`, noise level fed as `c_noise`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precond {
    pub c_skip: f32,
    pub c_out: f32,
    pub c_in: f32,
    pub c_noise: f32,
}

impl Precond {
    /// Computed in f32, as the reference does.
    pub fn new(sigma: f32, sigma_data: f32) -> Self {
        let sd2 = sigma_data * sigma_data;
        let s2 = sigma * sigma;
        Self {
            c_skip: sd2 / (s2 + sd2),
            c_out: sigma * sigma_data / (s2 + sd2).sqrt(),
            c_in: 1.0 / (s2 + sd2).sqrt(),
            c_noise: 0.25 * sigma.ln(),
        }
    }

    /// `D = F·c_out + x·c_skip` over host images, computed in F's buffer so a large
    /// image needs no third copy.
    pub fn denoised(
        &self,
        mut f: crate::imageops::Planar,
        x: &crate::imageops::Planar,
    ) -> crate::imageops::Planar {
        f.data
            .iter_mut()
            .zip(&x.data)
            .for_each(|(f, x)| *f = *f * self.c_out + x * self.c_skip);
        f
    }
}
