//! Size against quality: compress the reference by each of several plans (in memory), measure perplexity
//! per language, and report file size, degradation and disparity per point.

use serde::Serialize;

use super::disparity::{evaluate_plan, Disparity, LangResult};
use super::{describe_spec, language_ppl, svg, EvalOptions, LangIds, Progress};
use crate::compress::{Plan, Spec};
use crate::error::{Error, Result};
use crate::model::Model;

/// One plan of a sweep.
#[derive(Clone, Debug)]
pub struct SweepPoint {
    pub label: String,
    pub plan: Plan,
}

/// Points doing each of `linear` to every linear layer and `embeddings` to the embeddings.
pub fn uniform_points(linear: &[Spec], embeddings: &Spec) -> Vec<SweepPoint> {
    linear
        .iter()
        .map(|s| SweepPoint {
            label: describe_spec(s),
            plan: Plan::uniform(s.clone(), embeddings.clone()),
        })
        .collect()
}

/// One point's result.
#[derive(Clone, Debug, Serialize)]
pub struct PointResult {
    pub label: String,
    /// Size of the compressed `model.safetensors`.
    pub file_bytes: usize,
    /// `file_bytes` over the reference's.
    pub size_ratio: f64,
    pub languages: Vec<LangResult>,
    pub disparity: Disparity,
}

/// The result of [`sweep`] (the `--json` output of `slimlm eval sweep`).
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub reference_bytes: usize,
    pub points: Vec<PointResult>,
    pub context: usize,
    pub stride: usize,
}

/// Evaluates every point; plans are all checked before any work.
pub fn sweep(
    reference: &Model,
    points: &[SweepPoint],
    texts: &[LangIds],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<SweepReport> {
    if points.is_empty() {
        return Err(Error::input("a sweep needs at least one point"));
    }
    for p in points {
        p.plan
            .validate(reference.config.n_layer())
            .map_err(|e| Error::input(format!("sweep point {}: {e}", p.label)))?;
    }
    let r = language_ppl(reference, texts, opts, "reference", progress)?;
    let reference_bytes = reference.store().file_bytes();
    let mut out = Vec::new();
    for p in points {
        let e = evaluate_plan(reference, &p.label, &p.plan, texts, &r, opts, progress)?;
        out.push(PointResult {
            size_ratio: e.file_bytes as f64 / reference_bytes as f64,
            label: e.label,
            file_bytes: e.file_bytes,
            languages: e.languages,
            disparity: e.disparity,
        });
    }
    Ok(SweepReport {
        reference_bytes,
        points: out,
        context: opts.context,
        stride: opts.stride,
    })
}

/// The quality–size curve: degradation (%) per language and the mean, against file size (MB).
pub fn chart(report: &SweepReport, title: &str) -> String {
    let mb = |b: usize| b as f64 / 1e6;
    let mut series: Vec<svg::Series> = Vec::new();
    if let Some(first) = report.points.first() {
        for (i, l) in first.languages.iter().enumerate() {
            series.push(svg::Series {
                name: l.lang.clone(),
                points: report
                    .points
                    .iter()
                    .filter_map(|p| {
                        p.languages
                            .get(i)
                            .map(|l| (mb(p.file_bytes), 100.0 * l.degradation))
                    })
                    .collect(),
                bold: false,
            });
        }
    }
    series.push(svg::Series {
        name: "mean".into(),
        points: report
            .points
            .iter()
            .map(|p| (mb(p.file_bytes), 100.0 * p.disparity.mean_degradation))
            .collect(),
        bold: true,
    });
    svg::line_chart(
        title,
        "model.safetensors size (MB)",
        "perplexity degradation (%)",
        &series,
    )
}
