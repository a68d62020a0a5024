//! open_clip ViT image encoder: the global conditioning vector of the released model.

/// Placeholder until the encoder lands.
pub fn run_parity(
    _config: &std::path::Path,
    _weights: &std::path::Path,
    _case: &std::path::Path,
    _out: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::bail!("the CLIP encoder is not built yet")
}
