//! Compression plans: what to do with each matrix, parsed from TOML/JSON or built from CLI options,
//! validated before any work starts.
//!
//! The file format (TOML shown; JSON has the same fields):
//!
//! ```toml
//! svd = "activation"        # or "plain" (default), "whiten"; the last two need calibration text
//! alpha = 0.5               # activation-aware scaling exponent
//! s_fold = "sqrt"           # where singular values go: "vh", "sqrt" (√S into both), "separate";
//!                       # omitted: sqrt for int8 factors, vh for f32/f16
//!
//! [default]                 # every linear layer not named below
//! method = "lowrank"        # keep | f16 | int8 | lowrank
//! rank = 64                 # or energy = 0.9, or budget = 0.5 (fraction of the dense parameters)
//! factors = "int8"          # f32 | f16 | int8
//!
//! [components.embeddings]   # attn_qkv, attn_out, mlp_in, mlp_out, embeddings
//! method = "int8"
//!
//! [[overrides]]             # later entries win
//! layers = [0, 5]           # omitted: every layer
//! components = ["mlp_out"]  # omitted: every linear component
//! method = "keep"
//! ```
//!
//! A rank from `[default]` is *global*: a matrix where it would not save parameters is left dense (in
//! the factors' storage) and reported. A rank in `components` or `overrides` is *explicit*: the same
//! situation is an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use crate::layers::Component;

/// What to do with one matrix, as written in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    Keep,
    F16,
    Int8,
    Q4,
    Q3,
    Lowrank,
}

impl MethodName {
    /// Parses `keep`, `f16`, `int8`, `q4`, `q3` or `lowrank`.
    pub fn parse(s: &str) -> Result<MethodName> {
        match s {
            "keep" => Ok(MethodName::Keep),
            "f16" => Ok(MethodName::F16),
            "int8" => Ok(MethodName::Int8),
            "q4" => Ok(MethodName::Q4),
            "q3" => Ok(MethodName::Q3),
            "lowrank" => Ok(MethodName::Lowrank),
            _ => Err(Error::input(format!(
                "unknown method {s:?} (expected keep, f16, int8, q4, q3 or lowrank)"
            ))),
        }
    }

    /// Bits of a sub-8-bit method.
    fn sub8_bits(self) -> Option<u8> {
        match self {
            MethodName::Q4 => Some(4),
            MethodName::Q3 => Some(3),
            _ => None,
        }
    }
}

/// How 4- and 3-bit codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantizer {
    /// Round to nearest, group by group.
    Rtn,
    /// GPTQ: column by column, each rounding error spread over the columns still to come through the
    /// inverse Hessian of the layer's calibration inputs.
    Gptq,
    /// AWQ: inputs scaled per channel by their calibration magnitude (to a searched power) before RTN,
    /// the layer multiplying its inputs back.
    Awq,
}

impl Quantizer {
    /// Parses `rtn`, `gptq` or `awq`.
    pub fn parse(s: &str) -> Result<Quantizer> {
        match s {
            "rtn" => Ok(Quantizer::Rtn),
            "gptq" => Ok(Quantizer::Gptq),
            "awq" => Ok(Quantizer::Awq),
            _ => Err(Error::input(format!(
                "unknown quantizer {s:?} (expected rtn, gptq or awq)"
            ))),
        }
    }

    /// `rtn`, `gptq` or `awq`.
    pub fn name(self) -> &'static str {
        match self {
            Quantizer::Rtn => "rtn",
            Quantizer::Gptq => "gptq",
            Quantizer::Awq => "awq",
        }
    }

    /// Whether the quantizer needs calibration statistics (and so calibration text).
    pub fn calibrated(self) -> bool {
        self != Quantizer::Rtn
    }
}

/// Default group of 4- and 3-bit weights (inputs per scale).
pub const SUB8_DEFAULT_GROUP: usize = 128;

/// Storage of low-rank factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorDtype {
    F32,
    F16,
    Int8,
}

