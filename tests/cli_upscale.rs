//! `infdit upscale` end to end, through the binary, as users and scripts run it.
//!
//! The model is tiny and random (one layer, 8×8-token blocks) and samples with one Euler
//! step from a small σ_max, so its output is the bicubic upscale of the input plus a little
//! seeded noise: content checks (orientation, alpha, crop alignment) can compare against
//! the input while every run still goes through the real model, sampler and block engine.

use image::{ColorType, DynamicImage, GrayImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba};
use infdit::config::ModelConfig;
use infdit::imageops::density::DensityUnit;
use infdit::imageops::io::{decode_file, DecodeLimits};
use infdit::imageops::resize::resize_bicubic;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/exif.rs"]
mod exif;
use exif::with_exif_orientation;

/// Writes a tiny random model directory (`config.json` + `weights.safetensors`) into `dir`.
fn tiny_model(dir: &Path) -> PathBuf {
    write_model(&dir.join("model"), &tiny_config(), 11)
}

fn write_model(model: &Path, cfg: &ModelConfig, seed: u64) -> PathBuf {
    std::fs::create_dir_all(model).unwrap();
    std::fs::write(
        model.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    let weights = infdit::checkpoint::random_weights(cfg, seed).unwrap();
    infdit::fsutil::save_safetensors(&model.join("weights.safetensors"), &weights).unwrap();
    model.to_path_buf()
}

fn tiny_config() -> ModelConfig {
    ModelConfig::minimal()
}

/// Runs `infdit upscale` with the tiny model and a one-step sampler; `--sigma-max 0.01`
/// unless the caller passes its own.
fn upscale(model: &Path, args: &[&str]) -> Output {
    upscale_command(model, args).output().unwrap()
}

/// The command [`upscale`] runs.
fn upscale_command(model: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infdit"));
    // A log filter from the environment would add lines the tests count.
    cmd.env_remove("INFDIT_LOG")
        .arg("upscale")
        .args(args)
        .arg("--model")
        .arg(model)
        .args(["--steps", "1", "--sampler", "euler"]);
    if !args.contains(&"--sigma-max") {
        cmd.args(["--sigma-max", "0.01"]);
    }
    cmd
}

/// Like [`upscale`], and the run must succeed.
fn upscale_ok(model: &Path, args: &[&str]) -> Output {
    let out = upscale(model, args);
    assert!(
        out.status.success(),
        "infdit upscale {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    out
}

/// Like [`upscale`], and the run must fail; its standard error.
fn upscale_fails(model: &Path, args: &[&str]) -> String {
    let out = upscale(model, args);
    assert!(!out.status.success(), "infdit upscale {args:?} succeeded");
    stderr(&out)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A colourful RGB test image: red ramps left to right, green top to bottom.
fn gradient(w: u32, h: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        let r = (255 * x / (w - 1).max(1)) as u8;
        let g = (255 * y / (h - 1).max(1)) as u8;
        Rgb([r, g, 96])
    })
}

fn save(img: impl Into<DynamicImage>, path: &Path, format: ImageFormat) {
    img.into().save_with_format(path, format).unwrap();
}

/// Saves a `w`×`h` gradient under each name in `dir`.
fn save_gradients(dir: &Path, files: &[(&str, u32, u32, ImageFormat)]) {
    for &(name, w, h, format) in files {
        save(gradient(w, h), &dir.join(name), format);
    }
}

/// Format detected from the contents, decoded image.
fn read(path: &Path) -> (ImageFormat, DynamicImage) {
    let reader = image::ImageReader::open(path)
        .unwrap()
        .with_guessed_format()
        .unwrap();
    let format = reader.format().unwrap();
    (format, reader.decode().unwrap())
}

fn dims(path: &Path) -> (u32, u32) {
    let (_, img) = read(path);
    (img.width(), img.height())
}

/// Mean absolute difference (in [0, 1] units, over RGB) between the output and the bicubic
/// upscale of the (upright) input: small when the output is aligned with the input.
fn distance_to_bicubic(input: &Path, output: &Path) -> f32 {
    let limits = DecodeLimits::default();
    let lr = decode_file(input, &limits).unwrap().rgb;
    let hr = decode_file(output, &limits).unwrap().rgb;
    let want = resize_bicubic(&lr, hr.height, hr.width, true);
    let sum: f32 = want
        .data
        .iter()
        .zip(&hr.data)
        .map(|(a, b)| (a.clamp(0.0, 1.0) - b).abs())
        .sum();
    sum / hr.data.len() as f32
}

/// Names of the entries in `dir`, sorted (hidden ones included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The H.273 primaries and transfer function a PNG's cICP chunk gives, if it has one.
fn png_cicp(path: &Path) -> Option<(u8, u8)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let info = decoder.read_info().unwrap();
    info.info()
        .coding_independent_code_points
        .map(|c| (c.color_primaries, c.transfer_function))
}

/// Checks the PNG each input file in `dir` was upscaled to (`STEM_x4.png`): its colour
/// type and size, and that it lies within `tolerance` of the input's bicubic upscale.
fn assert_png_outputs(dir: &Path, expected: &[(&str, ColorType, (u32, u32))], tolerance: f32) {
    for &(input, colour, size) in expected {
        let stem = Path::new(input).file_stem().unwrap().to_str().unwrap();
        let out = dir.join(format!("{stem}_x4.png"));
        let (format, img) = read(&out);
        assert_eq!((format, img.color()), (ImageFormat::Png, colour), "{input}");
        assert_eq!((img.width(), img.height()), size, "{input}");
        let d = distance_to_bicubic(&dir.join(input), &out);
        assert!(d < tolerance, "{input} is far from its input: {d}");
    }
}

/// Upscales every single-byte change (`^ 0x5a`) and every truncation of `data`, as files
/// `NAME.ext` in one folder: each must be an error line or an image, never a crash, and
/// every truncation an error.
fn damage_every_byte(data: &[u8], ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    for i in 0..data.len() {
        let mut bad = data.to_vec();
        bad[i] ^= 0x5a;
        std::fs::write(inputs.join(format!("flip{i:05}.{ext}")), bad).unwrap();
        std::fs::write(inputs.join(format!("cut{i:05}.{ext}")), &data[..i]).unwrap();
    }
    let out = upscale(
        &model,
        &[s(&inputs), "-o", s(&dir.path().join("out")), "-q"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let failed = err.lines().filter(|l| l.starts_with("error: ")).count();
    let written = listing(&dir.path().join("out")).len();
    assert_eq!(failed + written, 2 * data.len(), "{err}");
    assert!(failed >= data.len(), "every cut file fails: {err}");
}

/// What a directory scan or a pattern takes: not hidden files, not a linked directory a
/// second time (a link back up the tree must not make `-r` endless), and not the results
/// of an earlier run, so that repeating a command does not upscale its outputs again.
#[test]
fn scans_pass_over_hidden_files_link_loops_and_earlier_results() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let d = dir.path().join("d");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    save_gradients(
        &d,
        &[
            ("a.png", 8, 6, ImageFormat::Png),
            ("._a.png", 8, 6, ImageFormat::Png),
            ("sub/b.png", 8, 6, ImageFormat::Png),
        ],
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(".", d.join("self")).unwrap();
    }
    let out = dir.path().join("out");
    upscale_ok(&model, &[s(&d), "-r", "-o", s(&out)]);
    assert_eq!(listing(&out), ["a_x4.png", "sub"]);
    assert_eq!(listing(&out.join("sub")), ["b_x4.png"]);

    // An output directory inside the scanned tree is not scanned on the next run.
    let inner = d.join("sub/out");
    upscale_ok(&model, &[s(&d), "-r", "-o", s(&inner)]);
    upscale_ok(&model, &[s(&d), "-r", "-o", s(&inner)]);
    assert_eq!(listing(&inner), ["a_x4.png", "sub"]);
    assert_eq!(listing(&inner.join("sub")), ["b_x4.png"]);
    std::fs::remove_dir_all(&inner).unwrap();

    // Beside the inputs, again with other sizes, then by patterns (`**` through the link
    // loops too): earlier results of any size are passed over, never upscaled again.
    upscale_ok(&model, &[s(&d)]);
    let again = upscale_ok(&model, &[s(&d), "--scale", "2"]);
    assert!(
        stderr(&again).contains("passing over 1 earlier result"),
        "{}",
        stderr(&again)
    );
    upscale_ok(&model, &[&format!("{}/*.png", s(&d)), "--width", "20"]);
    upscale_ok(&model, &[&format!("{}/**/*.png", s(&d)), "--scale", "3"]);
    let pngs = |dir: &Path| -> Vec<String> {
        listing(dir)
            .into_iter()
            .filter(|n| n.ends_with(".png"))
            .collect()
    };
    assert_eq!(
        pngs(&d),
        [
            "._a.png",
            "a.png",
            "a_w20.png",
            "a_x2.png",
            "a_x3.png",
            "a_x4.png"
        ]
    );
    assert_eq!(pngs(&d.join("sub")), ["b.png", "b_x3.png"]);
    // Not a regular file (a named pipe would block the run): not an input of a scan.
    #[cfg(unix)]
    {
        let fifo = d.join("fifo.png");
        let made = Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            upscale_ok(&model, &[s(&d), "--scale", "2", "--overwrite"]);
            std::fs::remove_file(&fifo).unwrap();
        }
    }
    // An output that would replace its input is refused.
    let a = d.join("a.png");
    let err = upscale_fails(&model, &[s(&a), "-o", s(&a), "--overwrite"]);
    assert!(err.contains("would replace its own input"), "{err}");
    // Named one by one, an earlier result is upscaled like any file, and the same file
    // under two spellings only once.
    let named = d.join("a_x4.png");
    let twice = format!("{}/../d/a_x4.png", s(&d));
    upscale_ok(&model, &[s(&named), &twice, "--scale", "2"]);
    assert!(d.join("a_x4_x2.png").exists());
}

