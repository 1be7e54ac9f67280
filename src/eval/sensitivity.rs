//! Sensitivity analysis and protection plans, gradient-free: compress one unit (a layer, a component, or
//! one component of one layer) at a time with the base method, leaving the rest dense, and measure the
//! perplexity change per language. The ranking then chooses which units to keep in higher precision
//! within a size budget: greedily by mean degradation per extra byte, assuming a protected unit loses
//! (almost) nothing. The plan is an ordinary compressor [`Plan`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::disparity::{evaluate_plan, Evaluated, LangResult};
use super::{describe_spec, language_perplexity, svg, Calibration, EvalOptions, LangIds, Progress};
use crate::compress::{self, Component, MethodName, Override, Plan, Report, Spec};
use crate::error::{Error, Result};
use crate::model::Model;

/// The unit compressed at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// Every matrix of one layer.
    Layer,
    /// One component (attn_qkv, attn_out, mlp_in, mlp_out) in every layer.
    Component,
    /// One component of one layer.
    LayerComponent,
}

impl Granularity {
    /// Parses `layer`, `component` or `layer-component`.
    pub fn parse(s: &str) -> Result<Granularity> {
        match s {
            "layer" => Ok(Granularity::Layer),
            "component" => Ok(Granularity::Component),
            "layer-component" => Ok(Granularity::LayerComponent),
            _ => Err(Error::input(format!(
                "unit {s:?}: expected layer, component or layer-component"
            ))),
        }
    }
}

const LINEAR: [Component; 4] = [
    Component::AttnQkv,
    Component::AttnOut,
    Component::MlpIn,
    Component::MlpOut,
];

/// A layer, a component, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    pub layer: Option<usize>,
    pub component: Option<Component>,
}

impl Unit {
    /// `layer 3`, `mlp_in`, `layer 3 mlp_in`.
    pub fn label(&self) -> String {
        match (self.layer, self.component) {
            (Some(l), Some(c)) => format!("layer {l} {}", c.name()),
            (Some(l), None) => format!("layer {l}"),
            (None, Some(c)) => c.name().to_string(),
            (None, None) => "everything".into(),
        }
    }

    /// Whether the matrix of `component` in `layer` belongs to the unit.
    pub fn covers(&self, layer: usize, component: Component) -> bool {
        self.layer.is_none_or_eq(layer) && self.component.is_none_or_eq(component)
    }

    /// The units of a model with `n_layer` layers.
    pub fn all(granularity: Granularity, n_layer: usize) -> Vec<Unit> {
        match granularity {
            Granularity::Layer => (0..n_layer)
                .map(|l| Unit {
                    layer: Some(l),
                    component: None,
                })
                .collect(),
            Granularity::Component => LINEAR
                .iter()
                .map(|&c| Unit {
                    layer: None,
                    component: Some(c),
                })
                .collect(),
            Granularity::LayerComponent => (0..n_layer)
                .flat_map(|l| {
                    LINEAR.iter().map(move |&c| Unit {
                        layer: Some(l),
                        component: Some(c),
                    })
                })
                .collect(),
        }
    }

    /// An override doing `spec` to this unit.
    fn override_with(&self, spec: &Spec) -> Override {
        Override {
            layers: self.layer.map(|l| vec![l]),
            components: self.component.map(|c| vec![c.name().to_string()]),
            method: spec.method,
            group: spec.group,
            rank: spec.rank,
            energy: spec.energy,
            budget: spec.budget,
            factors: spec.factors,
            quantizer: spec.quantizer,
            symmetric: spec.symmetric,
            ..Override::default()
        }
    }

    /// A plan compressing only this unit by `base` (as a global default, so a rank that would not save
    /// memory falls back as in a uniform plan); everything else, the embeddings included, kept.
    pub fn isolated_plan(&self, base: &Spec, n_layer: usize) -> Plan {
        let keep = Spec {
            method: Some(MethodName::Keep),
            ..Spec::default()
        };
        let mut plan = Plan::uniform(base.clone(), keep.clone());
        let keep_override =
            |layers: Option<Vec<usize>>, components: Option<Vec<String>>| Override {
                layers,
                components,
                method: Some(MethodName::Keep),
                ..Override::default()
            };
        if let Some(l) = self.layer {
            let others: Vec<usize> = (0..n_layer).filter(|&o| o != l).collect();
            if !others.is_empty() {
                plan.overrides.push(keep_override(Some(others), None));
            }
        }
        if let Some(c) = self.component {
            let others: Vec<String> = LINEAR
                .iter()
                .filter(|&&o| o != c)
                .map(|o| o.name().to_string())
                .collect();
            plan.overrides
                .push(keep_override(self.layer.map(|l| vec![l]), Some(others)));
        }
        plan
    }
}