impl FactorDtype {
    /// Parses `f32`, `f16` or `int8`.
    pub fn parse(s: &str) -> Result<FactorDtype> {
        match s {
            "f32" => Ok(FactorDtype::F32),
            "f16" => Ok(FactorDtype::F16),
            "int8" | "i8" => Ok(FactorDtype::Int8),
            _ => Err(Error::Plan(format!(
                "unknown factor storage `{s}` (expected f32, f16 or int8)"
            ))),
        }
    }

    /// `f32`, `f16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            FactorDtype::F32 => "f32",
            FactorDtype::F16 => "f16",
            FactorDtype::Int8 => "int8",
        }
    }
}

/// One method with its parameters, as written in a plan (validated by [`Plan::validate`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub method: Option<MethodName>,
    /// INT8 group size (values per scale along the input); omitted: one scale per row. For INT8 factors,
    /// a factor whose row length (the rank, for U) the group does not divide gets one scale per row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Low rank: a fixed rank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Low rank: the smallest rank keeping this fraction of the squared singular values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<f64>,
    /// Low rank: the largest rank whose factors hold at most this fraction of the dense parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// Low rank: factor storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factors: Option<FactorDtype>,
    /// Low rank: store factors even where they hold more parameters than the dense matrix (experiments,
    /// tests); a rank above min(out, in) stays an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// q4/q3: how codes are chosen (default rtn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<Quantizer>,
    /// q4/q3: a scale per group only, no minimum (default false: a scale and a minimum per group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
}

/// A per-layer override.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Layers it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// Components it applies to (omitted: every linear component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    pub method: Option<MethodName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factors: Option<FactorDtype>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<Quantizer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
}

impl Override {
    fn spec(&self) -> Spec {
        Spec {
            method: self.method,
            group: self.group,
            rank: self.rank,
            energy: self.energy,
            budget: self.budget,
            factors: self.factors,
            force: self.force,
            quantizer: self.quantizer,
            symmetric: self.symmetric,
        }
    }
}

/// Which SVD the low-rank factors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SvdKind {
    /// Truncated SVD of the weight.
    #[default]
    Plain,
    /// ASVD: input channels scaled by activation statistics before the SVD, scaling folded back into Vh.
    Activation,
    /// SVD-LLM-style whitening by the Cholesky factor of the calibration inputs' Gram matrix.
    Whiten,
}

impl SvdKind {
    /// Parses `plain`, `activation` or `whiten`.
    pub fn parse(s: &str) -> Result<SvdKind> {
        match s {
            "plain" => Ok(SvdKind::Plain),
            "activation" => Ok(SvdKind::Activation),
            "whiten" => Ok(SvdKind::Whiten),
            _ => Err(Error::input(format!(
                "svd {s:?}: expected plain, activation or whiten"
            ))),
        }
    }
}

/// Where the singular values go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SFold {
    /// `Vh ← S·Vh` (no `s` tensor).
    #[default]
    Vh,
    /// `U ← U·√S`, `Vh ← √S·Vh`.
    Sqrt,
    /// Stored as the F32 vector `lowrank.s`.
    Separate,
}

impl SFold {
    /// Parses `vh`, `sqrt` or `separate`.
    pub fn parse(s: &str) -> Result<SFold> {
        match s {
            "vh" => Ok(SFold::Vh),
            "sqrt" => Ok(SFold::Sqrt),
            "separate" => Ok(SFold::Separate),
            _ => Err(Error::input(format!(
                "s_fold {s:?}: expected vh, sqrt or separate"
            ))),
        }
    }
}

/// A compression plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub svd: SvdKind,
    /// ASVD exponent: input channel `j` is scaled by `mean|x_j|^alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Where singular values go; omitted: `vh` for f32/f16 factors, `sqrt` for INT8 (see docs/compression.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s_fold: Option<SFold>,
    /// Every linear layer not named in `components` or `overrides` (omitted: keep).
    #[serde(default)]
    pub default: Spec,
    /// Per component.
    #[serde(default)]
    pub components: BTreeMap<String, Spec>,
    /// Per layer (and component); later entries win.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