/// Patterns match as a shell's do: case matters, `*` passes over hidden names unless the
/// pattern spells the dot, `//` and `/./` mean what they do in a path, `**` goes down any
/// number of levels; earlier results are passed over even when a link of their chain is
/// gone.
#[test]
fn patterns_match_as_a_shell_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let d = dir.path().join("d");
    std::fs::create_dir_all(d.join("sub/deep")).unwrap();
    let names = [
        "a.png",
        "UP.PNG",
        ".h.png",
        "sub/b.png",
        "sub/deep/c.png",
        "a_x4_x2.png",
        "a_w20_x4.png",
    ];
    for name in names {
        save(gradient(8, 6), &d.join(name), ImageFormat::Png);
    }
    // Each pattern's results go to a fresh directory, which is then listed.
    let mut k = 0;
    let mut run = |pattern: &str, recursive: bool| {
        k += 1;
        let out = dir.path().join(format!("out{k}"));
        let arg = format!("{}/{pattern}", s(&d));
        let mut args = vec![&arg[..], "--scale", "3", "-o", s(&out)];
        if recursive {
            args.push("-r");
        }
        upscale_ok(&model, &args);
        out
    };
    assert_eq!(listing(&run("*.png", false)), ["a_x3.png"]);
    assert_eq!(listing(&run("*.PNG", false)), ["UP_x3.PNG"]);
    assert_eq!(listing(&run(".*.png", false)), [".h_x3.png"]);
    assert_eq!(listing(&run("sub/./*.png", false)), ["b_x3.png"]);
    assert_eq!(
        listing(&run("**/*.png", false)),
        ["a_x3.png", "b_x3.png", "c_x3.png"]
    );
    // A directory the pattern matches is read as if named, as after the shell's expansion.
    assert_eq!(
        listing(&run("*", false)),
        ["UP_x3.PNG", "a_x3.png", "b_x3.png"]
    );
    // With -r, matched directories are descended and the tree is kept under -o.
    let out = run("s*", true);
    assert_eq!(listing(&out), ["sub"]);
    assert_eq!(listing(&out.join("sub")), ["b_x3.png", "deep"]);
    assert_eq!(listing(&out.join("sub/deep")), ["c_x3.png"]);
    let out = run("**/*.png", true);
    assert_eq!(listing(&out), ["a_x3.png", "sub"]);
    assert_eq!(listing(&out.join("sub/deep")), ["c_x3.png"]);
}

/// A link up the tree does not move a pattern's results under the link's path, and a
/// directory that is also the output directory is still read.
#[cfg(unix)]
#[test]
fn pattern_links_and_output_directory_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = dir.path().join("t");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::create_dir_all(t.join("sub2")).unwrap();
    std::os::unix::fs::symlink("..", t.join("sub/up")).unwrap();
    save(gradient(8, 6), &t.join("sub2/f.png"), ImageFormat::Png);
    let out = dir.path().join("out");
    let pattern = format!("{}/*", s(&t));
    upscale_ok(&model, &[&pattern, "-r", "-o", s(&out)]);
    assert_eq!(listing(&out), ["sub2"]);
    assert_eq!(listing(&out.join("sub2")), ["f_x4.png"]);

    let same = t.join("sub2");
    let o = upscale_ok(&model, &[s(&same), "-o", s(&same)]);
    assert_eq!(listing(&same), ["f.png", "f_x4.png"], "{}", stderr(&o));
}

/// JPEG XL (decoded by jxl-oxide, not the image crate) is found in directories, keeps its
/// 16 bits and alpha, and is written as PNG.
#[test]
fn jpeg_xl_in_png_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    for name in ["rgba16.jxl", "lossy.jxl"] {
        std::fs::copy(fixtures.join(name), inputs.join(name.to_uppercase())).unwrap();
    }
    upscale_ok(&model, &[s(&inputs)]);
    assert_eq!(
        listing(&inputs),
        ["LOSSY.JXL", "LOSSY_x4.png", "RGBA16.JXL", "RGBA16_x4.png"]
    );
    assert_png_outputs(
        &inputs,
        &[
            ("LOSSY.JXL", ColorType::Rgb8, (92, 68)),
            ("RGBA16.JXL", ColorType::Rgba16, (92, 68)),
        ],
        0.015,
    );
}

/// AVIF (decoded by rav1d, not the image crate) is found in directories, is shown upright
/// by its `irot`, keeps its 16 bits, alpha and HDR colour space, and is written as PNG.
#[test]
fn avif_in_png_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/avif");
    for name in ["rgba8_444", "irot1", "bt2020_pq"] {
        let file = format!("{name}.avif");
        std::fs::copy(fixtures.join(&file), inputs.join(file)).unwrap();
    }
    upscale_ok(&model, &[s(&inputs)]);
    assert_png_outputs(
        &inputs,
        &[
            ("rgba8_444.avif", ColorType::Rgba8, (148, 92)),
            ("irot1.avif", ColorType::Rgb8, (92, 148)),
            ("bt2020_pq.avif", ColorType::Rgb16, (148, 92)),
        ],
        0.02,
    );
    // The PQ colour space is carried as cICP, so viewers show the result as HDR.
    assert_eq!(png_cicp(&inputs.join("bt2020_pq_x4.png")), Some((9, 16)));
}

/// Damaged AVIF files are errors, never crashes, and cost only themselves: the decoder
/// (which aborts on some damaged data) runs in a child process. Every byte of the AV1 data
/// and of the container is changed in turn, and the file is cut at every length.
#[test]
fn damaged_avif_files_are_errors_not_crashes() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/avif");
    damage_every_byte(
        &std::fs::read(fixtures.join("rgb8_420.avif")).unwrap(),
        "avif",
    );
}

/// HEIC photos (as phones write them) are upscaled in a folder with the other photos,
/// turned upright by their rotation, with their alpha, and as PNG (16-bit for 10-bit
/// files, with the HDR colour space carried as cICP).
#[test]
fn heic_in_png_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/heic");
    for name in ["rgba8", "irot1", "nclx_pq"] {
        let file = format!("{name}.heic");
        std::fs::copy(fixtures.join(&file), inputs.join(file)).unwrap();
    }
    std::fs::copy(fixtures.join("grid.heic"), inputs.join("IMG_0001.HEIC")).unwrap();
    save(gradient(16, 12), &inputs.join("a.png"), ImageFormat::Png);
    upscale_ok(&model, &[s(&inputs)]);
    assert_png_outputs(
        &inputs,
        &[
            ("rgba8.heic", ColorType::Rgba8, (148, 92)),
            ("irot1.heic", ColorType::Rgb8, (92, 148)),
            ("nclx_pq.heic", ColorType::Rgb16, (148, 92)),
            ("IMG_0001.HEIC", ColorType::Rgb8, (400, 360)),
        ],
        0.02,
    );
    assert!(inputs.join("a_x4.png").is_file());
    assert_eq!(png_cicp(&inputs.join("nclx_pq_x4.png")), Some((9, 16)));
}

/// Damaged HEIC files are errors, never crashes, and cost only themselves. Every byte of
/// the file is changed in turn, and the file is cut at every length.
#[test]
fn damaged_heic_files_are_errors_not_crashes() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/heic");
    damage_every_byte(
        &std::fs::read(fixtures.join("rgb8_420.heic")).unwrap(),
        "heic",
    );
}

/// WebP output is lossy at `--quality` (close to the lossless result, smaller at a lower
/// quality) or, with `--lossless`, the very samples a PNG output gets (a lossless JPEG is
/// refused where named, and warned of where it follows the input). An output larger than
/// WebP stores is refused before any work.
#[test]
fn webp_output_is_lossy_at_the_quality_or_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let input = dir.path().join("in.png");
    save(gradient(24, 16), &input, ImageFormat::Png);
    let out = |name: &str| dir.path().join(name);
    upscale_ok(&model, &[s(&input), "-o", s(&out("ref.png"))]);
    upscale_ok(
        &model,
        &[s(&input), "-o", s(&out("exact.webp")), "--lossless"],
    );
    upscale_ok(&model, &[s(&input), "-o", s(&out("q95.webp"))]);
    upscale_ok(
        &model,
        &[s(&input), "-o", s(&out("q40.webp")), "--quality", "40"],
    );
    let pixels = |name: &str| read(&out(name)).1.to_rgb8();
    let reference = pixels("ref.png");
    assert_eq!(pixels("exact.webp"), reference);
    let mean_diff = |name: &str| {
        let img = pixels(name);
        let sum: f64 = img
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .sum();
        sum / img.as_raw().len() as f64
    };
    let (d95, d40) = (mean_diff("q95.webp"), mean_diff("q40.webp"));
    assert!(d95 < 2.0 && d40 > d95, "{d95} {d40}");
    let len = |name: &str| std::fs::metadata(out(name)).unwrap().len();
    assert!(len("q40.webp") < len("q95.webp"));
    let err = upscale_fails(&model, &[s(&input), "-o", s(&out("x.jpg")), "--lossless"]);
    assert!(err.contains("JPEG output is always lossy"), "{err}");
    // A JPEG output that follows a JPEG input is written lossy, with a warning.
    let jpeg = dir.path().join("photo.jpg");
    save(gradient(24, 16), &jpeg, ImageFormat::Jpeg);
    let done = upscale_ok(&model, &[s(&jpeg), "--lossless"]);
    assert!(
        stderr(&done).contains("--lossless applies to WebP"),
        "{}",
        stderr(&done)
    );
    assert!(dir.path().join("photo_x4.jpg").is_file());
    let wide = dir.path().join("wide.png");
    save(gradient(1100, 8), &wide, ImageFormat::Png);
    let err = upscale_fails(
        &model,
        &[s(&wide), "-o", s(&out("wide.webp")), "--width", "16400"],
    );
    assert!(
        err.contains("larger than WebP stores (16383 px a side)"),
        "{err}"
    );
    assert!(!out("wide.webp").exists());
}

