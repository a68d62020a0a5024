//! High-level upscaling pipeline.