/// How a rank is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    Fixed(usize),
    Energy(f64),
    Budget(f64),
}

/// A validated method for one matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Stored as in the source.
    Keep,
    /// F16 in the source layout.
    F16,
    /// INT8 `[out, in]`, `group` inputs per scale (`None`: a whole row).
    Int8 { group: Option<usize> },
    /// 4 or 3 bits `[out, in]` in groups of `group` inputs (a multiple of 32), F16 scales (and minimums
    /// unless `symmetric`).
    Sub8 {
        bits: u8,
        group: usize,
        quantizer: Quantizer,
        symmetric: bool,
    },
    /// `U·S·Vh`; `explicit` ranks are errors where they would not save memory, global ones fall back;
    /// `force` stores the factors anyway.
    LowRank {
        rank: RankRule,
        factors: FactorDtype,
        group: Option<usize>,
        explicit: bool,
        force: bool,
    },
}

impl Method {
    /// A short description (`int8 g64`, `lowrank r=64 int8`).
    pub fn describe(&self) -> String {
        match self {
            Method::Keep => "keep".into(),
            Method::F16 => "f16".into(),
            Method::Int8 { group: None } => "int8".into(),
            Method::Int8 { group: Some(g) } => format!("int8 g{g}"),
            Method::Sub8 {
                bits,
                group,
                quantizer,
                symmetric,
            } => format!(
                "q{bits} g{group} {}{}",
                quantizer.name(),
                if *symmetric { " sym" } else { "" }
            ),
            Method::LowRank { rank, factors, .. } => {
                let r = match rank {
                    RankRule::Fixed(r) => format!("r={r}"),
                    RankRule::Energy(e) => format!("energy={e}"),
                    RankRule::Budget(b) => format!("budget={b}"),
                };
                format!("lowrank {r} {}", factors.name())
            }
        }
    }
}

fn spec_to_method(spec: &Spec, what: &str, explicit: bool) -> Result<Method> {
    let bad = |msg: String| Error::Plan(format!("{what}: {msg}"));
    let method = spec
        .method
        .ok_or_else(|| bad("no `method` (keep, f16, int8, q4, q3 or lowrank)".into()))?;
    if spec.group == Some(0) {
        return Err(bad("group size 0".into()));
    }
    if let Some(bits) = method.sub8_bits() {
        if spec.rank.is_some()
            || spec.energy.is_some()
            || spec.budget.is_some()
            || spec.factors.is_some()
            || spec.force.is_some()
        {
            return Err(bad(format!(
                "rank/energy/budget/factors/force only apply to method lowrank, not q{bits}"
            )));
        }
        let group = spec.group.unwrap_or(SUB8_DEFAULT_GROUP);
        if group % 32 != 0 {
            return Err(bad(format!(
                "q{bits} group size {group} is not a multiple of 32"
            )));
        }
        return Ok(Method::Sub8 {
            bits,
            group,
            quantizer: spec.quantizer.unwrap_or(Quantizer::Rtn),
            symmetric: spec.symmetric.unwrap_or(false),
        });
    }
    if spec.quantizer.is_some() || spec.symmetric.is_some() {
        return Err(bad(format!(
            "`quantizer` and `symmetric` apply to q4 and q3, not {method:?}"
        )));
    }
    let lowrank_fields = spec.rank.is_some()
        || spec.energy.is_some()
        || spec.budget.is_some()
        || spec.factors.is_some()
        || spec.force.is_some();
    match method {
        MethodName::Keep | MethodName::F16 | MethodName::Int8 => {
            if lowrank_fields {
                return Err(bad(format!(
                    "rank/energy/budget/factors/force only apply to method lowrank, not {method:?}"
                )));
            }
            if spec.group.is_some() && method != MethodName::Int8 {
                return Err(bad(
                    "`group` applies to int8 (or lowrank int8 factors) only".into(),
                ));
            }
            Ok(match method {
                MethodName::Keep => Method::Keep,
                MethodName::F16 => Method::F16,
                _ => Method::Int8 { group: spec.group },
            })
        }
        MethodName::Q4 | MethodName::Q3 => unreachable!("sub-8-bit methods return above"),
        MethodName::Lowrank => {
            let rules = [
                spec.rank.is_some(),
                spec.energy.is_some(),
                spec.budget.is_some(),
            ];
            let n = rules.iter().filter(|&&b| b).count();
            if n != 1 {
                return Err(bad(
                    "lowrank needs exactly one of `rank`, `energy`, `budget`".into(),
                ));
            }
            let rank = if let Some(r) = spec.rank {
                if r == 0 {
                    return Err(bad("rank 0 (a rank must be at least 1)".into()));
                }
                RankRule::Fixed(r)
            } else if let Some(e) = spec.energy {
                if !(e > 0.0 && e <= 1.0) {
                    return Err(bad(format!("energy {e} is not in (0, 1]")));
                }
                RankRule::Energy(e)
            } else {
                let b = spec.budget.unwrap_or(0.0);
                if !(b > 0.0 && b < 1.0) {
                    return Err(bad(format!("budget {b} is not in (0, 1)")));
                }
                RankRule::Budget(b)
            };
            let factors = spec.factors.unwrap_or(FactorDtype::F32);
            if spec.group.is_some() && factors != FactorDtype::Int8 {
                return Err(bad("`group` applies to int8 factors only".into()));
            }
            Ok(Method::LowRank {
                rank,
                factors,
                group: spec.group,
                explicit,
                force: spec.force.unwrap_or(false),
            })
        }
    }
}

