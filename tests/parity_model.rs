//! Parity of the denoiser and sampler with the official implementation's fixtures.

mod common;
use candle_core::{Result, Tensor};
use common::*;
use infdit::engine::{Batching, EngineOptions, Order};
use infdit::parity::{denoise, sample_case, Case};
use infdit::sampler::SamplerConfig;
use std::collections::HashMap;

const ATOL_DENOISE: f32 = 1e-4;
const ATOL_SAMPLE: f32 = 5e-4;

fn full() -> EngineOptions {
    EngineOptions {
        batching: Batching::Full,
        order: Order::Auto,
    }
}

#[test]
fn denoiser_matches_reference_at_both_noise_levels() {
    let model = tiny_model();
    for name in [
        "case_a_sigma2p5.safetensors",
        "case_a_sigma0p05.safetensors",
    ] {
        let case = Case::open(&fixture(name)).unwrap();
        let (den, _) = denoise(&model, &case, full()).unwrap();
        let diff = planar_diff(&den, &case.planar("denoised").unwrap());
        assert!(diff < ATOL_DENOISE, "{name}: max |Δ| {diff}");
    }
}

/// Block tokens `[n, T, D]` (blocks row-major over a `rows × cols` grid) → image order `[N·D]`.
fn unblockify(t: &Tensor, rows: usize, cols: usize, bt: usize) -> Result<Vec<f32>> {
    let d = t.dim(2)?;
    let y = t
        .reshape((rows, cols, bt, bt, d))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?;
    y.flatten_all()?.to_vec1()
}

#[test]
fn every_intermediate_matches_reference() {
    let model = tiny_model();
    let case = Case::open(&fixture("case_a_sigma2p5.safetensors")).unwrap();
    let want = Case::open(&fixture("case_a_sigma2p5_intermediates.safetensors")).unwrap();
    let cfg = model.config().clone();
    let sigma = case.scalar("sigma").unwrap();
    let pre = infdit::model::Precond::new(sigma, cfg.sigma_data as f32);
    assert!((pre.c_noise - want.scalar("c_noise_in").unwrap()).abs() < 1e-6);

    let vector = case.get("vector").unwrap();
    let cond = model.condition_embed();
    let mut got: HashMap<String, Vec<f32>> = HashMap::new();
    got.insert(
        "time_embed_out".into(),
        tensor_vec(
            &cond
                .time_embedding(&[pre.c_noise], candle_core::DType::F32)
                .unwrap(),
        ),
    );
    let pre_act = cond
        .pre_activation(&[pre.c_noise], Some(vector), candle_core::DType::F32)
        .unwrap();
    got.insert("cond_embed_out".into(), tensor_vec(&pre_act));
    got.insert("emb_silu".into(), tensor_vec(&pre_act.silu().unwrap()));

    let x = case.planar("x").unwrap();
    let c = case.conditioning(&model).unwrap();
    let (rows, cols) = (x.height / 128, x.width / 128);
    let engine = infdit::engine::Engine::new(&model, full());
    let mut tapped: HashMap<String, Tensor> = HashMap::new();
    engine
        .network_output_tapped(&x, sigma, &c, &mut |_| {}, &mut |name, t| {
            tapped.insert(name.to_string(), t.clone());
            Ok(())
        })
        .unwrap();
    for name in ["layer0_adaln_mod", "layer1_adaln_mod", "final_adaln_mod"] {
        got.insert(name.into(), tensor_vec(&tapped[name]));
    }
    for name in [
        "patch_embed_out",
        "layer0_attn_out",
        "layer0_cross_out",
        "layer0_out",
        "layer1_out",
    ] {
        got.insert(
            name.into(),
            unblockify(&tapped[name], rows, cols, 32).unwrap(),
        );
    }
    // net_out_F: blocks [n, 3, 128, 128] → image.
    let f = tapped["net_out_F"]
        .reshape((rows, cols, 3, 128, 128))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    got.insert("net_out_F".into(), tensor_vec(&f.contiguous().unwrap()));

    // proj_lr_out [1, D, h/2, w/2]: the centre 16×16 tokens of each block's LR window.
    let lr_tok = &tapped["lr_tokens"]; // [n, 48·48, D]
    let d = cfg.hidden_size;
    let want_lr = want.get("proj_lr_out").unwrap();
    let (gh, gw) = (want_lr.dim(2).unwrap(), want_lr.dim(3).unwrap());
    let want_lr = tensor_vec(want_lr);
    let lr_tok = lr_tok.reshape((rows * cols, 48, 48, d)).unwrap();
    let lr_vals = tensor_vec(&lr_tok);
    let mut worst = 0f32;
    for i in 0..rows {
        for j in 0..cols {
            for r in 0..16 {
                for cc in 0..16 {
                    for ch in 0..d {
                        let g = lr_vals[(((i * cols + j) * 48 + 16 + r) * 48 + 16 + cc) * d + ch];
                        let w = want_lr[(ch * gh + i * 16 + r) * gw + j * 16 + cc];
                        worst = worst.max((g - w).abs());
                    }
                }
            }
        }
    }
    assert!(worst < 1e-4, "proj_lr_out: {worst}");

    let mut checked = 1;
    for (name, g) in &got {
        let w = tensor_vec(want.get(name).unwrap());
        let diff = max_abs_diff(g, &w);
        assert!(diff < 1e-4, "{name}: max |Δ| {diff}");
        checked += 1;
    }
    assert_eq!(
        checked + 1,
        want.0.len(),
        "every fixture tensor is compared (c_noise_in separately)"
    );
}