/// `--depth` sets the bits per sample of PNG and TIFF outputs; JPEG and WebP stay 8-bit
/// (an error where the command names them, a warning where the input's format decides).
#[test]
fn depth_sets_the_output_bits_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let input = dir.path().join("in.png");
    save(gradient(24, 16), &input, ImageFormat::Png);
    let out = |name: &str| dir.path().join(name);
    let deep = |name: &str| {
        decode_file(&out(name), &DecodeLimits::default())
            .unwrap()
            .sixteen_bit
    };
    upscale_ok(&model, &[s(&input), "-o", s(&out("d8.png"))]);
    upscale_ok(
        &model,
        &[s(&input), "-o", s(&out("d16.png")), "--depth", "16"],
    );
    upscale_ok(
        &model,
        &[s(&input), "-o", s(&out("d16.tiff")), "--depth", "16"],
    );
    assert!(!deep("d8.png") && deep("d16.png") && deep("d16.tiff"));
    // The same image, in finer levels.
    let (coarse, fine) = (read(&out("d8.png")).1, read(&out("d16.png")).1);
    assert_eq!(fine.to_rgb8(), coarse.to_rgb8());
    upscale_ok(
        &model,
        &[
            s(&out("d16.png")),
            "-o",
            s(&out("back.png")),
            "--depth",
            "8",
            "--scale",
            "2",
        ],
    );
    assert!(!deep("back.png"));
    let err = upscale_fails(
        &model,
        &[s(&input), "-o", s(&out("x.jpg")), "--depth", "16"],
    );
    assert!(err.contains("JPEG output is always 8-bit"), "{err}");
    let jpeg = out("photo.jpg");
    save(gradient(24, 16), &jpeg, ImageFormat::Jpeg);
    let done = stderr(&upscale_ok(&model, &[s(&jpeg), "--depth", "16"]));
    assert!(
        done.contains("--depth 16 applies to PNG and TIFF"),
        "{done}"
    );
    assert!(out("photo_x4.jpg").is_file());
}

/// A colour-mapped TIFF (which the tiff crate reads only as indices) is upscaled in its
/// colours, or in gray where its map is gray, and written as TIFF again.
#[test]
fn palette_tiff_in_tiff_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    for name in ["palette4", "palette2_gray"] {
        std::fs::copy(
            fixtures.join(format!("{name}.tif")),
            dir.path().join(format!("{name}.tif")),
        )
        .unwrap();
    }
    upscale_ok(&model, &[s(&dir.path().join("palette*.tif"))]);
    for (name, colour) in [
        ("palette4", ColorType::Rgb8),
        ("palette2_gray", ColorType::L8),
    ] {
        let out = dir.path().join(format!("{name}_x4.tif"));
        let (format, img) = read(&out);
        assert_eq!((format, img.color()), (ImageFormat::Tiff, colour), "{name}");
        assert_eq!((img.width(), img.height()), (92, 68), "{name}");
        let d = distance_to_bicubic(&dir.path().join(format!("{name}.tif")), &out);
        assert!(d < 0.015, "{name} is far from its input: {d}");
    }
}

#[test]
fn every_input_format_in_and_every_output_format_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let img = gradient(20, 12);
    let sources = [
        ("a.png", ImageFormat::Png),
        ("b.jpg", ImageFormat::Jpeg),
        ("c.webp", ImageFormat::WebP),
        ("d.tiff", ImageFormat::Tiff),
        ("e.bmp", ImageFormat::Bmp),
        ("f.gif", ImageFormat::Gif),
        ("g.tga", ImageFormat::Tga),
        ("h.ppm", ImageFormat::Pnm),
        ("i.qoi", ImageFormat::Qoi),
        ("j.JPG", ImageFormat::Jpeg),
        ("k.tif", ImageFormat::Tiff),
        ("l.jfif", ImageFormat::Jpeg),
    ];
    for (name, format) in sources {
        save(img.clone(), &inputs.join(name), format);
    }

    // A directory in: each output keeps its input's format (BMP, GIF, TGA, PNM and QOI,
    // which are not written, become PNG), and its spelling of the extension (`.JPG`,
    // `.jfif`), and is
    // exactly 4× the input.
    let out = dir.path().join("out");
    upscale_ok(&model, &[s(&inputs), "-o", s(&out)]);
    let want = [
        ("a_x4.png", ImageFormat::Png),
        ("b_x4.jpg", ImageFormat::Jpeg),
        ("c_x4.webp", ImageFormat::WebP),
        ("d_x4.tiff", ImageFormat::Tiff),
        ("e_x4.png", ImageFormat::Png),
        ("f_x4.png", ImageFormat::Png),
        ("g_x4.png", ImageFormat::Png),
        ("h_x4.png", ImageFormat::Png),
        ("i_x4.png", ImageFormat::Png),
        ("j_x4.JPG", ImageFormat::Jpeg),
        ("k_x4.tif", ImageFormat::Tiff),
        ("l_x4.jfif", ImageFormat::Jpeg),
    ];
    assert_eq!(
        listing(&out),
        want.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>()
    );
    for ((input, _), (name, format)) in sources.iter().zip(want) {
        let path = out.join(name);
        let (got, decoded) = read(&path);
        assert_eq!(got, format, "{name}");
        assert_eq!((decoded.width(), decoded.height()), (80, 48), "{name}");
        // GIF's 256-colour palette costs the gradient a little.
        let tol = if name.starts_with('f') { 0.03 } else { 0.015 };
        let d = distance_to_bicubic(&inputs.join(input), &path);
        assert!(d < tol, "{name} is far from its input: {d}");
    }

    // The output format from `-o`'s extension.
    let src = inputs.join("a.png");
    for (ext, format) in [
        ("png", ImageFormat::Png),
        ("jpg", ImageFormat::Jpeg),
        ("jpeg", ImageFormat::Jpeg),
        ("webp", ImageFormat::WebP),
        ("tif", ImageFormat::Tiff),
        ("tiff", ImageFormat::Tiff),
    ] {
        let path = dir.path().join(format!("named.{ext}"));
        upscale_ok(&model, &[s(&src), "-o", s(&path)]);
        let (got, decoded) = read(&path);
        assert_eq!(got, format, "-o named.{ext}");
        assert_eq!((decoded.width(), decoded.height()), (80, 48));
    }

    // The output format from `--format`, into a directory and beside the input.
    // One input and an `-o` that does not exist yet: a trailing slash makes it a directory.
    let webp_dir = dir.path().join("webp");
    let webp_arg = format!("{}/", s(&webp_dir));
    upscale_ok(&model, &[s(&src), "-o", &webp_arg, "--format", "webp"]);
    assert_eq!(listing(&webp_dir), ["a_x4.webp"]);
    assert_eq!(read(&webp_dir.join("a_x4.webp")).0, ImageFormat::WebP);
    for (format, ext, want) in [
        ("tiff", "tiff", ImageFormat::Tiff),
        ("jpeg", "jpg", ImageFormat::Jpeg),
        ("png", "png", ImageFormat::Png),
    ] {
        let src = inputs.join("c.webp");
        upscale_ok(&model, &[s(&src), "--format", format]);
        let path = inputs.join(format!("c_x4.{ext}"));
        let (got, decoded) = read(&path);
        assert_eq!(got, want, "--format {format}");
        assert_eq!((decoded.width(), decoded.height()), (80, 48));
    }
}

/// Upscales `src` (beside itself) with each case's flags: the output gets the name suffix
/// and size given and stays within `tol` of the input's bicubic upscale.
fn assert_sizes(model: &Path, src: &Path, cases: &[(&str, &str, (u32, u32))], tol: f32) {
    let stem = src.file_stem().unwrap().to_str().unwrap();
    for &(flags, suffix, size) in cases {
        let mut args = vec![s(src)];
        args.extend(flags.split_whitespace());
        upscale_ok(model, &args);
        let path = src.with_file_name(format!("{stem}_{suffix}.png"));
        assert_eq!(dims(&path), size, "{flags}");
        let d = distance_to_bicubic(src, &path);
        assert!(d < tol, "{flags}: output far from its input: {d}");
    }
}

#[test]
fn scales_widths_and_heights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    assert_sizes(
        &model,
        &src,
        &[
            ("--scale 2", "x2", (40, 24)),
            ("--scale 8", "x8", (160, 96)),
            ("--scale 16", "x16", (320, 192)),
            ("--scale 3", "x3", (60, 36)),
            ("--scale 2.5", "x2.5", (50, 30)),
            ("--width 50", "w50", (50, 30)),
            ("--height 100", "h100", (167, 100)),
            ("--width 100 --height 30", "100x30", (50, 30)),
        ],
        0.015,
    );
    for (flags, why) in [
        ("--scale 1", "scale 1 is not above 1"),
        ("--scale 17", "scale 17 is not above 1 and at most 16"),
        ("--width 20", "20×12 does not enlarge the 20×12 input"),
        ("--height 400", "is more than 16× the 20×12 input"),
        ("--scale 3 --width 50", "cannot be used with"),
        ("--width 0", "0 is not in 1.."),
    ] {
        let mut args = vec![s(&src)];
        args.extend(flags.split_whitespace());
        let err = upscale_fails(&model, &args);
        assert!(err.contains(why), "{flags}: {err}");
    }
}

/// A model of another geometry (×2, 2-px patches, 16-px blocks) upscales odd sizes exactly
/// and chains its ×2 passes for ×4 and ×8.
#[test]
fn a_two_times_model_chains_its_passes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        patch_size: 2,
        image_block_size_px: 16,
        sr_scale: 2,
        lr_patch_size: 2,
        ..tiny_config()
    };
    let model = write_model(&dir.path().join("x2"), &cfg, 5);
    let src = dir.path().join("a.png");
    save(gradient(13, 7), &src, ImageFormat::Png);
    assert_sizes(
        &model,
        &src,
        &[
            ("--scale 2", "x2", (26, 14)),
            ("--scale 4", "x4", (52, 28)),
            ("--scale 8", "x8", (104, 56)),
            ("--width 39", "w39", (39, 21)),
        ],
        0.03,
    );
}