/// A plan checked and resolved: a method for every (layer, component).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub plan: Plan,
    default: Method,
    components: BTreeMap<Component, Method>,
    overrides: Vec<(Option<Vec<usize>>, Vec<Component>, Method)>,
}

impl Plan {
    /// Parses a plan file: `.json` as JSON, anything else as TOML.
    pub fn from_file(path: &std::path::Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let plan = if is_json {
            Plan::from_json(&text)
        } else {
            Plan::from_toml(&text)
        };
        plan.map_err(|e| match e {
            Error::Plan(m) => Error::Plan(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses a TOML plan.
    pub fn from_toml(text: &str) -> Result<Plan> {
        toml::from_str(text).map_err(|e| Error::Plan(format!("not a valid TOML plan: {e}")))
    }

    /// Parses a JSON plan.
    pub fn from_json(text: &str) -> Result<Plan> {
        serde_json::from_str(text).map_err(|e| Error::Plan(format!("not a valid JSON plan: {e}")))
    }

    /// The plan as JSON (stored in the compressed file's metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A plan doing `spec` to every linear layer and `embeddings` to the embeddings.
    pub fn uniform(spec: Spec, embeddings: Spec) -> Plan {
        let mut p = Plan {
            default: spec,
            ..Plan::default()
        };
        p.components.insert("embeddings".into(), embeddings);
        p
    }

    /// Checks every entry (methods, ranks, component names, layer numbers against `n_layer`).
    pub fn validate(&self, n_layer: usize) -> Result<Resolved> {
        if let Some(a) = self.alpha {
            if !(a > 0.0 && a <= 2.0) {
                return Err(Error::Plan(format!("alpha {a} is not in (0, 2]")));
            }
        }
        let default = if self.default.method.is_none() && self.default == Spec::default() {
            Method::Keep
        } else {
            spec_to_method(&self.default, "[default]", false)?
        };
        if let Method::LowRank { .. } = default {
            // fine; embeddings are not covered by the default
        }
        let mut components = BTreeMap::new();
        for (name, spec) in &self.components {
            let c = Component::parse(name)?;
            let m = spec_to_method(spec, &format!("[components.{name}]"), true)?;
            if let (Component::Embeddings, Method::Sub8 { quantizer, .. }) = (c, m) {
                if quantizer.calibrated() {
                    return Err(Error::Plan(format!(
                        "[components.embeddings]: {} applies to linear layers (use rtn for the embeddings)",
                        quantizer.name().to_uppercase()
                    )));
                }
            }
            if c == Component::Embeddings && matches!(m, Method::LowRank { .. }) {
                return Err(Error::Plan(
                    "[components.embeddings]: low-rank embeddings are not supported (use keep, f16 or int8)".into(),
                ));
            }
            components.insert(c, m);
        }
        let mut overrides = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let what = format!("overrides[{i}]");
            if let Some(ls) = &o.layers {
                if let Some(&bad) = ls.iter().find(|&&l| l >= n_layer) {
                    return Err(Error::Plan(format!(
                        "{what}: layer {bad} does not exist (the model has {n_layer} layers, 0..{})",
                        n_layer.saturating_sub(1)
                    )));
                }
            }
            let comps = match &o.components {
                None => vec![
                    Component::AttnQkv,
                    Component::AttnOut,
                    Component::MlpIn,
                    Component::MlpOut,
                ],
                Some(cs) => cs
                    .iter()
                    .map(|c| Component::parse(c))
                    .collect::<Result<Vec<_>>>()?,
            };
            if comps.contains(&Component::Embeddings) {
                return Err(Error::Plan(format!(
                    "{what}: embeddings are not per layer; set them in [components.embeddings]"
                )));
            }
            overrides.push((
                o.layers.clone(),
                comps,
                spec_to_method(&o.spec(), &what, true)?,
            ));
        }
        Ok(Resolved {
            plan: self.clone(),
            default,
            components,
            overrides,
        })
    }
}

impl Resolved {
    /// The method for `component` of `layer` (`None` for the embeddings).
    pub fn method(&self, layer: Option<usize>, component: Component) -> Method {
        if component == Component::Embeddings {
            return self
                .components
                .get(&component)
                .copied()
                .unwrap_or(Method::Keep);
        }
        let mut m = self
            .components
            .get(&component)
            .copied()
            .unwrap_or(self.default);
        for (layers, comps, om) in &self.overrides {
            let layer_ok = match (layers, layer) {
                (None, _) => true,
                (Some(ls), Some(l)) => ls.contains(&l),
                (Some(_), None) => false,
            };
            if layer_ok && comps.contains(&component) {
                m = *om;
            }
        }
        m
    }

    /// Where singular values go for factors stored as `factors`.
    pub fn s_fold(&self, factors: FactorDtype) -> SFold {
        // √S into both factors quantizes slightly better (docs/compression.md); for f32/f16 it is moot.
        self.plan.s_fold.unwrap_or(match factors {
            FactorDtype::Int8 => SFold::Sqrt,
            FactorDtype::F32 | FactorDtype::F16 => SFold::Vh,
        })
    }

    /// Whether any linear layer's method satisfies `f`.
    fn any_linear(&self, n_layer: usize, f: impl Fn(&Method) -> bool) -> bool {
        (0..n_layer).any(|l| {
            Component::ALL[..4]
                .iter()
                .any(|&c| f(&self.method(Some(l), c)))
        })
    }

    /// Whether any matrix is low rank with activation-aware SVD, or quantized by GPTQ or AWQ (which need
    /// calibration text).
    pub fn needs_calibration(&self, n_layer: usize) -> bool {
        (self.plan.svd != SvdKind::Plain
            && self.any_linear(n_layer, |m| matches!(m, Method::LowRank { .. })))
            || self.needs_grams(n_layer)
    }

    /// Whether calibration must collect Gram matrices `Σ x·xᵀ` (whitened SVD, GPTQ, AWQ).
    pub fn needs_grams(&self, n_layer: usize) -> bool {
        (self.plan.svd == SvdKind::Whiten
            && self.any_linear(n_layer, |m| matches!(m, Method::LowRank { .. })))
            || self.any_linear(
                n_layer,
                |m| matches!(m, Method::Sub8 { quantizer, .. } if quantizer.calibrated()),
            )
    }
}

/// A uniform plan by name: what [`PlanOptions::mode`] applies to every matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every matrix and the embeddings INT8 (per-row or per-group scales).
    Int8,
    /// Every matrix and the embeddings F16.
    F16,
    /// Every linear layer as low-rank factors (INT8 unless told otherwise), the embeddings INT8.
    Lowrank,
    /// Every linear layer 4-bit in groups, the embeddings INT8.
    Q4,
    /// Every linear layer 3-bit in groups, the embeddings INT8.
    Q3,
}

impl Mode {
    /// Parses `int8`, `f16` or `lowrank`.
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "int8" => Ok(Mode::Int8),
            "f16" => Ok(Mode::F16),
            "lowrank" => Ok(Mode::Lowrank),
            "q4" => Ok(Mode::Q4),
            "q3" => Ok(Mode::Q3),
            _ => Err(Error::input(format!(
                "unknown mode {s:?} (expected int8, f16, lowrank, q4 or q3)"
            ))),
        }
    }

