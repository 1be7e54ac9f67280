//! Quality analysis of compressed models against their dense reference: per-layer comparison
//! ([`compare`]), perplexity per language and its disparity ([`disparity`]), size–quality sweeps
//! ([`sweep`]) and sensitivity-guided protection plans ([`sensitivity`]).
//!
//! Compressed models are built in memory ([`build_compressed`]): the compressor's bytes are opened with
//! [`TensorFile::from_bytes`], so a sweep writes nothing to disk.
//!
//! ```no_run
//! use slimlm::eval::{self, corpus, EvalOptions};
//! use slimlm::Model;
//! let reference = Model::open("../shared/models/ref-gpt2")?;
//! let plan = eval::parse_spec_plan("lowrank:r64:int8", "int8")?;
//! let (candidate, _) = eval::build_compressed(&reference, &plan, &mut |_, _, _| {})?;
//! let texts = corpus::load("../shared/corpora/udhr".as_ref(), &corpus::Languages::Default, None)?;
//! let ids = corpus::tokenize(&reference, &texts, Some(1024))?;
//! let r = eval::disparity::disparity(&reference, &candidate, &ids, &EvalOptions::default(), &mut |_, _, _| {})?;
//! println!("disparity {:.3}", r.disparity.ppl_ratio);
//! # Ok::<(), slimlm::Error>(())
//! ```

pub mod compare;
pub mod corpus;
pub mod disparity;
pub mod metrics;
pub mod sensitivity;
pub mod svg;
pub mod sweep;

use serde::Serialize;

use crate::compress::{self, FactorDtype, MethodName, Plan, Report, Spec};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::perplexity::Perplexity;
use crate::tensor_file::{TensorFile, TensorStore};

pub use corpus::{LangIds, LangText, Languages};

/// `progress(done, total, stage)`, called as work completes.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// How perplexity is measured (the rule of [`crate::perplexity()`]).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EvalOptions {
    /// Tokens per window.
    pub context: usize,
    /// Distance between window starts.
    pub stride: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            context: 256,
            stride: 256,
        }
    }
}

/// Checks that `candidate` can be compared with `reference`: same architecture, layers, widths and
/// vocabulary (a compressed model of the same source).
pub fn check_compatible(reference: &Model, candidate: &Model) -> Result<()> {
    let (r, c) = (&reference.config, &candidate.config);
    let mismatch = |what: &str, a: String, b: String| {
        Err(Error::input(format!(
            "reference {} and candidate {} differ in {what} ({a} vs {b}): compare a compressed model with its own source",
            reference.dir().display(),
            candidate.dir().display()
        )))
    };
    if r.arch != c.arch {
        return mismatch(
            "architecture",
            format!("{:?}", r.arch),
            format!("{:?}", c.arch),
        );
    }
    if r.vocab_size != c.vocab_size
        || reference.tokenizer().vocab_size() != candidate.tokenizer().vocab_size()
    {
        return mismatch(
            "vocabulary",
            format!(
                "{}/{} tokens",
                r.vocab_size,
                reference.tokenizer().vocab_size()
            ),
            format!(
                "{}/{} tokens",
                c.vocab_size,
                candidate.tokenizer().vocab_size()
            ),
        );
    }
    for (what, a, b) in [
        ("layers", r.n_layer(), c.n_layer()),
        ("width", r.d_model, c.d_model),
        ("MLP width", r.d_ff, c.d_ff),
        ("context length", r.n_ctx, c.n_ctx),
    ] {
        if a != b {
            return mismatch(what, a.to_string(), b.to_string());
        }
    }
    Ok(())
}

/// Calibration text for the methods that need it (GPTQ, activation-aware or whitened SVD), and where it
/// came from. It must never be the text being scored: see [`corpus::default_calibration`] for the
/// command line's default.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    /// The texts (several languages: the compressor runs an equal share of `tokens` from each, from its
    /// start).
    #[serde(skip)]
    pub texts: Vec<String>,
    /// A name per text (its file), for reports and errors.
    pub names: Vec<String>,
    /// At most this many calibration tokens are run.
    pub tokens: usize,
    /// Where the texts came from, in words.
    pub source: String,
}

