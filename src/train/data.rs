//! Photo dataset for training: HR crops from a folder of photographs with their degraded
//! LR counterparts.
//!
//! Each photo is decoded once, shrunk by half with antialiased bicubic (hiding the
//! source's own JPEG artefacts and sensor noise, so the HR targets are clean), and kept in
//! one of a few cache slots for a number of draws before another photo replaces it. That
//! bounds memory and amortises the expensive decode of large photos over many crops.
//!
//! Photos flagged as held out in the manifest (`scripts/training-photos.manifest.tsv`:
//! tab-separated with a header, columns `file` and `holdout`) are never sampled. Photos
//! that cannot be decoded, or whose halved size is smaller than the crop (a crop would
//! have to enlarge them), are skipped with a warning.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use rand::Rng;

use super::degrade::{degrade, DegradationConfig};
use crate::imageops::io::{decode_rgb, image_files, to_model_range};
use crate::imageops::resize::{resize_bicubic, resize_short_side};
use crate::imageops::Planar;

/// How crops and LR inputs are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleConfig {
    /// Upscaling factor: the LR crop is `hr_crop_px / scale`.
    pub scale: usize,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// Probability of resizing the (shrunk) photo's short side to the crop size before
    /// cropping, so the crop shows the whole short side.
    pub resize_short_side_prob: f64,
    /// Number of photos held in memory at once.
    pub cache_slots: usize,
    /// Crops drawn from a loaded photo (on average) before it is replaced.
    pub draws_per_load: usize,
    pub degradation: DegradationConfig,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            scale: 4,
            flip_prob: 0.5,
            resize_short_side_prob: 0.3,
            cache_slots: 8,
            draws_per_load: 32,
            degradation: DegradationConfig::default(),
        }
    }
}

struct Slot {
    image: Planar,
    draws_left: usize,
}

/// A folder of photos (searched recursively) to sample training pairs from.
pub struct PhotoDataset {
    root: PathBuf,
    files: Vec<PathBuf>,
    holdout: Vec<PathBuf>,
    cfg: SampleConfig,
    slots: Vec<Option<Slot>>,
    /// Photos found undecodable and dropped, shared with [`fresh_copy`](Self::fresh_copy)
    /// copies so that each is reported once (it does not affect what a copy samples).
    skipped: Arc<Mutex<HashSet<PathBuf>>>,
}

impl PhotoDataset {
    /// Lists the photos under `dir` (every format upscaling reads, hidden entries skipped, sorted).
    /// If `manifest` is given, the files it flags as held out (paths relative to `dir`)
    /// are excluded from training and reported by [`holdout_files`](Self::holdout_files);
    /// a held-out name that matches no photo is an error, since a misspelt one would let
    /// the photo it meant into training.
    pub fn open(dir: impl AsRef<Path>, manifest: Option<&Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        if !root.is_dir() {
            let why = if root.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            bail!("photo folder {} {why}", root.display());
        }
        let held: HashSet<PathBuf> = match manifest {
            Some(m) => read_manifest_holdout(m)?
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            None => HashSet::new(),
        };
        let all = image_files(&root, true)?;
        let (holdout, files): (Vec<PathBuf>, Vec<PathBuf>) = all.into_iter().partition(|p| {
            p.strip_prefix(&root)
                .map(|r| held.contains(r))
                .unwrap_or(false)
        });
        let found: HashSet<&Path> = holdout
            .iter()
            .filter_map(|p| p.strip_prefix(&root).ok())
            .collect();
        let mut missing: Vec<String> = held
            .iter()
            .filter(|h| !found.contains(h.as_path()))
            .map(|h| h.display().to_string())
            .collect();
        if let (Some(m), false) = (manifest, missing.is_empty()) {
            missing.sort();
            bail!(
                "manifest {} holds out photos that are not under {}: {}",
                m.display(),
                root.display(),
                missing.join(", ")
            );
        }
        ensure!(
            !files.is_empty(),
            "no training photos under {}",
            root.display()
        );
        let cfg = SampleConfig::default();
        let slots = (0..cfg.cache_slots).map(|_| None).collect();
        Ok(Self {
            root,
            files,
            holdout,
            cfg,
            slots,
            skipped: Default::default(),
        })
    }