#[test]
fn four_step_heun_sample_matches_reference() {
    let model = tiny_model();
    let case = Case::open(&fixture("sampling_256x256_heun4.safetensors")).unwrap();
    let sampler = SamplerConfig {
        steps: 4,
        ..Default::default()
    };
    let want_sigmas = tensor_vec(case.get("sigmas").unwrap());
    assert!(max_abs_diff(&sampler.sigmas(), &want_sigmas) < 1e-5);
    let (out, first) = sample_case(&model, &case, &sampler, full()).unwrap();
    let d0 = planar_diff(&first, &case.planar("x_after_step0").unwrap());
    assert!(d0 < ATOL_SAMPLE, "x_after_step0: {d0}");
    let d = planar_diff(&out, &case.planar("sample").unwrap());
    assert!(d < ATOL_SAMPLE, "sample: {d}");
}

/// Configs unlike the tiny one, from the official code: three layers of width 48 (3 heads),
/// an MLP ratio of 2.5, `--layernorm-epsilon 1e-3` (which the official code applies to its
/// transformer's LayerNorms only), 64-px blocks, an `--image-size` that is no multiple of
/// the patch (a RoPE modulus of 68 over a 64-entry table); and head dim 24 with positions
/// that wrap (a 16-position table under a 64-token-wide image) at ×2. Each in full mode and
/// block by block, one and three blocks per forward.
#[test]
fn other_configs_match_the_official_code() {
    let modes = [
        full(),
        EngineOptions {
            batching: Batching::Blocks(1),
            order: Order::Auto,
        },
        EngineOptions {
            batching: Batching::Blocks(3),
            order: Order::ColumnMajor,
        },
    ];
    for (dir, case) in [
        ("official/config_b", "denoise_sigma2p5.safetensors"),
        ("official/config_c", "denoise_sigma0p5.safetensors"),
    ] {
        let model = fixture_model(dir);
        let case = Case::open(&fixture(&format!("{dir}/{case}"))).unwrap();
        for opts in modes {
            let (den, f) = denoise(&model, &case, opts).unwrap();
            let d = planar_diff(&den, &case.planar("denoised").unwrap());
            assert!(d < ATOL_DENOISE, "{dir} {opts:?}: denoised max |Δ| {d}");
            let d = planar_diff(&f, &case.planar("net_out_F").unwrap());
            assert!(d < ATOL_DENOISE, "{dir} {opts:?}: net_out_F max |Δ| {d}");
        }
    }
    let model = fixture_model("official/config_b");
    let case = Case::open(&fixture("official/config_b/sample_heun3.safetensors")).unwrap();
    let sampler = SamplerConfig {
        steps: 3,
        ..Default::default()
    };
    for opts in [modes[0], modes[2]] {
        let (out, first) = sample_case(&model, &case, &sampler, opts).unwrap();
        let d0 = planar_diff(&first, &case.planar("x_after_step0").unwrap());
        assert!(d0 < ATOL_SAMPLE, "{opts:?}: x_after_step0: {d0}");
        let d = planar_diff(&out, &case.planar("sample").unwrap());
        assert!(d < ATOL_SAMPLE, "{opts:?}: sample: {d}");
    }
}
