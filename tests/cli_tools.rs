//! The tool subcommands (`eval`, `bench`, `convert`, `inspect`, `train`) refuse what they
//! cannot do with a message, never a panic, and report failures in their exit status: 2
//! for a command line that cannot be carried out as given, 1 for what fails on the way.

mod common;
use std::path::Path;
use std::process::{Command, Output};

fn infdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, which must fail with exit status 1 (an error, not a panic's 101 or a usage
/// error's 2), and returns the standard error.
fn fails(args: &[&str]) -> String {
    let o = infdit(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    stderr(&o)
}

/// Runs `args`, a command line that cannot be carried out as given, which must fail with
/// exit status 2 before doing anything, and returns the standard error.
fn misused(args: &[&str]) -> String {
    let o = infdit(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    stderr(&o)
}

fn write_image(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x + 2 * y) as u8])
    })
    .save(path)
    .unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_refuses_settings_it_cannot_score() {
    let dir = tempfile::tempdir().unwrap();
    let hr = dir.path().join("a.png");
    write_image(&hr, 64, 64);
    for (args, flag) in [
        (
            &["--baseline", "bicubic", "--prescale", "0"][..],
            "--prescale",
        ),
        (&["--baseline", "bicubic", "--prescale=-1"], "--prescale"),
        (
            &["--baseline", "bicubic", "--prescale", "nan"],
            "--prescale",
        ),
        (&["--baseline", "bicubic", "--crop", "0"], "--crop"),
        (&["--baseline", "denoiser", "--sigmas", "0"], "--sigmas"),
        (&["--baseline", "denoiser", "--sigmas=0.1,-1"], "--sigmas"),
        (&["--baseline", "denoiser", "--sigmas", "nan"], "--sigmas"),
        (&["--baseline", "denoiser", "--sigmas", "1e30"], "--sigmas"),
        // Options the mode would ignore.
        (&["--sr", s(&hr), "--steps", "3"], "--steps has no effect"),
        (
            &["--sr", s(&hr), "--seed", "1", "--device", "cpu"],
            "--seed, --device have no effect with --sr",
        ),
        (&["--sr", s(&hr), "--crop", "32"], "--crop has no effect"),
        (
            &["--sr", s(&hr), "--prescale", "0.5"],
            "--prescale has no effect",
        ),
        (
            &["--baseline", "bicubic", "--sigmas", "0.1"],
            "--sigmas has no effect with --baseline bicubic",
        ),
        (
            &[
                "--baseline",
                "denoiser",
                "--steps",
                "2",
                "--self-ensemble",
                "2",
            ],
            "--steps, --self-ensemble have no effect with --baseline denoiser",
        ),
    ] {
        let err = misused(&[&["eval", "--hr", s(&hr)][..], args].concat());
        assert!(
            err.starts_with(&format!("error: {flag}")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn eval_reports_each_failed_image_and_scores_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let hr = dir.path().join("hr");
    std::fs::create_dir(&hr).unwrap();
    write_image(&hr.join("a.png"), 48, 40);
    write_image(&hr.join("b.png"), 3, 3);
    write_image(&hr.join("c.png"), 32, 32);
    // Files that are not images, by name or by being hidden, are not scored.
    std::fs::write(hr.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    std::fs::write(hr.join("notes.txt"), b"scores").unwrap();
    let o = infdit(&["eval", "--hr", s(&hr), "--baseline", "bicubic"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{err}");
    let small = hr.join("b.png");
    assert!(
        err.contains(&format!(
            "error: {}: 3x3 is too small for --baseline: at least 20x20 px",
            small.display()
        )),
        "{err}"
    );
    assert!(err.contains("1 of 3 images failed"), "{err}");
    assert!(out.contains("a.png") && out.contains("c.png") && out.contains("mean"));
    assert!(!out.contains("b.png"), "{out}");

    // One file: the same error line, and no table.
    let tiny = dir.path().join("tiny.png");
    write_image(&tiny, 1, 1);
    let o = infdit(&["eval", "--hr", s(&tiny), "--baseline", "bicubic"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("error: {}: 1x1 is too small", tiny.display())),
        "{err}"
    );

    // Against upscaled files: the pair that cannot be scored is reported, the others scored.
    let o = infdit(&["eval", "--hr", s(&hr), "--sr", s(&hr)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("too small to score"), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("c.png"));

    // An upscaled file a few pixels off the HR size is scored on the shared part, with a
    // warning that says so.
    let sr = dir.path().join("sr");
    std::fs::create_dir(&sr).unwrap();
    write_image(&sr.join("a_x4.png"), 46, 40);
    let a = hr.join("a.png");
    let o = infdit(&["eval", "--hr", s(&a), "--sr", s(&sr)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is 46x40"), "{}", stderr(&o));
}

/// `upscale` writes `h0_x4.png` beside `h0.png`: a folder of LR inputs and their results
/// is scored by the results, and an image's upscale is never another image's.
#[test]
fn eval_pairs_images_by_the_names_upscale_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (hr, lr) = (dir.path().join("hr"), dir.path().join("lr"));
    std::fs::create_dir(&hr).unwrap();
    std::fs::create_dir(&lr).unwrap();
    write_image(&hr.join("h0.png"), 64, 64);
    write_image(&lr.join("h0.png"), 16, 16);
    write_image(&lr.join("h0_x4.png"), 64, 64);
    let o = infdit(&["eval", "--hr", s(&hr), "--sr", s(&lr)]);
    assert!(o.status.success(), "{}", stderr(&o));

    write_image(&hr.join("h0_b.png"), 64, 64);
    std::fs::remove_file(lr.join("h0_x4.png")).unwrap();
    write_image(&lr.join("h0_b_x4.png"), 64, 64);
    std::fs::remove_file(lr.join("h0.png")).unwrap();
    let o = infdit(&["eval", "--hr", s(&hr), "--sr", s(&lr)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no upscaled image for h0 "),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("h0_b.png"));

    // One upscaled file is the upscale of one HR image.
    let err = misused(&["eval", "--hr", s(&hr), "--sr", s(&lr.join("h0_b_x4.png"))]);
    assert!(err.contains("is one image but --hr"), "{err}");
    let one = infdit(&[
        "eval",
        "--hr",
        s(&hr.join("h0_b.png")),
        "--sr",
        s(&lr.join("h0_b_x4.png")),
    ]);
    assert!(one.status.success(), "{}", stderr(&one));
}

#[test]
fn bench_engine_checks_its_arguments_and_fails_when_a_case_fails() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights.safetensors");
    std::fs::write(&weights, b"\x08\0\0\0\0\0\0\0{}\xff\xfe").unwrap();
    let unwritable = dir.path().join("missing").join("bench.json");
    // Exit status 2 for a value the command line gets wrong, 1 for a file that fails.
    for (args, says, status) in [
        (&["--sizes", "abc"][..], "--sizes", 2),
        (&["--sizes", "100"], "--sizes", 2),
        (&["--max-memory", "abc"], "--max-memory", 2),
        (&["--config", "nonexistent.json"], "--config takes", 1),
        (&["--config", s(&weights)], "not a weights file", 1),
        (&["--batches", "0"], "--batches", 2),
        (&["--json", s(&unwritable)], "--json", 1),
        (&["--json", s(dir.path())], "is a folder", 2),
        // Not built (a usage error), or no such card: one error, not one per case.
        (
            &["--device", "cuda:999"],
            "cuda",
            if cfg!(feature = "cuda") { 1 } else { 2 },
        ),
    ] {
        let o = infdit(&[&["bench", "engine", "--sizes", "128"][..], args].concat());
        assert_eq!(o.status.code(), Some(status), "{args:?}: {}", stderr(&o));
        assert!(
            o.stdout.is_empty(),
            "{args:?}: checked before any case runs"
        );
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    for cmd in ["engine", "ops", "attention"] {
        let o = infdit(&["bench", cmd, "--repeat", "0"]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
    }
    // A budget too small for any batch: the case fails, and so does the bench.
    let o = infdit(&[
        "bench",
        "engine",
        "--sizes",
        "128",
        "--batches",
        "auto",
        "--max-memory",
        "1K",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("128x128   auto failed"));
    assert!(stderr(&o).contains("1 of 1 cases failed"), "{}", stderr(&o));
}

#[test]
fn bench_ops_checks_its_shapes_before_timing() {
    for (args, says) in [
        (
            &["--hidden", "63"][..],
            "--hidden 63 must be a multiple of 32",
        ),
        (&["--tokens", "2049", "--hidden", "64"], "--tokens 2049"),
    ] {
        let o = infdit(&[&["bench", "ops"][..], args].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: checked before any op runs");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = infdit(&[
        "bench", "ops", "--tokens", "2048", "--hidden", "32", "--repeat", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `bench decode` times every file it can read, names each it cannot, and fails if any
/// failed.
#[test]
fn bench_decode_reports_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good.png"), dir.path().join("bad.heic"));
    write_image(&good, 9, 5);
    std::fs::write(&bad, b"\0\0\0\x18ftypheic\0\0\0\0mif1heic").unwrap();
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/heic/grid.heic");
    let o = infdit(&[
        "bench",
        "decode",
        s(&bad),
        s(&good),
        s(&grid),
        "--repeat",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("bad.heic"),
        "{out}"
    );
    assert!(
        lines[1].contains("PNG 9x5") && lines[1].contains("2 runs"),
        "{out}"
    );
    assert!(lines[2].contains("HEIC 100x90"), "{out}");
    assert!(stderr(&o).contains("1 of 3 files failed"), "{}", stderr(&o));
}

#[test]
fn convert_writes_safetensors_files_with_ordinary_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("tiny/weights.safetensors");
    for out in ["-", "out.bin", "out"] {
        let target = dir.path().join(out);
        let err = misused(&[
            "convert",
            s(&input),
            if out == "-" { out } else { s(&target) },
        ]);
        assert!(err.contains(".safetensors"), "{out}: {err}");
        assert!(!target.exists() && !Path::new("-").exists());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let out = dir.path().join("w.safetensors");
        let o = infdit(&["convert", s(&input), s(&out)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(mode(&out), mode(&plain));
        // Replaced, a private file stays private.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = infdit(&["convert", s(&input), s(&out), "--overwrite"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(mode(&out), 0o600);
    }
}

/// An existing output is replaced only with --overwrite, and the input never.
#[test]
fn convert_replaces_only_what_it_is_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::copy(common::fixture("tiny/weights.safetensors"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"keep").unwrap();
    let err = misused(&["convert", s(&input), s(&out)]);
    assert!(err.contains("pass --overwrite"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    for extra in [&[][..], &["--overwrite"]] {
        let mut args = vec!["convert", s(&input), s(&input), "--dtype", "bf16"];
        args.extend(extra);
        let err = fails(&args);
        assert!(err.contains("would replace its own input"), "{err}");
        assert_eq!(std::fs::read(&input).unwrap(), before);
    }
}

/// A config beside the input that the model would not load with fails the conversion
/// instead of being dropped or stored.
#[test]
fn convert_refuses_a_config_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("tiny/weights.safetensors"),
        dir.path().join("weights.safetensors"),
    )
    .unwrap();
    let mut cfg =
        infdit::config::ModelConfig::from_json_file(&common::fixture("tiny/config.json")).unwrap();
    cfg.num_layers += 1;
    let out = dir.path().join("out.safetensors");
    for (config, needle) in [
        ("garbage".to_string(), "config.json"),
        (
            serde_json::to_string(&cfg).unwrap(),
            "does not match the model config",
        ),
    ] {
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let err = fails(&["convert", s(dir.path()), s(&out)]);
        assert!(err.contains(needle), "{err}");
        assert!(!out.exists());
    }
}

/// A converted file carries the model config it was converted with (here the one beside
/// the input), so it loads as the same model with no config.json beside it.
#[test]
fn convert_stores_the_model_config() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let mut cfg =
        infdit::config::ModelConfig::from_json_file(&common::fixture("tiny/config.json")).unwrap();
    cfg.sigma_data = 0.25;
    std::fs::write(
        model.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let input = model.join("weights.safetensors");
    std::fs::copy(common::fixture("tiny/weights.safetensors"), &input).unwrap();
    std::fs::write(model.join("sampling.json"), r#"{"steps": 3}"#).unwrap();
    let out = dir.path().join("moved.safetensors");
    let o = infdit(&["convert", s(&input), s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        infdit::checkpoint::ModelSource::open(&out).unwrap().config,
        cfg
    );
    // The sampling settings travel too.
    let sampling = infdit::pipeline::SamplingDefaults::of_model(&out).unwrap();
    assert_eq!(sampling.steps, 3);
}

/// A tensor that cannot be read fails the conversion, by name, instead of being dropped
/// from a file that then passes for complete.
#[test]
fn convert_refuses_to_drop_unreadable_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let input = common::fixture("pickles/int_and_bool.pt");
    let err = fails(&["convert", s(&input), s(&out)]);
    assert!(err.contains("2 tensors cannot be read"), "{err}");
    assert!(
        err.contains("count (unsupported storage type IntStorage)"),
        "{err}"
    );
    assert!(
        err.contains("mask (unsupported storage type BoolStorage)"),
        "{err}"
    );
    assert!(!out.exists());
}

/// convert writes nothing --model would refuse: values a smaller dtype cannot hold, or
/// NaN already in the input.
#[test]
fn convert_refuses_values_that_do_not_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let cpu = &candle_core::Device::Cpu;
    let save = |values: &[f32]| {
        let t = candle_core::Tensor::new(values, cpu).unwrap();
        infdit::fsutil::save_safetensors(&input, &[("w".to_string(), t)].into()).unwrap();
    };
    save(&[1.0, 1e5]);
    let err = fails(&["convert", s(&input), s(&out), "--dtype", "f16"]);
    assert!(err.contains("beyond the range of F16: w"), "{err}");
    assert!(!out.exists());
    let o = infdit(&["convert", s(&input), s(&out), "--dtype", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));

    save(&[1.0, f32::NAN]);
    let err = fails(&["convert", s(&input), s(&out), "--overwrite"]);
    assert!(
        err.contains("NaN or infinite values in 1 tensor(s): w"),
        "{err}"
    );
}

/// convert takes a model directory, as inspect and --model do.
#[test]
fn convert_reads_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = infdit(&["convert", s(&common::fixture("tiny")), s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let src = infdit::checkpoint::ModelSource::open(&out).unwrap();
    assert_eq!(
        src.config,
        infdit::config::ModelConfig::from_json_file(&common::fixture("tiny/config.json")).unwrap()
    );
}

#[test]
fn errors_are_printed_without_backtraces() {
    let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(["inspect", s(&common::fixture("pickles/corrupt.pt"))])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("is not a readable PyTorch checkpoint"),
        "{err}"
    );
}

/// A photo and the minimal config: (photo folder, config path).
fn training_setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    write_image(&photos.join("a.png"), 160, 128);
    let cfg = dir.join("config.json");
    let minimal = infdit::config::ModelConfig::minimal();
    std::fs::write(&cfg, serde_json::to_string(&minimal).unwrap()).unwrap();
    (photos, cfg)
}

#[test]
fn train_refuses_what_it_cannot_do_and_names_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, cfg) = training_setup(dir.path());
    let out = dir.path().join("run");
    let run = |extra: &[&str]| {
        let common = ["train", "-q", "--data", s(&photos), "--out", s(&out)];
        let small = ["--config", s(&cfg), "--crop", "32", "--batch-size", "1"];
        infdit(&[&common[..], &small, extra].concat())
    };
    // A resumed run takes its config from the run.
    let resume = |extra: &[&str]| {
        let common = ["train", "-q", "--data", s(&photos), "--out", s(&out)];
        infdit(&[&common[..], extra].concat())
    };
    let o = run(&["--steps", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("--steps 0 must be at least 1"), "{err}");
    for (flag, value) in [("--lr", "-1"), ("--sigma-data", "0"), ("--device", "gpu")] {
        let o = run(&["--steps", "1", &format!("{flag}={value}")]);
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(flag.trim_start_matches('-')),
            "{flag}: {}",
            stderr(&o)
        );
    }
    let missing = dir.path().join("missing");
    for flag in ["--resume", "--manifest"] {
        let o = if flag == "--resume" {
            resume(&["--steps", "1", flag, s(&missing)])
        } else {
            run(&["--steps", "1", flag, s(&missing)])
        };
        assert_eq!(o.status.code(), Some(1), "{flag}");
        assert!(stderr(&o).contains(s(&missing)), "{flag}: {}", stderr(&o));
    }
    assert!(!out.exists(), "refused runs write nothing");

    // A run that diverges stops at once and saves no poisoned weights.
    let o = run(&["--steps", "2", "--lr", "1e30"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("training diverged at step 2"), "{err}");
    assert!(!out.join("weights.safetensors").exists());
    std::fs::remove_dir_all(&out).unwrap();

    // Photos that cannot be decoded are skipped with a warning that says why (most
    // photos are bad, so that some are drawn).
    for k in 0..9 {
        std::fs::write(photos.join(format!("b{k}.jpg")), b"not a jpeg").unwrap();
    }
    let o = run(&["--steps", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("skipping") && err.contains(".jpg: "), "{err}");
    assert!(out.join("weights.safetensors").is_file());
    // Resumed where it stands, there is nothing to train.
    let o = resume(&["--resume", s(&out), "--steps", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already at step 4"), "{}", stderr(&o));
    // A new run does not overwrite a saved one, or a model.
    let o = run(&["--steps", "2"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("holds a model or a saved training run"),
        "{err}"
    );
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let weights = model.join("weights.safetensors");
    std::fs::copy(common::fixture("tiny/weights.safetensors"), &weights).unwrap();
    let o = infdit(&["train", "-q", "--data", s(&photos), "--out", s(&model)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("holds a model"), "{}", stderr(&o));

    // With none usable the run fails, naming a photo and the cause, and logs nothing.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("x.jpg"), b"not a jpeg").unwrap();
    let out2 = dir.path().join("run2");
    let o = infdit(&[
        "train",
        "-q",
        "--data",
        s(&bad),
        "--out",
        s(&out2),
        "--config",
        s(&cfg),
        "--crop",
        "32",
        "--steps",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no usable training photos"), "{err}");
    assert!(
        err.contains("x.jpg: ") && err.contains("unrecognised contents"),
        "{err}"
    );
    assert!(!out2.exists(), "a run that wrote nothing leaves no folder");
}

/// A failing standard output (a full disk behind `> file`) is an error, not a panic.
#[cfg(target_os = "linux")]
#[test]
fn a_full_standard_output_is_an_error() {
    let tiny = common::fixture("tiny");
    for args in [vec!["inspect", s(&tiny)], vec!["completions", "bash"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args(&args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot write to standard output"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

/// `inspect` reports on any checkpoint, and its status says whether `--model` would take it.
#[test]
fn inspect_fails_for_what_upscale_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let foo = dir.path().join("foo.safetensors");
    let t = candle_core::Tensor::zeros((2, 2), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    infdit::fsutil::save_safetensors(&foo, &[("foo".to_string(), t)].into()).unwrap();
    let o = infdit(&["inspect", s(&foo)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not an Inf-DiT denoiser checkpoint"));
    let o = infdit(&["inspect", s(&common::fixture("tiny"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A model conditioned on CLIP, with no CLIP weights of its own: upscale needs --clip,
    // which inspect says without failing (the flag supplies them).
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("upscale needs --clip FILE"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Sampling settings upscale refuses, and weights that make every output NaN.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        common::fixture("tiny/config.json"),
        model.join("config.json"),
    )
    .unwrap();
    let weights = model.join("weights.safetensors");
    std::fs::copy(common::fixture("tiny/weights.safetensors"), &weights).unwrap();
    std::fs::write(model.join("sampling.json"), r#"{"steps": 0}"#).unwrap();
    let o = infdit(&["inspect", s(&model)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sampling.json"));
    std::fs::remove_file(model.join("sampling.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let name = "mixins.final_layer.linear.weight";
    let broken = (tensors[name].clone() * f64::NAN).unwrap();
    tensors.insert(name.to_string(), broken);
    infdit::fsutil::save_safetensors(&weights, &tensors).unwrap();
    let o = infdit(&["inspect", s(&model)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("NaN or infinite values in 1 tensor(s): mixins.final_layer.linear.weight"),
        "{out}"
    );
    // `upscale` refuses them on loading, before any sampling, and writes nothing.
    let photo = dir.path().join("photo.png");
    image::RgbImage::new(8, 8).save(&photo).unwrap();
    let o = infdit(&["upscale", s(&photo), "--model", s(&model)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("NaN or infinite values in 1 tensor(s), e.g. mixins.final_layer.linear.weight: the weights are broken"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("photo_x4.png").exists());
}
