#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use infdit::checkpoint::ModelSource;
use infdit::imageops::Planar;
use infdit::model::InfDit;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn tiny_model() -> InfDit {
    fixture_model("tiny")
}

/// The model in a fixture directory (`config.json` + `weights.safetensors`), f32 on the CPU.
pub fn fixture_model(dir: &str) -> InfDit {
    let src = ModelSource::open(&fixture(dir)).unwrap();
    InfDit::from_source(&src, DType::F32, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn planar_diff(a: &Planar, b: &Planar) -> f32 {
    a.max_abs_diff(b)
}

pub fn tensor_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