#[test]
fn sixteen_bit_inputs_give_sixteen_bit_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(20, 12, |x, y| {
        Rgb([(x * 3000) as u16, (y * 5000) as u16, 40000])
    });
    for (name, format) in [
        ("deep.png", ImageFormat::Png),
        ("deep.tiff", ImageFormat::Tiff),
    ] {
        let src = dir.path().join(name);
        save(img.clone(), &src, format);
        let out = dir.path().join(format!("out_{name}"));
        upscale_ok(&model, &[s(&src), "-o", s(&out)]);
        let (got, decoded) = read(&out);
        assert_eq!(got, format);
        assert_eq!(decoded.color(), ColorType::Rgb16, "{name}");
        assert_eq!((decoded.width(), decoded.height()), (80, 48));
        // The extra bits carry information: not all samples are 8-bit levels (k·257).
        let samples = decoded.into_rgb16().into_raw();
        let fine = samples.iter().filter(|&&v| v % 257 != 0).count();
        assert!(
            fine > samples.len() / 2,
            "{name}: {fine} of {}",
            samples.len()
        );
    }
    // A format without 16-bit samples falls back to 8 bits.
    let out = dir.path().join("deep.jpg");
    upscale_ok(&model, &[s(&dir.path().join("deep.png")), "-o", s(&out)]);
    assert_eq!(read(&out).1.color(), ColorType::Rgb8);
}

#[test]
fn alpha_is_kept_and_upscaled() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Left half fully transparent, right half opaque.
    let img: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(20, 12, |x, y| {
        let a = if x < 10 { 0 } else { 255 };
        Rgba([(x * 12) as u8, (y * 20) as u8, 50, a])
    });
    let src = dir.path().join("rgba.png");
    save(img, &src, ImageFormat::Png);
    for (ext, color) in [
        ("png", ColorType::Rgba8),
        ("webp", ColorType::Rgba8),
        ("tiff", ColorType::Rgba8),
    ] {
        let out = dir.path().join(format!("out.{ext}"));
        upscale_ok(&model, &[s(&src), "-o", s(&out)]);
        let (_, decoded) = read(&out);
        assert_eq!(decoded.color(), color, "{ext}");
        let rgba = decoded.into_rgba8();
        assert_eq!(rgba.dimensions(), (80, 48));
        // Bicubic reaches 2 LR pixels (8 HR pixels) across the edge at x = 40.
        for (x, y, p) in rgba.enumerate_pixels() {
            if x < 32 {
                assert_eq!(p[3], 0, "{ext}: alpha at ({x}, {y})");
            } else if x >= 48 {
                assert_eq!(p[3], 255, "{ext}: alpha at ({x}, {y})");
            }
        }
        // The transition is monotone through the edge.
        let row: Vec<u8> = (32..48).map(|x| rgba.get_pixel(x, 20)[3]).collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{ext}: {row:?}");
    }
    // JPEG cannot store alpha; the colour is still written.
    let out = dir.path().join("out.jpg");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    assert_eq!(read(&out).1.color(), ColorType::Rgb8);

    // White beside transparent black: the edge's half-transparent pixels stay white
    // rather than taking on the hidden black (a dark fringe).
    let img: ImageBuffer<Rgba<u8>, Vec<u8>> =
        ImageBuffer::from_fn(
            20,
            12,
            |x, _| if x < 10 { Rgba([0; 4]) } else { Rgba([255; 4]) },
        );
    save(img, &src, ImageFormat::Png);
    let out = dir.path().join("fringe.png");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    let rgba = read(&out).1.into_rgba8();
    for x in 32..48 {
        let p = rgba.get_pixel(x, 20);
        assert!(p[3] == 0 || p[0] >= 240, "fringe at x = {x}: {p:?}");
    }
    // JPEG keeps no alpha: the image is written as seen over white, whatever colour the
    // file hides under its transparent pixels.
    let img: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(20, 12, |x, _| {
        if x < 10 {
            Rgba([255, 0, 255, 0])
        } else {
            Rgba([200, 120, 40, 255])
        }
    });
    save(img, &src, ImageFormat::Png);
    let out = dir.path().join("flat.jpg");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    let rgb = read(&out).1.into_rgb8();
    let near =
        |p: &image::Rgb<u8>, want: [u8; 3]| p.0.iter().zip(want).all(|(&a, b)| a.abs_diff(b) <= 12);
    assert!(
        near(rgb.get_pixel(4, 20), [255, 255, 255]),
        "{:?}",
        rgb.get_pixel(4, 20)
    );
    assert!(
        near(rgb.get_pixel(76, 20), [200, 120, 40]),
        "{:?}",
        rgb.get_pixel(76, 20)
    );
}

#[test]
fn grayscale_png_stays_grayscale() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let gray = GrayImage::from_fn(20, 12, |x, y| image::Luma([(x * 10 + y * 5) as u8]));
    let gray16: ImageBuffer<image::Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(20, 12, |x, y| image::Luma([(x * 2500 + y * 1000) as u16]));
    let gray_alpha: ImageBuffer<image::LumaA<u8>, Vec<u8>> =
        ImageBuffer::from_fn(20, 12, |x, _| image::LumaA([(x * 10) as u8, 200]));
    // GIF and BMP store gray through a palette, which decodes as RGB.
    let cases: [(&str, DynamicImage, ImageFormat, ColorType); 5] = [
        (
            "l8.png",
            gray.clone().into(),
            ImageFormat::Png,
            ColorType::L8,
        ),
        ("l16.png", gray16.into(), ImageFormat::Png, ColorType::L16),
        (
            "la8.png",
            gray_alpha.into(),
            ImageFormat::Png,
            ColorType::La8,
        ),
        (
            "l8.gif",
            DynamicImage::from(gray.clone()).into_rgba8().into(),
            ImageFormat::Gif,
            ColorType::L8,
        ),
        ("l8.bmp", gray.into(), ImageFormat::Bmp, ColorType::L8),
    ];
    for (name, img, format, color) in cases {
        let src = dir.path().join(name);
        save(img, &src, format);
        let out = dir.path().join(format!("out_{name}.png"));
        upscale_ok(&model, &[s(&src), "-o", s(&out)]);
        let (_, decoded) = read(&out);
        assert_eq!(decoded.color(), color, "{name}");
        assert_eq!((decoded.width(), decoded.height()), (80, 48));
        let d = distance_to_bicubic(&src, &out);
        assert!(d < 0.015, "{name} is far from its input: {d}");
    }
}

/// A 20×12 PNG of grays, written by the png crate: `colour` is Indexed (through a gray
/// palette), Rgb, Grayscale or GrayscaleAlpha; `icc` goes into its iCCP chunk.
fn gray_png(path: &Path, colour: png::ColorType, deep: bool, icc: Option<&[u8]>) {
    use png::ColorType::*;
    let mut info = png::Info::with_size(20, 12);
    info.color_type = colour;
    info.bit_depth = if deep {
        png::BitDepth::Sixteen
    } else {
        png::BitDepth::Eight
    };
    info.icc_profile = icc.map(std::borrow::Cow::Borrowed);
    let levels: Vec<u8> = (0..240u32)
        .map(|i| ((i % 20) * 12 + i / 20) as u8)
        .collect();
    let samples: Vec<u8> = match colour {
        Indexed => {
            info.palette = Some((0..=255).flat_map(|v| [v; 3]).collect::<Vec<u8>>().into());
            levels
        }
        Rgb => levels.iter().flat_map(|&v| [v; 3]).collect(),
        GrayscaleAlpha => levels.iter().flat_map(|&v| [v, 255 - v]).collect(),
        _ => levels,
    };
    // 16-bit samples: each 8-bit one twice, big-endian v·257.
    let samples: Vec<u8> = match deep {
        true => samples.iter().flat_map(|&v| [v, v]).collect(),
        false => samples,
    };
    let file = std::fs::File::create(path).unwrap();
    let mut writer = png::Encoder::with_info(file, info)
        .unwrap()
        .write_header()
        .unwrap();
    writer.write_image_data(&samples).unwrap();
    writer.finish().unwrap();
}

