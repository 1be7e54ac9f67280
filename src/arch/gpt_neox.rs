//! GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): rotary embedding on the first `rotary_pct` of each head,
//! a fused `query_key_value` whose outputs are `[q_h | k_h | v_h]` head after head, parallel (or
//! sequential) residual, exact GELU, untied `embed_out`.

use serde_json::{json, Value};
use slimlm_kernels::Layout;

use super::{
    limits, Activation, Arch, Biases, Config, Family, Fields, LayerSpec, Names, NormPlacement,
    Positions, QkvLayout, Residual, ScaleAt,
};

pub(super) static FAMILY: Family = Family {
    name: "gpt-neox",
    model_type: "gpt_neox",
    class: "GPTNeoXForCausalLM",
    names: Names {
        roots: &["gpt_neox."],
        embed: "embed_in",
        positions: None,
        embed_norm: None,
        project_in: None,
        project_out: None,
        final_norm: Some("final_layer_norm"),
        lm_head: "embed_out",
        layers: "layers",
        ln1: "input_layernorm",
        ln2: "post_attention_layernorm",
        qkv: &["attention.query_key_value"],
        attn_out: "attention.dense",
        mlp_in: "mlp.dense_h_to_4h",
        mlp_out: "mlp.dense_4h_to_h",
        ignored: &[
            ".attention.bias",
            ".attention.masked_bias",
            ".rotary_emb.inv_freq",
        ],
    },
    layout: Layout::OutIn,
    parse,
    presets: &[
        ("160m", || preset(768, 12, 12, 2048)),
        ("410m", || preset(1024, 24, 16, 2048)),
        ("tiny", || preset(64, 2, 4, 128)),
    ],
};

fn preset(d: usize, layers: usize, heads: usize, ctx: usize) -> Value {
    json!({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu",
        "vocab_size": 50304, "max_position_embeddings": ctx, "hidden_size": d,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 4 * d,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true,
        "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": false,
        "attention_bias": true, "initializer_range": 0.02,
    })
}

fn parse(f: &Fields) -> Result<Config, String> {
    let d = f.size("hidden_size", limits::WIDTH)?;
    let n_head = f.size("num_attention_heads", limits::HEADS)?;
    let n_layer = f.size("num_hidden_layers", limits::LAYERS)?;
    let vocab_size = f.size("vocab_size", limits::VOCAB)?;
    let head_dim = d / n_head;
    let bias = f.bool_or("attention_bias", true)?;
    Ok(Config {
        arch: Arch(&FAMILY),
        vocab_size,
        n_ctx: f.size("max_position_embeddings", limits::CONTEXT)?,
        d_model: d,
        embed_dim: d,
        n_head,
        d_ff: f.size("intermediate_size", limits::WIDTH)?,
        layer_norm_eps: f.epsilon_or("layer_norm_eps", 1e-5)?,
        positions: rotary(f, head_dim)?,
        norm: NormPlacement::Pre,
        final_norm: true,
        embed_norm: false,
        residual: if f.bool_or("use_parallel_residual", true)? {
            Residual::Parallel
        } else {
            Residual::Sequential
        },
        activation: Activation::parse(f.str_or("hidden_act", "gelu")?)?,
        qkv: QkvLayout::FusedPerHead,
        scale_at: ScaleAt::Scores,
        biases: Biases {
            qkv: bias,
            attn_out: bias,
            mlp: true,
        },
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        eos_token_ids: f.token_ids("eos_token_id", vocab_size)?,
        layers: LayerSpec::uniform(n_layer, head_dim),
    })
}

/// The rotary parameters, wherever transformers wrote them: `rope_parameters` (v5:
/// `partial_rotary_factor`, `rope_theta`, `rope_type`), top-level `partial_rotary_factor`/`rope_theta`,
/// or the older `rotary_pct`/`rotary_emb_base`.
fn rotary(f: &Fields, head_dim: usize) -> Result<Positions, String> {
    let nested = f.get("rope_parameters").or(f.get("rope_scaling"));
    if let Some(p) = nested {
        if !p.is_object() {
            return Err(format!("`rope_parameters` must be an object, found {p}"));
        }
    }
    let inner = nested.map(Fields);
    let pick = |keys: &[&str]| -> Result<Option<f64>, String> {
        for k in keys {
            for src in inner.iter().chain(std::iter::once(f)) {
                if src.get(k).is_some() {
                    return src.positive_f64_or(k, 0.0).map(Some);
                }
            }
        }
        Ok(None)
    };
    if let Some(p) = &inner {
        let kind = p.str_or("rope_type", p.str_or("type", "default")?)?;
        if kind != "default" {
            return Err(format!("rope_type {kind:?} is not supported (default)"));
        }
    }
    let pct = pick(&["partial_rotary_factor", "rotary_pct"])?.unwrap_or(0.25);
    let base = pick(&["rope_theta", "rotary_emb_base"])?.unwrap_or(10000.0);
    if pct > 1.0 {
        return Err(format!("rotary fraction {pct} is above 1"));
    }
    Ok(Positions::Rotary {
        dims: (head_dim as f64 * pct) as usize,
        base: base as f32,
    })
}