    /// Replaces the sampling configuration (and empties the cache).
    pub fn with_config(mut self, cfg: SampleConfig) -> Self {
        assert!(cfg.cache_slots >= 1 && cfg.draws_per_load >= 1 && cfg.scale >= 1);
        self.slots = (0..cfg.cache_slots).map(|_| None).collect();
        self.cfg = cfg;
        self
    }

    /// The same photos and sampling configuration with an empty cache (for a data worker).
    pub fn fresh_copy(&self) -> Self {
        Self {
            root: self.root.clone(),
            files: self.files.clone(),
            holdout: self.holdout.clone(),
            cfg: self.cfg.clone(),
            slots: (0..self.cfg.cache_slots).map(|_| None).collect(),
            skipped: Arc::clone(&self.skipped),
        }
    }

    pub fn config(&self) -> &SampleConfig {
        &self.cfg
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Training photos (held-out ones excluded, and undecodable ones once found).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Held-out photos found under the folder, for evaluation.
    pub fn holdout_files(&self) -> &[PathBuf] {
        &self.holdout
    }

    /// Decodes a random photo. One that cannot be decoded, or is smaller than a `crop_px`
    /// crop once halved (a crop would enlarge it), is dropped from the list with a warning
    /// (once for the dataset and its copies) and another is drawn; when none is left, the
    /// error is the last one's.
    fn load_some_photo(&mut self, rng: &mut impl Rng, crop_px: usize) -> Result<Planar> {
        loop {
            let idx = rng.gen_range(0..self.files.len());
            let path = &self.files[idx];
            let err = match load_training_photo(path) {
                Ok(image) if image.height.min(image.width) >= crop_px => return Ok(image),
                Ok(image) => anyhow::anyhow!(
                    "{}: {}×{} once halved, smaller than the {crop_px}-pixel crop",
                    path.display(),
                    image.width,
                    image.height
                ),
                Err(e) => e,
            };
            let path = self.files.remove(idx);
            if self.files.is_empty() {
                return Err(err.context(format!(
                    "no usable training photos under {}",
                    self.root.display()
                )));
            }
            if self
                .skipped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path)
            {
                tracing::warn!("skipping a training photo: {err:#}");
            }
        }
    }

    /// Draws one training pair: an `hr_crop_px`² HR crop and its `hr_crop_px / scale`²
    /// LR input, both in `[-1, 1]`.
    pub fn sample(&mut self, rng: &mut impl Rng, hr_crop_px: usize) -> Result<(Planar, Planar)> {
        let scale = self.cfg.scale;
        ensure!(
            hr_crop_px >= scale && hr_crop_px.is_multiple_of(scale),
            "crop size {hr_crop_px} must be a positive multiple of the scale {scale}"
        );
        let slot = rng.gen_range(0..self.slots.len());
        // A photo cached for a smaller crop is replaced too.
        let spent = |s: &Slot| s.draws_left == 0 || s.image.height.min(s.image.width) < hr_crop_px;
        if self.slots[slot].as_ref().is_none_or(spent) {
            let image = self.load_some_photo(rng, hr_crop_px)?;
            // Vary the photo's lifetime so slots do not all expire together.
            let draws_left = rng.gen_range(1..=2 * self.cfg.draws_per_load - 1);
            self.slots[slot] = Some(Slot { image, draws_left });
        }
        let entry = self.slots[slot].as_mut().expect("slot filled above");
        entry.draws_left -= 1;
        let hr01 = random_crop(&entry.image, hr_crop_px, &self.cfg, rng);
        let lr01 = degrade(&hr01, scale, &self.cfg.degradation, rng);
        Ok((to_model_range(hr01), to_model_range(lr01)))
    }
}