/// Colour in, colour out: an RGB file stays RGB however gray its pixels, and so does a
/// gray-palette one with an RGB ICC profile, which keeps it; a gray-palette one without
/// becomes gray. The ICC profile goes where it describes the samples written: not a gray
/// profile onto WebP, which stores gray as RGB. Gray with alpha stays so in TIFF, in 8 and
/// 16 bits, with its gray profile.
#[test]
fn colour_stays_colour_and_profiles_follow_the_samples_written() {
    use png::ColorType::{Grayscale, GrayscaleAlpha, Indexed, Rgb};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let profile = |space: &[u8; 4]| {
        let mut icc: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
        icc[16..20].copy_from_slice(space);
        icc
    };
    let (rgb_icc, gray_icc) = (profile(b"RGB "), profile(b"GRAY"));
    let sources = [
        ("rgb_icc", Rgb, false, Some(&rgb_icc)),
        ("palette_icc", Indexed, false, Some(&rgb_icc)),
        ("palette", Indexed, false, None),
        ("gray_icc", Grayscale, false, Some(&gray_icc)),
        ("gray_alpha_icc", GrayscaleAlpha, false, Some(&gray_icc)),
        ("gray_alpha16", GrayscaleAlpha, true, None),
    ];
    for (name, colour, deep, icc) in sources {
        gray_png(
            &inputs.join(format!("{name}.png")),
            colour,
            deep,
            icc.map(|v| &v[..]),
        );
    }
    // (input, format): gray, alpha, 16-bit, the profile kept.
    let (rgb, gray) = (Some(&rgb_icc), Some(&gray_icc));
    let want = [
        ("rgb_icc", "png", false, false, false, rgb),
        ("rgb_icc", "webp", false, false, false, rgb),
        ("rgb_icc", "tiff", false, false, false, rgb),
        ("palette_icc", "png", false, false, false, rgb),
        ("palette_icc", "webp", false, false, false, rgb),
        ("palette_icc", "tiff", false, false, false, rgb),
        ("palette", "png", true, false, false, None),
        ("palette", "webp", false, false, false, None),
        ("palette", "tiff", true, false, false, None),
        ("gray_icc", "png", true, false, false, gray),
        ("gray_icc", "webp", false, false, false, None),
        ("gray_icc", "tiff", true, false, false, gray),
        ("gray_alpha_icc", "png", true, true, false, gray),
        ("gray_alpha_icc", "webp", false, true, false, None),
        ("gray_alpha_icc", "tiff", true, true, false, gray),
        ("gray_alpha16", "tiff", true, true, true, None),
    ];
    for format in ["png", "webp", "tiff"] {
        let out = dir.path().join(format);
        upscale_ok(&model, &[s(&inputs), "-o", s(&out), "--format", format]);
    }
    for (name, format, gray, alpha, deep, icc) in want {
        let out = dir.path().join(format).join(format!("{name}_x4.{format}"));
        let d = decode_file(&out, &DecodeLimits::default()).unwrap();
        let case = format!("{name} as {format}");
        assert_eq!(
            (d.grayscale, d.alpha.is_some(), d.sixteen_bit),
            (gray, alpha, deep),
            "{case}"
        );
        assert_eq!(d.icc_profile.as_ref(), icc, "{case}");
        let d = distance_to_bicubic(&inputs.join(format!("{name}.png")), &out);
        assert!(d < 0.015, "{case} is far from its input: {d}");
    }
}

#[test]
fn exif_rotated_jpeg_comes_out_upright() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Stored 24 wide and 12 high: left half black, right half white.
    let img = GrayImage::from_fn(24, 12, |x, _| image::Luma([if x < 12 { 0 } else { 255 }]));
    let plain = dir.path().join("plain.jpg");
    save(img, &plain, ImageFormat::Jpeg);
    let src = dir.path().join("rotated.jpg");
    std::fs::write(
        &src,
        with_exif_orientation(&std::fs::read(&plain).unwrap(), 6),
    )
    .unwrap();
    let out = dir.path().join("upright.png");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    // Orientation 6 turns the image 90° clockwise: 12 wide, 24 high, black on top.
    let luma = read(&out).1.into_luma8();
    assert_eq!(luma.dimensions(), (48, 96));
    let mean = |rows: std::ops::Range<u32>| {
        let n = rows.len() as f32 * 48.0;
        rows.flat_map(|y| (0..48).map(move |x| (x, y)))
            .map(|(x, y)| f32::from(luma.get_pixel(x, y)[0]))
            .sum::<f32>()
            / n
    };
    assert!(mean(0..40) < 30.0, "top is not dark: {}", mean(0..40));
    assert!(
        mean(56..96) > 225.0,
        "bottom is not bright: {}",
        mean(56..96)
    );
    // A JPEG output keeps the EXIF metadata, upright: readers do not turn it again.
    let out = dir.path().join("upright.jpg");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    let d = decode_file(&out, &DecodeLimits::default()).unwrap();
    assert!(d.exif.is_some());
    assert_eq!((d.rgb.width, d.rgb.height), (48, 96));
    upscale_ok(
        &model,
        &[s(&src), "-o", s(&out), "--overwrite", "--no-exif"],
    );
    let d = decode_file(&out, &DecodeLimits::default()).unwrap();
    assert!(d.exif.is_none());
    assert_eq!((d.rgb.width, d.rgb.height), (48, 96));
}

/// A photo's XMP reaches every output format with its orientation upright and its
/// dimensions the output's; `--no-metadata` leaves it out, and a packet that is not XML is
/// left out with a warning naming the file. The density is turned with the image and kept
/// where the format records it, with or without metadata (WebP: in EXIF); JPEG and TIFF
/// keep IPTC.
#[test]
fn xmp_and_density_are_kept_upright_with_the_output_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let plain = dir.path().join("plain.jpg");
    save(gradient(24, 12), &plain, ImageFormat::Jpeg);
    // A JFIF density of 300 × 150 dpi, which the EXIF orientation below turns to 150 × 300.
    let mut jfif = std::fs::read(&plain).unwrap();
    assert_eq!(&jfif[6..11], b"JFIF\0");
    jfif[13] = 1;
    jfif[14..16].copy_from_slice(&300u16.to_be_bytes());
    jfif[16..18].copy_from_slice(&150u16.to_be_bytes());
    std::fs::write(&plain, jfif).unwrap();
    let dpi = |d: &infdit::imageops::io::DecodedImage| {
        d.density.map(|d| {
            let per_inch = match d.unit {
                DensityUnit::Metre => 0.0254,
                _ => 1.0,
            };
            ((d.x * per_inch).round(), (d.y * per_inch).round())
        })
    };
    let density = |format| (format != "webp").then_some((150.0, 300.0));
    // An IPTC caption, in Photoshop's image resources.
    let iptc = [&[0x1C, 2, 120, 0, 7][..], b"Harbour"].concat();
    let app13 = |record: &[u8]| {
        let size = (record.len() as u32).to_be_bytes();
        let contents = [
            b"Photoshop 3.0\0" as &[u8],
            b"8BIM\x04\x04\0\0",
            &size,
            record,
        ]
        .concat();
        let mut segment = vec![0xFF, 0xED];
        segment.extend((2 + contents.len() as u16).to_be_bytes());
        segment.extend(contents);
        segment
    };
    let with_xmp = |packet: &str| {
        let jpeg = with_exif_orientation(&std::fs::read(&plain).unwrap(), 6);
        let signature = b"http://ns.adobe.com/xap/1.0/\0";
        let length = (2 + signature.len() + packet.len()) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(length.to_be_bytes());
        out.extend(signature);
        out.extend(packet.as_bytes());
        out.extend(app13(&iptc));
        out.extend(&jpeg[2..]);
        out
    };
    let packet = r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" exif:PixelXDimension="24" exif:PixelYDimension="12" dc:format="image/jpeg"/></rdf:RDF></x:xmpmeta>"#;
    let src = dir.path().join("photo.jpg");
    std::fs::write(&src, with_xmp(packet)).unwrap();
    for format in ["png", "jpg", "webp", "tiff"] {
        let out = dir.path().join(format!("out.{format}"));
        upscale_ok(&model, &[s(&src), "-o", s(&out)]);
        let d = decode_file(&out, &DecodeLimits::default()).unwrap();
        assert_eq!((d.rgb.width, d.rgb.height), (48, 96), "{format}");
        assert_eq!(dpi(&d), density(format), "{format}");
        let kept = d.iptc.map(|i| i.record);
        assert_eq!(
            kept,
            matches!(format, "jpg" | "tiff").then(|| iptc.clone()),
            "{format}"
        );
        let xmp = String::from_utf8(d.xmp.expect("XMP is kept")).unwrap();
        for want in [
            r#"tiff:Orientation="1""#,
            r#"exif:PixelXDimension="48""#,
            r#"exif:PixelYDimension="96""#,
            r#"dc:format="image/jpeg""#,
        ] {
            assert!(xmp.contains(want), "{format}: {want} missing from {xmp}");
        }
        upscale_ok(
            &model,
            &[s(&src), "-o", s(&out), "--overwrite", "--no-metadata"],
        );
        let d = decode_file(&out, &DecodeLimits::default()).unwrap();
        // WebP's one place for the density is EXIF: without the source's, it gets an EXIF
        // chunk of its own that holds nothing else. (The source's EXIF, above, has no
        // resolution tags, and it is not rebuilt to add them.)
        assert_eq!(
            dpi(&d),
            Some((150.0, 300.0)),
            "{format}: kept without metadata"
        );
        if format == "webp" {
            let exif = d.exif.expect("the density's EXIF chunk");
            assert!(infdit::imageops::exif::density(&exif).is_some());
            // Nothing but the resolution.
            assert_eq!(infdit::imageops::exif::ExifTags::from_chunk(&exif), None);
        } else {
            assert_eq!(d.exif, None, "{format}");
        }
        assert_eq!((d.xmp, d.iptc), (None, None), "{format}");
    }
    let broken = dir.path().join("broken_xmp.jpg");
    std::fs::write(&broken, with_xmp("<x:xmpmeta><rdf:RDF>")).unwrap();
    let out = dir.path().join("broken.png");
    let err = stderr(&upscale_ok(&model, &[s(&broken), "-o", s(&out)]));
    assert!(
        err.contains("broken_xmp.jpg: ignoring XMP metadata that is not well-formed XML"),
        "{err}"
    );
    let d = decode_file(&out, &DecodeLimits::default()).unwrap();
    assert!(d.xmp.is_none() && d.exif.is_some());
}

/// EXIF that is not TIFF data would make the output file invalid: it is left out, with a
/// warning that names the file.
#[test]
fn exif_that_is_not_tiff_data_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let plain = dir.path().join("plain.jpg");
    save(gradient(16, 8), &plain, ImageFormat::Jpeg);
    let mut bytes = with_exif_orientation(&std::fs::read(&plain).unwrap(), 6);
    // SOI, the APP1 marker and length, "Exif\0\0", then the TIFF header.
    bytes[12..16].copy_from_slice(b"junk");
    let src = dir.path().join("junk_exif.jpg");
    std::fs::write(&src, bytes).unwrap();
    let out = dir.path().join("out.png");
    let err = stderr(&upscale_ok(&model, &[s(&src), "-o", s(&out)]));
    assert!(
        err.contains("junk_exif.jpg: ignoring EXIF metadata without a valid TIFF header"),
        "{err}"
    );
    let d = decode_file(&out, &DecodeLimits::default()).unwrap();
    assert!(d.exif.is_none());
    assert_eq!((d.rgb.width, d.rgb.height), (64, 32));
}

