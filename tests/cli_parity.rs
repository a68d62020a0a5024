//! The `infdit parity` commands, run through the binary as outside checkers do.

mod common;
use common::*;
use infdit::parity::Case;
use std::process::Command;

fn infdit(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "infdit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn parity_denoise_full_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixture("case_a_sigma0p05.safetensors");
    let want = Case::open(&case).unwrap();
    let model = fixture("tiny");
    for mode in [
        &["--mode", "full"][..],
        &["--mode", "blocks", "--block-batch", "2"][..],
    ] {
        let out = dir.path().join("out.safetensors");
        let mut args = vec![
            "parity",
            "denoise",
            "--model",
            model.to_str().unwrap(),
            "--case",
            case.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(mode);
        infdit(&args);
        let got = Case::open(&out).unwrap();
        let d = planar_diff(
            &got.planar("denoised").unwrap(),
            &want.planar("denoised").unwrap(),
        );
        assert!(d < 1e-4, "{mode:?}: {d}");
        assert!(got.0.contains_key("net_out_F"));
    }
}

#[test]
fn parity_resize_reproduces_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixture("resize_cases.safetensors");
    let out = dir.path().join("resize.safetensors");
    infdit(&[
        "parity",
        "resize",
        "--case",
        case.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let want = Case::open(&case).unwrap();
    let got = Case::open(&out).unwrap();
    let names = [
        "up_x4_tv_antialias_true",
        "up_x4_tv_antialias_false",
        "up_x4_F_interpolate_bicubic_alignFalse",
        "dn_resize224_tv_antialias_true",
        "dn_resize224_tv_antialias_false",
        "dn_resize224_centercrop224_tv_antialias_true",
    ];
    for n in names {
        let d = planar_diff(&got.planar(n).unwrap(), &want.planar(n).unwrap());
        assert!(d < 1e-5, "{n}: {d}");
    }
}

#[test]
fn inspect_reports_the_config_and_convert_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = infdit(&[
        "inspect",
        fixture("pickles/tiny_deepspeed.pt").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 layers, hidden 64, 4 heads"), "{text}");
    assert!(text.contains("config (inferred from the shapes"), "{text}");
    assert!(text.contains("all 55 denoiser tensors present"), "{text}");
    let st = dir.path().join("tiny.safetensors");
    infdit(&[
        "convert",
        fixture("pickles/tiny_deepspeed.pt").to_str().unwrap(),
        st.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    let ck = infdit::checkpoint::Checkpoint::open(&st).unwrap();
    assert!(ck
        .tensors
        .values()
        .all(|t| t.dtype() == candle_core::DType::BF16));
    assert_eq!(ck.tensors.len(), 60);
    // A config that was only inferred is not stored (it would pass for a known one);
    // one from a config.json beside the input is.
    let out = infdit(&["inspect", st.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config (inferred from the shapes"), "{text}");
    let known = dir.path().join("known.safetensors");
    infdit(&[
        "convert",
        fixture("tiny/weights.safetensors").to_str().unwrap(),
        known.to_str().unwrap(),
    ]);
    let out = infdit(&["inspect", known.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config (stored in the file): 2 layers"),
        "{text}"
    );
}

#[test]
fn bad_checkpoint_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("weights.pt");
    std::fs::write(&bad, b"this is not a zip file").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(["inspect", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a readable PyTorch checkpoint"), "{err}");
}

#[test]
fn parity_clip_reproduces_open_clip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.safetensors");
    let (config, weights, case) = (
        fixture("clip_tiny_config.json"),
        fixture("clip_tiny_visual.safetensors"),
        fixture("clip_tiny_case.safetensors"),
    );
    infdit(&[
        "parity",
        "clip",
        "--config",
        config.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--case",
        case.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let want = Case::open(&case).unwrap();
    let got = Case::open(&out).unwrap();
    for n in ["preprocessed", "visual_out", "embedding"] {
        let d = max_abs_diff(
            &tensor_vec(got.get(n).unwrap()),
            &tensor_vec(want.get(n).unwrap()),
        );
        assert!(d < 1e-5, "{n}: {d}");
    }
}

/// A malformed case file (positions of another image, noise of another size) is an error
/// that says what is wrong, not a panic.
#[test]
fn malformed_cases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny");
    let run = |cmd: &str, case: &Case, extra: &[&str]| {
        let path = dir.path().join("case.safetensors");
        let tensors: Vec<(&str, candle_core::Tensor)> = case
            .0
            .iter()
            .map(|(k, t)| (k.as_str(), t.clone()))
            .collect();
        infdit::parity::write_tensors(&path, &tensors).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_infdit"))
            .args(["parity", cmd, "--model", model.to_str().unwrap()])
            .args(["--case", path.to_str().unwrap()])
            .args([
                "--out",
                dir.path().join("out.safetensors").to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let mut case = Case::open(&fixture("case_a_sigma0p05.safetensors")).unwrap();
    let ids = case.0["rope_position_ids"].narrow(1, 0, 100).unwrap();
    case.0.insert("rope_position_ids".into(), ids);
    let err = run("denoise", &case, &[]);
    assert!(
        err.contains("rope_position_ids has shape [1, 100, 2]"),
        "{err}"
    );

    let mut case = Case::open(&fixture("sampling_256x256_heun4.safetensors")).unwrap();
    let noise = case.0["init_noise"].narrow(2, 0, 128).unwrap();
    case.0.insert("init_noise".into(), noise);
    let err = run("sample", &case, &["--steps", "4"]);
    assert!(err.contains("init_noise is (3, 128, 256)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A noise level the denoiser cannot take would give NaN outputs.
    let mut case = Case::open(&fixture("case_a_sigma0p05.safetensors")).unwrap();
    for sigma in [0.0f32, -1.0, f32::NAN] {
        let t = candle_core::Tensor::new(&[sigma], &candle_core::Device::Cpu).unwrap();
        case.0.insert("sigma".into(), t);
        let err = run("denoise", &case, &[]);
        assert!(
            err.contains(&format!("the case's sigma is {sigma}")),
            "{err}"
        );
    }
    let case = Case::open(&fixture("case_a_sigma0p05.safetensors")).unwrap();
    let err = run(
        "denoise",
        &case,
        &["--mode", "blocks", "--block-batch", "0"],
    );
    assert!(err.contains("--block-batch"), "{err}");
}

#[test]
fn parity_diff_names_a_tensor_whose_shapes_differ() {
    let dir = tempfile::tempdir().unwrap();
    let dev = candle_core::Device::Cpu;
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let zeros =
        |shape: &[usize]| candle_core::Tensor::zeros(shape, candle_core::DType::F32, &dev).unwrap();
    infdit::parity::write_tensors(&a, &[("denoised", zeros(&[3, 8, 8]))]).unwrap();
    infdit::parity::write_tensors(&b, &[("denoised", zeros(&[3, 8, 4]))]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(["parity", "diff", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "denoised: shape [3, 8, 8] in {}, [3, 8, 4] in {}",
            a.display(),
            b.display()
        )),
        "{err}"
    );
}
