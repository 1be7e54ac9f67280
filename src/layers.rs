//! Which linear layers a model has, per architecture: names, layouts, shapes and biases in one table,
//! used by the loader ([`crate::model`]), the compressor and the analyses.

use std::fmt;

use serde::{Deserialize, Serialize};
use slimlm_kernels::Layout;

use crate::arch::Config;
use crate::error::{Error, Result};
use crate::tensor_file::TensorStore;

/// A part of the model a plan addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Query/key/value projections (GPT-2 `c_attn`, GPT-NeoX/BLOOM `query_key_value`, GPT-Neo/OPT
    /// `q_proj`, `k_proj`, `v_proj`).
    AttnQkv,
    /// Attention output projection.
    AttnOut,
    /// First MLP matrix (`c_fc`, `fc1`, `dense_h_to_4h`).
    MlpIn,
    /// Second MLP matrix (`mlp.c_proj`, `fc2`, `dense_4h_to_h`).
    MlpOut,
    /// Token embedding and the LM head (tied or not); learned position tables follow it (F16 at most).
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
    /// Name without `.weight`/`.bias` (`transformer.h.0.attn.c_attn`).
    pub base: String,
    pub layout: Layout,
    pub out_dim: usize,
    pub in_dim: usize,
    pub bias: bool,
}

/// The name of block `layer`'s tensors: `{root}{layers}.{layer}`.
pub fn block_prefix(config: &Config, root: &str, layer: usize) -> String {
    format!("{root}{}.{layer}", config.family().names.layers)
}

/// The linear layers of every block, in model order (q/k/v — one fused or three —, attention output,
/// MLP in, MLP out), named under `root` as the architecture spec says.
pub fn linear_sites(config: &Config, root: &str) -> Vec<LinearSite> {
    let (d, ff) = (config.d_model, config.d_ff);
    let fam = config.family();
    let names = &fam.names;
    let b = config.biases;
    let qkv_out = if names.qkv.len() == 1 { 3 * d } else { d };
    let mut v = Vec::new();
    for layer in 0..config.n_layer() {
        let h = block_prefix(config, root, layer);
        let site = |component, part: &str, out_dim, in_dim, bias| LinearSite {
            layer,
            component,
            base: format!("{h}.{part}"),
            layout: fam.layout,
            out_dim,
            in_dim,
            bias,
        };
        for part in names.qkv {
            v.push(site(Component::AttnQkv, part, qkv_out, d, b.qkv));
        }
        v.push(site(Component::AttnOut, names.attn_out, d, d, b.attn_out));
        v.push(site(Component::MlpIn, names.mlp_in, ff, d, b.mlp));
        v.push(site(Component::MlpOut, names.mlp_out, d, ff, b.mlp));
    }
    v
}

/// The root of the tensor names in `store`: the first of the family's candidate roots under which the
/// token embedding exists (`transformer.` or none for GPT-2, `model.decoder.` or `decoder.` for OPT ...).
pub fn resolve_root(config: &Config, store: &TensorStore) -> Result<&'static str> {
    let names = &config.family().names;
    names
        .roots
        .iter()
        .copied()
        .find(|r| {
            // Dense or INT8 under `.weight`; 4-/3-bit under `.weight_q4` / `.weight_q3`.
            ["", "_q4", "_q3"]
                .iter()
                .any(|s| store.contains(&format!("{r}{}.weight{s}", names.embed)))
        })
        .ok_or_else(|| {
            let tried: Vec<String> = names
                .roots
                .iter()
                .map(|r| format!("{r}{}.weight", names.embed))
                .collect();
            Error::Config {
                path: store
                    .files()
                    .first()
                    .map(|f| f.path().to_path_buf())
                    .unwrap_or_default(),
                msg: format!(
                    "no token embedding for a {} model (looked for {})",
                    config.arch,
                    tried.join(", ")
                ),
            }
        })
}

/// Which part of a model a tensor belongs to: `(layer, part)`, part being a component name or `norms`,
/// `positions`, `projections`, `padding`, `other`.
pub fn classify(config: &Config, root: &str, name: &str) -> (Option<usize>, &'static str) {
    let names = &config.family().names;
    if name.starts_with(crate::tensor_file::PAD_PREFIX) {
        return (None, "padding");
    }
    // `part` names the tensor itself or a tensor derived from it (`.weight_scale`, `.lowrank.u`).
    let is = |rest: &str, part: &str| {
        rest.strip_prefix(part)
            .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('_'))
    };
    if is(name, names.lm_head) {
        return (None, "embeddings");
    }
    let Some(rest) = name.strip_prefix(root) else {
        return (None, "other");
    };
    if let Some(block) = rest
        .strip_prefix(names.layers)
        .and_then(|r| r.strip_prefix('.'))
    {
        let (num, part) = block.split_once('.').unwrap_or((block, ""));
        let Ok(layer) = num.parse::<usize>() else {
            return (None, "other");
        };
        let what = if names.qkv.iter().any(|q| is(part, q)) {
            Component::AttnQkv.name()
        } else if is(part, names.attn_out) {
            Component::AttnOut.name()
        } else if is(part, names.mlp_in) {
            Component::MlpIn.name()
        } else if is(part, names.mlp_out) {
            Component::MlpOut.name()
        } else if is(part, names.ln1) || is(part, names.ln2) {
            "norms"
        } else {
            "other"
        };
        return (Some(layer), what);
    }
    let what = if is(rest, names.embed) {
        "embeddings"
    } else if names.positions.is_some_and(|p| is(rest, p)) {
        "positions"
    } else if [names.embed_norm, names.final_norm]
        .iter()
        .flatten()
        .any(|n| is(rest, n))
    {
        "norms"
    } else if [names.project_in, names.project_out]
        .iter()
        .flatten()
        .any(|n| is(rest, n))
    {
        "projections"
    } else {
        "other"
    };
    (None, what)
}
