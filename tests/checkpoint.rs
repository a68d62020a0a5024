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
/// An archive whose entries were compressed (re-zipped by hand; PyTorch stores them)
/// loads the same.
#[test]
fn a_recompressed_pytorch_archive_loads() {
    use std::io::{Read, Write};
    let source = std::fs::File::open(fixture("pickles/tiny_state_dict.pt")).unwrap();
    let mut archive = zip::ZipArchive::new(source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deflated.pt");
    let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.start_file(entry.name().unwrap().into_owned(), deflated)
            .unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
    assert_same_tensors(&Checkpoint::open(&path).unwrap(), &reference());
}

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
    // torch.save's own, with pickle protocol 4, whose magic number sits in a frame.
    let err = format!(
        "{:#}",
        Checkpoint::open(&fixture("pickles/legacy_protocol4.pt"))
            .err()
            .unwrap()
    );
    assert!(err.contains("legacy format"), "{err}");
}

/// A checkpoint saved on a big-endian machine says so in its archive; its values are
/// swapped as they are read, for every element size.
#[test]
fn big_endian_checkpoints_load_as_their_values() {
    let ck = Checkpoint::open(&fixture("pickles/big_endian.pt")).unwrap();
    let arange: Vec<f32> = (0..24).map(|i| i as f32).collect();
    assert_eq!(values(&ck, "a"), (vec![4, 6], arange.clone()));
    assert_eq!(ck.tensors["h"].dtype(), candle_core::DType::F16);
    assert_eq!(values(&ck, "h"), (vec![6], arange[..6].to_vec()));
    assert_eq!(ck.tensors["d"].dtype(), candle_core::DType::F64);
    assert_eq!(values(&ck, "d"), (vec![6], arange[6..12].to_vec()));
}

