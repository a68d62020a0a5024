//! Output files appear whole or not at all: everything is written to a hidden temporary
//! file in the target directory, synced, then renamed over the destination. A failed write
//! removes its temporary file and leaves the destination untouched; an interrupted process
//! (Ctrl-C) removes the temporary files it was writing through [`remove_partial_files`],
//! since it runs no destructors.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tempfile::NamedTempFile;

/// The temporary files being written now.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn partial() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PARTIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file still being written, on the way to exiting (a signal
/// handler, a fatal error). The list stays locked until the process exits, so that no
/// other thread creates a temporary file after the removal.
pub fn remove_partial_files() {
    let mut listed = partial();
    remove_from(&mut listed, |_| true);
    std::mem::forget(listed);
}

#[cfg(test)]
fn remove_listed(which: impl Fn(&Path) -> bool) {
    remove_from(&mut partial(), which);
}

fn remove_from(listed: &mut Vec<PathBuf>, which: impl Fn(&Path) -> bool) {
    listed.retain(|path| {
        let remove = which(path);
        if remove {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
        !remove
    });
}

/// Takes `path` off the list of files being written.
fn unlist(path: &Path) {
    partial().retain(|p| p != path);
}

/// A temporary output file, listed for [`remove_partial_files`] while it exists.
pub struct PartFile(Option<NamedTempFile>);

impl PartFile {
    fn inner(&self) -> &NamedTempFile {
        self.0
            .as_ref()
            .expect("a PartFile holds its file until dropped")
    }

    pub fn path(&self) -> &Path {
        self.inner().path()
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        self.0
            .as_mut()
            .expect("a PartFile holds its file until dropped")
            .as_file_mut()
    }

    /// Hands the file over, still listed: the caller unlists it once it is renamed.
    fn into_listed(mut self) -> NamedTempFile {
        self.0
            .take()
            .expect("a PartFile holds its file until dropped")
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            unlist(file.path());
        }
    }
}

/// A temporary file in `path`'s directory. It gets the permissions a plainly created file
/// would (0666 less the umask) rather than tempfile's private 0600, since it becomes the
/// output.
pub fn temp_beside(path: &Path) -> io::Result<PartFile> {
    let mut b = part_builder();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let file = create_listed(dir_of(path), |dir| b.tempfile_in(dir), |f| f.path())?;
    Ok(PartFile(Some(file)))
}

/// A private scratch file in the system's temporary folder, listed like an output's
/// temporary file so that an interrupt removes it too.
pub fn scratch_file() -> io::Result<PartFile> {
    let file = create_listed(
        &std::env::temp_dir(),
        |dir| tempfile::Builder::new().prefix(".infdit-").tempfile_in(dir),
        |f| f.path(),
    )?;
    Ok(PartFile(Some(file)))
}

/// A builder of the temporary entries beside outputs, named `.infdit-*.part` so that one a
/// killed run leaves is recognisable.
fn part_builder<'a, 'b>() -> tempfile::Builder<'a, 'b> {
    let mut b = tempfile::Builder::new();
    b.prefix(".infdit-").suffix(".part");
    b
}

/// The directory a file at `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates a temporary entry (`.infdit-*.part`) in `dir` with `create` and lists it,
/// holding the list while it is created so that an interrupt cannot fall between its
/// creation and its listing.
fn create_listed<T>(
    dir: &Path,
    create: impl FnOnce(&Path) -> io::Result<T>,
    path_of: impl Fn(&T) -> &Path,
) -> io::Result<T> {
    let mut listed = partial();
    let entry = create(dir).map_err(|e| {
        // tempfile appends the random temporary path to the OS error; the user needs only
        // the OS error.
        let message = e.to_string();
        let cause = message.split(" at path ").next().unwrap_or_default();
        io::Error::new(
            e.kind(),
            format!("cannot create a file in {}: {cause}", dir.display()),
        )
    })?;
    listed.push(path_of(&entry).to_path_buf());
    Ok(entry)
}

/// Gives the file at `path` the permissions `wanted` (a writer may have replaced it by a
/// private one) and syncs it, before it is renamed into place.
fn settle(path: &Path, wanted: std::fs::Permissions) -> io::Result<()> {
    let placed = File::open(path)?;
    if placed.metadata()?.permissions() != wanted {
        placed.set_permissions(wanted)?;
    }
    placed.sync_all()
}

/// The permissions of a file written to `path`: those of the file it replaces, so that a
/// private file stays private, else `created`, a plainly created file's.
fn permissions_for(path: &Path, created: std::fs::Permissions) -> std::fs::Permissions {
    std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map_or(created, |replaced| replaced.permissions())
}

