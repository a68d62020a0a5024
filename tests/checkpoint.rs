//! Checkpoint loading: safetensors and PyTorch pickles, validation errors, and the
//! guarantee that pickle code is never run.

mod common;
use common::*;
use infdit::checkpoint::{Checkpoint, ModelSource};
use infdit::config::ModelConfig;

fn reference() -> Checkpoint {
    Checkpoint::open(&fixture("tiny/weights.safetensors")).unwrap()
}

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.shapes(), b.shapes());
    for (k, t) in &a.tensors {
        assert_eq!(
            max_abs_diff(&tensor_vec(t), &tensor_vec(&b.tensors[k])),
            0.0,
            "{k}"
        );
    }
}

#[test]
fn pytorch_state_dict_and_deepspeed_checkpoints_load() {
    let want = reference();
    for f in ["tiny_state_dict.pt", "tiny_deepspeed.pt"] {
        let ck = Checkpoint::open(&fixture(&format!("pickles/{f}"))).unwrap();
        assert_same_tensors(&ck, &want);
    }
}

/// Written by torch.save itself (torch 2.11): a DeepSpeed-style dict in bf16, with the
/// objects such files carry besides tensors (an argparse Namespace, a set, torch.Size
/// shapes, an OrderedDict), which must be passed over, not executed.
#[test]
fn a_checkpoint_written_by_pytorch_in_bf16_loads() {
    let want = reference();
    let ck = Checkpoint::open(&fixture("pickles/tiny_deepspeed_bf16_torch.pt")).unwrap();
    assert_eq!(ck.shapes(), want.shapes());
    for (name, t) in &want.tensors {
        let got = ck.tensors[name]
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let t = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&t) {
            assert!((g - w).abs() <= w.abs() / 128.0, "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn legacy_pytorch_format_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.pt");
    let mut bytes = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    bytes.extend_from_slice(b".\x80\x02");
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", Checkpoint::open(&path).err().unwrap());
    assert!(err.contains("legacy format"), "{err}");
}

#[test]
fn malicious_pickle_is_refused_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let res = Checkpoint::open(&fixture("pickles/malicious.pt"));
    std::env::set_current_dir(cwd).unwrap();
    let err = format!(
        "{:#}",
        res.err().expect("a pickle without tensors must be refused")
    );
    assert!(err.contains("no tensors"), "{err}");
    assert!(
        !dir.path().join("infdit-pwned-marker").exists(),
        "pickle code ran"
    );
}

#[test]
fn config_is_inferred_from_shapes() {
    let inferred = reference().infer_config().unwrap();
    let cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    assert_eq!(inferred, cfg);
}

#[test]
fn every_missing_or_misshapen_key_is_named() {
    let mut ck = reference();
    ck.tensors.remove("mixins.final_layer.linear.bias");
    ck.tensors.remove("time_embed.mlp.0.weight");
    let t = ck.tensors["mixins.adaln_layer.re_pos_embed"]
        .narrow(0, 0, 1)
        .unwrap();
    ck.tensors
        .insert("mixins.adaln_layer.re_pos_embed".into(), t);
    let cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    let err = format!("{:#}", ck.validate(&cfg).unwrap_err());
    assert!(err.contains("3 problems"), "{err}");
    assert!(
        err.contains("missing mixins.final_layer.linear.bias (expected shape [48])"),
        "{err}"
    );
    assert!(
        err.contains("missing time_embed.mlp.0.weight (expected shape [64, 192])"),
        "{err}"
    );
    assert!(
        err.contains("re_pos_embed has shape [1, 4, 4, 16], expected [2, 4, 4, 16]"),
        "{err}"
    );
}

#[test]
fn unused_official_keys_are_accepted_unknown_ones_reported() {
    let mut ck = reference();
    let cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    assert!(ck
        .tensors
        .contains_key("mixins.adaln_layer.k_layer_norm.0.weight"));
    assert!(ck.validate(&cfg).unwrap().is_empty());
    let t = ck.tensors["mixins.final_layer.linear.bias"].clone();
    ck.tensors.insert("something.else".into(), t);
    assert_eq!(
        ck.validate(&cfg).unwrap(),
        vec!["something.else".to_string()]
    );
}

#[test]
fn model_directory_and_bare_files_open() {
    let dir = ModelSource::open(&fixture("tiny")).unwrap();
    let file = ModelSource::open(&fixture("pickles/tiny_deepspeed.pt")).unwrap();
    assert_eq!(dir.config, file.config);
    let err = ModelSource::open(&fixture("does-not-exist")).err().unwrap();
    assert!(format!("{err:#}").contains("does not exist"));
}

/// Saved weights carry their config: a file moved away from its `config.json` still
/// loads with what the shapes cannot tell (σ_data, the residual flag), where inference
/// would fall back to the released model's values.
#[test]
fn saved_weights_carry_their_config() {
    let mut cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    cfg.sigma_data = 0.1;
    cfg.residual = !cfg.residual;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.safetensors");
    infdit::checkpoint::save_model_weights(&path, &reference().tensors, &cfg).unwrap();
    let src = ModelSource::open(&path).unwrap();
    assert_eq!(src.config, cfg);
    assert_same_tensors(&src.checkpoint, &reference());
    assert_ne!(src.checkpoint.infer_config().unwrap(), cfg);
    // A config.json beside the file still comes first.
    std::fs::copy(fixture("tiny/config.json"), dir.path().join("config.json")).unwrap();
    let beside = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    assert_eq!(ModelSource::open(&path).unwrap().config, beside);
    // Files with no stored config: PyTorch pickles and plain safetensors.
    for f in ["pickles/tiny_deepspeed.pt", "tiny/weights.safetensors"] {
        assert_eq!(
            infdit::checkpoint::embedded_config(&fixture(f)).unwrap(),
            None
        );
    }
}
