//! The architecture spec: what each model family is, as data.
//!
//! A family's file (`gpt2.rs`, `gpt_neo.rs`, `opt.rs`, `gpt_neox.rs`, `bloom.rs`) says how its tensors are
//! named and turns its `config.json` into a [`Config`]: sizes plus the spec the rest of slimlm reads —
//! position encoding, residual form, norm placement, activation, QKV layout, attention scaling, biases,
//! embedding projections, tied head. The loader, the forward pass, the compressor, `synth`, `inspect` and
//! `eval` branch on these fields, never on tensor names or family. Adding a family is one new file and a
//! row in [`FAMILIES`].

mod bloom;
pub mod fields;
mod gpt2;
mod gpt_neo;
mod gpt_neox;
mod opt;

use std::fmt;
use std::path::Path;

use serde_json::Value;
use slimlm_kernels::Layout;

use crate::error::{Error, Result};
pub use fields::{limits, Fields};

/// Every family slimlm runs, in the order they are listed to users.
pub static FAMILIES: &[&Family] = &[
    &gpt2::FAMILY,
    &gpt_neo::FAMILY,
    &opt::FAMILY,
    &gpt_neox::FAMILY,
    &bloom::FAMILY,
];

/// One model family: its names, and how its `config.json` becomes a [`Config`].
pub struct Family {
    /// The name used on the command line and in reports (`gpt2`, `gpt-neo`, `opt`, `gpt-neox`, `bloom`).
    pub name: &'static str,
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The transformers class (`GPT2LMHeadModel`, ...).
    pub class: &'static str,
    /// Tensor names.
    pub names: Names,
    /// Storage of the blocks' weight matrices (GPT-2's `Conv1D` is `[in, out]`; `nn.Linear` `[out, in]`).
    pub layout: Layout,
    /// Parses a `config.json` of this family.
    pub parse: fn(&Fields) -> Result<Config, String>,
    /// Presets for `slimlm synth`.
    pub presets: &'static [SynthPreset],
}

/// A `slimlm synth` preset: a name (`124m`) and the `config.json` of a published model of that size.
pub type SynthPreset = (&'static str, fn() -> Value);

/// A model family, as a handle on its entry of [`FAMILIES`].
#[derive(Clone, Copy)]
pub struct Arch(&'static Family);

impl Arch {
    /// The family's description.
    pub fn family(self) -> &'static Family {
        self.0
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The family called `name` (`gpt2`, `gpt-neo`, `opt`, `gpt-neox`, `bloom`; `model_type` spellings
    /// such as `gpt_neox` are accepted too).
    pub fn find(name: &str) -> Result<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.name == name || f.model_type == name)
            .map(|f| Arch(f))
            .ok_or_else(|| {
                Error::input(format!(
                    "unknown architecture {name:?} (supported: {})",
                    Arch::names()
                ))
            })
    }

    /// The supported family names, comma-separated.
    pub fn names() -> String {
        FAMILIES
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Arch) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Arch {}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

/// Tensor names of a family, relative to the model root (e.g. `transformer.`) except the untied LM head,
/// which sits at the top level. Block tensors are `{root}{layers}.{i}.{part}`.
pub struct Names {
    /// Candidate roots, tried in order: the first under which the token embedding exists is used.
    pub roots: &'static [&'static str],
    /// Token embedding.
    pub embed: &'static str,
    /// Learned position table (with [`Positions::Learned`]).
    pub positions: Option<&'static str>,
    /// LayerNorm right after the embedding (BLOOM).
    pub embed_norm: Option<&'static str>,
    /// Projections from the embedding width to the hidden width and back (OPT-350m).
    pub project_in: Option<&'static str>,
    pub project_out: Option<&'static str>,
    /// LayerNorm after the last block.
    pub final_norm: Option<&'static str>,
    /// The untied LM head (top level, no root).
    pub lm_head: &'static str,
    /// The list of blocks.
    pub layers: &'static str,
    /// Per block: the norm before attention (after it, post-LN) and the one before the MLP.
    pub ln1: &'static str,
    pub ln2: &'static str,
    /// Query/key/value: one fused matrix or three (q, k, v).
    pub qkv: &'static [&'static str],
    pub attn_out: &'static str,
    pub mlp_in: &'static str,
    pub mlp_out: &'static str,
    /// Suffixes of buffers stored beside the weights that are recomputed, not read (causal masks,
    /// rotary inverse frequencies).
    pub ignored: &'static [&'static str],
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Positions {
    /// A learned table added to the token embedding; position `p` reads row `p + offset` (OPT: 2).
    Learned { offset: usize },
    /// Rotary embedding of the first `dims` values of every query and key head, `rotate_half` pairing,
    /// inverse frequencies `base^(−2j/dims)` (GPT-NeoX).
    Rotary { dims: usize, base: f32 },
    /// A bias linear in the key's distance, one slope per head (BLOOM).
    Alibi,
}

