//! A few steps of `infdit train` on generated photos: checkpoints are written, the loss is
//! finite, resuming continues the step count, and the result loads as a model.

mod common;
use infdit::config::ModelConfig;
use std::path::Path;
use std::process::Command;

/// Two generated photos and the minimal config in `dir`: (photo folder, config path).
fn setup(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for k in 0..2u32 {
        let img = image::RgbImage::from_fn(320, 256, |x, y| {
            image::Rgb([(x * 3 + k * 50) as u8, (y * 2) as u8, ((x ^ y) & 255) as u8])
        });
        img.save(photos.join(format!("p{k}.png"))).unwrap();
    }
    let cfg_path = dir.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string(&ModelConfig::minimal()).unwrap(),
    )
    .unwrap();
    (photos, cfg_path)
}

/// The `loss` column of a run's loss.csv.
fn losses(run: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(run.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|r| r.split(',').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn data_workers_give_the_same_run_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, cfg_path) = setup(dir.path());
    let run = |name: &str| {
        let out = dir.path().join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args(["train", "-q", "--data", photos.to_str().unwrap()])
            .args([
                "--out",
                out.to_str().unwrap(),
                "--config",
                cfg_path.to_str().unwrap(),
            ])
            .args([
                "--steps",
                "2",
                "--batch-size",
                "3",
                "--crop",
                "64",
                "--data-workers",
                "2",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        losses(&out)
    };
    let (a, b) = (run("a"), run("b"));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "the example order must not depend on thread timing");
}

#[test]
fn train_saves_resumes_and_produces_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, cfg_path) = setup(dir.path());
    let cfg = ModelConfig::minimal();
    let out = dir.path().join("run");
    let train_into = |out: &Path, steps: &str, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_infdit"));
        c.args([
            "train",
            "-q",
            "--data",
            photos.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        c.args([
            "--steps",
            steps,
            "--batch-size",
            "2",
            "--crop",
            "64",
            "--save-every",
            "1",
        ]);
        if resume {
            c.args(["--resume", dir.path().join("run").to_str().unwrap()]);
        } else {
            c.args([
                "--config",
                cfg_path.to_str().unwrap(),
                "--bicubic-prob",
                "0.8",
            ]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let train = |steps: &str, resume: bool| train_into(&out, steps, resume);
    train("2", false);
    // Resumed into another folder, the run takes its loss history along.
    let branch = dir.path().join("branch");
    train_into(&branch, "3", true);
    let log = std::fs::read_to_string(branch.join("loss.csv")).unwrap();
    let steps: Vec<&str> = log.lines().skip(1).map(|l| &l[..2]).collect();
    assert_eq!(steps, ["1,", "2,", "3,"], "{log}");
    train("3", true);
    let log = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    let rows: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{log}");
    assert!(
        rows[2].starts_with("3,"),
        "resumed run continues at step 3: {log}"
    );
    // The resumed run kept its options, the data mix included.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["options"]["bicubic_prob"], 0.8, "{state}");
    assert_eq!(state["step"], 3, "{state}");
    for l in losses(&out) {
        let loss: f32 = l.parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{l}");
    }
    let src = infdit::checkpoint::ModelSource::open(&out).unwrap();
    assert_eq!(src.config, cfg);
}

#[test]
fn init_starts_a_new_run_from_a_model_and_residual_changes_only_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, cfg_path) = setup(dir.path());
    let train = |out: &std::path::Path, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args(["train", "-q", "--data", photos.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--crop", "64"])
            .args(["--batch-size", "2"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (base, tuned) = (dir.path().join("base"), dir.path().join("tuned"));
    train(
        &base,
        &["--config", cfg_path.to_str().unwrap(), "--steps", "2"],
    );
    // Learning rate 0: the new run's weights must be the ones it started from (up to the
    // EMA's rounding).
    let init = base.to_str().unwrap();
    let args = ["--init", init, "--residual", "--sigma-data", "0.1"];
    train(
        &tuned,
        &[&args[..], &["--steps", "1", "--lr", "0"]].concat(),
    );
    let (a, b) = (
        infdit::checkpoint::ModelSource::open(&base).unwrap(),
        infdit::checkpoint::ModelSource::open(&tuned).unwrap(),
    );
    assert!(b.config.residual && !a.config.residual);
    assert_eq!(b.config.sigma_data, 0.1);
    assert_eq!(
        ModelConfig {
            residual: false,
            sigma_data: 0.5,
            ..b.config.clone()
        },
        a.config
    );
    for (name, t) in &a.checkpoint.tensors {
        let diff = (t - &b.checkpoint.tensors[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{name} changed by {diff}");
    }
    let rows = losses(&tuned);
    assert_eq!(rows.len(), 1, "a new run starts at step 1");
    // A resumed run keeps its model: options that would change it are refused.
    for other in [
        &["--init", init][..],
        &["--config", cfg_path.to_str().unwrap()],
        &["--residual"],
        &["--sigma-data", "0.2"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args(["train", "-q", "--data", photos.to_str().unwrap()])
            .args(["--out", dir.path().join("x").to_str().unwrap()])
            .args(["--resume", init])
            .args(other)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("cannot be used with"),
            "--resume with {other:?}: {err}"
        );
    }
}

/// `infdit train` with `args`, run in `cwd`: (success, stdout, stderr).
fn train_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .current_dir(cwd)
        .arg("train")
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (o.status.success(), text(o.stdout), text(o.stderr))
}

/// A resumed run keeps its photo folder and manifest (relative paths, resumed from
/// another working folder), logs what it trains on, and warns when given others.
#[test]
fn resume_keeps_the_runs_photos_and_holdout() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    setup(base);
    std::fs::write(base.join("m.tsv"), "file\tholdout\np1.png\t1\n").unwrap();
    let tiny = ["--batch-size", "1", "--crop", "64"];
    let (ok, stdout, err) = train_in(
        base,
        &[
            &tiny[..],
            &["-q", "--out", "run", "--data", "photos", "--steps", "1"],
            &["--config", "config.json"],
        ]
        .concat(),
    );
    assert!(ok && stdout.is_empty(), "-q prints nothing: {stdout}{err}");
    let (ok, stdout, err) = train_in(
        base,
        &[
            "--out", "run", "--resume", "run", "--steps", "2", "--data", "photos",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        stdout.starts_with("saved run/weights.safetensors"),
        "{stdout}"
    );
    // The run's photos are kept as absolute paths; the manifest (none) too.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("run/train_state.json")).unwrap())
            .unwrap();
    let photos = base.join("photos");
    assert_eq!(
        state["options"]["data"]["photos"],
        photos.to_str().unwrap(),
        "{state}"
    );
    assert!(state["options"]["data"]["manifest"].is_null(), "{state}");

    // A run with a manifest, resumed from elsewhere without --data or --manifest.
    let (ok, _, err) = train_in(
        base,
        &[
            &tiny[..],
            &[
                "--out",
                "held",
                "-q",
                "--steps",
                "1",
                "--config",
                "config.json",
            ],
            &["--data", "photos", "--manifest", "m.tsv"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let held = base.join("held");
    let held = held.to_str().unwrap();
    let resume = ["-v", "--resume", held, "--out", held];
    let (ok, _, err) = train_in(&elsewhere, &[&resume[..], &["--steps", "2"]].concat());
    assert!(ok, "{err}");
    let counts = format!(
        "2 photos under {}: 1 for training, 1 held out by ",
        photos.display()
    );
    assert!(err.contains(&counts), "{err}");
    assert!(!err.contains("replaces"), "{err}");
    // Other photos may be given, with a warning.
    let copy = base.join("copy");
    std::fs::create_dir(&copy).unwrap();
    for p in ["p0.png", "p1.png"] {
        std::fs::copy(photos.join(p), copy.join(p)).unwrap();
    }
    let (ok, _, err) = train_in(
        &elsewhere,
        &[
            &resume[..],
            &["--steps", "3", "--data", copy.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("replaces the resumed run's photo folder"),
        "{err}"
    );
}

/// What a diverged run says it leaves is true: nothing, or the save it made.
#[test]
fn divergence_reports_what_was_saved() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let diverge = |out: &str, save_every: &str| {
        let args = ["--config", "config.json", "--data", "photos", "--out", out];
        let steep = [
            "--lr",
            "1e30",
            "--steps",
            "3",
            "--crop",
            "64",
            "--batch-size",
            "1",
        ];
        let (ok, _, err) = train_in(
            dir.path(),
            &[&args[..], &steep, &["--save-every", save_every]].concat(),
        );
        assert!(!ok && err.contains("training diverged at step 2"), "{err}");
        err
    };
    let err = diverge("a", "5");
    assert!(err.contains("nothing was saved in a"), "{err}");
    // A folder holding only the loss log is no run to resume.
    let (ok, _, err) = train_in(dir.path(), &["--resume", "a", "--out", "a", "--steps", "4"]);
    assert!(
        !ok && err.contains("from a: it holds no save (train_state.json is missing)"),
        "{err}"
    );
    let err = diverge("b", "1");
    assert!(err.contains("b keeps the save of step 1"), "{err}");
}

/// A bad value kept in a run's state is blamed on the state, not on a flag.
#[test]
fn errors_about_a_resumed_runs_values_say_so() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let args = ["--data", "photos", "--out", "run", "-q", "--steps", "1"];
    let (ok, _, err) = train_in(
        dir.path(),
        &[
            &args[..],
            &[
                "--config",
                "config.json",
                "--crop",
                "64",
                "--batch-size",
                "1",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let state = dir.path().join("run/train_state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"crop_px\": 64", "\"crop_px\": 65")).unwrap();
    let (ok, _, err) = train_in(
        dir.path(),
        &["--resume", "run", "--out", "run", "--steps", "2"],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("--crop 65 (the resumed run's, from its train_state.json) must be a multiple"),
        "{err}"
    );
}
