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
