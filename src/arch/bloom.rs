//! BLOOM (`BloomForCausalLM`): ALiBi instead of positions, a LayerNorm after the embedding, a fused
//! `query_key_value` whose outputs are `[q_h | k_h | v_h]` head after head, tanh GELU, tied head. Its
//! config sets no context limit: slimlm uses 2048, the length BLOOM was trained with
//! ([`DEFAULT_CONTEXT`]), which `Config::set_context` (CLI `--context`) changes.

use serde_json::{json, Value};
use slimlm_kernels::Layout;

use super::{
    limits, Activation, Arch, Biases, Config, Family, Fields, LayerSpec, Names, NormPlacement,
    Positions, QkvLayout, Residual, ScaleAt,
};

/// The context length when the config gives none.
pub const DEFAULT_CONTEXT: usize = 2048;

pub(super) static FAMILY: Family = Family {
    name: "bloom",
    model_type: "bloom",
    class: "BloomForCausalLM",
    names: Names {
        roots: &["transformer.", ""],
        embed: "word_embeddings",
        positions: None,
        embed_norm: Some("word_embeddings_layernorm"),
        project_in: None,
        project_out: None,
        final_norm: Some("ln_f"),
        lm_head: "lm_head",
        layers: "h",
        ln1: "input_layernorm",
        ln2: "post_attention_layernorm",
        qkv: &["self_attention.query_key_value"],
        attn_out: "self_attention.dense",
        mlp_in: "mlp.dense_h_to_4h",
        mlp_out: "mlp.dense_4h_to_h",
        ignored: &[],
    },
    layout: Layout::OutIn,
    parse,
    presets: &[
        ("560m", || preset(1024, 24, 16)),
        ("tiny", || preset(64, 2, 4)),
    ],
};

fn preset(d: usize, layers: usize, heads: usize) -> Value {
    json!({
        "architectures": ["BloomForCausalLM"], "model_type": "bloom", "vocab_size": 250880,
        "hidden_size": d, "n_layer": layers, "n_head": heads, "layer_norm_epsilon": 1e-5,
        "apply_residual_connection_post_layernorm": false, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 3, "tie_word_embeddings": true, "initializer_range": 0.02,
    })
}

fn parse(f: &Fields) -> Result<Config, String> {
    let d = f.size_any(&["hidden_size", "n_embed"], limits::WIDTH)?;
    let n_head = f.size_any(&["n_head", "num_attention_heads"], limits::HEADS)?;
    let n_layer = f.size_any(&["n_layer", "num_hidden_layers"], limits::LAYERS)?;
    let vocab_size = f.size("vocab_size", limits::VOCAB)?;
    if f.bool_or("apply_residual_connection_post_layernorm", false)? {
        return Err("apply_residual_connection_post_layernorm = true is not supported".into());
    }
    let head_dim = d / n_head.max(1);
    Ok(Config {
        arch: Arch(&FAMILY),
        vocab_size,
        n_ctx: DEFAULT_CONTEXT,
        d_model: d,
        embed_dim: d,
        n_head,
        d_ff: 4 * d,
        layer_norm_eps: f.epsilon_or("layer_norm_epsilon", 1e-5)?,
        positions: Positions::Alibi,
        norm: NormPlacement::Pre,
        final_norm: true,
        embed_norm: true,
        residual: Residual::Sequential,
        activation: Activation::GeluNew,
        qkv: QkvLayout::FusedPerHead,
        scale_at: ScaleAt::Scores,
        biases: Biases::all(true),
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        eos_token_ids: f.token_ids("eos_token_id", vocab_size)?,
        layers: LayerSpec::uniform(n_layer, head_dim),
    })
}