/// Syncs `tmp` and renames it to `path`, with the permissions of the file it replaces,
/// else those `tmp` was created with.
pub fn commit(tmp: PartFile, path: &Path) -> io::Result<()> {
    let tmp = tmp.into_listed();
    let listed = tmp.path().to_path_buf();
    // Listed until renamed: an interrupt during the (slow) sync still removes it.
    let placed = (|| {
        let created = tmp.as_file().metadata()?.permissions();
        settle(tmp.path(), permissions_for(path, created))?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    unlist(&listed);
    placed
}

/// Runs `write` on a temporary path beside `path`, then renames it to `path`. On error
/// the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_all_atomically(vec![(path.to_path_buf(), Box::new(write))])
}

/// A writer of one file, given the temporary path to write.
pub type Writer<'a> = Box<dyn FnOnce(&Path) -> Result<()> + 'a>;

/// Writes every file to a temporary path, then renames them into place in the order
/// given: an error or an interrupt while writing leaves every destination as it was, and
/// only the renames, which take next to no time, can be cut between two files.
///
/// Each temporary path is a file in a listed temporary folder beside its destination, so
/// that a writer which makes a temporary file of its own beside the path it is given (the
/// safetensors crate does) leaves nothing behind either: an interrupt removes the folder
/// whole.
pub fn write_all_atomically(files: Vec<(PathBuf, Writer<'_>)>) -> Result<()> {
    let mut staged = Vec::with_capacity(files.len());
    let written = (|| -> Result<()> {
        for (path, write) in files {
            let context = || format!("writing {}", path.display());
            let dir = create_listed(
                dir_of(&path),
                |dir| part_builder().tempdir_in(dir),
                |d| d.path(),
            )
            .with_context(context)?;
            let tmp = dir.path().join("file");
            staged.push((dir, path.clone()));
            let created = File::create(&tmp)
                .and_then(|f| f.metadata())
                .with_context(context)?
                .permissions();
            write(&tmp).with_context(context)?;
            settle(&tmp, permissions_for(&path, created)).with_context(context)?;
        }
        for (dir, path) in &staged {
            std::fs::rename(dir.path().join("file"), path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })();
    for (dir, _) in staged {
        let listed = dir.path().to_path_buf();
        drop(dir);
        unlist(&listed);
    }
    written
}

/// The outermost folder on the way to `path` (itself included) that does not exist yet:
/// what creating `path` with its parents makes, and [`remove_empty_dirs`] takes back.
pub fn first_missing_dir(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf)
}

/// Removes `dir` and the folders under it, as far as they hold no files.
pub fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether two paths name the same file or folder: the same existing one, or the same
/// path where either does not exist.
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses an output that must not be replaced, whatever `--overwrite` says: an input
/// of the run (its own or another's, which would then be read in its new form), or
/// something other than a file (a directory, a device such as `/dev/null`, a pipe), which
/// the rename into place would destroy. Also a name the file system cannot hold.
pub fn check_replaceable(
    out: &Path,
    input: &Path,
    inputs: &std::collections::HashSet<PathBuf>,
) -> Result<()> {
    // Most file systems hold names of up to 255 bytes.
    if out.file_name().is_some_and(|n| n.len() > 255) {
        anyhow::bail!(
            "the output name {} is longer than a file name can be",
            out.display()
        );
    }
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(());
    };
    if same_path(out, input) {
        anyhow::bail!("the output {} would replace its own input", out.display());
    }
    if out.canonicalize().is_ok_and(|c| inputs.contains(&c)) {
        anyhow::bail!(
            "the output {} is another input of this run, which is not replaced",
            out.display()
        );
    }
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        anyhow::bail!(
            "the output {} is {what}, which is not replaced",
            out.display()
        );
    }
    Ok(())
}

/// Saves tensors as safetensors, atomically.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, candle_core::Tensor>) -> Result<()> {
    save_safetensors_with_metadata(path, tensors, None)
}

/// [`save_safetensors`] with string metadata in the file's header.
pub fn save_safetensors_with_metadata(
    path: &Path,
    tensors: &HashMap<String, candle_core::Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomically(path, safetensors_writer(tensors, metadata))
}

/// Writes tensors as safetensors to the path it is given (not atomically by itself: for
/// [`write_all_atomically`]).
pub fn safetensors_writer(
    tensors: &HashMap<String, candle_core::Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Writer<'_> {
    Box::new(move |tmp| {
        safetensors::serialize_to_file(tensors.iter(), metadata, tmp)?;
        sort_safetensors_header(tmp)
    })
}