/// A `size`² crop in `[0, 1]` of an image at least `size` on its short side: optionally
/// the short side shrunk to `size` first, then a random window and a random horizontal
/// flip.
fn random_crop(img: &Planar, size: usize, cfg: &SampleConfig, rng: &mut impl Rng) -> Planar {
    let resized;
    let src = if rng.gen::<f64>() < cfg.resize_short_side_prob {
        resized = resize_short_side(img, size, true);
        &resized
    } else {
        img
    };
    let y0 = rng.gen_range(0..=src.height - size);
    let x0 = rng.gen_range(0..=src.width - size);
    let mut crop = src.crop_clamped(y0 as isize, x0 as isize, size, size);
    if rng.gen::<f64>() < cfg.flip_prob {
        for row in crop.data.chunks_exact_mut(size) {
            row.reverse();
        }
    }
    crop.map(|v| v.clamp(0.0, 1.0))
}

/// Paths (relative to the photo folder) that the manifest flags as held out.
pub fn read_manifest_holdout(manifest: &Path) -> Result<Vec<String>> {
    let text =
        fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    // Numbered as in the file, before blank and comment lines are passed over.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<&str> = lines
        .next()
        .context("empty manifest")?
        .1
        .split('\t')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(file_col), Some(hold_col)) = (col("file"), col("holdout")) else {
        bail!(
            "manifest {} needs 'file' and 'holdout' columns",
            manifest.display()
        );
    };
    let mut out = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        ensure!(
            cells.len() == header.len(),
            "manifest line {n}: expected {} columns",
            header.len()
        );
        match cells[hold_col] {
            "1" | "true" | "yes" => out.push(cells[file_col].to_string()),
            "0" | "false" | "no" | "" => {}
            v => bail!("manifest line {n}: holdout value {v:?}"),
        }
    }
    Ok(out)
}