/// A training script's own key for the state dict is found: the dict with the most
/// tensors, wherever it is nested (here beside an optimizer state and an EMA copy).
#[test]
fn a_state_dict_under_another_key_is_found() {
    let ck = Checkpoint::open(&fixture("pickles/nested_state_dict.pt")).unwrap();
    assert_eq!(ck.shapes().into_keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(values(&ck, "b"), (vec![5], vec![-1.0, -0.5, 0.0, 0.5, 1.0]));
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
    // Shapes of another rank are an error naming the tensor, not a panic.
    let mut odd = reference();
    let name = "mixins.adaln_layer.proj_lr.weight";
    let flat = odd.tensors[name].flatten_all().unwrap();
    odd.tensors.insert(name.into(), flat);
    let e = odd.infer_config().unwrap_err().to_string();
    assert!(e.contains(name) && e.contains("4 dimensions"), "{e}");
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

fn values(ck: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = &ck.tensors[name];
    (t.dims().to_vec(), tensor_vec(t))
}

/// torch names the archive's folder after the file; with 21 characters its first central
/// directory entry is as long as the zip64 end records, which misled the zip offset
/// detection into starting at the second entry.
#[test]
fn a_pytorch_archive_whatever_its_folder_name_loads() {
    let ck = Checkpoint::open(&fixture("pickles/model_weights_epoch_1.pt")).unwrap();
    let (dims, a) = values(&ck, "a");
    assert_eq!(dims, [4, 6]);
    assert_eq!(a, (0..24).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(values(&ck, "b"), (vec![5], vec![-1.0, -0.5, 0.0, 0.5, 1.0]));
}

/// Views saved without `.contiguous()` keep their storage and strides in the file.
#[test]
fn tensors_saved_as_strided_views_load_as_their_values() {
    let ck = Checkpoint::open(&fixture("pickles/strided_views.pt")).unwrap();
    let base = |r: usize, c: usize| (r * 6 + c) as f32;
    let grid = |rows: &[usize], cols: &[usize]| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| cols.iter().map(move |&c| base(r, c)))
            .collect()
    };
    assert_eq!(
        values(&ck, "rows"),
        (vec![2, 6], grid(&[0, 2], &[0, 1, 2, 3, 4, 5]))
    );
    assert_eq!(
        values(&ck, "cols"),
        (vec![4, 2], grid(&[0, 1, 2, 3], &[1, 2]))
    );
    let transposed: Vec<f32> = (0..6)
        .flat_map(|c| (0..4).map(move |r| base(r, c)))
        .collect();
    assert_eq!(values(&ck, "transposed"), (vec![6, 4], transposed));
    assert_eq!(
        values(&ck, "row"),
        (vec![6], grid(&[1], &[0, 1, 2, 3, 4, 5]))
    );
    assert_eq!(
        values(&ck, "expanded"),
        (vec![2, 3], vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    );
}

/// Sizes a pickle claims are checked against the archive before memory is taken for them.
#[test]
fn forged_sizes_are_refused_before_allocating() {
    for (file, needle) in [
        ("forged_storage_size.pt", "its storage holds 28 bytes"),
        ("forged_view_size.pt", "is not a weight"),
    ] {
        let err = format!(
            "{:#}",
            Checkpoint::open(&fixture(&format!("pickles/{file}")))
                .err()
                .unwrap()
        );
        assert!(err.contains("tensor w") && err.contains(needle), "{err}");
    }
}

/// `torch.save(..., pickle_protocol=4 or 5)` writes frames, memoised strings and
/// STACK_GLOBAL, and DeepSpeed-shaped files hold sets and bytes beside the tensors.
#[test]
fn pickle_protocols_4_and_5_load() {
    let ck = Checkpoint::open(&fixture("pickles/protocol4.pt")).unwrap();
    let arange: Vec<f32> = (0..24).map(|i| i as f32).collect();
    assert_eq!(values(&ck, "a"), (vec![4, 6], arange.clone()));

    let ck = Checkpoint::open(&fixture("pickles/protocol5_deepspeed.pt")).unwrap();
    assert_eq!(ck.tensors["w"].dtype(), candle_core::DType::BF16);
    assert_eq!(values(&ck, "w"), (vec![4, 6], arange.clone()));
    let rows: Vec<f32> = arange[..6].iter().chain(&arange[12..18]).copied().collect();
    assert_eq!(values(&ck, "rows"), (vec![2, 6], rows));
    assert_eq!(values(&ck, "b"), (vec![5], vec![-1.0, -0.5, 0.0, 0.5, 1.0]));
    assert_eq!(ck.tensors.len(), 3);
}

/// Tensors whose storage type candle cannot read are named, not dropped unseen.
#[test]
fn unreadable_tensors_are_named() {
    let ck = Checkpoint::open(&fixture("pickles/float8.pt")).unwrap();
    assert_eq!(ck.shapes().into_keys().collect::<Vec<_>>(), ["a"]);
    assert!(
        ck.unreadable["f8"].contains("float8_e4m3fn"),
        "{:?}",
        ck.unreadable
    );

    let ck = Checkpoint::open(&fixture("pickles/int_and_bool.pt")).unwrap();
    assert_eq!(ck.shapes().into_keys().collect::<Vec<_>>(), ["weight"]);
    let unreadable: Vec<_> = ck.unreadable.iter().collect();
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    assert!(
        ck.unreadable["count"].contains("IntStorage"),
        "{unreadable:?}"
    );
    assert!(
        ck.unreadable["mask"].contains("BoolStorage"),
        "{unreadable:?}"
    );
}

/// DataParallel and Lightning save every key under `module.` or `model.`.
#[test]
fn a_wrapper_prefix_on_every_key_is_removed() {
    let want = reference();
    let dir = tempfile::tempdir().unwrap();
    for prefix in ["module.", "model.", "model.module."] {
        let path = dir.path().join("wrapped.safetensors");
        let wrapped = want
            .tensors
            .iter()
            .map(|(k, t)| (format!("{prefix}{k}"), t.clone()))
            .collect();
        infdit::fsutil::save_safetensors(&path, &wrapped).unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        assert_same_tensors(&ck, &want);
    }
    // Without the Inf-DiT names under it, a common prefix is part of the names.
    let path = dir.path().join("other.safetensors");
    let t = want.tensors["mixins.final_layer.linear.bias"].clone();
    let other = [
        ("model.x".to_string(), t.clone()),
        ("model.y".to_string(), t),
    ];
    infdit::fsutil::save_safetensors(&path, &other.into_iter().collect()).unwrap();
    let names: Vec<_> = Checkpoint::open(&path)
        .unwrap()
        .shapes()
        .into_keys()
        .collect();
    assert_eq!(names, ["model.x", "model.y"]);
}

/// A config.json beside the weights comes first, so a broken stored config is then not
/// in the way; without one, it is reported.
#[test]
fn a_broken_stored_config_matters_only_without_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let metadata = std::collections::HashMap::from([(
        infdit::checkpoint::CONFIG_METADATA_KEY.to_string(),
        "{not json".to_string(),
    )]);
    infdit::fsutil::save_safetensors_with_metadata(&path, &reference().tensors, Some(metadata))
        .unwrap();
    let err = format!("{:#}", ModelSource::open(&path).err().unwrap());
    assert!(err.contains("invalid stored model config"), "{err}");
    std::fs::copy(fixture("tiny/config.json"), dir.path().join("config.json")).unwrap();
    let cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    assert_eq!(ModelSource::open(&path).unwrap().config, cfg);
}

/// A stored config gets the checks a config.json gets: one that records a variant of
/// the model infdit does not implement is refused, not run as the released model.
#[test]
fn a_stored_config_of_another_variant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny/config.json")).unwrap())
            .unwrap();
    json["qk_ln"] = false.into();
    let metadata = std::collections::HashMap::from([(
        infdit::checkpoint::CONFIG_METADATA_KEY.to_string(),
        json.to_string(),
    )]);
    infdit::fsutil::save_safetensors_with_metadata(&path, &reference().tensors, Some(metadata))
        .unwrap();
    let err = format!("{:#}", ModelSource::open(&path).err().unwrap());
    assert!(err.contains("qk_ln = false is not supported"), "{err}");
}

