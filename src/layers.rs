//! Which linear layers a model has, per architecture: names, layouts, shapes and biases in one table,
//! used by the loader ([`crate::model`]), the compressor and the analyses.

use std::fmt;

use serde::{Deserialize, Serialize};
use slimlm_kernels::Layout;

use crate::config::{Arch, Config};
use crate::error::{Error, Result};

/// A part of the model a plan addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Query/key/value projections (GPT-2 `c_attn`, GPT-Neo `q_proj`, `k_proj`, `v_proj`).
    AttnQkv,
    /// Attention output projection.
    AttnOut,
    /// First MLP matrix (`c_fc`).
    MlpIn,
    /// Second MLP matrix (`c_proj`).
    MlpOut,
    /// Token embedding (also the tied LM head); position embeddings follow it (F16 at most).
    Embeddings,
}

impl Component {
    /// Every component, in model order.
    pub const ALL: [Component; 5] = [
        Component::AttnQkv,
        Component::AttnOut,
        Component::MlpIn,
        Component::MlpOut,
        Component::Embeddings,
    ];

    /// The name used in plans and reports.
    pub fn name(self) -> &'static str {
        match self {
            Component::AttnQkv => "attn_qkv",
            Component::AttnOut => "attn_out",
            Component::MlpIn => "mlp_in",
            Component::MlpOut => "mlp_out",
            Component::Embeddings => "embeddings",
        }
    }

    /// Parses a component name (a few aliases accepted: `qkv`, `wte`, `lm_head`, ...).
    pub fn parse(s: &str) -> Result<Component> {
        Ok(match s {
            "attn_qkv" | "qkv" | "attention_qkv" => Component::AttnQkv,
            "attn_out" | "attention_output" | "attn_output" => Component::AttnOut,
            "mlp_in" | "fc" => Component::MlpIn,
            "mlp_out" => Component::MlpOut,
            "embeddings" | "embedding" | "wte" | "lm_head" => Component::Embeddings,
            _ => {
                return Err(Error::Plan(format!(
                    "unknown component `{s}` (expected one of attn_qkv, attn_out, mlp_in, mlp_out, embeddings)"
                )))
            }
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One linear layer of the source model, by name.
#[derive(Clone, Debug)]
pub struct LinearSite {
    pub layer: usize,
    pub component: Component,
    pub base: String,
    pub layout: Layout,
    pub out_dim: usize,
    pub in_dim: usize,
    pub bias: bool,
}

/// The linear layers of `config`'s architecture, with `prefix` (`transformer.` or empty).
pub fn linear_sites(config: &Config, prefix: &str) -> Vec<LinearSite> {
    let (d, ff) = (config.d_model, config.d_ff);
    let mut v = Vec::new();
    for layer in 0..config.n_layer() {
        let h = format!("{prefix}h.{layer}");
        let site = |component, base: String, layout, out_dim, in_dim, bias| LinearSite {
            layer,
            component,
            base,
            layout,
            out_dim,
            in_dim,
            bias,
        };
        // GPT-2 stores Conv1D weights `[in, out]`; GPT-Neo stores `nn.Linear` weights `[out, in]`.
        let l = match config.arch {
            Arch::Gpt2 => Layout::InOut,
            Arch::GptNeo => Layout::OutIn,
        };
        match config.arch {
            Arch::Gpt2 => {
                v.push(site(
                    Component::AttnQkv,
                    format!("{h}.attn.c_attn"),
                    l,
                    3 * d,
                    d,
                    true,
                ));
                v.push(site(
                    Component::AttnOut,
                    format!("{h}.attn.c_proj"),
                    l,
                    d,
                    d,
                    true,
                ));
            }
            Arch::GptNeo => {
                let a = format!("{h}.attn.attention");
                for p in ["q_proj", "k_proj", "v_proj"] {
                    v.push(site(Component::AttnQkv, format!("{a}.{p}"), l, d, d, false));
                }
                v.push(site(
                    Component::AttnOut,
                    format!("{a}.out_proj"),
                    l,
                    d,
                    d,
                    true,
                ));
            }
        }
        v.push(site(
            Component::MlpIn,
            format!("{h}.mlp.c_fc"),
            l,
            ff,
            d,
            true,
        ));
        v.push(site(
            Component::MlpOut,
            format!("{h}.mlp.c_proj"),
            l,
            d,
            ff,
            true,
        ));
    }
    v
}