/// A photo as training uses it: decoded and shrunk by half (antialiased bicubic).
pub fn load_training_photo(path: &Path) -> Result<Planar> {
    let img = decode_rgb(path)?;
    let (h, w) = ((img.height / 2).max(1), (img.width / 2).max(1));
    Ok(resize_bicubic(&img, h, w, true).map(|v| v.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn write_photo(path: &Path, w: u32, h: u32, seed: u32) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x * 3 + seed * 40) % 256) as u8,
                ((y * 5 + x) % 256) as u8,
                (((x ^ y) + seed * 17) % 256) as u8,
            ])
        });
        img.save(path).unwrap();
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        fs::create_dir_all(root.join("pkg-a")).unwrap();
        fs::create_dir_all(root.join("pkg-b/sub")).unwrap();
        fs::create_dir_all(root.join(".hidden")).unwrap();
        write_photo(&root.join("pkg-a/one.png"), 200, 150, 1);
        write_photo(&root.join("pkg-a/two.jpg"), 160, 240, 2);
        write_photo(&root.join("pkg-b/sub/three.JPG"), 300, 140, 3);
        write_photo(&root.join("pkg-b/held.png"), 180, 180, 4);
        write_photo(&root.join(".hidden/skip.png"), 100, 100, 5);
        fs::write(root.join("pkg-a/copyright"), "text").unwrap();
        let manifest = dir.path().join("manifest.tsv");
        fs::write(
            &manifest,
            "file\tpackage\tlicence\tsha256\tholdout\n\
             pkg-a/one.png\tpkg-a\tCC0-1.0\tx\t0\n\
             pkg-b/held.png\tpkg-b\tCC0-1.0\tx\t1\n",
        )
        .unwrap();
        (dir, manifest)
    }

    #[test]
    fn lists_photos_and_excludes_holdout() {
        let (dir, manifest) = fixture();
        let root = dir.path().join("photos");
        let ds = PhotoDataset::open(&root, Some(&manifest)).unwrap();
        let rel: Vec<String> = ds
            .files()
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            rel,
            vec!["pkg-a/one.png", "pkg-a/two.jpg", "pkg-b/sub/three.JPG"]
        );
        assert_eq!(ds.holdout_files(), &[root.join("pkg-b/held.png")]);
        let all = PhotoDataset::open(&root, None).unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.holdout_files().is_empty());
    }

    #[test]
    fn training_photo_is_half_size() {
        let (dir, _) = fixture();
        let p = load_training_photo(&dir.path().join("photos/pkg-a/one.png")).unwrap();
        assert_eq!((p.channels, p.height, p.width), (3, 75, 100));
        let raw = decode_rgb(&dir.path().join("photos/pkg-a/one.png")).unwrap();
        assert_eq!(raw.at(0, 0, 1), 43.0 / 255.0);
    }

    #[test]
    fn samples_have_the_right_shapes_range_and_are_deterministic() {
        let (dir, manifest) = fixture();
        let root = dir.path().join("photos");
        let cfg = SampleConfig {
            cache_slots: 2,
            draws_per_load: 3,
            ..Default::default()
        };
        let mut ds = PhotoDataset::open(&root, Some(&manifest))
            .unwrap()
            .with_config(cfg.clone());
        let mut ds2 = PhotoDataset::open(&root, Some(&manifest))
            .unwrap()
            .with_config(cfg);
        let mut rng = StdRng::seed_from_u64(9);
        let mut rng2 = StdRng::seed_from_u64(9);
        for _ in 0..10 {
            // Both fit inside every half-size photo.
            for crop in [32, 64] {
                let (hr, lr) = ds.sample(&mut rng, crop).unwrap();
                assert_eq!((hr.channels, hr.height, hr.width), (3, crop, crop));
                assert_eq!((lr.channels, lr.height, lr.width), (3, crop / 4, crop / 4));
                assert!(hr
                    .data
                    .iter()
                    .chain(&lr.data)
                    .all(|v| (-1.0..=1.0).contains(v)));
                let (hr2, lr2) = ds2.sample(&mut rng2, crop).unwrap();
                assert_eq!((hr, lr), (hr2, lr2));
            }
        }
        assert!(ds.sample(&mut rng, 30).is_err());
    }

    #[test]
    fn undecodable_photos_are_skipped_until_none_is_left() {
        let (dir, manifest) = fixture();
        let root = dir.path().join("photos");
        fs::write(root.join("pkg-a/broken.jpg"), b"not a jpeg").unwrap();
        // A photo loaded for every draw.
        let cfg = SampleConfig {
            cache_slots: 1,
            draws_per_load: 1,
            ..Default::default()
        };
        let mut ds = PhotoDataset::open(&root, Some(&manifest))
            .unwrap()
            .with_config(cfg);
        assert_eq!(ds.len(), 4);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..40 {
            ds.sample(&mut rng, 64).unwrap();
        }
        assert_eq!(ds.len(), 3, "the broken photo is dropped once drawn");
        assert!(!ds.files().iter().any(|p| p.ends_with("broken.jpg")));

        let bad = tempfile::tempdir().unwrap();
        fs::write(bad.path().join("a.jpg"), b"junk").unwrap();
        fs::write(bad.path().join("b.png"), b"junk").unwrap();
        let mut ds = PhotoDataset::open(bad.path(), None).unwrap();
        let e = ds.sample(&mut rng, 64).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with("no usable training photos under"), "{msg}");
        // The cause is kept: which file, and why.
        assert!(msg.contains("a.jpg: ") || msg.contains("b.png: "), "{msg}");
        assert!(msg.contains("unrecognised contents"), "{msg}");
    }

    /// A photo smaller than the crop once halved is skipped with the others' warnings
    /// rather than enlarged; with none left, the error names one.
    #[test]
    fn photos_smaller_than_the_crop_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_photo(&dir.path().join("big.png"), 200, 160, 1);
        write_photo(&dir.path().join("small.png"), 100, 300, 2);
        let cfg = SampleConfig {
            cache_slots: 1,
            draws_per_load: 1,
            ..Default::default()
        };
        let mut ds = PhotoDataset::open(dir.path(), None)
            .unwrap()
            .with_config(cfg);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            ds.sample(&mut rng, 64).unwrap();
        }
        assert!(!ds.files().iter().any(|p| p.ends_with("small.png")));
        let e = format!("{:#}", ds.sample(&mut rng, 96).unwrap_err());
        assert!(e.starts_with("no usable training photos under"), "{e}");
        assert!(
            e.contains("big.png: 100×80 once halved, smaller than the 96-pixel crop"),
            "{e}"
        );
    }

    /// A misspelt held-out name would let the photo it meant into training.
    #[test]
    fn holdout_names_matching_no_photo_are_refused() {
        let (dir, manifest) = fixture();
        let root = dir.path().join("photos");
        let text = fs::read_to_string(&manifest).unwrap();
        fs::write(
            &manifest,
            text + "pkg-b/Held.png\tpkg-b\tCC0-1.0\tx\t1\nnone.jpg\tpkg-b\tCC0-1.0\tx\ttrue\n",
        )
        .unwrap();
        let e = PhotoDataset::open(&root, Some(&manifest))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not under") && e.ends_with(": none.jpg, pkg-b/Held.png"),
            "{e}"
        );
        let photo = root.join("pkg-a/one.png");
        let e = PhotoDataset::open(&photo, None).err().unwrap().to_string();
        assert!(e.ends_with("one.png is not a folder"), "{e}");
    }

    #[test]
    fn flip_reverses_rows() {
        let img = Planar::new(
            3,
            2,
            2,
            vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.5],
        );
        let cfg = SampleConfig {
            flip_prob: 1.0,
            resize_short_side_prob: 0.0,
            ..Default::default()
        };
        let out = random_crop(&img, 2, &cfg, &mut StdRng::seed_from_u64(0));
        assert_eq!(
            out.data,
            vec![0.1, 0.0, 0.3, 0.2, 0.5, 0.4, 0.7, 0.6, 0.9, 0.8, 0.5, 1.0]
        );
    }

    /// Smoke test on the fetched photos (`scripts/fetch-training-photos.sh`); prints
    /// timings and, with `INFDIT_DUMP_SAMPLES=<dir>`, writes the pairs as PNGs.
    #[test]
    #[ignore = "needs data/photos"]
    fn real_photos_smoke() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest = base.join("scripts/training-photos.manifest.tsv");
        let mut ds = PhotoDataset::open(base.join("data/photos"), Some(&manifest)).unwrap();
        println!(
            "{} training photos, {} held out",
            ds.len(),
            ds.holdout_files().len()
        );
        assert_eq!(
            ds.holdout_files().len(),
            read_manifest_holdout(&manifest).unwrap().len()
        );
        let dump = std::env::var_os("INFDIT_DUMP_SAMPLES").map(PathBuf::from);
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = std::time::Instant::now();
        for i in 0..24 {
            let t = std::time::Instant::now();
            let (hr, lr) = ds.sample(&mut rng, 512).unwrap();
            println!("sample {i}: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            if let Some(dir) = &dump {
                fs::create_dir_all(dir).unwrap();
                for (img, name) in [(&hr, "hr"), (&lr, "lr")] {
                    let (h, w) = (img.height, img.width);
                    let buf = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                        let px = |c| {
                            (((img.at(c, y as usize, x as usize) + 1.0) * 127.5)
                                .round()
                                .clamp(0.0, 255.0)) as u8
                        };
                        image::Rgb([px(0), px(1), px(2)])
                    });
                    buf.save(dir.join(format!("{i:02}_{name}.png"))).unwrap();
                }
            }
        }
        println!("total {:.2} s", t0.elapsed().as_secs_f64());
    }

    #[test]
    fn manifest_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.tsv");
        fs::write(&m, "holdout\tfile\n1\ta.jpg\n0\tb.jpg\n").unwrap();
        assert_eq!(read_manifest_holdout(&m).unwrap(), vec!["a.jpg"]);
        fs::write(&m, "file\tx\na.jpg\t1\n").unwrap();
        assert!(read_manifest_holdout(&m).is_err());
        // Errors name the line of the file, comments and blank lines included.
        fs::write(&m, "# photos\nfile\tholdout\n\na.jpg\t1\nb.jpg\tmaybe\n").unwrap();
        let e = read_manifest_holdout(&m).unwrap_err().to_string();
        assert!(e.contains("line 5"), "{e}");
    }
}