impl Default for Calibration {
    /// No text; the compressor's default budget (8192 tokens).
    fn default() -> Self {
        Calibration {
            texts: Vec::new(),
            names: Vec::new(),
            tokens: compress::Options::default().calibration_tokens,
            source: String::new(),
        }
    }
}

/// Compresses `reference` by `plan` in memory and opens the result: nothing is written to disk. Without
/// calibration text: a plan that needs it (GPTQ, AWQ) is refused; see [`build_compressed_calibrated`].
pub fn build_compressed(
    reference: &Model,
    plan: &Plan,
    progress: Progress,
) -> Result<(Model, Report)> {
    build_compressed_calibrated(reference, plan, &Calibration::default(), progress)
}

/// Whether `plan` needs calibration text on `reference` (GPTQ, activation-aware or whitened SVD).
pub fn needs_calibration(reference: &Model, plan: &Plan) -> Result<bool> {
    let n = reference.config.n_layer();
    Ok(plan.validate(n)?.needs_calibration(n))
}

/// [`build_compressed`] with calibration text for the methods that need it (given to
/// `compress::compress_model` as `Options { calibration, calibration_tokens }`).
pub fn build_compressed_calibrated(
    reference: &Model,
    plan: &Plan,
    calibration: &Calibration,
    progress: Progress,
) -> Result<(Model, Report)> {
    if calibration.texts.is_empty() && needs_calibration(reference, plan)? {
        return Err(Error::input(
            "this plan needs calibration text (GPTQ, or activation-aware/whitened SVD): give it with \
             --calibration FILE (several languages: repeat it), or let the command line take its default \
             (see `slimlm eval disparity --help`); in the library, use build_compressed_calibrated",
        ));
    }
    let opts = compress::Options {
        calibration: calibration.texts.clone(),
        calibration_tokens: calibration.tokens,
        ..compress::Options::default()
    };
    let (bytes, report) = compress::compress_model(reference, plan, &opts, progress)?;
    let name = reference.dir().join("<in memory>");
    let file = TensorFile::from_bytes(&name, &bytes)?;
    drop(bytes);
    let model = Model::from_store(
        reference.dir(),
        reference.config.clone(),
        TensorStore::from_file(file),
    )?;
    Ok((model, report))
}

/// Parses a compact method: `keep`, `f16`, `int8`, `int8:g64`, `lowrank:r64`, `lowrank:r64:int8`,
/// `lowrank:e0.9:f16`, `lowrank:r32:int8:g32`, `q4:g128:rtn`, `q4:g128:gptq`, `q3:g64:rtn:sym` (r = rank,
/// e = energy, b = budget, g = group; q4/q3 take a quantizer, `rtn` (the default), `gptq` or `awq` (both
/// need calibration text: [`build_compressed_calibrated`]), and `sym` for scales without minimums).
pub fn parse_spec(s: &str) -> Result<Spec> {
    let bad = |why: String| {
        Error::input(format!(
            "method {s:?}: {why} (e.g. int8, int8:g64, f16, keep, lowrank:r64:int8, lowrank:e0.9, q4:g128:rtn, \
             q4:g128:gptq, q4:g64:awq, q3:g64:rtn:sym)"
        ))
    };
    let mut parts = s.trim().split(':');
    let method = match parts.next().unwrap_or("") {
        "keep" => MethodName::Keep,
        "f16" => MethodName::F16,
        "int8" => MethodName::Int8,
        "q4" => MethodName::Q4,
        "q3" => MethodName::Q3,
        "lowrank" => MethodName::Lowrank,
        m => return Err(bad(format!("unknown method {m:?}"))),
    };
    let mut spec = Spec {
        method: Some(method),
        ..Spec::default()
    };
    for p in parts {
        let num = |v: &str| -> Result<f64> {
            v.parse::<f64>()
                .map_err(|_| bad(format!("{p:?} is not a number after its letter")))
        };
        let int = |v: &str| -> Result<usize> {
            v.parse::<usize>()
                .map_err(|_| bad(format!("{p:?} is not a whole number after its letter")))
        };
        if let Ok(f) = FactorDtype::parse(p) {
            spec.factors = Some(f);
        } else if let Ok(q) = crate::compress::Quantizer::parse(p) {
            if !matches!(method, MethodName::Q4 | MethodName::Q3) {
                return Err(bad(format!("{p} applies to q4 and q3 only")));
            }
            spec.quantizer = Some(q);
        } else if p == "sym" {
            spec.symmetric = Some(true);
        } else if let Some(v) = p.strip_prefix('r') {
            spec.rank = Some(int(v)?);
        } else if let Some(v) = p.strip_prefix('e') {
            spec.energy = Some(num(v)?);
        } else if let Some(v) = p.strip_prefix('b') {
            spec.budget = Some(num(v)?);
        } else if let Some(v) = p.strip_prefix('g') {
            spec.group = Some(int(v)?);
        } else {
            return Err(bad(format!("unknown part {p:?}")));
        }
    }
    if method == MethodName::Lowrank && spec.factors.is_none() {
        spec.factors = Some(FactorDtype::F32);
    }
    // The compressor's own checks (rank 0, energy outside (0, 1], …) with this name in the message.
    let keep = Spec {
        method: Some(MethodName::Keep),
        ..Spec::default()
    };
    Plan::uniform(spec.clone(), keep)
        .validate(1)
        .map_err(|e| bad(e.to_string()))?;
    Ok(spec)
}

