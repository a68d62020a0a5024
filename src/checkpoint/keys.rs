//! The official state-dict key names and shapes for a given config.

use crate::config::ModelConfig;
use std::collections::BTreeMap;

/// Every tensor the forward pass reads, with its shape (NOTES §2).
pub fn expected_shapes(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let d = cfg.hidden_size;
    let hd = cfg.head_dim();
    let nh = cfg.num_attention_heads;
    let m = cfg.mlp_inner_size;
    let bt = cfg.block_tokens();
    let lw = 3 * cfg.lr_block_tokens();
    let mut s = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>| {
        s.insert(name, shape);
    };
    let linear = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, out: usize, inp: usize| {
        add(format!("{name}.weight"), vec![out, inp]);
        add(format!("{name}.bias"), vec![out]);
    };
    for l in 0..cfg.num_layers {
        let t = format!("transformer.layers.{l}");
        linear(
            &mut add,
            &format!("{t}.attention.query_key_value"),
            3 * d,
            d,
        );
        linear(&mut add, &format!("{t}.attention.dense"), d, d);
        linear(&mut add, &format!("{t}.mlp.dense_h_to_4h"), m, d);
        linear(&mut add, &format!("{t}.mlp.dense_4h_to_h"), d, m);
        linear(
            &mut add,
            &format!("mixins.adaln_layer.adaLN_modulations.{l}.1"),
            4 * d,
            d,
        );
        add(
            format!("mixins.adaln_layer.q_layer_norm.{l}.weight"),
            vec![hd],
        );
        add(
            format!("mixins.adaln_layer.q_layer_norm.{l}.bias"),
            vec![hd],
        );
    }
    let a = "mixins.adaln_layer";
    add(format!("{a}.re_pos_embed"), vec![cfg.num_layers, 4, nh, hd]);
    let lp = cfg.lr_patch_size;
    add(
        format!("{a}.proj_lr.weight"),
        vec![d, cfg.out_channels, lp, lp],
    );
    add(format!("{a}.proj_lr.bias"), vec![d]);
    linear(&mut add, &format!("{a}.cross_attention.query"), d, d);
    linear(
        &mut add,
        &format!("{a}.cross_attention.key_value"),
        2 * d,
        d,
    );
    linear(&mut add, &format!("{a}.cross_attention.dense"), d, d);
    for n in ["cross_q_ln", "cross_k_ln"] {
        add(format!("{a}.{n}.weight"), vec![hd]);
        add(format!("{a}.{n}.bias"), vec![hd]);
    }
    add(
        format!("{a}.post_cross_attention_layernorm.weight"),
        vec![d],
    );
    add(format!("{a}.post_cross_attention_layernorm.bias"), vec![d]);
    add(
        format!("{a}.lr_query_position_embedding"),
        vec![1, bt * bt, nh, hd],
    );
    add(
        format!("{a}.lr_key_position_embedding"),
        vec![1, lw * lw, nh, hd],
    );
    let p = cfg.patch_size;
    add(
        "mixins.patch_embed.proj.weight".into(),
        vec![d, cfg.in_channels, p, p],
    );
    add("mixins.patch_embed.proj.bias".into(), vec![d]);
    linear(&mut add, "mixins.final_layer.adaLN_modulation.1", 2 * d, d);
    linear(
        &mut add,
        "mixins.final_layer.linear",
        p * p * cfg.out_channels,
        d,
    );
    linear(&mut add, "time_embed.mlp.0", d, cfg.time_embed_channels);
    linear(&mut add, "time_embed.mlp.2", d, d);
    if cfg.vector_dim > 0 {
        linear(&mut add, "cond_embed.map_vector.0", d, cfg.vector_dim);
        linear(&mut add, "cond_embed.map_vector.2", d, d);
    }
    s
}

/// Keys present in official checkpoints that the inference forward never reads
/// (NOTES §2): the unused key LayerNorm, the unused position table, the deterministic
/// RoPE buffers (recomputed), and the image encoder (loaded by the CLIP module).
pub fn is_ignored_key(name: &str) -> bool {
    name.starts_with("mixins.adaln_layer.k_layer_norm.")
        || name == "transformer.position_embeddings.weight"
        || name == "mixins.adaln_layer.rope.freqs_cos"
        || name == "mixins.adaln_layer.rope.freqs_sin"
        || name.starts_with("image_encoder.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_keys_match_official_list() {
        let text = std::fs::read_to_string("tests/fixtures/official_keys.json").unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys = v["keys"].as_object().unwrap();
        let exp = expected_shapes(&ModelConfig::released());
        for (k, shape) in &exp {
            let off: Vec<usize> = keys[k]["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(&off, shape, "{k}");
        }
        for k in keys.keys() {
            assert!(
                exp.contains_key(k) || is_ignored_key(k),
                "unhandled official key {k}"
            );
        }
    }
}