/// A PNG's gAMA and cHRM (here linear Display P3) stay on a PNG upscale, written to a file
/// or to standard output; a JPEG, which has no place for them, is written with a warning.
#[test]
fn png_colour_chunks_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("linear_p3.png");
    let gamma = png::ScaledFloat::from_scaled(100_000);
    let p3 = png::SourceChromaticities::new(
        (0.3127, 0.3290),
        (0.680, 0.320),
        (0.265, 0.690),
        (0.150, 0.060),
    );
    let mut encoder = png::Encoder::new(std::fs::File::create(&src).unwrap(), 20, 12);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_source_gamma(gamma);
    encoder.set_source_chromaticities(p3);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(gradient(20, 12).as_raw())
        .unwrap();
    let colour = |png: &[u8]| {
        let reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let info = reader.info();
        (info.gama_chunk, info.chrm_chunk, info.srgb, info.size())
    };
    let want = (Some(gamma), Some(p3), None, (80, 48));
    let out = dir.path().join("up.png");
    upscale_ok(&model, &[s(&src), "-o", s(&out)]);
    assert_eq!(colour(&std::fs::read(&out).unwrap()), want);
    let piped = upscale_ok(&model, &[s(&src), "-o", "-"]);
    assert_eq!(colour(&piped.stdout), want);

    let jpeg = dir.path().join("up.jpg");
    let err = stderr(&upscale_ok(&model, &[s(&src), "-o", s(&jpeg)]));
    let warning = "JPEG cannot record the input's gamma 1.00 (gAMA) and primaries other than \
                   sRGB's (cHRM)";
    assert_eq!(err.matches(warning).count(), 1, "{err}");
}

#[test]
fn odd_sizes_upscale_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    for (w, h) in [(97, 61), (1, 1), (33, 200)] {
        let src = dir.path().join(format!("odd_{w}x{h}.png"));
        save(gradient(w, h), &src, ImageFormat::Png);
        upscale_ok(&model, &[s(&src)]);
        let out = dir.path().join(format!("odd_{w}x{h}_x4.png"));
        assert_eq!(dims(&out), (4 * w, 4 * h), "{w}x{h}");
        // The padding is cropped off the bottom and right, so the output lines up with
        // the input.
        let d = distance_to_bicubic(&src, &out);
        assert!(d < 0.015, "{w}x{h}: output far from its input: {d}");
    }
}

#[test]
fn batch_with_bad_files_writes_the_good_ones_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    save_gradients(
        &inputs,
        &[
            ("good1.png", 20, 12, ImageFormat::Png),
            ("good2.jpg", 12, 20, ImageFormat::Jpeg),
        ],
    );
    std::fs::write(inputs.join("garbage.png"), b"definitely not an image").unwrap();
    let jpeg = std::fs::read(inputs.join("good2.jpg")).unwrap();
    std::fs::write(inputs.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();

    let out_dir = dir.path().join("out");
    let out = upscale(&model, &[s(&inputs), "-o", s(&out_dir)]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(out.status.code(), Some(1));
    // Only the good files have outputs: no partial or temporary file for the bad ones.
    assert_eq!(listing(&out_dir), ["good1_x4.png", "good2_x4.jpg"], "{err}");
    assert_eq!(dims(&out_dir.join("good1_x4.png")), (80, 48));
    assert_eq!(dims(&out_dir.join("good2_x4.jpg")), (48, 80));
    // The inputs' directory is left alone too.
    assert_eq!(
        listing(&inputs),
        ["garbage.png", "good1.png", "good2.jpg", "truncated.jpg"]
    );
    let line = |name: &str| {
        err.lines()
            .find(|l| l.starts_with("error:") && l.contains(name))
            .unwrap_or_else(|| panic!("no error line for {name}: {err}"))
            .to_string()
    };
    assert!(
        line("garbage.png").contains("unsupported image format"),
        "{err}"
    );
    // Each line names its file once.
    assert_eq!(
        line("garbage.png").matches("garbage.png").count(),
        1,
        "{err}"
    );
    assert!(line("truncated.jpg").contains("truncated"), "{err}");
    assert!(
        err.contains("2 upscaled, 0 skipped, 2 failed"),
        "no summary: {err}"
    );
}

#[test]
fn existing_outputs_are_skipped_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let out = dir.path().join("a_x4.png");
    std::fs::write(&out, b"precious").unwrap();

    let run = upscale_ok(&model, &[s(&src)]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let err = stderr(&run);
    assert!(
        err.contains("skipped") && err.contains("--overwrite") && err.contains("a_x4.png"),
        "the skip is not reported: {err:?}"
    );

    upscale_ok(&model, &[s(&src), "--overwrite"]);
    assert_eq!(dims(&out), (80, 48));
    assert_eq!(listing(dir.path()), ["a.png", "a_x4.png", "model"]);

    // Two inputs of one run that would share an output name: the first result is kept,
    // even with --overwrite, and the second input is reported.
    let other = dir.path().join("a.bmp");
    save(gradient(12, 20), &other, ImageFormat::Bmp);
    let run = upscale(&model, &[s(&other), s(&src), "--overwrite"]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert_eq!(dims(&out), (48, 80), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("error:")
            && l.contains("a.png")
            && l.contains("already written from")),
        "{err}"
    );
}

#[test]
fn seed_decides_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let run = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        // A large σ_max so the noise shapes the output.
        upscale_ok(
            &model,
            &[s(&src), "-o", s(&out), "--seed", seed, "--sigma-max", "1"],
        );
        std::fs::read(out).unwrap()
    };
    let (a, b, c) = (
        run("5", "s5.png"),
        run("5", "s5_again.png"),
        run("6", "s6.png"),
    );
    assert!(a == b, "the same seed gave different files");
    let pixels = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().into_rgb8();
    let (pa, pc) = (pixels(&a), pixels(&c));
    let differing = pa.iter().zip(pc.iter()).filter(|(x, y)| x != y).count();
    assert!(
        differing > pa.len() / 2,
        "seeds 5 and 6 differ in only {differing} of {} samples",
        pa.len()
    );
}

#[test]
fn json_progress_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let out_path = dir.path().join("big.png");
    // ×8 runs two passes; progress covers both.
    let out = upscale_ok(
        &model,
        &[
            s(&src),
            "-o",
            s(&out_path),
            "--scale",
            "8",
            "--progress",
            "json",
        ],
    );
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| {
            assert_eq!(e["input"], s(&src));
            (e["done"].as_u64().unwrap(), e["total"].as_u64().unwrap())
        })
        .collect();
    assert!(!progress.is_empty(), "no progress events: {events:?}");
    assert!(
        progress.iter().all(|&(d, t)| d <= t && t > 0),
        "{progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    // One step over the ×4 pass's 96×64 padded HR (3·2 blocks of 32 px) and the ×2
    // pass's 160×96 (5·3 blocks).
    assert_eq!(*progress.last().unwrap(), (21, 21));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done", "{events:?}");
    assert_eq!(last["input"], s(&src));
    assert_eq!(last["output"], s(&out_path));
    assert_eq!(dims(&out_path), (160, 96));

    // --quiet: nothing at all on a successful batch (which would otherwise summarise).
    let batch = dir.path().join("batch");
    std::fs::create_dir(&batch).unwrap();
    save(gradient(20, 12), &batch.join("x.png"), ImageFormat::Png);
    save(gradient(12, 20), &batch.join("y.png"), ImageFormat::Png);
    let quiet_out = dir.path().join("quiet");
    let out = upscale_ok(&model, &[s(&batch), "-o", s(&quiet_out), "--quiet"]);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "");
    assert_eq!(listing(&quiet_out), ["x_x4.png", "y_x4.png"]);
    // Without --quiet the same batch reports each file and a summary.
    let loud_out = dir.path().join("loud");
    let out = upscale_ok(&model, &[s(&batch), "-o", s(&loud_out)]);
    let err = stderr(&out);
    assert!(err.contains("2 upscaled, 0 skipped, 0 failed"), "{err}");
    assert!(
        err.contains("x_x4.png") && err.contains("y_x4.png"),
        "{err}"
    );
    // --progress none drops the bars, not the messages.
    let out = upscale_ok(
        &model,
        &[s(&batch), "-o", s(&loud_out), "--progress", "none"],
    );
    let err = stderr(&out);
    assert!(err.contains("0 upscaled, 2 skipped, 0 failed"), "{err}");
    assert_eq!(err.matches("exists (use --overwrite)").count(), 2, "{err}");
}

/// The final progress event's total of a JSON-progress run.
fn progress_total(out: &Output) -> u64 {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| e["total"].as_u64())
        .next_back()
        .expect("progress events")
}