/// Integer tensors would be cast into meaningless weights.
#[test]
fn integer_model_weights_are_refused_by_name() {
    let cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    for dtype in [candle_core::DType::U8, candle_core::DType::I64] {
        let mut ck = reference();
        let name = "mixins.final_layer.linear.bias";
        let t = ck.tensors[name].to_dtype(dtype).unwrap();
        ck.tensors.insert(name.into(), t);
        let err = format!("{:#}", ck.validate(&cfg).unwrap_err());
        assert!(
            err.contains(&format!(
                "{name} is stored as {dtype:?}; model weights must be floating point"
            )),
            "{err}"
        );
    }
}

/// CLIP weights kept beside a model under a known name are not taken for a second model.
#[test]
fn clip_weights_beside_the_model_are_not_the_model() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mp_rank_00_model_states.pt", "clip.safetensors"] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let found = infdit::checkpoint::weights_path(dir.path()).unwrap();
    assert_eq!(found, dir.path().join("mp_rank_00_model_states.pt"));
    std::fs::write(dir.path().join("other.safetensors"), b"").unwrap();
    let err = infdit::checkpoint::weights_path(dir.path()).unwrap_err();
    assert!(err.to_string().contains("several weights files"), "{err}");
}

/// A config, an image or a bare pickle given where the weights are wanted is named as
/// what it is.
#[test]
fn a_config_or_an_image_is_not_taken_for_weights() {
    for (file, needle) in [
        ("tiny/config.json", "is a JSON file, not model weights"),
        ("formats/rgb8.png", "is an image, not model weights"),
    ] {
        let err = Checkpoint::open(&fixture(file)).err().unwrap().to_string();
        assert!(err.contains(needle), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("state.pkl");
    std::fs::write(&pickle, b"\x80\x04\x95\x05\0\0\0\0\0\0\0}\x94.").unwrap();
    let err = Checkpoint::open(&pickle).err().unwrap().to_string();
    assert!(err.contains("is a bare pickle"), "{err}");
}
