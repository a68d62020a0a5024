//! A few steps of `infdit train` on generated photos: checkpoints are written, the loss is
//! finite, resuming continues the step count, and the result loads as a model.

mod common;
use infdit::config::ModelConfig;
use std::process::Command;

#[test]
fn train_saves_resumes_and_produces_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for k in 0..2u32 {
        let img = image::RgbImage::from_fn(320, 256, |x, y| {
            image::Rgb([(x * 3 + k * 50) as u8, (y * 2) as u8, ((x ^ y) & 255) as u8])
        });
        img.save(photos.join(format!("p{k}.png"))).unwrap();
    }
    let cfg = ModelConfig::minimal();
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let out = dir.path().join("run");
    let train = |steps: &str, resume: bool| {
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
            c.args(["--resume", out.to_str().unwrap()]);
        } else {
            c.args(["--config", cfg_path.to_str().unwrap()]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train("2", false);
    train("3", true);
    let log = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    let rows: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{log}");
    assert!(
        rows[2].starts_with("3,"),
        "resumed run continues at step 3: {log}"
    );
    for r in rows {
        let loss: f32 = r.split(',').nth(1).unwrap().parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{r}");
    }
    let src = infdit::checkpoint::ModelSource::open(&out).unwrap();
    assert_eq!(src.config, cfg);
}