    /// `int8`, `f16` or `lowrank`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Int8 => "int8",
            Mode::F16 => "f16",
            Mode::Lowrank => "lowrank",
            Mode::Q4 => "q4",
            Mode::Q3 => "q3",
        }
    }
}

/// A plan from a few options (those of `slimlm compress` and `slimlm.compress`): a [`Mode`] or a whole
/// [`Plan`], with changes on top. [`PlanOptions::into_plan`] applies the rules and defaults.
///
/// ```
/// use slimlm::compress::{Component, Mode, PlanOptions};
/// let plan = PlanOptions {
///     mode: Some(Mode::Lowrank),
///     rank: Some(64),
///     skip: vec![Component::MlpOut],
///     ..PlanOptions::default()
/// }
/// .into_plan()?;
/// assert_eq!(plan.default.rank, Some(64));
/// # Ok::<(), slimlm::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// A uniform plan; exactly one of `mode` and `plan` is given.
    pub mode: Option<Mode>,
    /// A whole plan (a plan file's); the low-rank options and `group` belong in it then.
    pub plan: Option<Plan>,
    /// INT8 group size (values per scale) of the int8 mode, or of INT8 factors; omitted: one scale per row.
    pub group: Option<usize>,
    /// Low rank: the rank of every matrix (one of `rank`, `energy`, `budget`).
    pub rank: Option<usize>,
    /// Low rank: keep this fraction of each matrix's squared singular values.
    pub energy: Option<f64>,
    /// Low rank: the factors hold at most this fraction of each matrix's parameters.
    pub budget: Option<f64>,
    /// Low rank: factor storage (default INT8).
    pub factors: Option<FactorDtype>,
    /// Storage of the embeddings (keep, f16 or int8; default: as the mode, INT8 for lowrank). INT8
    /// embeddings take `group` in the int8 mode only.
    pub embeddings: Option<MethodName>,
    /// Components left as they are (over any per-layer override of the plan too).
    pub skip: Vec<Component>,
    /// Layers whose every matrix is left as it is.
    pub skip_layers: Vec<usize>,
    /// Which SVD; omitted: activation-aware when there is calibration text and the plan says plain.
    pub svd: Option<SvdKind>,
    /// Whether calibration text will be given (activation-aware and whitened SVD need it).
    pub calibration: bool,
    /// ASVD exponent.
    pub alpha: Option<f64>,
    /// Where singular values go.
    pub s_fold: Option<SFold>,
    /// q4/q3: how codes are chosen (default rtn).
    pub quantizer: Option<Quantizer>,
    /// q4/q3: scales only, no minimums.
    pub symmetric: bool,
}

