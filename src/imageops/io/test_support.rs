//! Helpers shared by the tests of the io modules.

use std::path::{Path, PathBuf};

use super::DecodeLimits;
use crate::imageops::Planar;

#[path = "../../../tests/common/exif.rs"]
mod exif;

pub(super) use exif::with_exif_orientation;

/// A smooth colour gradient (so JPEG stays close) sampled on the 8-bit grid.
pub(super) fn gradient(h: usize, w: usize) -> Planar {
    let mut data = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = (x * 7 + y * 5 + c * 40) % 256;
                data.push(v as f32 / 255.0);
            }
        }
    }
    Planar::new(3, h, w, data)
}

pub(super) fn ramp(h: usize, w: usize, seed: usize) -> Planar {
    let data = (0..h * w)
        .map(|i| ((i * 37 + seed) % 256) as f32 / 255.0)
        .collect();
    Planar::new(1, h, w, data)
}

/// An ICC profile for `space` ("RGB ", "GRAY", "CMYK"): its header's colour space field
/// set in otherwise arbitrary bytes.
pub(super) fn icc_profile(space: &[u8; 4]) -> Vec<u8> {
    let mut icc: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
    icc[16..20].copy_from_slice(space);
    icc
}

pub(super) fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// A file of tests/fixtures/formats.
pub(super) fn format_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}
