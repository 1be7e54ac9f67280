//! `config.json` of a Hugging Face GPT-2 or GPT-Neo model, turned into a per-layer spec.
//!
//! The two architectures differ only in data: weight names and layouts, attention scale, q/k/v bias and the
//! local attention window of some layers. Everything the forward pass needs is here.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Which Hugging Face architecture the weights follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `GPT2LMHeadModel`: fused `c_attn` with bias, `Conv1D` weights stored `[in, out]`.
    Gpt2,
    /// `GPTNeoForCausalLM`: separate `q/k/v_proj` without bias, `Linear` weights `[out, in]`.
    GptNeo,
}

impl Arch {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::GptNeo => "gpt-neo",
        }
    }
}

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluNew,
}

/// What differs from one layer to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: the query at position p sees keys p-w+1 ..= p only (GPT-Neo local layers).
    pub window: Option<usize>,
    /// Multiplier of q·k before the softmax.
    pub attn_scale: f32,
}

/// Hyper-parameters of a model, all from `config.json`.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub n_ctx: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub d_ff: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    pub eos_token_id: Option<u32>,
    pub layers: Vec<LayerSpec>,
}

impl Config {
    /// Reads and checks `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Config::from_json(&text).map_err(|msg| Error::Config { path, msg })
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("missing field `model_type`")?;
        let arch = match model_type {
            "gpt2" => Arch::Gpt2,
            "gpt_neo" => Arch::GptNeo,
            other => {
                return Err(format!(
                    "model_type {other:?} is not supported (gpt2, gpt_neo)"
                ))
            }
        };
        let get = |key: &str| -> Result<usize, String> {
            let f = v.get(key).ok_or(format!("missing field `{key}`"))?;
            f.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or(format!(
                    "field `{key}` must be a positive integer, found {f}"
                ))
        };
        let opt_usize = |key: &str| -> Result<Option<usize>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(f) => f
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| Some(n as usize))
                    .ok_or(format!(
                        "field `{key}` must be a positive integer or null, found {f}"
                    )),
            }
        };
        let bool_or = |key: &str, default: bool| -> Result<bool, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(f) => f
                    .as_bool()
                    .ok_or(format!("field `{key}` must be a boolean")),
            }
        };
        let (vocab_size, n_ctx, d_model, n_head, n_layer, d_ff, eps_key) = match arch {
            Arch::Gpt2 => {
                let d = get("n_embd")?;
                (
                    get("vocab_size")?,
                    get("n_positions")?,
                    d,
                    get("n_head")?,
                    get("n_layer")?,
                    opt_usize("n_inner")?.unwrap_or(4 * d),
                    "layer_norm_epsilon",
                )
            }
            Arch::GptNeo => {
                let d = get("hidden_size")?;
                (
                    get("vocab_size")?,
                    get("max_position_embeddings")?,
                    d,
                    get("num_heads")?,
                    get("num_layers")?,
                    opt_usize("intermediate_size")?.unwrap_or(4 * d),
                    "layer_norm_epsilon",
                )
            }
        };
        if d_model % n_head != 0 {
            return Err(format!(
                "hidden size {d_model} is not divisible by the number of heads {n_head}"
            ));
        }
        let layer_norm_eps = match v.get(eps_key) {
            None => 1e-5,
            Some(f) => f
                .as_f64()
                .filter(|e| *e > 0.0 && e.is_finite())
                .ok_or(format!("field `{eps_key}` must be a positive number"))?
                as f32,
        };
        let act_key = "activation_function";
        let activation = match v.get(act_key).and_then(Value::as_str).unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
            other => return Err(format!("activation {other:?} is not supported (gelu_new)")),
        };
        let head_dim = d_model / n_head;
        let layers = match arch {
            Arch::Gpt2 => {
                if bool_or("add_cross_attention", false)? {
                    return Err("cross-attention GPT-2 models are not supported".into());
                }
                let scale_weights = bool_or("scale_attn_weights", true)?;
                let by_layer = bool_or("scale_attn_by_inverse_layer_idx", false)?;
                (0..n_layer)
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
                    .collect()
            }
            Arch::GptNeo => {
                let kinds = neo_attention_layers(&v, n_layer)?;
                let window = get("window_size")?;
                kinds
                    .into_iter()
                    .map(|local| LayerSpec {
                        window: local.then_some(window),
                        attn_scale: 1.0,
                    })
                    .collect()
            }
        };
        let eos_token_id = match v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as u32),
            _ => None,
        };
        if let Some(e) = eos_token_id {
            if e as usize >= vocab_size {
                return Err(format!(
                    "eos_token_id {e} is not below vocab_size {vocab_size}"
                ));
            }
        }
        Ok(Config {
            arch,
            vocab_size,
            n_ctx,
            d_model,
            n_head,
            d_ff,
            layer_norm_eps,
            activation,
            tie_word_embeddings: bool_or("tie_word_embeddings", true)?,
            eos_token_id,
            layers,
        })
    }

    /// Number of transformer blocks.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

/// GPT-Neo's `attention_types` (`[[["global","local"], 3]]`) expanded per layer; true = local.
fn neo_attention_layers(v: &Value, n_layer: usize) -> Result<Vec<bool>, String> {
    let mut kinds = Vec::new();
    if let Some(types) = v.get("attention_types").and_then(Value::as_array) {
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
            for _ in 0..repeat {
                for n in names {
                    kinds.push(parse_kind(n)?);
                }
            }
        }
    } else if let Some(list) = v.get("attention_layers").and_then(Value::as_array) {
        for n in list {
            kinds.push(parse_kind(n)?);
        }
    } else {
        return Err("missing field `attention_types` (or `attention_layers`)".into());
    }
    if kinds.len() != n_layer {
        return Err(format!(
            "attention types describe {} layers but num_layers is {n_layer}",
            kinds.len()
        ));
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
