//! CLIP image encoder: parity with the official encoder on the tiny tower (on inputs of
//! several shapes), preprocessing sanity on non-square inputs, and equivalence of the three weight naming schemes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use infdit::clip::{self, ClipEncoder, ClipVisionConfig, ClipWeightFormat, ClipWeights};
use infdit::imageops::Planar;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn tiny_config() -> ClipVisionConfig {
    ClipVisionConfig::from_json_file(fixture("clip_tiny_config.json")).unwrap()
}

fn tiny_encoder() -> ClipEncoder {
    clip::load_clip_file(
        fixture("clip_tiny_visual.safetensors"),
        Some(&tiny_config()),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

fn random_image(rng: &mut StdRng, h: usize, w: usize) -> Planar {
    Planar::new(
        3,
        h,
        w,
        (0..3 * h * w)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect(),
    )
}

fn transpose(img: &Planar) -> Planar {
    let mut out = Planar::zeros(img.channels, img.width, img.height);
    for c in 0..img.channels {
        for y in 0..img.height {
            for x in 0..img.width {
                out.data[(c * img.width + x) * img.height + y] = img.at(c, y, x);
            }
        }
    }
    out
}

/// What the official encoder records of an LR image: `preprocessed`, `visual_out` and
/// `embedding`.
fn encoded(enc: &ClipEncoder, lr: &Planar) -> HashMap<&'static str, Tensor> {
    let pixels = enc.preprocess(lr).unwrap();
    let visual = enc.visual(&pixels).unwrap();
    HashMap::from([
        ("preprocessed", pixels.to_tensor(&Device::Cpu).unwrap()),
        ("embedding", clip::l2_normalize(&visual).unwrap()),
        ("visual_out", visual),
    ])
}

#[test]
fn tiny_config_parses() {
    let cfg = tiny_config();
    let expected = ClipVisionConfig {
        width: 64,
        layers: 2,
        heads: 4,
        patch_size: 14,
        image_size: 224,
        mlp_dim: 256,
        embed_dim: 768,
        ln_eps: 1e-5,
        quick_gelu: false,
    };
    assert_eq!(cfg, expected);
}

#[test]
fn tiny_case_parity() {
    let want = candle_core::safetensors::load(fixture("clip_tiny_case.safetensors"), &Device::Cpu)
        .unwrap();
    let got = encoded(
        &tiny_encoder(),
        &Planar::from_tensor(&want["lr_image"]).unwrap(),
    );
    for name in ["preprocessed", "visual_out", "embedding"] {
        let d = max_abs_diff(&got[name], &want[name]);
        println!("{name}: max abs diff {d:e}");
        assert!(d <= 1e-5, "{name}: max abs diff {d:e}");
    }
}

/// The official encoder (open_clip 3.3.0 with `OpenClipImageEncoder`'s preprocessing) on
/// LR images of other shapes: wide and tiny ones (short side upsampled to 224), landscape
/// and portrait ones larger than 224 (antialiased downscale, centre crop along either side).
#[test]
fn other_shapes_match_the_official_encoder() {
    let enc = tiny_encoder();
    let case =
        candle_core::safetensors::load(fixture("official/clip_shapes.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&str> = case
        .keys()
        .filter_map(|k| k.strip_suffix(".lr_u8"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "cases: {names:?}");
    for name in names {
        // ToTensor, then ·2−1, as the official pipeline reads a photo.
        let lr = (case[&format!("{name}.lr_u8")].to_dtype(DType::F32).unwrap() / 255.0)
            .and_then(|x| x.affine(2.0, -1.0))
            .and_then(|x| x.unsqueeze(0))
            .unwrap();
        let got = encoded(&enc, &Planar::from_tensor(&lr).unwrap());
        for what in ["visual_out", "embedding"] {
            let d = max_abs_diff(&got[what], &case[&format!("{name}.{what}")]);
            println!("{name} {what}: max abs diff {d:e}");
            assert!(d <= 1e-5, "{name} {what}: max abs diff {d:e}");
        }
    }
}

#[test]
fn tiny_weights_detected_and_shapes_inferred() {
    let tensors =
        clip::read_clip_tensors(fixture("clip_tiny_visual.safetensors"), &Device::Cpu).unwrap();
    let weights = ClipWeights::from_tensors(tensors).unwrap();
    assert_eq!(weights.format, ClipWeightFormat::OpenClip);
    // Heads are not visible in the weights: the inferred config assumes a head width of 64.
    let inferred = weights.infer_config().unwrap();
    assert_eq!(
        inferred,
        ClipVisionConfig {
            heads: 1,
            ..tiny_config()
        }
    );
}

#[test]
fn non_square_and_portrait_inputs() {
    let enc = tiny_encoder();
    let mut rng = StdRng::seed_from_u64(11);
    let landscape = random_image(&mut rng, 50, 131);
    let portrait = transpose(&landscape);
    let pl = enc.preprocess(&landscape).unwrap();
    let pp = enc.preprocess(&portrait).unwrap();
    assert_eq!((pl.channels, pl.height, pl.width), (3, 224, 224));
    assert_eq!((pp.channels, pp.height, pp.width), (3, 224, 224));
    // Resizing and centre cropping commute with transposition.
    let pt = transpose(&pp);
    let d = pl
        .data
        .iter()
        .zip(&pt.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d < 1e-5,
        "portrait preprocessing is not the transpose of landscape: {d:e}"
    );
    // A short side already at 224 is not resampled, only cropped.
    let tall = random_image(&mut rng, 300, 224);
    let pt = enc.preprocess(&tall).unwrap();
    let top = 38; // round((300 - 224) / 2)
    let v = (tall.at(1, top + 5, 7) + 1.0) / 2.0;
    assert_eq!(pt.at(1, 5, 7), (v - clip::CLIP_MEAN[1]) / clip::CLIP_STD[1]);
    for img in [&landscape, &portrait, &tall] {
        let e = enc.encode(img).unwrap();
        assert_eq!(e.dims(), &[1, 768]);
        let v: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

// ---------------------------------------------------------------------------------------
// Naming schemes: one random tower written as open_clip, Inf-DiT and Hugging Face.

const SMALL: ClipVisionConfig = ClipVisionConfig {
    width: 128,
    layers: 2,
    heads: 2,
    patch_size: 8,
    image_size: 32,
    mlp_dim: 512,
    embed_dim: 24,
    ln_eps: 1e-5,
    quick_gelu: false,
};

fn randn(rng: &mut StdRng, shape: &[usize], std: f32, mean: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| mean + std * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Random tower in open_clip layout, names rooted at the tower.
fn random_open_clip(cfg: &ClipVisionConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, m, p) = (cfg.width, cfg.mlp_dim, cfg.patch_size);
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f32, mean: f32| {
        t.insert(name, randn(&mut rng, shape, std, mean));
    };
    put("conv1.weight".into(), &[w, 3, p, p], 0.05, 0.0);
    put("class_embedding".into(), &[w], 0.1, 0.0);
    put(
        "positional_embedding".into(),
        &[cfg.num_tokens(), w],
        0.1,
        0.0,
    );
    for ln in ["ln_pre", "ln_post"] {
        put(format!("{ln}.weight"), &[w], 0.1, 1.0);
        put(format!("{ln}.bias"), &[w], 0.05, 0.0);
    }
    put("proj".into(), &[w, cfg.embed_dim], 0.1, 0.0);
    for i in 0..cfg.layers {
        let b = format!("transformer.resblocks.{i}");
        for ln in ["ln_1", "ln_2"] {
            put(format!("{b}.{ln}.weight"), &[w], 0.1, 1.0);
            put(format!("{b}.{ln}.bias"), &[w], 0.05, 0.0);
        }
        put(format!("{b}.attn.in_proj_weight"), &[3 * w, w], 0.1, 0.0);
        put(format!("{b}.attn.in_proj_bias"), &[3 * w], 0.05, 0.0);
        put(format!("{b}.attn.out_proj.weight"), &[w, w], 0.1, 0.0);
        put(format!("{b}.attn.out_proj.bias"), &[w], 0.05, 0.0);
        put(format!("{b}.mlp.c_fc.weight"), &[m, w], 0.1, 0.0);
        put(format!("{b}.mlp.c_fc.bias"), &[m], 0.05, 0.0);
        put(format!("{b}.mlp.c_proj.weight"), &[w, m], 0.1, 0.0);
        put(format!("{b}.mlp.c_proj.bias"), &[w], 0.05, 0.0);
    }
    t
}

fn with_prefix(t: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    t.iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// open_clip → Hugging Face transformers, plus text-tower keys that must be ignored.
fn to_hf(t: &HashMap<String, Tensor>, cfg: &ClipVisionConfig) -> HashMap<String, Tensor> {
    let w = cfg.width;
    let mut out = HashMap::new();
    let vm = "vision_model";
    out.insert(
        format!("{vm}.embeddings.patch_embedding.weight"),
        t["conv1.weight"].clone(),
    );
    out.insert(
        format!("{vm}.embeddings.class_embedding"),
        t["class_embedding"].clone(),
    );
    out.insert(
        format!("{vm}.embeddings.position_embedding.weight"),
        t["positional_embedding"].clone(),
    );
    let ids: Vec<i64> = (0..cfg.num_tokens() as i64).collect();
    out.insert(
        format!("{vm}.embeddings.position_ids"),
        Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
    );
    for p in ["weight", "bias"] {
        out.insert(
            format!("{vm}.pre_layrnorm.{p}"),
            t[&format!("ln_pre.{p}")].clone(),
        );
        out.insert(
            format!("{vm}.post_layernorm.{p}"),
            t[&format!("ln_post.{p}")].clone(),
        );
    }
    out.insert(
        "visual_projection.weight".into(),
        t["proj"].t().unwrap().contiguous().unwrap(),
    );
    for i in 0..cfg.layers {
        let src = format!("transformer.resblocks.{i}");
        let dst = format!("{vm}.encoder.layers.{i}");
        let in_w = &t[&format!("{src}.attn.in_proj_weight")];
        let in_b = &t[&format!("{src}.attn.in_proj_bias")];
        for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            out.insert(
                format!("{dst}.self_attn.{name}.weight"),
                in_w.narrow(0, j * w, w).unwrap().contiguous().unwrap(),
            );
            out.insert(
                format!("{dst}.self_attn.{name}.bias"),
                in_b.narrow(0, j * w, w).unwrap().contiguous().unwrap(),
            );
        }
        for (from, to) in [
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ] {
            for p in ["weight", "bias"] {
                out.insert(
                    format!("{dst}.{to}.{p}"),
                    t[&format!("{src}.{from}.{p}")].clone(),
                );
            }
        }
    }
    let dev = &Device::Cpu;
    out.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        Tensor::zeros((10, 8), DType::F32, dev).unwrap(),
    );
    out.insert(
        "text_projection.weight".into(),
        Tensor::zeros((8, 8), DType::F32, dev).unwrap(),
    );
    out.insert(
        "logit_scale".into(),
        Tensor::zeros((), DType::F32, dev).unwrap(),
    );
    out
}

/// open_clip tower inside an Inf-DiT state dict, next to denoiser and text-tower keys.
fn to_infdit(t: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let mut out = with_prefix(t, "image_encoder.model.visual.");
    let dev = &Device::Cpu;
    out.insert(
        "image_encoder.model.positional_embedding".into(),
        Tensor::zeros((77, 16), DType::F32, dev).unwrap(),
    );
    out.insert(
        "image_encoder.model.logit_scale".into(),
        Tensor::zeros((), DType::F32, dev).unwrap(),
    );
    out.insert(
        "mixins.patch_embed.proj.weight".into(),
        Tensor::zeros((4, 6, 4, 4), DType::F32, dev).unwrap(),
    );
    out
}

#[test]
fn weight_schemes_agree() {
    let cfg = SMALL;
    let canonical = random_open_clip(&cfg, 5);
    let sources = [
        (
            ClipWeightFormat::OpenClip,
            with_prefix(&canonical, "visual."),
        ),
        (ClipWeightFormat::InfDit, to_infdit(&canonical)),
        (ClipWeightFormat::HuggingFace, to_hf(&canonical, &cfg)),
        (ClipWeightFormat::OpenClipVisual, canonical.clone()),
    ];
    let mut rng = StdRng::seed_from_u64(3);
    let img = random_image(&mut rng, 40, 57);
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let mut reference: Option<Tensor> = None;
    for (format, tensors) in sources {
        // In memory, with the given config.
        let weights = ClipWeights::from_tensors(tensors.clone()).unwrap();
        assert_eq!(weights.format, format);
        let enc = ClipEncoder::from_weights(Some(cfg.clone()), weights, &dev, DType::F32).unwrap();
        let e = enc.encode(&img).unwrap();
        // From a file, with the config inferred from the shapes (head width 64).
        let path = dir.path().join(format!("{format:?}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let enc_file = clip::load_clip_file(&path, None, &dev, DType::F32).unwrap();
        assert_eq!(enc_file.cfg, cfg);
        let e_file = enc_file.encode(&img).unwrap();
        assert_eq!(max_abs_diff(&e, &e_file), 0.0, "{format:?}: file vs memory");
        match &reference {
            None => reference = Some(e),
            Some(r) => {
                let d = max_abs_diff(r, &e);
                assert!(d <= 1e-6, "{format:?} differs from open_clip by {d:e}");
            }
        }
    }
}

#[test]
fn missing_keys_are_named() {
    let cfg = SMALL;
    let canonical = random_open_clip(&cfg, 9);
    let dev = Device::Cpu;

    let mut hf = to_hf(&canonical, &cfg);
    hf.remove("vision_model.encoder.layers.1.self_attn.k_proj.bias");
    hf.remove("vision_model.post_layernorm.weight");
    let err = ClipWeights::from_tensors(hf)
        .and_then(|w| ClipEncoder::from_weights(Some(cfg.clone()), w, &dev, DType::F32))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vision_model.encoder.layers.1.self_attn.k_proj.bias"),
        "{msg}"
    );

    let mut hf = to_hf(&canonical, &cfg);
    hf.remove("vision_model.post_layernorm.weight");
    hf.remove("vision_model.encoder.layers.0.mlp.fc2.bias");
    let err = ClipEncoder::from_weights(
        Some(cfg.clone()),
        ClipWeights::from_tensors(hf).unwrap(),
        &dev,
        DType::F32,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("vision_model.post_layernorm.weight"), "{msg}");
    assert!(
        msg.contains("vision_model.encoder.layers.0.mlp.fc2.bias"),
        "{msg}"
    );

    let mut dit = to_infdit(&canonical);
    dit.remove("image_encoder.model.visual.transformer.resblocks.1.ln_2.bias");
    dit.remove("image_encoder.model.visual.proj");
    let err = ClipEncoder::from_weights(
        Some(cfg.clone()),
        ClipWeights::from_tensors(dit).unwrap(),
        &dev,
        DType::F32,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("image_encoder.model.visual.transformer.resblocks.1.ln_2.bias"),
        "{msg}"
    );
    assert!(msg.contains("image_encoder.model.visual.proj"), "{msg}");

    // A tower with more blocks than the config asks for is refused too.
    let err = ClipEncoder::from_weights(
        Some(ClipVisionConfig {
            layers: 1,
            ..cfg.clone()
        }),
        ClipWeights::from_tensors(with_prefix(&canonical, "visual.")).unwrap(),
        &dev,
        DType::F32,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("visual.transformer.resblocks.1.ln_1.weight"),
        "{err:#}"
    );
}

// ---------------------------------------------------------------------------------------
// PyTorch zip checkpoints, written by hand: a `torch.save`-style pickle (protocol 2) of a
// dict of tensors, each stored as its own uncompressed zip member.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn zip_stored(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            for v in [20u16, 0, 0, 0, 0x21] {
                h.extend(v.to_le_bytes()); // version needed, flags, stored, time, date
            }
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                for v in [0u16, 0, 0] {
                    h.extend(v.to_le_bytes()); // comment, disk, internal attributes
                }
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    for v in [0u16, 0, files.len() as u16, files.len() as u16] {
        out.extend(v.to_le_bytes());
    }
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn write_torch_file(path: &Path, tensors: &HashMap<String, Tensor>, nest_under: Option<&str>) {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut files = Vec::new();
    let mut p = vec![0x80, 2];
    if let Some(key) = nest_under {
        p.push(b'}');
        unicode(&mut p, key);
    }
    p.extend(b"}(");
    for (i, name) in names.iter().enumerate() {
        let t = &tensors[*name];
        let (storage, bytes): (&[u8], Vec<u8>) = match t.dtype() {
            DType::F32 => (
                b"FloatStorage",
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::I64 => (
                b"LongStorage",
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<i64>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            d => panic!("unsupported dtype {d:?}"),
        };
        unicode(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut p, "storage");
        p.extend(b"ctorch\n");
        p.extend(storage);
        p.push(b'\n');
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, t.elem_count());
        p.extend(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        t.dims().iter().for_each(|&d| int(&mut p, d));
        p.extend(b"t(");
        t.stride().iter().for_each(|&s| int(&mut p, s));
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
        files.push((format!("archive/data/{i}"), bytes));
    }
    p.push(b'u');
    if nest_under.is_some() {
        p.push(b's');
    }
    p.push(b'.');
    files.insert(0, ("archive/data.pkl".to_string(), p));
    files.push(("archive/version".to_string(), b"3\n".to_vec()));
    std::fs::write(path, zip_stored(&files)).unwrap();
}

#[test]
fn pytorch_checkpoints_load() {
    let cfg = SMALL;
    let canonical = random_open_clip(&cfg, 21);
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(4);
    let img = random_image(&mut rng, 64, 48);
    let weights = ClipWeights::from_tensors(canonical.clone()).unwrap();
    let reference = ClipEncoder::from_weights(Some(cfg.clone()), weights, &dev, DType::F32)
        .unwrap()
        .encode(&img)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    // An Inf-DiT training checkpoint nests its state dict under `module`.
    let dit_path = dir.path().join("mp_rank_00_model_states.pt");
    write_torch_file(&dit_path, &to_infdit(&canonical), Some("module"));
    let hf_path = dir.path().join("pytorch_model.bin");
    write_torch_file(&hf_path, &to_hf(&canonical, &cfg), None);
    for path in [dit_path, hf_path] {
        let enc = clip::load_clip_file(&path, None, &dev, DType::F32).unwrap();
        assert_eq!(enc.cfg, cfg);
        let d = max_abs_diff(&reference, &enc.encode(&img).unwrap());
        assert!(d <= 1e-6, "{}: differs by {d:e}", path.display());
    }
}

/// bf16 asked for on the CPU (which has no bf16 matmul) encodes in f32.
#[test]
fn bf16_on_the_cpu_encodes_in_f32() {
    let path = fixture("clip_tiny_visual.safetensors");
    let dev = Device::Cpu;
    let bf16 = clip::load_clip_file(&path, Some(&tiny_config()), &dev, DType::BF16).unwrap();
    let img = random_image(&mut StdRng::seed_from_u64(5), 40, 57);
    let e = bf16.encode(&img).unwrap();
    assert_eq!(max_abs_diff(&e, &tiny_encoder().encode(&img).unwrap()), 0.0);
}