#[test]
fn self_ensemble_comes_from_sampling_json_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    std::fs::write(
        model.join("sampling.json"),
        r#"{"steps": 1, "sigma_max": 0.01, "sampler": "euler", "self_ensemble": 4}"#,
    )
    .unwrap();
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args: Vec<&str> = [s(&src), "-o", s(&out), "--progress", "json"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        (upscale_ok(&model, &args), out)
    };
    let (four, four_path) = run("four.png", &[]);
    let (one, one_path) = run("one.png", &["--self-ensemble", "1"]);
    // 3·2 blocks of the ×4 pass, once per transform.
    assert_eq!((progress_total(&four), progress_total(&one)), (24, 6));
    assert_eq!(dims(&four_path), dims(&one_path));
    // Near σ 0 both are the bicubic upscale, so the ensemble stays close to it.
    assert!(distance_to_bicubic(&src, &four_path) < 0.02);
    let out = upscale(
        &model,
        &[
            s(&src),
            "-o",
            s(&dir.path().join("x.png")),
            "--self-ensemble",
            "3",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not 1, 2, 4 or 8"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn model_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let check = |out: &Output, needle: &str| {
        let err = stderr(out);
        assert!(!out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        err
    };

    let missing = dir.path().join("no_such_model");
    let out = upscale(&missing, &[s(&src)]);
    let err = check(&out, "does not exist");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no_such_model"), "{err}");

    // A weights file that lacks one tensor names it.
    let model = tiny_model(dir.path());
    let mut weights = infdit::checkpoint::random_weights(&tiny_config(), 11).unwrap();
    let gone = weights.keys().max().unwrap().clone();
    weights.remove(&gone);
    infdit::fsutil::save_safetensors(&model.join("weights.safetensors"), &weights).unwrap();
    let out = upscale(&model, &[s(&src)]);
    let err = check(&out, &format!("missing {gone}"));
    // One headline naming the file, then the list of problems (here one), indented.
    let first = err.lines().next().unwrap();
    assert!(
        first.contains("weights.safetensors") && first.contains("does not match the model config"),
        "{err}"
    );
    assert!(err.lines().skip(1).all(|l| l.starts_with("  ")), "{err}");
    assert!(!dir.path().join("a_x4.png").exists());

    // A GPU device in a build without its feature says how to get one.
    if !cfg!(feature = "metal") {
        let out = upscale(&model, &[s(&src), "--device", "metal"]);
        let err = check(&out, "built without metal support");
        assert!(err.contains("--features metal"), "{err}");
    }

    // One input that cannot be written: one line, no batch summary.
    let unwritable = dir.path().join("no_such_dir").join("out.png");
    let good = tiny_model(&dir.path().join("good"));
    let out = upscale(&good, &[s(&src), "-o", s(&unwritable)]);
    let err = check(&out, "No such file or directory");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("no_such_dir").count(), 2, "{err}");
    assert!(!err.contains(".part"), "{err}");

    // CLIP weights: a mistyped path is an error; weights the model does not use, a warning
    // (plain text in a log, silent under -q).
    let missing = dir.path().join("clip.bin");
    check(
        &upscale(&good, &[s(&src), "--clip", s(&missing)]),
        "no such file",
    );
    std::fs::write(&missing, b"unused").unwrap();
    let out = upscale(&good, &[s(&src), "--clip", s(&missing), "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARN --clip is not used"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains('\x1b'), "{}", stderr(&out));
    let out = upscale(
        &good,
        &[s(&src), "--clip", s(&missing), "--overwrite", "-q"],
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );

    let help = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(["upscale", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = stdout(&help);
    assert!(text.contains("Examples"), "{text}");
    assert!(text.contains("--overwrite"), "{text}");
}

#[test]
fn glob_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    save(gradient(20, 12), &inputs.join("a.png"), ImageFormat::Png);
    save(gradient(12, 20), &inputs.join("b.png"), ImageFormat::Png);
    save(gradient(20, 12), &inputs.join("c.jpg"), ImageFormat::Jpeg);
    let out_dir = dir.path().join("out");
    let pattern = format!("{}/*.png", s(&inputs));
    upscale_ok(&model, &[&pattern, "-o", s(&out_dir)]);
    assert_eq!(listing(&out_dir), ["a_x4.png", "b_x4.png"]);
    assert_eq!(dims(&out_dir.join("b_x4.png")), (48, 80));

    let nothing = format!("{}/*.webp", s(&inputs));
    let err = upscale_fails(&model, &[&nothing, "-o", s(&out_dir)]);
    assert!(err.contains("the pattern matches no image"), "{err}");
}

#[test]
fn recursive_directories_keep_their_tree() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(inputs.join("sub/deeper")).unwrap();
    save_gradients(
        &inputs,
        &[
            ("a.png", 20, 12, ImageFormat::Png),
            ("sub/a.png", 12, 20, ImageFormat::Png),
            ("sub/deeper/b.jpg", 20, 12, ImageFormat::Jpeg),
        ],
    );

    // Without -r only the top level.
    let flat = dir.path().join("flat");
    upscale_ok(&model, &[s(&inputs), "-o", s(&flat)]);
    assert_eq!(listing(&flat), ["a_x4.png"]);

    // With -r the tree is recreated, so the two a.png stay apart.
    let out = dir.path().join("out");
    upscale_ok(&model, &[s(&inputs), "-r", "-o", s(&out)]);
    assert_eq!(listing(&out), ["a_x4.png", "sub"]);
    assert_eq!(listing(&out.join("sub")), ["a_x4.png", "deeper"]);
    assert_eq!(listing(&out.join("sub/deeper")), ["b_x4.jpg"]);
    assert_eq!(dims(&out.join("a_x4.png")), (80, 48));
    assert_eq!(dims(&out.join("sub/a_x4.png")), (48, 80));
}

/// Writes a tiny model conditioned on a 768-d image embedding, like the released one.
fn tiny_conditioned_model(dir: &Path) -> PathBuf {
    let cfg = ModelConfig {
        vector_dim: 768,
        ..tiny_config()
    };
    write_model(&dir.join("conditioned"), &cfg, 12)
}

#[test]
fn conditioned_models_need_clip_weights_and_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_conditioned_model(dir.path());
    let input = dir.path().join("in.png");
    save(gradient(20, 12), &input, ImageFormat::Png);
    let err = upscale_fails(&model, &[s(&input)]);
    assert!(
        err.contains("--clip") && err.contains("CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
        "{err}"
    );

    let clip =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny_visual.safetensors");
    let a = dir.path().join("a.png");
    upscale_ok(&model, &[s(&input), "-o", s(&a), "--clip", s(&clip)]);
    assert_eq!(dims(&a), (80, 48));
    // bf16 on the CPU, which has no bf16 matmul for the encoder.
    let a16 = dir.path().join("a16.png");
    upscale_ok(
        &model,
        &[
            s(&input),
            "-o",
            s(&a16),
            "--clip",
            s(&clip),
            "--dtype",
            "bf16",
        ],
    );
    assert_eq!(dims(&a16), (80, 48));
    // `eval` takes the weights the same way.
    let hr = dir.path().join("hr.png");
    save(gradient(48, 40), &hr, ImageFormat::Png);
    let eval = |clip: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args([
                "eval",
                "--hr",
                s(&hr),
                "--baseline",
                "bicubic",
                "--steps",
                "1",
            ])
            .args(["--model", s(&model)])
            .args(clip)
            .output()
            .unwrap()
    };
    assert!(stderr(&eval(&[])).contains("--clip"));
    let scored = eval(&["--clip", s(&clip)]);
    assert!(scored.status.success(), "{}", stderr(&scored));
    // The same file found beside the model is picked up without the flag.
    std::fs::copy(&clip, model.join("clip.safetensors")).unwrap();
    let b = dir.path().join("b.png");
    upscale_ok(&model, &[s(&input), "-o", s(&b)]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // CLIP weights of another width are refused once, before any image.
    let narrow = ModelConfig {
        vector_dim: 64,
        ..tiny_config()
    };
    let narrow = write_model(&dir.path().join("narrow"), &narrow, 13);
    let out = dir.path().join("out");
    let err = upscale_fails(
        &narrow,
        &[s(&input), s(&a), "-o", s(&out), "--clip", s(&clip)],
    );
    assert!(
        err.contains("768-d embeddings but the model takes 64-d"),
        "{err}"
    );
    assert!(!out.exists());
}

/// An output whose image buffers cannot fit in any machine's memory is refused at once,
/// naming the size and the memory it needs, instead of failing an allocation mid-run.
#[test]
fn output_too_large_for_the_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("big.png");
    save(RgbImage::new(4000, 4000), &src, ImageFormat::Png);
    let err = upscale_fails(&model, &[s(&src), "--scale", "16"]);
    assert!(
        err.contains("a 64000×64000 output needs about") && err.contains("GiB of memory"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), ["big.png", "model"]);
}

#[test]
fn memory_budget_too_small_is_refused_with_the_needed_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let input = dir.path().join("in.png");
    save(gradient(64, 64), &input, ImageFormat::Png);
    let err = upscale_fails(&model, &[s(&input), "--max-memory", "64K"]);
    assert!(
        err.contains("needs at least") && err.contains("--max-memory"),
        "{err}"
    );
    assert!(
        listing(dir.path()).iter().all(|f| !f.contains("_x4")),
        "no output for a refused image"
    );
}

#[test]
fn eval_denoiser_diagnostic_scores_both_starts() {
    let eval = |crop: &str| {
        Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args([
                "eval",
                "--hr",
                "examples/photo.jpg",
                "--baseline",
                "denoiser",
            ])
            .args(["--sigmas", "0.01", "--crop", crop])
            .output()
            .unwrap()
    };
    let out = eval("128");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("PSNR-hr+0.01") && text.contains("PSNR-bic+0.01"),
        "{text}"
    );
    let mean: Vec<f64> = text
        .lines()
        .find(|l| l.starts_with("mean"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // Columns: bicubic, D(HR + σn), D(bicubic + σn), each PSNR then SSIM. A trained
    // denoiser removes a little noise from the HR image far better than bicubic recovers it.
    assert!(mean[2] > mean[0] + 5.0, "{text}");
    // A crop that is not whole blocks is trimmed to them; one smaller than a block is
    // refused.
    let out = eval("100");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = eval("40");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no whole 64-px block"),
        "{}",
        stderr(&out)
    );
}