/// Where the LayerNorms of a block sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before attention and before the MLP (GPT-2 and most others).
    Pre,
    /// After each residual addition (OPT-350m: `do_layer_norm_before = false`).
    Post,
}

/// How a block's two halves add to the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(ln1(x)); x += mlp(ln2(x))`.
    Sequential,
    /// `x += attn(ln1(x)) + mlp(ln2(x))`, both from the same `x` (GPT-NeoX `use_parallel_residual`).
    Parallel,
}

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, BLOOM's `bloom_gelu`).
    GeluNew,
    /// The exact GELU through erf (`gelu`).
    GeluErf,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses transformers' activation names.
    pub fn parse(name: &str) -> Result<Activation, String> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            other => {
                return Err(format!(
                    "activation {other:?} is not supported (gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)"
                ))
            }
        })
    }
}

/// How the query, key and value projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// One matrix whose outputs are `[q | k | v]`, each `d` wide (GPT-2).
    Fused,
    /// One matrix whose outputs are, head after head, `[q_h | k_h | v_h]` (GPT-NeoX, BLOOM).
    FusedPerHead,
    /// Three matrices (GPT-Neo, OPT).
    Separate,
}

impl QkvLayout {
    /// Offsets of head `h`'s query, key and value in one token's `3·d` outputs (for `Separate`, as the
    /// forward pass packs them: `[q | k | v]`).
    pub fn offsets(self, h: usize, head_dim: usize, d: usize) -> (usize, usize, usize) {
        match self {
            QkvLayout::Fused | QkvLayout::Separate => {
                (h * head_dim, d + h * head_dim, 2 * d + h * head_dim)
            }
            QkvLayout::FusedPerHead => {
                let at = 3 * h * head_dim;
                (at, at + head_dim, at + 2 * head_dim)
            }
        }
    }
}

/// Where the attention scale is applied. The same product up to rounding; kept as transformers does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleAt {
    /// On the query, before the product (OPT).
    Query,
    /// On the scores `q·k`.
    Scores,
}

/// Which linear layers of a block carry a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Biases {
    pub qkv: bool,
    pub attn_out: bool,
    pub mlp: bool,
}

impl Biases {
    /// Every linear layer with a bias (`true`) or none.
    pub const fn all(on: bool) -> Biases {
        Biases {
            qkv: on,
            attn_out: on,
            mlp: on,
        }
    }
}

/// What differs from one layer to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: the query at position p sees keys p-w+1 ..= p only (GPT-Neo local layers).
    pub window: Option<usize>,
    /// Multiplier of q·k (applied where [`Config::scale_at`] says).
    pub attn_scale: f32,
}

impl LayerSpec {
    /// `n` layers of global attention scaled by `1/√head_dim`.
    pub fn uniform(n: usize, head_dim: usize) -> Vec<LayerSpec> {
        vec![
            LayerSpec {
                window: None,
                attn_scale: 1.0 / (head_dim as f32).sqrt(),
            };
            n
        ]
    }
}