trait NoneOrEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
}

impl<T: PartialEq> NoneOrEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}

/// What to analyse and how to protect.
#[derive(Clone, Debug)]
pub struct SensitivityOptions {
    /// The compression whose sensitivity is measured (e.g. `lowrank:r32:int8`).
    pub base: Spec,
    /// The higher precision of protected units (e.g. `int8`).
    pub protect: Spec,
    /// The embeddings in the plan (and in the size budget).
    pub embeddings: Spec,
    pub granularity: Granularity,
    /// Largest `model.safetensors` of the plan, in bytes. `None`: the uniform base size plus a quarter
    /// of what protecting everything would add.
    pub budget_bytes: Option<usize>,
}

/// One unit's result.
#[derive(Clone, Debug, Serialize)]
pub struct UnitResult {
    pub unit: String,
    pub layer: Option<usize>,
    pub component: Option<String>,
    /// Degradation per language with only this unit compressed by the base method.
    pub languages: Vec<LangResult>,
    pub mean_degradation: f64,
    pub max_degradation: f64,
    /// Bytes protecting this unit adds to the uniform base plan.
    pub extra_bytes: i64,
    /// Whether the plan protects it.
    pub protected: bool,
}

/// The sensitivity plan against a uniform low-rank plan of (about) the same size, and the uniform base.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Whether the texts were held out from the ranking (the next tokens of each language), or the same.
    pub held_out: bool,
    pub base: Evaluated,
    pub plan: Evaluated,
    /// `None` when the base method is not low rank with a fixed rank.
    pub uniform: Option<Evaluated>,
}

/// The result of [`sensitivity`] (the `--json` output of `slimlm eval sensitivity`).
#[derive(Clone, Debug, Serialize)]
pub struct SensitivityReport {
    pub base: String,
    pub protect: String,
    pub embeddings: String,
    pub granularity: Granularity,
    /// Most sensitive first (by mean degradation).
    pub units: Vec<UnitResult>,
    /// Sizes of the uniform base plan and of protecting everything.
    pub base_bytes: usize,
    pub protect_all_bytes: usize,
    pub budget_bytes: usize,
    /// The protection plan (give it to `slimlm compress --plan`).
    pub plan: Plan,
    pub comparison: Comparison,
}

/// Bytes per `(layer, component)` from a compression report.
fn bytes_by_matrix(report: &Report) -> BTreeMap<(usize, Component), usize> {
    let mut m = BTreeMap::new();
    for r in &report.matrices {
        if let Some(l) = r.layer {
            *m.entry((l, r.component)).or_insert(0) += r.bytes;
        }
    }
    m
}

/// Measures each unit's sensitivity on `texts`, chooses a protection plan within the budget, and
/// evaluates it on `holdout` (held out from the ranking; pass `texts` again if there is none) against the
/// uniform base and a uniform low-rank plan of about the plan's size.
pub fn sensitivity(
    reference: &Model,
    texts: &[LangIds],
    holdout: Option<&[LangIds]>,
    opts: &EvalOptions,
    sopts: &SensitivityOptions,
    progress: Progress,
) -> Result<SensitivityReport> {
    sensitivity_calibrated(
        reference,
        texts,
        holdout,
        opts,
        sopts,
        &Calibration::default(),
        progress,
    )
}

