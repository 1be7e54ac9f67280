//! Size against quality: compress the reference by each of several plans (in memory), measure perplexity
//! per language, and report file size, degradation and disparity per point.

use serde::Serialize;

use super::disparity::{evaluate_plan, Disparity, LangResult};
use super::{
    describe_spec, language_perplexity, needs_calibration, svg, Calibration, EvalOptions, LangIds,
    Progress,
};
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
    /// The calibration text of the points that needed it (GPTQ, AWQ); `None` when none did.
    pub calibration: Option<Calibration>,
}

/// Evaluates every point; plans are all checked before any work. Points that need calibration text
/// (GPTQ, AWQ) are refused: see [`sweep_calibrated`].
pub fn sweep(
    reference: &Model,
    points: &[SweepPoint],
    texts: &[LangIds],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<SweepReport> {
    sweep_calibrated(
        reference,
        points,
        &Calibration::default(),
        texts,
        opts,
        progress,
    )
}

/// [`sweep`], with `calibration` for the points that need it (it must not be `texts`).
pub fn sweep_calibrated(
    reference: &Model,
    points: &[SweepPoint],
    calibration: &Calibration,
    texts: &[LangIds],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<SweepReport> {
    if points.is_empty() {
        return Err(Error::input("a sweep needs at least one point"));
    }
    let mut calibrated = false;
    for p in points {
        p.plan
            .validate(reference.config.n_layer())
            .map_err(|e| Error::input(format!("sweep point {}: {e}", p.label)))?;
        if needs_calibration(reference, &p.plan)? {
            if calibration.texts.is_empty() {
                return Err(Error::input(format!(
                    "sweep point {} needs calibration text (GPTQ, AWQ): give it with --calibration FILE \
                     (in the library: sweep_calibrated)",
                    p.label
                )));
            }
            calibrated = true;
        }
    }
    let r = language_perplexity(reference, texts, opts, "reference", progress)?;
    let reference_bytes = reference.store().file_bytes();
    let mut out = Vec::new();
    for p in points {
        let e = evaluate_plan(
            reference,
            &p.label,
            &p.plan,
            calibration,
            texts,
            &r,
            opts,
            progress,
        )?;
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
        calibration: calibrated.then(|| calibration.clone()),
    })
}

/// The quality–size chart: degradation (%) per language and the mean (black, each point labelled with its
/// method), against file size (MB). Lines join the points of one family ([`family`]) only.
pub fn chart(report: &SweepReport, title: &str) -> String {
    let mb = |b: usize| b as f64 / 1e6;
    let labels: Vec<String> = report.points.iter().map(|p| p.label.clone()).collect();
    let mut families: Vec<String> = Vec::new();
    let groups: Vec<usize> = labels
        .iter()
        .map(|l| {
            let f = family(l);
            match families.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    families.push(f);
                    families.len() - 1
                }
            }
        })
        .collect();
    let mut series: Vec<svg::Series> = Vec::new();
    if let Some(first) = report.points.first() {
        for (i, l) in first.languages.iter().enumerate() {
            series.push(svg::Series {
                name: l.lang.clone(),
                points: report
                    .points
                    .iter()
                    .map(|p| {
                        p.languages.get(i).map_or((f64::NAN, f64::NAN), |l| {
                            (mb(p.file_bytes), 100.0 * l.degradation)
                        })
                    })
                    .collect(),
                labels: labels.clone(),
                groups: groups.clone(),
                ..svg::Series::default()
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
        labels,
        show_labels: true,
        groups,
    });
    svg::line_chart(
        title,
        "model.safetensors size (MB)",
        "perplexity degradation (%)",
        &series,
    )
}

/// The family of a point's label: its method with the numbers dropped (`lowrank:r64:int8` →
/// `lowrank:r:int8`, `q4:g128:gptq` → `q4:g:gptq`). Chart lines join the points of one family only.
pub fn family(label: &str) -> String {
    label
        .split(':')
        .map(|p| {
            let mut c = p.chars();
            match (c.next(), c.next()) {
                (Some(l @ ('r' | 'e' | 'b' | 'g')), Some(d)) if d.is_ascii_digit() || d == '.' => {
                    l.to_string()
                }
                _ => p.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}
