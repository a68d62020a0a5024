//! Which files an `upscale` run reads: files named directly, directories (with `-r`,
//! their subfolders), and glob patterns matched as a shell would; earlier results of
//! this tool found beside their sources are passed over.

use crate::imageops::io::has_input_extension;
use crate::pipeline::OutputSize;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The file name that stands for standard input or output.
pub const STDIO: &str = "-";

pub fn is_stdio(path: &Path) -> bool {
    path == Path::new(STDIO)
}

/// One image to upscale.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Input {
    pub path: PathBuf,
    /// Its directory relative to the directory argument it was found under (empty for files
    /// named directly or by a pattern), recreated under an output directory so that
    /// `-r` keeps the tree and same-named files of different folders stay apart.
    pub subdir: PathBuf,
}

impl Input {
    /// A file named directly (or by a pattern, or standard input): no subfolder.
    pub fn named(path: PathBuf) -> Self {
        Self {
            path,
            subdir: PathBuf::new(),
        }
    }
}

/// Whether `path` is a glob pattern. A name that is not UTF-8 is a file name, never a
/// pattern.
pub fn is_pattern(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.contains(['*', '?', '[']))
}

/// Expands files, directories and globs; unreadable entries become failures. Also
/// returns how many earlier results the expansions passed over. A scan never enters
/// the output directory `output` (this command's results), unless it is the scan's
/// own directory.
pub fn collect(
    args: &[PathBuf],
    output: Option<&Path>,
    recursive: bool,
) -> (Vec<Input>, Vec<(String, String)>, usize) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    let mut earlier = 0;
    let output_dir = output
        .filter(|o| !is_stdio(o))
        .and_then(|o| o.canonicalize().ok())
        .filter(|o| o.is_dir());
    for path in args {
        let pattern = path.to_str().filter(|_| is_pattern(path));
        let found = if is_stdio(path) || (path.exists() && !path.is_dir()) {
            files.push(Input::named(path.clone()));
            continue;
        } else if path.is_dir() {
            let depth = if recursive { usize::MAX } else { 0 };
            let mut scan = Scan::new(skipped_output(&output_dir, path));
            scan.walk(path, path, depth).map(|()| scan.found)
        } else if let Some(pattern) = pattern {
            match_pattern(pattern, output_dir.clone(), recursive).and_then(|found| {
                if found.is_empty() {
                    bail!("the pattern matches no image")
                }
                Ok(found)
            })
        } else {
            Err(anyhow!("no such file or directory"))
        };
        match found {
            Ok(mut found) => {
                earlier += drop_earlier_results(&mut found);
                files.extend(found);
            }
            Err(e) => failures.push((path.display().to_string(), super::error_text(&e))),
        }
    }
    (files, failures, earlier)
}

/// A walk over directories for images, as directory arguments and patterns need it.
/// Hidden entries (`.name`, such as macOS's `._photo.jpg` resource files) are passed over,
/// as a shell's `*` would; so is anything that is not a regular file (a named pipe would
/// block the run). Linked directories are followed once each, so a link back up the tree
/// cannot make the walk endless.
struct Scan {
    visited: HashSet<PathBuf>,
    found: Vec<Input>,
    /// Every directory listed, entered or not (a pattern may name some of them).
    dirs: Vec<PathBuf>,
    /// Pass over hidden entries (a pattern decides for itself, as a shell does).
    skip_hidden: bool,
}

impl Scan {
    /// A scan that never enters `skip` (canonical), the run's output directory.
    fn new(skip: Option<PathBuf>) -> Self {
        Self {
            visited: skip.into_iter().collect(),
            found: Vec::new(),
            dirs: Vec::new(),
            skip_hidden: true,
        }
    }

    /// Adds the images in `dir` and, `depth` levels down, in its subdirectories, with
    /// their place under `root`.
    fn walk(&mut self, root: &Path, dir: &Path, depth: usize) -> Result<()> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        if !self.visited.insert(canonical) {
            tracing::debug!("{}: already listed or the output directory", dir.display());
            return Ok(());
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
        {
            let entry = entry?;
            if !(self.skip_hidden && entry.file_name().to_string_lossy().starts_with('.')) {
                entries.push(entry.path());
            }
        }
        entries.sort();
        for p in entries {
            if p.is_dir() {
                self.dirs.push(p.clone());
                if depth > 0 {
                    self.walk(root, &p, depth - 1)?;
                }
            } else if p.is_file() && has_input_extension(&p) {
                let subdir = dir
                    .strip_prefix(root)
                    .unwrap_or(Path::new(""))
                    .to_path_buf();
                self.found.push(Input { path: p, subdir });
            }
        }
        Ok(())
    }
}