/// [`sensitivity`], with `calibration` for base or protect methods that need it (GPTQ, AWQ); it must be
/// neither `texts` nor `holdout`.
pub fn sensitivity_calibrated(
    reference: &Model,
    texts: &[LangIds],
    holdout: Option<&[LangIds]>,
    opts: &EvalOptions,
    sopts: &SensitivityOptions,
    calibration: &Calibration,
    progress: Progress,
) -> Result<SensitivityReport> {
    let cal = calibration;
    let n_layer = reference.config.n_layer();
    let uniform = |spec: &Spec| Plan::uniform(spec.clone(), sopts.embeddings.clone());
    let (base_plan, protect_plan) = (uniform(&sopts.base), uniform(&sopts.protect));
    for (what, p) in [("base", &base_plan), ("protect", &protect_plan)] {
        p.validate(n_layer)
            .map_err(|e| Error::input(format!("sensitivity {what} method: {e}")))?;
    }
    if matches!(sopts.protect.method, Some(MethodName::Lowrank)) {
        return Err(Error::input(
            "the protect method must be dense (keep, f16 or int8): protection keeps units in higher precision",
        ));
    }
    // Sizes, from the compressor's own reports.
    let (base_bytes, base_report) = plan_size(reference, &base_plan, cal, "base", progress)?;
    let (protect_all_bytes, protect_report) =
        plan_size(reference, &protect_plan, cal, "protect", progress)?;
    let (bb, pb) = (
        bytes_by_matrix(&base_report),
        bytes_by_matrix(&protect_report),
    );
    let budget_bytes = sopts
        .budget_bytes
        .unwrap_or(base_bytes + protect_all_bytes.saturating_sub(base_bytes) / 4);
    if budget_bytes < base_bytes {
        return Err(Error::input(format!(
            "size budget {budget_bytes} bytes is below the uniform base plan's {base_bytes} bytes"
        )));
    }

    // One unit at a time.
    let reference_ppl = language_perplexity(reference, texts, opts, "reference", progress)?;
    let units = Unit::all(sopts.granularity, n_layer);
    let mut results_v = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let label = format!("unit {}/{} {}", i + 1, units.len(), u.label());
        let plan = u.isolated_plan(&sopts.base, n_layer);
        let e = evaluate_plan(
            reference,
            &label,
            &plan,
            cal,
            texts,
            &reference_ppl,
            opts,
            progress,
        )?;
        let extra: i64 = bb
            .iter()
            .filter(|((l, c), _)| u.covers(*l, *c))
            .map(|(k, &b)| pb.get(k).copied().unwrap_or(b) as i64 - b as i64)
            .sum();
        results_v.push(UnitResult {
            unit: u.label(),
            layer: u.layer,
            component: u.component.map(|c| c.name().to_string()),
            mean_degradation: e.disparity.mean_degradation,
            max_degradation: e.disparity.worst,
            languages: e.languages,
            extra_bytes: extra,
            protected: false,
        });
    }

    // Greedy protection: most degradation per extra byte first, while the estimate fits the budget.
    let mut order: Vec<usize> = (0..results_v.len()).collect();
    let score = |r: &UnitResult| r.mean_degradation / (r.extra_bytes.max(1) as f64);
    order.sort_by(|&a, &b| score(&results_v[b]).total_cmp(&score(&results_v[a])));
    let mut estimate = base_bytes as i64;
    let mut plan = base_plan.clone();
    for i in order {
        let r = &mut results_v[i];
        if r.mean_degradation <= 0.0 || estimate + r.extra_bytes > budget_bytes as i64 {
            continue;
        }
        estimate += r.extra_bytes;
        r.protected = true;
        plan.overrides.push(units[i].override_with(&sopts.protect));
    }
    results_v.sort_by(|a, b| b.mean_degradation.total_cmp(&a.mean_degradation));

    // The plan against the uniform base and a uniform plan of its size, on held-out text.
    let (eval_texts, held_out) = match holdout {
        Some(h) => (h, true),
        None => (texts, false),
    };
    let eval_ref = if held_out {
        language_perplexity(
            reference,
            eval_texts,
            opts,
            "reference (held out)",
            progress,
        )?
    } else {
        reference_ppl.clone()
    };
    let base_label = format!("uniform {}", describe_spec(&sopts.base));
    let base_eval = evaluate_plan(
        reference,
        &base_label,
        &base_plan,
        cal,
        eval_texts,
        &eval_ref,
        opts,
        progress,
    )?;
    let plan_eval = evaluate_plan(
        reference,
        "sensitivity plan",
        &plan,
        cal,
        eval_texts,
        &eval_ref,
        opts,
        progress,
    )?;
    let uniform_eval = match (sopts.base.method, sopts.base.rank) {
        (Some(MethodName::Lowrank), Some(r0)) => {
            let r = matching_rank(
                reference,
                &sopts.base,
                &sopts.embeddings,
                (r0, base_bytes),
                plan_eval.file_bytes,
                progress,
            )?;
            let spec = Spec {
                rank: Some(r),
                ..sopts.base.clone()
            };
            let label = format!("uniform {}", describe_spec(&spec));
            Some(evaluate_plan(
                reference,
                &label,
                &uniform(&spec),
                cal,
                eval_texts,
                &eval_ref,
                opts,
                progress,
            )?)
        }
        _ => None,
    };
    Ok(SensitivityReport {
        base: describe_spec(&sopts.base),
        protect: describe_spec(&sopts.protect),
        embeddings: describe_spec(&sopts.embeddings),
        granularity: sopts.granularity,
        units: results_v,
        base_bytes,
        protect_all_bytes,
        budget_bytes,
        plan,
        comparison: Comparison {
            held_out,
            base: base_eval,
            plan: plan_eval,
            uniform: uniform_eval,
        },
    })
}

