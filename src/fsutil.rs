//! Output files appear whole or not at all: everything is written to a hidden temporary
//! file in the target directory, synced, then renamed over the destination. A failed or
//! interrupted write leaves at most that temporary file's removal behind, never a
//! truncated output.

use anyhow::{Context, Result};
use std::io;
use std::path::Path;
use tempfile::NamedTempFile;

/// A temporary file in `path`'s directory. It gets the permissions a plainly created file
/// would (0666 less the umask) rather than tempfile's private 0600, since it becomes the
/// output.
pub fn temp_beside(path: &Path) -> io::Result<NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut b = tempfile::Builder::new();
    b.prefix(".infdit-").suffix(".part");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir).map_err(|e| {
        // tempfile appends the random temporary path to the OS error; the user needs only
        // the OS error.
        let message = e.to_string();
        let cause = message.split(" at path ").next().unwrap_or_default();
        io::Error::new(
            e.kind(),
            format!("cannot create a file in {}: {cause}", dir.display()),
        )
    })
}

/// Syncs `tmp` and renames it to `path`.
pub fn commit(tmp: NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Runs `write` on a temporary path beside `path`, then renames it to `path`. On error
/// the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_beside(path)?;
    write(tmp.path()).with_context(|| format!("writing {}", path.display()))?;
    commit(tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Saves tensors as safetensors, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    write_atomically(path, |tmp| {
        Ok(candle_core::safetensors::save(tensors, tmp)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let err = write_atomically(&target, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomically(&target, |tmp| Ok(std::fs::write(tmp, b"whole")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
    }
}
