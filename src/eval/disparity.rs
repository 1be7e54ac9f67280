//! Perplexity per language, reference against candidate, and the disparity of the degradation.
//!
//! `degradation = candidate_ppl / reference_ppl − 1` per language. The disparity summarises how unevenly
//! compression hurts the languages ([`Disparity`]).

use serde::Serialize;

use super::metrics::degradation;
use super::{build_compressed, check_compatible, language_ppl, EvalOptions, LangIds, Progress};
use crate::compress::Plan;
use crate::error::{Error, Result};
use crate::model::Model;

/// One language's result.
#[derive(Clone, Debug, Serialize)]
pub struct LangResult {
    pub lang: String,
    pub reference_ppl: f64,
    pub candidate_ppl: f64,
    /// `candidate_ppl / reference_ppl − 1`.
    pub degradation: f64,
    /// Tokens of the text (all scored but the first).
    pub tokens: usize,
}

/// How unevenly the languages degrade. With `worst` and `best` the largest and smallest degradation:
/// - `ratio = worst / best`, the plain ratio of degradations, defined only when `best > 0` (`null`
///   otherwise: a language that did not degrade, or improved, makes it meaningless);
/// - `ppl_ratio = (1 + worst) / (1 + best)`, the ratio of perplexity ratios: always defined, 1 when every
///   language degrades alike;
/// - `spread = worst − best`, in degradation units.
#[derive(Clone, Debug, Serialize)]
pub struct Disparity {
    pub ratio: Option<f64>,
    pub ppl_ratio: f64,
    pub spread: f64,
    pub worst_lang: String,
    pub worst: f64,
    pub best_lang: String,
    pub best: f64,
    /// Mean degradation over the languages.
    pub mean_degradation: f64,
}

/// Summarises per-language degradations (`None` for an empty list).
pub fn summarize(languages: &[LangResult]) -> Option<Disparity> {
    let first = languages.first()?;
    let (mut worst, mut best) = (first, first);
    for l in languages {
        if l.degradation > worst.degradation {
            worst = l;
        }
        if l.degradation < best.degradation {
            best = l;
        }
    }
    let (w, b) = (worst.degradation, best.degradation);
    Some(Disparity {
        ratio: (b > 0.0).then(|| w / b),
        ppl_ratio: (1.0 + w) / (1.0 + b),
        spread: w - b,
        worst_lang: worst.lang.clone(),
        worst: w,
        best_lang: best.lang.clone(),
        best: b,
        mean_degradation: languages.iter().map(|l| l.degradation).sum::<f64>()
            / languages.len() as f64,
    })
}

/// Pairs reference and candidate perplexities into results.
pub fn results(texts: &[LangIds], reference: &[f64], candidate: &[f64]) -> Vec<LangResult> {
    texts
        .iter()
        .zip(reference.iter().zip(candidate))
        .map(|(t, (&r, &c))| LangResult {
            lang: t.lang.clone(),
            reference_ppl: r,
            candidate_ppl: c,
            degradation: degradation(r, c),
            tokens: t.ids.len(),
        })
        .collect()
}

/// The result of [`disparity`] (the `--json` output of `slimlm eval disparity`).
#[derive(Clone, Debug, Serialize)]
pub struct DisparityReport {
    pub languages: Vec<LangResult>,
    pub disparity: Disparity,
    pub context: usize,
    pub stride: usize,
}

/// Perplexity of every text under `reference` and `candidate`, and the disparity of the degradation.
pub fn disparity(
    reference: &Model,
    candidate: &Model,
    texts: &[LangIds],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<DisparityReport> {
    check_compatible(reference, candidate)?;
    let r = language_ppl(reference, texts, opts, "reference", progress)?;
    let c = language_ppl(candidate, texts, opts, "candidate", progress)?;
    let languages = results(texts, &r, &c);
    let disparity =
        summarize(&languages).ok_or_else(|| Error::input("no languages to evaluate"))?;
    Ok(DisparityReport {
        languages,
        disparity,
        context: opts.context,
        stride: opts.stride,
    })
}

/// A compressed model evaluated per language.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluated {
    pub label: String,
    /// Size of its `model.safetensors`.
    pub file_bytes: usize,
    pub languages: Vec<LangResult>,
    pub disparity: Disparity,
}

/// Builds `reference` compressed by `plan` in memory and scores `texts` against `reference_ppl`.
pub fn evaluate_plan(
    reference: &Model,
    label: &str,
    plan: &Plan,
    texts: &[LangIds],
    reference_ppl: &[f64],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<Evaluated> {
    let stage = format!("build {label}");
    let (model, report) = build_compressed(reference, plan, &mut |d, t, _| progress(d, t, &stage))?;
    let c = language_ppl(&model, texts, opts, label, progress)?;
    let languages = results(texts, reference_ppl, &c);
    let disparity =
        summarize(&languages).ok_or_else(|| Error::input("no languages to evaluate"))?;
    Ok(Evaluated {
        label: label.to_string(),
        file_bytes: report.file_bytes,
        languages,
        disparity,
    })
}