/// The size of `reference`'s `model.safetensors` compressed by `plan`, and the compressor's report.
fn plan_size(
    reference: &Model,
    plan: &Plan,
    calibration: &Calibration,
    what: &str,
    progress: Progress,
) -> Result<(usize, Report)> {
    let stage = format!("size {what}");
    if calibration.texts.is_empty() && super::needs_calibration(reference, plan)? {
        return Err(Error::input(format!(
            "the {what} method needs calibration text (GPTQ, AWQ): give it with --calibration FILE \
             (in the library: sensitivity_calibrated)"
        )));
    }
    let opts = compress::Options {
        calibration: calibration.texts.clone(),
        calibration_tokens: calibration.tokens,
        ..compress::Options::default()
    };
    let (bytes, report) = compress::compress_model(reference, plan, &opts, &mut |d, t, _| {
        progress(d, t, &stage)
    })?;
    Ok((bytes.len(), report))
}

/// The uniform rank (≥ `r0`) whose file size is closest to `target` bytes (sizes grow with the rank).
fn matching_rank(
    reference: &Model,
    base: &Spec,
    embeddings: &Spec,
    (r0, r0_bytes): (usize, usize),
    target: usize,
    progress: Progress,
) -> Result<usize> {
    let mut sizes = BTreeMap::from([(r0, r0_bytes)]);
    let mut size = |r: usize| -> Result<usize> {
        if let Some(&b) = sizes.get(&r) {
            return Ok(b);
        }
        let spec = Spec {
            rank: Some(r),
            ..base.clone()
        };
        let plan = Plan::uniform(spec, embeddings.clone());
        let (b, _) = plan_size(
            reference,
            &plan,
            &Calibration::default(),
            &format!("rank {r}"),
            progress,
        )?;
        sizes.insert(r, b);
        Ok(b)
    };
    let c = &reference.config;
    // Largest rank with size ≤ target (binary search), then the closer of it and the next.
    let (mut lo, mut hi) = (r0, c.d_model.min(c.d_ff).max(r0));
    if size(lo)? >= target {
        return Ok(r0);
    }
    if size(hi)? <= target {
        return Ok(hi);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if size(mid)? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (s_lo, s_hi) = (size(lo)?, size(hi)?);
    Ok(if target - s_lo <= s_hi - target {
        lo
    } else {
        hi
    })
}

/// Mean degradation (%) of every unit, most sensitive first; protected units marked in the label.
pub fn units_chart(report: &SensitivityReport, title: &str) -> String {
    let cats: Vec<String> = report
        .units
        .iter()
        .map(|u| {
            if u.protected {
                format!("{}*", u.unit)
            } else {
                u.unit.clone()
            }
        })
        .collect();
    let mean: Vec<f64> = report
        .units
        .iter()
        .map(|u| 100.0 * u.mean_degradation)
        .collect();
    let max: Vec<f64> = report
        .units
        .iter()
        .map(|u| 100.0 * u.max_degradation)
        .collect();
    svg::bar_chart(
        title,
        "perplexity degradation (%)",
        &cats,
        &[
            ("mean over languages".into(), mean),
            ("worst language".into(), max),
        ],
    )
}

/// Degradation (%) per language of the uniform base, the plan and the uniform plan of its size.
pub fn comparison_chart(report: &SensitivityReport, title: &str) -> String {
    let c = &report.comparison;
    let mut evals = vec![&c.base, &c.plan];
    evals.extend(c.uniform.as_ref());
    let cats: Vec<String> = c.plan.languages.iter().map(|l| l.lang.clone()).collect();
    let series: Vec<(String, Vec<f64>)> = evals
        .iter()
        .map(|e| {
            (
                format!("{} ({:.1} MB)", e.label, e.file_bytes as f64 / 1e6),
                e.languages.iter().map(|l| 100.0 * l.degradation).collect(),
            )
        })
        .collect();
    svg::bar_chart(title, "perplexity degradation (%)", &cats, &series)
}