/// The images a glob pattern names. The walk starts at the pattern's last directory
/// without wildcards and goes as deep as the pattern does (all the way for `**`), with
/// [`Scan`]'s rules, so that links cannot make it endless either. Directories the pattern
/// matches are scanned as if named (`'shots/*'` reads the folders in `shots`, as the
/// shell's expansion would). With `recursive`, results keep their folder under that
/// starting directory, so that `-o` recreates the tree.
fn match_pattern(arg: &str, output_dir: Option<PathBuf>, recursive: bool) -> Result<Vec<Input>> {
    // As in a shell: case matters, `*` stops at `/` and does not match a leading dot.
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let components: Vec<_> = Path::new(arg).components().collect();
    // The walk gives paths without `//` or inner `/./`; so must the pattern.
    let normalized: PathBuf = components.iter().collect();
    let pattern = glob::Pattern::new(&normalized.to_string_lossy())
        .map_err(|e| anyhow!("invalid pattern: {e}"))?;
    let literal = components
        .iter()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .count();
    let base: PathBuf = components[..literal].iter().collect();
    let depth = if arg.contains("**") {
        usize::MAX
    } else {
        (components.len() - literal).saturating_sub(1)
    };
    let start = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &base
    };
    if !start.is_dir() {
        return Ok(Vec::new());
    }
    // A walk from "." gives "./a.png"; the pattern was written as "a.png".
    let as_written = |p: PathBuf| match p.strip_prefix(".") {
        Ok(rel) if base.as_os_str().is_empty() => rel.to_path_buf(),
        _ => p,
    };
    let written = |i: Input| Input {
        path: as_written(i.path),
        ..i
    };
    // Names that are not UTF-8 are matched with their undecodable bytes as U+FFFD, which
    // a wildcard matches.
    let matches = |p: &Path| pattern.matches_with(&p.to_string_lossy(), options);
    let skip = skipped_output(&output_dir, start);
    let mut scan = Scan::new(skip.clone());
    scan.skip_hidden = false;
    scan.walk(start, start, depth)?;
    let mut found: Vec<Input> = scan
        .found
        .into_iter()
        .map(written)
        .filter(|i| matches(&i.path))
        .collect();
    // One scan for all matched directories, which never re-enters the starting directory
    // (a link up the tree would otherwise list its files again under the link's path).
    let mut inner = Scan::new(skip);
    inner.visited.extend(start.canonicalize().ok());
    for dir in scan.dirs {
        if matches(&as_written(dir.clone())) {
            inner.walk(start, &dir, if recursive { usize::MAX } else { 0 })?;
        }
    }
    found.extend(inner.found.into_iter().map(written));
    if !recursive {
        found.iter_mut().for_each(|i| i.subdir.clear());
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The output directory a scan from `root` must pass over: none when the scan is of the
/// output directory itself (`infdit upscale photos -o photos` reads `photos`).
fn skipped_output(output_dir: &Option<PathBuf>, root: &Path) -> Option<PathBuf> {
    output_dir
        .clone()
        .filter(|o| root.canonicalize().ok().as_ref() != Some(o))
}

/// Drops files that a directory or a pattern turned up which are earlier results of this
/// tool (`a_x4.png`, `a_x2.5.jpg`, `a_w3840.png`, `a_x4_x2.png` beside `a.png`), so that
/// running a command again, with any size, does not upscale its outputs once more. Files
/// named one by one are always kept. Returns how many were dropped.
fn drop_earlier_results(found: &mut Vec<Input>) -> usize {
    // Stems as text: bytes that are not UTF-8 compare as U+FFFD on both sides.
    let key = |p: &Path| {
        Some((
            p.parent()?.to_path_buf(),
            p.file_stem()?.to_string_lossy().into_owned(),
        ))
    };
    let stems: HashSet<_> = found.iter().filter_map(|i| key(&i.path)).collect();
    let before = found.len();
    found.retain(|i| {
        let Some((dir, stem)) = key(&i.path) else {
            return true;
        };
        let mut stem = stem.as_str();
        // `a_x4_x2` comes from `a_x4`, or from `a` where that one was deleted.
        while let Some((source, suffix)) = stem.rsplit_once('_') {
            if !OutputSize::is_suffix(suffix) {
                break;
            }
            if stems.contains(&(dir.clone(), source.to_owned())) {
                return false;
            }
            stem = source;
        }
        true
    });
    before - found.len()
}
