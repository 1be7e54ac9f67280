//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LN, fused `c_attn` with `[q | k | v]` outputs,
//! `Conv1D` weights stored `[in, out]`, biases everywhere, tied head.

use serde_json::{json, Value};
use slimlm_kernels::Layout;

use super::{
    limits, Activation, Arch, Biases, Config, Family, Fields, LayerSpec, Names, NormPlacement,
    Positions, QkvLayout, Residual, ScaleAt,
};

pub(super) static FAMILY: Family = Family {
    name: "gpt2",
    model_type: "gpt2",
    class: "GPT2LMHeadModel",
    names: Names {
        roots: &["transformer.", ""],
        embed: "wte",
        positions: Some("wpe"),
        embed_norm: None,
        project_in: None,
        project_out: None,
        final_norm: Some("ln_f"),
        lm_head: "lm_head",
        layers: "h",
        ln1: "ln_1",
        ln2: "ln_2",
        qkv: &["attn.c_attn"],
        attn_out: "attn.c_proj",
        mlp_in: "mlp.c_fc",
        mlp_out: "mlp.c_proj",
        ignored: &[".attn.bias", ".attn.masked_bias"],
    },
    layout: Layout::InOut,
    parse,
    presets: &[
        ("124m", || preset(768, 12, 12, 1024)),
        ("355m", || preset(1024, 24, 16, 1024)),
        ("tiny", || preset(64, 2, 4, 128)),
    ],
};

fn preset(d: usize, layers: usize, heads: usize, ctx: usize) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": 50257, "n_positions": ctx, "n_embd": d, "n_layer": layers,
        "n_head": heads, "n_inner": null, "layer_norm_epsilon": 1e-5,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": true,
        "scale_attn_weights": true, "initializer_range": 0.02,
    })
}

fn parse(f: &Fields) -> Result<Config, String> {
    let d = f.size("n_embd", limits::WIDTH)?;
    let n_head = f.size("n_head", limits::HEADS)?;
    let n_layer = f.size("n_layer", limits::LAYERS)?;
    let vocab_size = f.size("vocab_size", limits::VOCAB)?;
    if f.bool_or("add_cross_attention", false)? {
        return Err("cross-attention GPT-2 models are not supported".into());
    }
    let scale_weights = f.bool_or("scale_attn_weights", true)?;
    let by_layer = f.bool_or("scale_attn_by_inverse_layer_idx", false)?;
    let head_dim = d / n_head;
    let layers = (0..n_layer)
        .map(|i| {
            let mut s = if scale_weights {
                1.0 / (head_dim as f32).sqrt()
            } else {
                1.0
            };
            if by_layer {
                s /= (i + 1) as f32;
            }
            LayerSpec {
                window: None,
                attn_scale: s,
            }
        })
        .collect();
    Ok(Config {
        arch: Arch(&FAMILY),
        vocab_size,
        n_ctx: f.size("n_positions", limits::CONTEXT)?,
        d_model: d,
        embed_dim: d,
        n_head,
        d_ff: f.opt_size("n_inner", limits::WIDTH)?.unwrap_or(4 * d),
        layer_norm_eps: f.epsilon_or("layer_norm_epsilon", 1e-5)?,
        positions: Positions::Learned { offset: 0 },
        norm: NormPlacement::Pre,
        final_norm: true,
        embed_norm: false,
        residual: Residual::Sequential,
        activation: Activation::parse(f.str_or("activation_function", "gelu_new")?)?,
        qkv: QkvLayout::Fused,
        scale_at: ScaleAt::Scores,
        biases: Biases::all(true),
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        eos_token_ids: f.token_ids("eos_token_id", vocab_size)?,
        layers,
    })
}