/// A compact description of a spec (the inverse of [`parse_spec`]).
pub fn describe_spec(spec: &Spec) -> String {
    let mut s = match spec.method {
        Some(MethodName::Keep) | None => "keep".to_string(),
        Some(MethodName::F16) => "f16".to_string(),
        Some(MethodName::Int8) => "int8".to_string(),
        Some(MethodName::Q4) => "q4".to_string(),
        Some(MethodName::Q3) => "q3".to_string(),
        Some(MethodName::Lowrank) => "lowrank".to_string(),
    };
    if let Some(r) = spec.rank {
        s += &format!(":r{r}");
    }
    if let Some(e) = spec.energy {
        s += &format!(":e{e}");
    }
    if let Some(b) = spec.budget {
        s += &format!(":b{b}");
    }
    if let Some(f) = spec.factors {
        s += &format!(":{}", f.name());
    }
    if let Some(g) = spec.group {
        s += &format!(":g{g}");
    }
    if let Some(q) = spec.quantizer {
        s += &format!(":{}", q.name());
    }
    if spec.symmetric == Some(true) {
        s += ":sym";
    }
    s
}

/// A uniform plan from compact methods for the linear layers and the embeddings.
pub fn parse_spec_plan(linear: &str, embeddings: &str) -> Result<Plan> {
    Ok(Plan::uniform(parse_spec(linear)?, parse_spec(embeddings)?))
}

/// Perplexity of every language under `model`; `progress` counts windows over all languages.
pub fn language_ppl(
    model: &Model,
    texts: &[LangIds],
    opts: &EvalOptions,
    stage: &str,
    progress: Progress,
) -> Result<Vec<f64>> {
    Ok(language_perplexity(model, texts, opts, stage, progress)?
        .iter()
        .map(|p| p.ppl)
        .collect())
}

/// [`crate::perplexity()`] of every language under `model` (perplexity, NLL, bits per byte);
/// `progress` counts windows over all languages.
pub fn language_perplexity(
    model: &Model,
    texts: &[LangIds],
    opts: &EvalOptions,
    stage: &str,
    progress: Progress,
) -> Result<Vec<Perplexity>> {
    let windows: Vec<usize> = texts
        .iter()
        .map(|t| crate::perplexity::window_starts(t.ids.len(), opts.context, opts.stride).len())
        .collect();
    let total: usize = windows.iter().sum();
    let mut done = 0;
    let mut out = Vec::with_capacity(texts.len());
    for (t, w) in texts.iter().zip(&windows) {
        let label = format!("{stage} {}", t.lang);
        let p = crate::perplexity(model, &t.ids, opts.context, opts.stride, &mut |d, _| {
            progress(done + d, total, &label)
        })?;
        done += w;
        out.push(p);
    }
    Ok(out)
}
