//! OPT (`OPTForCausalLM`): learned positions offset by 2, separate q/k/v with biases, the query scaled
//! before the product, ReLU; pre-LN (OPT-125m) or post-LN without a final LayerNorm (OPT-350m,
//! `do_layer_norm_before = false`), and `project_in`/`project_out` when the embedding is narrower than
//! the hidden width. The LM head is tied to `embed_tokens`.

use serde_json::{json, Value};
use slimlm_kernels::Layout;

use super::{
    limits, Activation, Arch, Biases, Config, Family, Fields, LayerSpec, Names, NormPlacement,
    Positions, QkvLayout, Residual, ScaleAt,
};

pub(super) static FAMILY: Family = Family {
    name: "opt",
    model_type: "opt",
    class: "OPTForCausalLM",
    names: Names {
        roots: &["model.decoder.", "decoder."],
        embed: "embed_tokens",
        positions: Some("embed_positions"),
        embed_norm: None,
        project_in: Some("project_in"),
        project_out: Some("project_out"),
        final_norm: Some("final_layer_norm"),
        lm_head: "lm_head",
        layers: "layers",
        ln1: "self_attn_layer_norm",
        ln2: "final_layer_norm",
        qkv: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        attn_out: "self_attn.out_proj",
        mlp_in: "fc1",
        mlp_out: "fc2",
        ignored: &[],
    },
    layout: Layout::OutIn,
    parse,
    presets: &[
        ("125m", || preset(768, 12, 12, 3072, 768, true)),
        ("350m", || preset(1024, 24, 16, 4096, 512, false)),
        ("tiny", || preset(64, 2, 4, 256, 64, true)),
    ],
};

fn preset(d: usize, layers: usize, heads: usize, ff: usize, proj: usize, pre_ln: bool) -> Value {
    json!({
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "activation_function": "relu",
        "vocab_size": 50272, "max_position_embeddings": if d == 64 { 128 } else { 2048 },
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads, "ffn_dim": ff,
        "word_embed_proj_dim": proj, "do_layer_norm_before": pre_ln, "_remove_final_layer_norm": false,
        "enable_bias": true, "layer_norm_elementwise_affine": true,
        "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "tie_word_embeddings": true,
        "init_std": 0.02,
    })
}

fn parse(f: &Fields) -> Result<Config, String> {
    let d = f.size("hidden_size", limits::WIDTH)?;
    let n_head = f.size("num_attention_heads", limits::HEADS)?;
    let n_layer = f.size("num_hidden_layers", limits::LAYERS)?;
    let vocab_size = f.size("vocab_size", limits::VOCAB)?;
    let pre_ln = f.bool_or("do_layer_norm_before", true)?;
    if !f.bool_or("layer_norm_elementwise_affine", true)? {
        return Err("OPT without LayerNorm weights (layer_norm_elementwise_affine = false) is not supported".into());
    }
    let bias = f.bool_or("enable_bias", true)?;
    Ok(Config {
        arch: Arch(&FAMILY),
        vocab_size,
        n_ctx: f.size("max_position_embeddings", limits::CONTEXT)?,
        d_model: d,
        embed_dim: f
            .opt_size("word_embed_proj_dim", limits::WIDTH)?
            .unwrap_or(d),
        n_head,
        d_ff: f.size("ffn_dim", limits::WIDTH)?,
        layer_norm_eps: 1e-5,
        positions: Positions::Learned { offset: 2 },
        norm: if pre_ln {
            NormPlacement::Pre
        } else {
            NormPlacement::Post
        },
        final_norm: pre_ln && !f.bool_or("_remove_final_layer_norm", false)?,
        embed_norm: false,
        residual: Residual::Sequential,
        activation: Activation::parse(f.str_or("activation_function", "relu")?)?,
        qkv: QkvLayout::Separate,
        scale_at: ScaleAt::Query,
        biases: Biases::all(bias),
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        eos_token_ids: f.token_ids("eos_token_id", vocab_size)?,
        layers: LayerSpec::uniform(n_layer, d / n_head),
    })
}