/// Rewrites the JSON header of the safetensors file at `path` with its keys sorted, in
/// place (it keeps its length). The safetensors crate writes the metadata in hash-map
/// order, so the same tensors and metadata would otherwise give files that differ from
/// one run to the next.
fn sort_safetensors_header(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    // serde_json's maps are ordered by key.
    let sorted = serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&header)?)?;
    if sorted.len() == header.trim_ascii_end().len() {
        header[..sorted.len()].copy_from_slice(&sorted);
        file.seek(SeekFrom::Start(8))?;
        file.write_all(&header)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata give the same bytes, whatever the hash order, and the
    /// file reads back whole.
    #[test]
    fn safetensors_files_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let t = candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let tensors: HashMap<_, _> = [("b".to_string(), t.clone()), ("a".to_string(), t)].into();
        let metadata: HashMap<_, _> = (0..16).map(|i| (format!("k{i}"), "v".repeat(i))).collect();
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("{i}.safetensors"));
                save_safetensors_with_metadata(&path, &tensors, Some(metadata.clone())).unwrap();
                let loaded = candle_core::safetensors::load(&path, &candle_core::Device::Cpu);
                assert_eq!(loaded.unwrap().len(), 2);
                std::fs::read(&path).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]));
    }

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

    /// Outputs get the permissions of a plainly created file (0666 less the umask), also
    /// where the writer replaced the temporary file; a replaced file's are kept.
    #[cfg(unix)]
    #[test]
    fn outputs_get_the_permissions_of_a_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let target = dir.path().join("w.safetensors");
        let tensors = [(
            "t".to_string(),
            candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap(),
        )]
        .into_iter()
        .collect();
        save_safetensors(&target, &tensors).unwrap();
        assert_eq!(mode(&target), mode(&plain));
        // Replaced in place: a private file stays private.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        save_safetensors(&target, &tensors).unwrap();
        assert_eq!(mode(&target), 0o600);
        let image = dir.path().join("i.png");
        std::fs::write(&image, b"old").unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o640)).unwrap();
        let tmp = temp_beside(&image).unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(".infdit-") && name.ends_with(".part"),
            "{name}"
        );
        commit(tmp, &image).unwrap();
        assert_eq!(mode(&image), 0o640);
        std::fs::remove_file(&image).unwrap();
        let other = dir.path().join("other.bin");
        write_atomically(&other, |tmp| Ok(std::fs::write(tmp, b"x")?)).unwrap();
        assert_eq!(mode(&other), mode(&plain));
        // Nothing else is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn interrupted_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.png");
        let mut open = temp_beside(&target).unwrap();
        std::io::Write::write_all(open.as_file_mut(), b"half").unwrap();
        let open_path = open.path().to_path_buf();
        assert!(partial().contains(&open_path));
        // Committed and dropped files leave the list.
        let done = temp_beside(&target).unwrap();
        commit(done, &target).unwrap();
        drop(temp_beside(&target).unwrap());
        assert_eq!(
            partial()
                .iter()
                .filter(|p| p.starts_with(dir.path()))
                .count(),
            1
        );
        // What an interrupt does (to this test's files only: tests run in parallel): the
        // open file goes, the committed output stays.
        remove_listed(|p| p.starts_with(dir.path()));
        assert!(!open_path.exists());
        assert!(target.exists());
        drop(open);
    }

    /// Files written together are all written before any is renamed: a write that fails
    /// changes none, and leaves no temporary file.
    #[test]
    fn a_failed_write_of_several_files_changes_none() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = |name: &str| dir.path().join(name);
        for name in ["a", "b", "c"] {
            std::fs::write(file(name), "old")?;
        }
        let write =
            |text: &'static str| -> Writer { Box::new(move |p| Ok(std::fs::write(p, text)?)) };
        let failing: Writer = Box::new(|p| {
            std::fs::write(p, "half")?;
            anyhow::bail!("disk full")
        });
        let e = write_all_atomically(vec![
            (file("a"), write("new")),
            (file("b"), write("new")),
            (file("c"), failing),
        ])
        .unwrap_err();
        assert!(format!("{e:#}").ends_with("disk full"), "{e:#}");
        for name in ["a", "b", "c"] {
            assert_eq!(std::fs::read_to_string(file(name))?, "old");
        }
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 3);
        write_all_atomically(vec![(file("a"), write("new")), (file("b"), write("new"))])?;
        assert_eq!(std::fs::read_to_string(file("b"))?, "new");
        Ok(())
    }

    /// A writer that keeps its own temporary file beside the path it is given (as the
    /// safetensors crate does) leaves nothing behind when interrupted mid-write.
    #[test]
    fn a_writers_own_temporary_file_goes_with_an_interrupt() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("w.safetensors");
        let err = write_atomically(&target, |tmp| {
            std::fs::write(tmp.with_file_name(".tmpWRITER"), b"half")?;
            remove_listed(|p| p.starts_with(dir.path()));
            anyhow::bail!("interrupted")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