/// A model's sizes and architecture spec, from `config.json`.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    /// Rows of the token embedding (may exceed the tokenizer's size).
    pub vocab_size: usize,
    /// Longest context.
    pub n_ctx: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Width of the token embedding and of the LM head's input (≠ `d_model` with projections).
    pub embed_dim: usize,
    pub n_head: usize,
    pub d_ff: usize,
    pub layer_norm_eps: f32,
    pub positions: Positions,
    pub norm: NormPlacement,
    /// A LayerNorm after the last block.
    pub final_norm: bool,
    /// A LayerNorm after the embedding.
    pub embed_norm: bool,
    pub residual: Residual,
    pub activation: Activation,
    pub qkv: QkvLayout,
    pub scale_at: ScaleAt,
    pub biases: Biases,
    pub tie_word_embeddings: bool,
    /// Tokens that end generation (transformers allows a list).
    pub eos_token_ids: Vec<u32>,
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
        Config::from_value(&v)
    }

    /// Parses a `config.json` already read as JSON.
    pub fn from_value(v: &Value) -> Result<Config, String> {
        let f = Fields(v);
        let model_type = f
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("missing field `model_type`")?;
        let family = FAMILIES
            .iter()
            .find(|fam| fam.model_type == model_type)
            .ok_or_else(|| {
                let known: Vec<_> = FAMILIES.iter().map(|f| f.model_type).collect();
                format!(
                    "model_type {model_type:?} is not supported (supported: {})",
                    known.join(", ")
                )
            })?;
        let c = (family.parse)(&f)?;
        c.check()?;
        Ok(c)
    }

    /// Checks that the sizes agree with each other.
    fn check(&self) -> Result<(), String> {
        if self.d_model % self.n_head != 0 {
            return Err(format!(
                "hidden size {} is not divisible by the number of heads {}",
                self.d_model, self.n_head
            ));
        }
        if self.layers.is_empty() {
            return Err("the model has no layers".into());
        }
        if let Positions::Rotary { dims, .. } = self.positions {
            if dims == 0 || dims % 2 != 0 || dims > self.head_dim() {
                return Err(format!(
                    "rotary embedding over {dims} of the {} values of each head: must be even, \
                     positive and at most the head size",
                    self.head_dim()
                ));
            }
        }
        if self.norm == NormPlacement::Post && self.residual == Residual::Parallel {
            return Err("a parallel residual with post-LayerNorm is not supported".into());
        }
        Ok(())
    }

    /// Number of transformer blocks.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// The family's description.
    pub fn family(&self) -> &'static Family {
        self.arch.family()
    }

    /// Rows of the learned position table, if the model has one.
    pub fn position_rows(&self) -> Option<usize> {
        match self.positions {
            Positions::Learned { offset } => Some(self.n_ctx + offset),
            _ => None,
        }
    }

    /// Whether the hidden width differs from the embedding's (projections in and out).
    pub fn projects(&self) -> bool {
        self.embed_dim != self.d_model
    }

    /// Sets the context length: up to the position table for learned positions, anything up to
    /// [`limits::CONTEXT`] otherwise (BLOOM has no limit in its config; rotary embeddings extrapolate).
    pub fn set_context(&mut self, n_ctx: usize) -> Result<(), String> {
        let max = match self.positions {
            Positions::Learned { .. } if n_ctx > self.n_ctx => {
                return Err(format!(
                    "context {n_ctx} exceeds the {} learned positions of the model",
                    self.n_ctx
                ))
            }
            _ => limits::CONTEXT,
        };
        if n_ctx == 0 || n_ctx > max {
            return Err(format!("context {n_ctx} is not between 1 and {max}"));
        }
        self.n_ctx = n_ctx;
        Ok(())
    }

    /// The ALiBi slope of every head (BLOOM's `build_alibi_tensor`): for `n` heads and `p` the largest
    /// power of two ≤ `n`, `2^(−8i/p)` for i = 1..=p, then for the remaining heads the odd powers of
    /// `2^(−4/p)`. Empty without ALiBi.
    pub fn alibi_slopes(&self) -> Vec<f32> {
        if self.positions != Positions::Alibi {
            return Vec::new();
        }
        let n = self.n_head;
        let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
        let base = 2f64.powf(-8.0 / p as f64);
        let mut s: Vec<f32> = (1..=p).map(|i| base.powi(i as i32) as f32).collect();
        if p < n {
            let extra = 2f64.powf(-4.0 / p as f64);
            let rest = (n - p).min(p);
            s.extend((0..rest).map(|i| extra.powi(2 * i as i32 + 1) as f32));
        }
        s
    }

    /// Rotary inverse frequencies, computed in f32 as transformers does (`1 / base^(2j/dims)`).
    pub fn rotary_inv_freq(&self) -> Vec<f32> {
        match self.positions {
            Positions::Rotary { dims, base } => (0..dims / 2)
                .map(|j| 1.0 / base.powf((2 * j) as f32 / dims as f32))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bloom(heads: usize) -> Config {
        let v = serde_json::json!({"model_type": "bloom", "hidden_size": 64 * heads, "n_head": heads,
            "n_layer": 2, "vocab_size": 100});
        Config::from_value(&v).unwrap()
    }

    #[test]
    fn alibi_slopes_match_transformers() {
        // transformers' build_alibi_tensor for 8 heads: 2^-1 .. 2^-8.
        let s = bloom(8).alibi_slopes();
        let want: Vec<f32> = (1..=8).map(|i| 0.5f32.powi(i)).collect();
        assert_eq!(s, want);
        // 12 heads: the 8 above, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
        let s = bloom(12).alibi_slopes();
        assert_eq!(&s[..8], &want[..]);
        for (i, v) in s[8..].iter().enumerate() {
            let want = 2f64.powf(-0.5 - i as f64) as f32;
            assert!((v - want).abs() <= 1e-7, "{i}: {v} vs {want}");
        }
        assert_eq!(bloom(1).alibi_slopes(), vec![2f32.powi(-8)]);
        assert_eq!(bloom(3).alibi_slopes().len(), 3);
    }

    #[test]
    fn unsupported_model_types_name_the_supported_ones() {
        let e = Config::from_json(r#"{"model_type": "llama"}"#).unwrap_err();
        for t in ["gpt2", "gpt_neo", "opt", "gpt_neox", "bloom"] {
            assert!(e.contains(t), "{e}");
        }
    }

    #[test]
    fn sizes_are_bounded_before_use() {
        let v = serde_json::json!({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8,
            "n_embd": 8, "n_head": 2, "n_layer": 4611686018427387904u64});
        let e = Config::from_value(&v).unwrap_err();
        assert!(e.contains("n_layer"), "{e}");
        let v = serde_json::json!({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8,
            "n_embd": 8, "n_head": 2, "n_layer": 1, "layer_norm_epsilon": 1e39});
        assert!(Config::from_value(&v).unwrap_err().contains("epsilon"));
    }
}
