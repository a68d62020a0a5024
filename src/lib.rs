//! Inf-DiT in Rust: a diffusion transformer that upsamples images of any size with memory
//! bounded by the image's shorter side.
//!
//! Layout follows the architecture: [`config`] → [`checkpoint`] → [`model`] (the denoiser)
//! → [`engine`] (block scheduler with its K/V cache) → [`sampler`] → [`pipeline`], with
//! [`imageops`] for image I/O and exact resizing and [`clip`] for the image condition.

pub mod checkpoint;
pub mod cli;
pub mod clip;
pub mod config;
pub mod default_model;
pub mod engine;
pub mod eval;
pub mod fsutil;
pub mod imageops;
pub mod model;
pub mod parity;
pub mod pipeline;
pub mod profile;
pub mod sampler;
pub mod switches;
pub mod train;
