//! The block engine must reproduce whole-image ("full") evaluation exactly, for every
//! batch size, both visiting orders and non-square block grids.

mod common;
use common::*;
use infdit::config::ModelConfig;
use infdit::engine::{Batching, Conditioning, Engine, EngineOptions, Order, Positions};
use infdit::imageops::Planar;
use infdit::model::InfDit;
use infdit::parity::{denoise, Case};
use rand::{Rng, SeedableRng};

fn small_config() -> ModelConfig {
    let mut cfg = ModelConfig::from_json_file(&fixture("tiny/config.json")).unwrap();
    cfg.hidden_size = 32;
    cfg.num_attention_heads = 2;
    cfg.mlp_inner_size = 48;
    cfg.num_layers = 3;
    cfg.vector_dim = 8;
    // 8×8-token blocks keep the exhaustive sweep fast; every code path is the same.
    cfg.image_block_size_px = 32;
    cfg
}

fn random_planar(rng: &mut impl Rng, c: usize, h: usize, w: usize) -> Planar {
    Planar::new(
        c,
        h,
        w,
        (0..c * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect(),
    )
}

/// Random inputs for a `rows × cols`-block image of `cfg`'s geometry.
fn case(cfg: &ModelConfig, rows: usize, cols: usize, seed: u64) -> (Planar, Conditioning) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let block = cfg.image_block_size_px;
    let (h, w) = (rows * block, cols * block);
    let x = random_planar(&mut rng, 3, h, w);
    let concat_lr = random_planar(&mut rng, 3, h, w);
    let lr = random_planar(&mut rng, 3, h / cfg.sr_scale, w / cfg.sr_scale);
    let vector = (cfg.vector_dim > 0).then(|| {
        let v: Vec<f32> = (0..cfg.vector_dim)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        candle_core::Tensor::from_vec(v, (1, cfg.vector_dim), &candle_core::Device::Cpu).unwrap()
    });
    (
        x,
        Conditioning {
            concat_lr,
            lr,
            vector,
            positions: Positions::Grid,
        },
    )
}

fn run(
    model: &InfDit,
    x: &Planar,
    cond: &Conditioning,
    batching: Batching,
    order: Order,
) -> Planar {
    let mut seen = 0;
    let out = Engine::new(model, EngineOptions { batching, order })
        .denoise(x, 1.7, cond, &mut |n| seen += n)
        .unwrap();
    let block = model.config().image_block_size_px;
    assert_eq!(
        seen,
        (x.height / block) * (x.width / block),
        "progress counts every block once"
    );
    out
}

/// Block mode equals full mode for every batch size and order on these grids.
fn assert_blocks_equal_full(cfg: &ModelConfig, grids: &[(usize, usize)]) {
    let model = InfDit::random(cfg, 7, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    for &(rows, cols) in grids {
        let (x, cond) = case(cfg, rows, cols, (rows * 10 + cols) as u64);
        let full = run(&model, &x, &cond, Batching::Full, Order::Auto);
        let n = rows * cols;
        for order in [Order::RowMajor, Order::ColumnMajor, Order::Auto] {
            for b in 1..=n {
                let got = run(&model, &x, &cond, Batching::Blocks(b), order);
                let d = planar_diff(&got, &full);
                assert!(
                    d < 1e-5,
                    "{rows}×{cols} blocks, batch {b}, {order:?}: max |Δ| {d}"
                );
            }
        }
    }
}

#[test]
fn blocks_equal_full_for_all_batch_sizes_orders_and_shapes() {
    assert_blocks_equal_full(&small_config(), &[(3, 5), (5, 3), (1, 4), (4, 1), (2, 2)]);
}

/// Other block geometries: 2-px and 8-px patches, 2× and 4× scale, other LR patch sizes
/// and head counts, with and without the image-embedding condition.
#[test]
fn blocks_equal_full_in_other_geometries() {
    let geometries = [
        // (patch, block px, sr scale, lr patch, heads, vector dim)
        (2, 16, 2, 2, 4, 0),
        (8, 64, 4, 4, 2, 8),
        (4, 32, 2, 4, 8, 8),
    ];
    for (patch, block, scale, lr_patch, heads, vector) in geometries {
        let cfg = ModelConfig {
            patch_size: patch,
            image_block_size_px: block,
            sr_scale: scale,
            lr_patch_size: lr_patch,
            num_attention_heads: heads,
            vector_dim: vector,
            ..small_config()
        };
        cfg.validate().unwrap();
        assert_blocks_equal_full(&cfg, &[(2, 3)]);
    }
}

#[test]
fn block_mode_passes_the_reference_fixtures() {
    let model = tiny_model();
    let case = Case::open(&fixture("case_a_sigma2p5.safetensors")).unwrap();
    let want = case.planar("denoised").unwrap();
    for b in [1, 2, 4] {
        for order in [Order::RowMajor, Order::ColumnMajor] {
            let (den, _) = denoise(
                &model,
                &case,
                EngineOptions {
                    batching: Batching::Blocks(b),
                    order,
                },
            )
            .unwrap();
            let d = planar_diff(&den, &want);
            assert!(d < 1e-4, "batch {b} {order:?}: {d}");
        }
    }
}

#[test]
fn tapped_and_untapped_evaluations_agree() {
    // Untapped evaluations may add the residuals inside the output projections (a fused
    // GEMM epilogue on CUDA); tapped ones form every branch output. On the CPU both are
    // the same ops, so the results must agree exactly, and the taps must see every layer.
    let cfg = small_config();
    let model =
        InfDit::random(&cfg, 11, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let (x, cond) = case(&cfg, 2, 3, 5);
    let engine = Engine::new(
        &model,
        EngineOptions {
            batching: Batching::Blocks(2),
            order: Order::RowMajor,
        },
    );
    let (plain, _) = engine.network_output(&x, 0.8, &cond, &mut |_| {}).unwrap();
    let mut names = std::collections::BTreeSet::new();
    let (tapped, _) = engine
        .network_output_tapped(&x, 0.8, &cond, &mut |_| {}, &mut |name, _| {
            names.insert(name.to_string());
            Ok(())
        })
        .unwrap();
    assert_eq!(planar_diff(&plain, &tapped), 0.0);
    for l in 0..small_config().num_layers {
        assert!(names.contains(&format!("layer{l}_attn_out")), "{names:?}");
    }
}
