//! GPT-Neo (`GPTNeoForCausalLM`): GPT-2's block with separate q/k/v projections without bias, no
//! attention scaling, and local (windowed) attention on some layers.

use serde_json::{json, Value};
use slimlm_kernels::Layout;

use super::{
    limits, Activation, Arch, Biases, Config, Family, Fields, LayerSpec, Names, NormPlacement,
    Positions, QkvLayout, Residual, ScaleAt,
};

pub(super) static FAMILY: Family = Family {
    name: "gpt-neo",
    model_type: "gpt_neo",
    class: "GPTNeoForCausalLM",
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
        qkv: &[
            "attn.attention.q_proj",
            "attn.attention.k_proj",
            "attn.attention.v_proj",
        ],
        attn_out: "attn.attention.out_proj",
        mlp_in: "mlp.c_fc",
        mlp_out: "mlp.c_proj",
        ignored: &[".attn.attention.bias", ".attn.attention.masked_bias"],
    },
    layout: Layout::OutIn,
    parse,
    presets: &[
        ("125m", || preset(768, 12, 12, 2048, 256)),
        ("1.3b", || preset(2048, 24, 16, 2048, 256)),
        ("tiny", || preset(64, 2, 4, 128, 16)),
    ],
};

fn preset(d: usize, layers: usize, heads: usize, ctx: usize, window: usize) -> Value {
    json!({
        "architectures": ["GPTNeoForCausalLM"], "model_type": "gpt_neo", "activation_function": "gelu_new",
        "vocab_size": 50257, "max_position_embeddings": ctx, "hidden_size": d,
        "num_layers": layers, "num_heads": heads, "intermediate_size": null,
        "attention_types": [[["global", "local"], layers / 2]], "window_size": window,
        "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
        "tie_word_embeddings": true, "initializer_range": 0.02,
    })
}

fn parse(f: &Fields) -> Result<Config, String> {
    let d = f.size("hidden_size", limits::WIDTH)?;
    let n_layer = f.size("num_layers", limits::LAYERS)?;
    let vocab_size = f.size("vocab_size", limits::VOCAB)?;
    let window = f.size("window_size", limits::CONTEXT)?;
    let layers = attention_layers(f, n_layer)?
        .into_iter()
        .map(|local| LayerSpec {
            window: local.then_some(window),
            attn_scale: 1.0,
        })
        .collect();
    Ok(Config {
        arch: Arch(&FAMILY),
        vocab_size,
        n_ctx: f.size("max_position_embeddings", limits::CONTEXT)?,
        d_model: d,
        embed_dim: d,
        n_head: f.size("num_heads", limits::HEADS)?,
        d_ff: f
            .opt_size("intermediate_size", limits::WIDTH)?
            .unwrap_or(4 * d),
        layer_norm_eps: f.epsilon_or("layer_norm_epsilon", 1e-5)?,
        positions: Positions::Learned { offset: 0 },
        norm: NormPlacement::Pre,
        final_norm: true,
        embed_norm: false,
        residual: Residual::Sequential,
        activation: Activation::parse(f.str_or("activation_function", "gelu_new")?)?,
        qkv: QkvLayout::Separate,
        scale_at: ScaleAt::Scores,
        biases: Biases {
            qkv: false,
            attn_out: true,
            mlp: true,
        },
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        eos_token_ids: f.token_ids("eos_token_id", vocab_size)?,
        layers,
    })
}

/// `attention_types` (`[[["global","local"], 3]]`) expanded per layer, or `attention_layers`; true =
/// local. The expansion is checked against `num_layers` before it is made.
fn attention_layers(f: &Fields, n_layer: usize) -> Result<Vec<bool>, String> {
    let mut kinds = Vec::new();
    for key in ["attention_types", "attention_layers"] {
        if f.get(key).is_some_and(|v| !v.is_array() && !v.is_null()) {
            return Err(format!("`{key}` must be a list"));
        }
    }
    if let Some(types) = f.get("attention_types").and_then(Value::as_array) {
        let mut total = 0u128;
        let mut entries = Vec::new();
        for entry in types {
            let pair = entry.as_array().filter(|p| p.len() == 2).ok_or(
                "`attention_types` entries must be [[kinds...], repeat] pairs".to_string(),
            )?;
            let names = pair[0]
                .as_array()
                .ok_or("`attention_types` kinds must be a list")?;
            let repeat = pair[1]
                .as_u64()
                .ok_or("`attention_types` repeat must be an integer")?;
            total += names.len() as u128 * repeat as u128;
            entries.push((names, repeat));
        }
        if total != n_layer as u128 {
            return Err(format!(
                "attention types describe {total} layers but num_layers is {n_layer}"
            ));
        }
        for (names, repeat) in entries {
            for _ in 0..repeat {
                for n in names {
                    kinds.push(parse_kind(n)?);
                }
            }
        }
    } else if let Some(list) = f.get("attention_layers").and_then(Value::as_array) {
        if list.len() != n_layer {
            return Err(format!(
                "attention_layers lists {} layers but num_layers is {n_layer}",
                list.len()
            ));
        }
        for n in list {
            kinds.push(parse_kind(n)?);
        }
    } else {
        return Err("missing field `attention_types` (or `attention_layers`)".into());
    }
    Ok(kinds)
}

fn parse_kind(v: &Value) -> Result<bool, String> {
    match v.as_str() {
        Some("global") => Ok(false),
        Some("local") => Ok(true),
        _ => Err(format!("attention type {v} is not \"global\" or \"local\"")),
    }
}
