//! Perplexity per language, reference against candidate, and the disparity of the degradation.
//!
//! `degradation = candidate_ppl / reference_ppl − 1` per language. The disparity summarises how unevenly
//! compression hurts the languages ([`Disparity`]). Per-token perplexity is not comparable across scripts
//! (a token can be one byte or a whole word), so every language also has its bits per byte, reference and
//! candidate, and their relative change.

use serde::Serialize;

use super::metrics::degradation;
use super::{
    build_compressed_calibrated, check_compatible, language_perplexity, Calibration, EvalOptions,
    LangIds, Progress,
};
use crate::compress::Plan;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::perplexity::Perplexity;

/// One language's result.
#[derive(Clone, Debug, Serialize)]
pub struct LangResult {
    pub lang: String,
    pub reference_ppl: f64,
    pub candidate_ppl: f64,
    /// `candidate_ppl / reference_ppl − 1`.
    pub degradation: f64,
    /// Tokens of the text (scored as [`crate::perplexity()`] says).
    pub tokens: usize,
    /// Bytes the scored tokens decode to (for byte-level tokenizers the UTF-8 of the text they cover):
    /// the denominator of bits per byte.
    pub bytes: usize,
    /// Bits per byte under the reference: total NLL of the scored tokens in bits / `bytes`.
    pub reference_bpb: Option<f64>,
    /// Bits per byte under the candidate.
    pub candidate_bpb: Option<f64>,
    /// `candidate_bpb / reference_bpb − 1`: the relative change of the total NLL, comparable across
    /// scripts.
    pub bpb_change: Option<f64>,
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
    /// Mean of the languages' relative change of bits per byte (`None` if a language has none).
    pub mean_bpb_change: Option<f64>,
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
        mean_bpb_change: languages
            .iter()
            .map(|l| l.bpb_change)
            .sum::<Option<f64>>()
            .map(|s| s / languages.len() as f64),
    })
}

/// Pairs reference and candidate perplexities into results.
pub fn results(
    texts: &[LangIds],
    reference: &[Perplexity],
    candidate: &[Perplexity],
) -> Vec<LangResult> {
    texts
        .iter()
        .zip(reference.iter().zip(candidate))
        .map(|(t, (r, c))| LangResult {
            lang: t.lang.clone(),
            reference_ppl: r.ppl,
            candidate_ppl: c.ppl,
            degradation: degradation(r.ppl, c.ppl),
            tokens: t.ids.len(),
            bytes: r.bytes_scored,
            reference_bpb: r.bits_per_byte,
            candidate_bpb: c.bits_per_byte,
            bpb_change: r
                .bits_per_byte
                .zip(c.bits_per_byte)
                .map(|(r, c)| c / r - 1.0),
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
    /// The calibration text of a candidate built in memory that needed it (set by the caller that
    /// built it; [`disparity`] leaves it `None`).
    pub calibration: Option<Calibration>,
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
    let r = language_perplexity(reference, texts, opts, "reference", progress)?;
    let c = language_perplexity(candidate, texts, opts, "candidate", progress)?;
    let languages = results(texts, &r, &c);
    let disparity =
        summarize(&languages).ok_or_else(|| Error::input("no languages to evaluate"))?;
    Ok(DisparityReport {
        languages,
        disparity,
        context: opts.context,
        stride: opts.stride,
        calibration: None,
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

/// Builds `reference` compressed by `plan` in memory (with `calibration` for the methods that need it)
/// and scores `texts` against the reference's perplexities.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_plan(
    reference: &Model,
    label: &str,
    plan: &Plan,
    calibration: &Calibration,
    texts: &[LangIds],
    reference_ppl: &[Perplexity],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<Evaluated> {
    let stage = format!("build {label}");
    let (model, report) =
        build_compressed_calibrated(reference, plan, calibration, &mut |d, t, s| {
            progress(d, t, &format!("{stage}: {s}"))
        })
        .map_err(|e| match e {
            // Say which point failed (a sweep builds many).
            Error::Input(m) => Error::Input(format!("{label}: {m}")),
            Error::Plan(m) => Error::Plan(format!("{label}: {m}")),
            e => e,
        })?;
    let c = language_perplexity(&model, texts, opts, label, progress)?;
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