fn method_spec(method: MethodName) -> Spec {
    Spec {
        method: Some(method),
        ..Spec::default()
    }
}

impl PlanOptions {
    /// The plan. Lowrank stores INT8 factors and INT8 embeddings unless told otherwise (the defaults
    /// of `eval`). The plan's entries are checked later, by [`Plan::validate`].
    pub fn into_plan(self) -> Result<Plan> {
        let bad = |m: &str| Err(Error::input(m));
        let rank_rule = self.rank.is_some() || self.energy.is_some() || self.budget.is_some();
        let lowrank_opts = rank_rule || self.factors.is_some();
        if (self.quantizer.is_some() || self.symmetric)
            && !matches!(self.mode, Some(Mode::Q4 | Mode::Q3))
        {
            return bad("a quantizer and --symmetric go with the q4 and q3 modes");
        }
        let mut plan = match (self.plan, self.mode) {
            (Some(_), Some(_)) => return bad("give a mode or a plan, not both"),
            (None, None) => return bad("give a mode (int8, f16 or lowrank) or a plan"),
            (Some(p), None) => {
                if lowrank_opts || self.group.is_some() {
                    return bad(
                        "rank, energy, budget, factors and group go with a mode; put them in the plan",
                    );
                }
                p
            }
            (None, Some(mode @ (Mode::Q4 | Mode::Q3))) => {
                if lowrank_opts {
                    return bad("rank, energy, budget and factors apply to the lowrank mode");
                }
                let s = Spec {
                    method: Some(if mode == Mode::Q4 {
                        MethodName::Q4
                    } else {
                        MethodName::Q3
                    }),
                    group: self.group,
                    quantizer: self.quantizer,
                    symmetric: self.symmetric.then_some(true),
                    ..Spec::default()
                };
                Plan::uniform(s, method_spec(MethodName::Int8))
            }
            (None, Some(Mode::Int8)) => {
                if lowrank_opts {
                    return bad("rank, energy, budget and factors apply to the lowrank mode");
                }
                let s = Spec {
                    group: self.group,
                    ..method_spec(MethodName::Int8)
                };
                Plan::uniform(s.clone(), s)
            }
            (None, Some(Mode::F16)) => {
                if lowrank_opts || self.group.is_some() {
                    return bad("the f16 mode takes no rank, energy, budget, factors or group");
                }
                Plan::uniform(method_spec(MethodName::F16), method_spec(MethodName::F16))
            }
            (None, Some(Mode::Lowrank)) => {
                if !rank_rule {
                    return bad("the lowrank mode needs a rank, an energy or a budget");
                }
                let s = Spec {
                    method: Some(MethodName::Lowrank),
                    rank: self.rank,
                    energy: self.energy,
                    budget: self.budget,
                    factors: Some(self.factors.unwrap_or(FactorDtype::Int8)),
                    group: self.group,
                    ..Spec::default()
                };
                Plan::uniform(s, method_spec(MethodName::Int8))
            }
        };
        if let Some(m) = self.embeddings {
            if m == MethodName::Lowrank {
                return bad("low-rank embeddings are not supported (keep, f16 or int8)");
            }
            let group = if m == MethodName::Int8 && self.mode == Some(Mode::Int8) {
                self.group
            } else {
                None
            };
            plan.components.insert(
                Component::Embeddings.name().into(),
                Spec {
                    group,
                    ..method_spec(m)
                },
            );
        }
        for c in self.skip {
            plan.components
                .insert(c.name().into(), method_spec(MethodName::Keep));
            // A skip wins over the plan's per-layer overrides too.
            if c != Component::Embeddings {
                plan.overrides.push(Override {
                    components: Some(vec![c.name().into()]),
                    method: Some(MethodName::Keep),
                    ..Override::default()
                });
            }
        }
        if !self.skip_layers.is_empty() {
            plan.overrides.push(Override {
                layers: Some(self.skip_layers),
                method: Some(MethodName::Keep),
                ..Override::default()
            });
        }
        match self.svd {
            Some(k) => plan.svd = k,
            None if self.calibration && plan.svd == SvdKind::Plain => {
                plan.svd = SvdKind::Activation
            }
            None => {}
        }
        if plan.svd != SvdKind::Plain && !self.calibration {
            return bad("the plan asks for activation-aware SVD, which needs calibration text");
        }
        if self.alpha.is_some() {
            plan.alpha = self.alpha;
        }
        if self.s_fold.is_some() {
            plan.s_fold = self.s_fold;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_plan_resolves_with_overrides() {
        let p = Plan::from_toml(
            r#"
            svd = "plain"
            [default]
            method = "lowrank"
            rank = 64
            factors = "int8"
            [components.embeddings]
            method = "int8"
            [components.attn_qkv]
            method = "f16"
            [[overrides]]
            layers = [0]
            components = ["mlp_out"]
            method = "keep"
            "#,
        )
        .unwrap();
        let r = p.validate(6).unwrap();
        assert_eq!(r.method(Some(0), Component::MlpOut), Method::Keep);
        assert_eq!(r.method(Some(1), Component::AttnQkv), Method::F16);
        assert!(matches!(
            r.method(Some(1), Component::MlpOut),
            Method::LowRank {
                explicit: false,
                ..
            }
        ));
        assert_eq!(
            r.method(None, Component::Embeddings),
            Method::Int8 { group: None }
        );
        let back = Plan::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_plans_are_clear_errors() {
        let err = |t: &str| {
            Plan::from_toml(t)
                .and_then(|p| p.validate(6).map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert!(err("[default]\nmethod = \"lowrank\"\nrank = 0").contains("rank 0"));
        assert!(
            err("[components.attn_qq]\nmethod = \"int8\"").contains("unknown component `attn_qq`")
        );
        assert!(err("[default]\nmethod = \"zip\"").contains("not a valid TOML plan"));
        assert!(err("[default]\nmethod = \"int8\"\nranks = 3").contains("not a valid TOML plan"));
        assert!(err("[[overrides]]\nlayers = [9]\nmethod = \"keep\"")
            .contains("layer 9 does not exist"));
        assert!(
            err("[components.embeddings]\nmethod = \"lowrank\"\nrank = 8")
                .contains("not supported")
        );
        assert!(
            err("[default]\nmethod = \"lowrank\"\nrank = 8\nenergy = 0.5").contains("exactly one")
        );
    }

    #[test]
    fn plan_options_rules_and_defaults() {
        let lowrank = PlanOptions {
            mode: Some(Mode::Lowrank),
            rank: Some(32),
            skip: vec![Component::MlpOut],
            skip_layers: vec![1],
            calibration: true,
            ..PlanOptions::default()
        }
        .into_plan()
        .unwrap();
        assert_eq!(lowrank.default.factors, Some(FactorDtype::Int8));
        assert_eq!(
            lowrank.components["embeddings"].method,
            Some(MethodName::Int8)
        );
        assert_eq!(lowrank.svd, SvdKind::Activation);
        let r = lowrank.validate(6).unwrap();
        assert_eq!(r.method(Some(0), Component::MlpOut), Method::Keep);
        assert_eq!(r.method(Some(1), Component::MlpIn), Method::Keep);
        assert!(matches!(
            r.method(Some(0), Component::MlpIn),
            Method::LowRank { .. }
        ));

        let int8 = PlanOptions {
            mode: Some(Mode::Int8),
            group: Some(64),
            embeddings: Some(MethodName::Int8),
            ..PlanOptions::default()
        }
        .into_plan()
        .unwrap();
        assert_eq!(int8.components["embeddings"].group, Some(64));

        let err = |o: PlanOptions| o.into_plan().unwrap_err().to_string();
        let mode = |m| PlanOptions {
            mode: Some(m),
            ..PlanOptions::default()
        };
        assert!(
            err(PlanOptions::default()).contains("give a mode (int8, f16 or lowrank) or a plan")
        );
        assert!(err(mode(Mode::Lowrank)).contains("needs a rank, an energy or a budget"));
        assert!(err(PlanOptions {
            rank: Some(4),
            ..mode(Mode::Int8)
        })
        .contains("apply to the lowrank mode"));
        assert!(err(PlanOptions {
            group: Some(4),
            ..mode(Mode::F16)
        })
        .contains("the f16 mode takes no"));
        assert!(err(PlanOptions {
            plan: Some(Plan::default()),
            group: Some(4),
            ..PlanOptions::default()
        })
        .contains("put them in the plan"));
        assert!(err(PlanOptions {
            rank: Some(4),
            svd: Some(SvdKind::Whiten),
            ..mode(Mode::Lowrank)
        })
        .contains("needs calibration text"));
        assert!(Mode::parse("int4")
            .unwrap_err()
            .to_string()
            .contains("unknown mode \"int4\""));
    }
}