/// Ctrl-C ends a run at once with the conventional status and leaves no output behind.
#[cfg(unix)]
#[test]
fn interrupt_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.png");
    save(gradient(256, 256), &src, ImageFormat::Png);
    // The built-in model takes seconds on this input, long enough to be interrupted.
    let child = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .env_remove("INFDIT_LOG")
        .args(["upscale", "-q", s(&src)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: sends a signal to the child process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(listing(dir.path()), ["a.png"]);
}

/// `-` reads the image from standard input and writes the result to standard output.
#[test]
fn standard_input_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let src = dir.path().join("a.png");
    save(gradient(20, 12), &src, ImageFormat::Png);
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = upscale_command(&model, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let png = std::fs::read(&src).unwrap();

    // PNG in, JPEG out (--format), no file written.
    let out = run(&["-", "-o", "-", "--format", "jpg"], &png);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::load_from_memory(&out.stdout).unwrap();
    assert_eq!(image::guess_format(&out.stdout).unwrap(), ImageFormat::Jpeg);
    assert_eq!((img.width(), img.height()), (80, 48));
    assert_eq!(listing(dir.path()), ["a.png", "model"]);

    // From a file to standard output: the same pixels as writing the file.
    let out = run(&[s(&src), "-o", "-"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let file = dir.path().join("a_x4.png");
    upscale_ok(&model, &[s(&src)]);
    assert_eq!(out.stdout, std::fs::read(&file).unwrap());

    // Standard input to a file.
    let named = dir.path().join("piped.png");
    let out = run(&["-", "-o", s(&named)], &png);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dims(&named), (80, 48));

    // Misuse is explained.
    for (args, input, needle) in [
        (vec!["-"], &png[..], "needs -o"),
        (
            vec![s(&src), s(&named), "-o", "-"],
            &b""[..],
            "exactly one input",
        ),
        (
            vec!["-", "-o", "-"],
            &b"not an image"[..],
            "<stdin>: unsupported",
        ),
    ] {
        let out = run(&args, input);
        // A usage error, except the stream that is no image.
        let status = if needle.starts_with("<stdin>") { 1 } else { 2 };
        assert_eq!(out.status.code(), Some(status), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }

    // A stream that is no image is refused from its first bytes, not read to its end.
    let (out, fed) = upscale_endless(&model, &["-", "-o", s(&named), "--overwrite"], b"");
    assert!(
        stderr(&out).contains("unrecognised contents"),
        "{}",
        stderr(&out)
    );
    assert!(fed < 256, "the whole stream was read");

    // An endless stream after a valid signature is refused once it holds more than an
    // image within --max-input-side can take, not read on to the decoder's 4 GiB.
    let args = [
        "-",
        "-o",
        s(&named),
        "--overwrite",
        "--max-input-side",
        "16",
    ];
    let (out, fed) = upscale_endless(&model, &args, b"\x89PNG\r\n\x1a\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("holds more than 64 MiB, more than an image within --max-input-side takes"),
        "{}",
        stderr(&out)
    );
    assert!(fed < 100, "read past the bound");
}

/// Runs `upscale` with `args` on a standard input of `head` and then up to 256 MiB of
/// zeros; returns its output and how many MiB of the zeros it took.
fn upscale_endless(model: &Path, args: &[&str], head: &'static [u8]) -> (Output, usize) {
    let mut child = upscale_command(model, args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        if stdin.write_all(head).is_err() {
            return 0;
        }
        (0..256)
            .take_while(|_| stdin.write_all(&zeros).is_ok())
            .count()
    });
    let out = child.wait_with_output().unwrap();
    (out, feeder.join().unwrap())
}

/// Output paths that cannot work are refused before any upscaling, once, with nothing
/// created.
#[test]
fn unusable_outputs_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    save(gradient(20, 12), &a, ImageFormat::Png);
    save(gradient(20, 12), &b, ImageFormat::Png);
    let missing = dir.path().join("missing/x.png");
    let single = dir.path().join("single.png");
    let absent = dir.path().join("absent.png");
    // Exit status 2 for flags that contradict each other or the inputs, 1 for a path
    // that fails.
    for (args, needle, status) in [
        (vec![s(&a), "-o", s(&missing)], "cannot create a file in", 1),
        (vec![s(&a), s(&b), "-o", s(&single)], "names a file", 2),
        (
            vec![s(&a), "-o", s(&single), "--format", "jpg"],
            "does not match",
            2,
        ),
        (
            vec![s(&a), "-o", "z.xyz"],
            "cannot tell the output format",
            2,
        ),
        (vec![s(&a), "-o", "z.bmp"], "BMP is an input format only", 2),
        // A mistyped input is named as missing, not taken for a pattern.
        (vec![s(&absent), "-o", s(&single)], "no such file", 1),
    ] {
        let out = upscale(&model, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    assert_eq!(listing(dir.path()), ["a.png", "b.png", "model"]);
    // A name without an extension takes the input's format.
    let bare = dir.path().join("bare");
    upscale_ok(&model, &[s(&a), "-o", s(&bare)]);
    assert_eq!(read(&bare).0, ImageFormat::Png);
    // One file named twice is one input: -o names its output file.
    let twice = dir.path().join("twice.png");
    let dotted = format!("{}/./a.png", dir.path().display());
    upscale_ok(&model, &[s(&a), &dotted, "-o", s(&twice)]);
    assert_eq!(read(&twice).0, ImageFormat::Png);
}

/// Flags that cannot be carried out as given are usage errors, exit status 2 as for what
/// the argument parser refuses, so scripts tell them from files that failed (status 1);
/// nothing is written.
#[test]
fn usage_errors_exit_with_status_two() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    save(gradient(20, 12), &a, ImageFormat::Png);
    save(gradient(20, 12), &b, ImageFormat::Png);
    for (args, needle) in [
        (vec![s(&a), "--scale", "17"], "at most 16"),
        (vec![s(&a), "--self-ensemble", "3"], "not 1, 2, 4 or 8"),
        (vec![s(&a), "--steps", "100000000000"], "beyond 10000"),
        (vec![s(&a), "--max-memory", "lots"], "invalid size"),
        (vec![s(&a), "-o", "x.jpg", "--lossless"], "always lossy"),
        (vec![s(&a), s(&b), "-o", "-"], "writes one image"),
    ] {
        let out = upscale(&model, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(listing(dir.path()), ["a.png", "b.png", "model"]);
    // A file that fails is status 1.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    assert_eq!(upscale(&model, &[s(&bad)]).status.code(), Some(1));
}

/// File names need not be UTF-8 on Unix: such a name is read when named, found by a
/// pattern, and written beside with the usual suffix.
#[cfg(unix)]
#[test]
fn file_names_that_are_not_utf8_are_read() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let shots = dir.path().join("shots");
    std::fs::create_dir(&shots).unwrap();
    let latin1 = shots.join(OsStr::from_bytes(b"caf\xe9.png"));
    save(gradient(16, 12), &latin1, ImageFormat::Png);
    save(gradient(16, 12), &shots.join("ok.png"), ImageFormat::Png);
    let out = upscale_command(&model, &[]).arg(&latin1).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(shots.join(OsStr::from_bytes(b"caf\xe9_x4.png")).is_file());
    let pattern = format!("{}/*.png", shots.display());
    let to = dir.path().join("to");
    upscale_ok(&model, &[&pattern, "-o", s(&to)]);
    let mut made: Vec<Vec<u8>> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    made.sort();
    assert_eq!(made, [b"caf\xe9_x4.png".to_vec(), b"ok_x4.png".to_vec()]);
}

/// `--overwrite` replaces earlier results, never another input of the run, nor something
/// that is not a file (a pipe, a device, a directory), and a format that contradicts the
/// output's name is refused even where infdit does not write that format.
#[cfg(unix)]
#[test]
fn outputs_that_must_not_be_replaced_are_refused() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let a = dir.path().join("a.png");
    save(gradient(16, 12), &a, ImageFormat::Png);
    // Another input of the run, named as a's result.
    let other = dir.path().join("a_x4.png");
    save(gradient(8, 8), &other, ImageFormat::Png);
    let err = upscale_fails(&model, &[s(&a), s(&other), "--overwrite"]);
    assert!(err.contains("is another input of this run"), "{err}");
    assert_eq!(dims(&other), (8, 8), "the other input is untouched");
    // A named pipe and a directory where the output would go.
    let fifo = dir.path().join("f.png");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let err = upscale_fails(&model, &[s(&a), "-o", s(&fifo), "--overwrite"]);
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let b = dir.path().join("b.png");
    save(gradient(16, 12), &b, ImageFormat::Png);
    std::fs::create_dir(dir.path().join("b_x4.png")).unwrap();
    let err = upscale_fails(&model, &[s(&b), "--overwrite"]);
    assert!(err.contains("is a directory"), "{err}");
    let err = upscale_fails(&model, &[s(&a), "-o", "o.bmp", "--format", "png"]);
    assert!(err.contains("does not match the name"), "{err}");
}

/// A run in which every input fails leaves no output directory behind that it created.
#[test]
fn a_failed_run_leaves_no_new_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let out = dir.path().join("out/deeper/");
    upscale_fails(&model, &[s(&bad), "-o", s(&out)]);
    assert!(!dir.path().join("out").exists());
    // One that existed stays.
    std::fs::create_dir(dir.path().join("kept")).unwrap();
    upscale_fails(&model, &[s(&bad), "-o", s(&dir.path().join("kept"))]);
    assert!(dir.path().join("kept").is_dir());
}

/// A file name with control characters is printed escaped, on one line, and cannot drive
/// the terminal.
#[cfg(unix)]
#[test]
fn control_characters_in_file_names_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("bad\nname\u{1b}[2J.png"), b"not an image").unwrap();
    save(gradient(8, 6), &d.join("good\tone.png"), ImageFormat::Png);
    let out = upscale(&model, &[s(&d), "-o", s(&dir.path().join("out"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}'), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("bad\\nname\\u{1b}[2J.png: "), "{err}");
    assert!(err.contains("good\\tone.png → "), "{err}");
}
