//! `slimlm.perplexity`, `slimlm.compress` and the `slimlm.eval` functions: plain arguments in (paths,
//! method strings), plain data out (the objects the command line prints with `--json`), with the
//! command line's defaults.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::PyArray1;
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use slimlm::compress::{
    self as lib_compress, Component, FactorDtype, MethodName, Mode, Plan, PlanOptions, Quantizer,
    SFold, SvdKind,
};
use slimlm::eval::{
    self, compare, corpus, disparity, sensitivity, sweep, EvalOptions, LangIds, Languages,
};
use slimlm::{Error, Model};

use crate::errors::{input, to_py, IntoPy};
use crate::model::{resolve_dir, PyModel};
use crate::util::{to_json, to_python, with_threads, Progress, Prompt};

/// A model given as an open `Model` or as a directory.
#[derive(FromPyObject)]
pub enum ModelArg {
    Model(Py<PyModel>),
    Path(PathBuf),
}

impl ModelArg {
    /// The model (opening the directory, with the GIL released).
    fn open(self, py: Python<'_>, what: &str) -> PyResult<Arc<Model>> {
        match self {
            ModelArg::Model(m) => Ok(m.get().inner()),
            ModelArg::Path(p) => {
                let dir = resolve_dir(&p, "main")?;
                py.detach(|| Model::open(&dir))
                    .map(Arc::new)
                    .map_err(|e| prefix(e, what))
            }
        }
    }

    fn dir(&self) -> PyResult<PathBuf> {
        match self {
            ModelArg::Model(m) => Ok(m.get().inner().dir().to_path_buf()),
            ModelArg::Path(p) => resolve_dir(p, "main"),
        }
    }
}

/// The error of opening the reference or the candidate, saying which (as the command line does).
fn prefix(e: Error, what: &str) -> PyErr {
    let err = to_py(e);
    Python::attach(|py| {
        let msg = format!("{what}: {}", err.value(py));
        let value = err.value(py);
        let _ = value.setattr("args", (msg,));
        err
    })
}

/// Perplexity of `text` (a string, or token ids) under `model` by the rule of the goldens and of
/// `slimlm perplexity`: token ids as the tokenizer gives them; windows of `context` tokens starting at 0,
/// `stride` apart, each seen alone; every token scored once, in the first window that predicts it;
/// ppl = exp(mean NLL).
///
/// Returns the object `slimlm perplexity --json` prints (`ppl`, `mean_nll`, `tokens_scored`, `tokens`,
/// `windows`, `context`, `stride`, `model`) plus `nll`, the NLL of every scored token (float64 numpy;
/// `nll[i]` is that of `ids[i + 1]`), and `ids` (uint32 numpy).
#[pyfunction]
#[pyo3(signature = (model, text, context = 256, stride = 256, *, threads = None, progress = None))]
pub fn perplexity<'py>(
    py: Python<'py>,
    model: ModelArg,
    text: Prompt,
    context: usize,
    stride: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let model = model.open(py, "model")?;
    let mut prog = Progress::new(progress);
    let m = model.clone();
    let r = py.detach(|| {
        with_threads(threads, || {
            let ids = text.ids(&m)?;
            let mut nll = Vec::with_capacity(ids.len());
            let r = slimlm::perplexity::perplexity_per_token(
                &m,
                &ids,
                context,
                stride,
                &mut |_, v| nll.push(v),
                &mut |d, t| prog.call(d, t, "perplexity"),
            )?;
            Ok((r, nll, ids))
        })
    })?;
    let (r, nll, ids) = prog.finish(r.py_err())?;
    let d = to_python(py, &r)?.cast_into::<PyDict>()?;
    d.set_item("model", model.dir().display().to_string())?;
    d.set_item("nll", PyArray1::from_vec(py, nll))?;
    d.set_item("ids", PyArray1::from_vec(py, ids))?;
    Ok(d)
}

fn plan_of(p: &Bound<'_, PyAny>) -> PyResult<Plan> {
    if p.is_instance_of::<PyDict>() {
        return Plan::from_json(&to_json(p)?).py_err();
    }
    let path: PathBuf = p.extract().map_err(|_| {
        input("plan must be a path to a TOML/JSON plan file, or a dict (the JSON form of a plan)")
    })?;
    Plan::from_file(&path).py_err()
}

/// One string, or several.
#[derive(FromPyObject)]
pub enum Strings {
    One(String),
    Many(Vec<String>),
}

impl Strings {
    fn into_vec(self) -> Vec<String> {
        match self {
            Strings::One(s) => vec![s],
            Strings::Many(v) => v,
        }
    }
}

/// Compresses the model in `model_dir` into a new model directory `out_dir` (written atomically; an
/// existing one is an error unless `overwrite`), as `slimlm compress` does, with its defaults.
///
/// `mode`: "int8" (every matrix and the embeddings INT8; `group` values per scale), "f16", "lowrank"
/// (every linear layer as factors of `rank`, or by `energy` / `budget`; `factors` "int8" by default,
/// embeddings INT8), or "q4" / "q3" (every linear layer 4-/3-bit in groups of `group`, 128 by default,
/// chosen by `quantizer` "rtn" (default), "gptq" or "awq" — the last two need `calibration` — with
/// minimums unless `symmetric`). Or `plan`: a TOML/JSON plan file or a dict. `embeddings` ("keep",
/// "f16", "int8", "q4", "q3"), `skip` (components), `skip_layers`, `calibration` (texts, for
/// activation-aware SVD: `svd` "activation" (default with calibration) or "whiten", and for GPTQ /
/// AWQ), `calibration_tokens`, `alpha`, `s_fold` as the command line's options. Returns the report
/// `slimlm compress --json` prints.
#[pyfunction]
#[pyo3(signature = (model_dir, out_dir, *, mode = None, plan = None, rank = None, energy = None,
    budget = None, factors = None, embeddings = None, group = None, quantizer = None,
    symmetric = false, skip = None, skip_layers = None, calibration = None, svd = None,
    calibration_tokens = 8192, alpha = None, s_fold = None, overwrite = false, threads = None,
    progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn compress<'py>(
    py: Python<'py>,
    model_dir: ModelArg,
    out_dir: PathBuf,
    mode: Option<String>,
    plan: Option<Bound<'py, PyAny>>,
    rank: Option<usize>,
    energy: Option<f64>,
    budget: Option<f64>,
    factors: Option<String>,
    embeddings: Option<String>,
    group: Option<usize>,
    quantizer: Option<String>,
    symmetric: bool,
    skip: Option<Strings>,
    skip_layers: Option<Vec<usize>>,
    calibration: Option<Strings>,
    svd: Option<String>,
    calibration_tokens: usize,
    alpha: Option<f64>,
    s_fold: Option<String>,
    overwrite: bool,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let src = model_dir.dir()?;
    let calibration = calibration.map(Strings::into_vec).unwrap_or_default();
    let plan = plan.as_ref().map(plan_of).transpose()?;
    let plan = PlanOptions {
        mode: mode.as_deref().map(Mode::parse).transpose().py_err()?,
        plan,
        group,
        rank,
        energy,
        budget,
        factors: factors
            .as_deref()
            .map(FactorDtype::parse)
            .transpose()
            .py_err()?,
        embeddings: embeddings
            .as_deref()
            .map(MethodName::parse)
            .transpose()
            .py_err()?,
        skip: skip
            .map(Strings::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|c| Component::parse(c))
            .collect::<slimlm::Result<_>>()
            .py_err()?,
        skip_layers: skip_layers.unwrap_or_default(),
        svd: svd.as_deref().map(SvdKind::parse).transpose().py_err()?,
        calibration: !calibration.is_empty(),
        alpha,
        s_fold: s_fold.as_deref().map(SFold::parse).transpose().py_err()?,
        quantizer: quantizer
            .as_deref()
            .map(Quantizer::parse)
            .transpose()
            .py_err()?,
        symmetric,
    }
    .into_plan()
    .py_err()?;
    let opts = lib_compress::Options {
        overwrite,
        calibration,
        calibration_tokens,
    };
    let mut prog = Progress::new(progress);
    let r = py.detach(|| {
        with_threads(threads, || {
            lib_compress::compress(&src, &out_dir, &plan, &opts, &mut |d, t, s| {
                prog.call(d, t, s)
            })
        })
    })?;
    let report = prog.finish(r.py_err())?;
    to_python(py, &report)
}

/// Where the candidate of `compare` and `disparity` comes from.
enum CandidateSpec {
    Model(Arc<Model>),
    Dir(PathBuf),
    Plan(Plan),
}

impl CandidateSpec {
    fn new(
        candidate: Option<ModelArg>,
        plan: Option<&Bound<'_, PyAny>>,
        method: Option<&str>,
        embeddings: &str,
    ) -> PyResult<CandidateSpec> {
        let given = candidate.is_some() as u8 + plan.is_some() as u8 + method.is_some() as u8;
        if given != 1 {
            return Err(input(
                "give exactly one of candidate=DIR|Model, plan=FILE|dict or method=\"lowrank:r64:int8\"",
            ));
        }
        Ok(match (candidate, plan, method) {
            (Some(ModelArg::Model(m)), ..) => CandidateSpec::Model(m.get().inner()),
            (Some(ModelArg::Path(p)), ..) => CandidateSpec::Dir(resolve_dir(&p, "main")?),
            (None, Some(p), _) => CandidateSpec::Plan(plan_of(p)?),
            (None, None, Some(m)) => {
                CandidateSpec::Plan(eval::parse_spec_plan(m, embeddings).py_err()?)
            }
            (None, None, None) => unreachable!("checked above"),
        })
    }

    /// The candidate model: opened, or built in memory from `reference`.
    fn build(self, reference: &Model, prog: &mut Progress) -> Result<Arc<Model>, Failure> {
        match self {
            CandidateSpec::Model(m) => Ok(m),
            CandidateSpec::Dir(d) => Model::open(&d)
                .map(Arc::new)
                .map_err(|e| Failure::In("candidate", e)),
            CandidateSpec::Plan(p) => {
                let (m, _) =
                    eval::build_compressed(reference, &p, &mut |d, t, s| prog.call(d, t, s))?;
                Ok(Arc::new(m))
            }
        }
    }
}

/// A library error, possibly saying which model it concerns.
enum Failure {
    Lib(Error),
    In(&'static str, Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Lib(e)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        match f {
            Failure::Lib(e) => to_py(e),
            Failure::In(what, e) => prefix(e, what),
        }
    }
}

/// The corpus options shared by `disparity`, `sweep` and `sensitivity`.
struct CorpusArgs {
    corpus: Option<PathBuf>,
    languages: String,
    max_lines: Option<usize>,
}

impl CorpusArgs {
    fn new(corpus: Option<PathBuf>, languages: Option<Strings>, max_lines: Option<usize>) -> Self {
        CorpusArgs {
            corpus,
            languages: languages.map_or("default".into(), |l| l.into_vec().join(",")),
            max_lines,
        }
    }

    /// The texts, tokenized in full by `model`'s tokenizer.
    fn texts(&self, model: &Model) -> slimlm::Result<Vec<LangIds>> {
        let dir = match &self.corpus {
            Some(d) => d.clone(),
            None => corpus::default_corpus_dir().ok_or_else(|| {
                Error::Input(format!(
                    "no UDHR corpus at {}; {} (or pass corpus=DIR)",
                    corpus::DEFAULT_CORPUS,
                    corpus::HOW_TO_GET
                ))
            })?,
        };
        let langs = Languages::parse(&self.languages)?;
        let texts = corpus::load(&dir, &langs, self.max_lines)?;
        corpus::tokenize(model, &texts, None)
    }
}

/// Per layer, the cosine similarity of `candidate`'s hidden states and linear-layer outputs with
/// `reference`'s on `text`, and the KL divergence and top-1 agreement of the logits (windows of
/// `context` tokens, each seen alone). The candidate is a model (directory or `Model`), or built in
/// memory from the reference by `plan` (file or dict) or `method` ("int8", "lowrank:r64:int8", ...; with
/// `embeddings`). Returns the object `slimlm eval compare --json` prints.
#[pyfunction(name = "compare")]
#[pyo3(signature = (reference, candidate = None, *, text, plan = None, method = None,
    embeddings = "int8", context = 256, max_tokens = None, threads = None, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn eval_compare<'py>(
    py: Python<'py>,
    reference: ModelArg,
    candidate: Option<ModelArg>,
    text: Prompt,
    plan: Option<Bound<'py, PyAny>>,
    method: Option<String>,
    embeddings: &str,
    context: usize,
    max_tokens: Option<usize>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let reference = reference.open(py, "reference")?;
    let spec = CandidateSpec::new(candidate, plan.as_ref(), method.as_deref(), embeddings)?;
    if max_tokens == Some(0) {
        return Err(input("max_tokens must be at least 1"));
    }
    let mut prog = Progress::new(progress);
    let r = &reference;
    let r = py.detach(|| {
        with_threads(threads, || -> Result<_, Failure> {
            let cand = spec.build(r, &mut prog)?;
            let mut ids = text.ids(r)?;
            if let Some(n) = max_tokens {
                ids.truncate(n);
            }
            Ok(compare::compare(
                r,
                &cand,
                &ids,
                context,
                &mut |d, t, s| prog.call(d, t, s),
            )?)
        })
    })?;
    let r = prog.finish(r.map_err(PyErr::from))?;
    to_python(py, &r)
}

/// Perplexity per language (UDHR texts) under `reference` and the candidate, the degradation of each
/// and its disparity across languages. Candidate as in `compare`. `corpus`: the UDHR directory (default
/// ../shared/corpora/udhr); `languages`: "default" (eng, deu_1996, fra, spa, rus, cmn_hans, jpn,
/// arb, hin; also when None), "all", a comma-separated string or a list;
/// `max_lines` / `max_tokens` per text; windows of `context`, `stride` apart. Returns the object
/// `slimlm eval disparity --json` prints.
#[pyfunction(name = "disparity")]
#[pyo3(signature = (reference, candidate = None, *, plan = None, method = None, embeddings = "int8",
    corpus = None, languages = None, max_lines = None, max_tokens = None,
    context = 256, stride = 256, threads = None, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn eval_disparity<'py>(
    py: Python<'py>,
    reference: ModelArg,
    candidate: Option<ModelArg>,
    plan: Option<Bound<'py, PyAny>>,
    method: Option<String>,
    embeddings: &str,
    corpus: Option<PathBuf>,
    languages: Option<Strings>,
    max_lines: Option<usize>,
    max_tokens: Option<usize>,
    context: usize,
    stride: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let reference = reference.open(py, "reference")?;
    let spec = CandidateSpec::new(candidate, plan.as_ref(), method.as_deref(), embeddings)?;
    let ca = CorpusArgs::new(corpus, languages, max_lines);
    let mut prog = Progress::new(progress);
    let opts = EvalOptions { context, stride };
    let r = &reference;
    let r = py.detach(|| {
        with_threads(threads, || -> Result<_, Failure> {
            let ids = corpus::slice(&ca.texts(r)?, 0, max_tokens)?;
            let cand = spec.build(r, &mut prog)?;
            Ok(disparity::disparity(
                r,
                &cand,
                &ids,
                &opts,
                &mut |d, t, s| prog.call(d, t, s),
            )?)
        })
    })?;
    let r = prog.finish(r.map_err(PyErr::from))?;
    to_python(py, &r)
}

fn list_items(v: Option<Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    if let Ok(s) = v.extract::<String>() {
        return Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect());
    }
    v.try_iter()?
        .map(|x| x.and_then(|x| x.str().map(|s| s.to_string())))
        .collect()
}

/// Size against perplexity per language: the model compressed in memory by every point (`points`:
/// method strings such as "int8", "int8:g64", "f16", "lowrank:r64:int8"; `ranks`, `energies` with
/// `factors`; `int8_groups`, "row" for one scale per row), each scored on the corpus like `disparity`.
/// Lists, or comma-separated strings as on the command line. Returns the object `slimlm eval sweep
/// --json` prints.
#[pyfunction(name = "sweep")]
#[pyo3(signature = (model, *, points = None, ranks = None, energies = None, int8_groups = None,
    factors = "int8", embeddings = "int8", corpus = None, languages = None,
    max_lines = None, max_tokens = None, context = 256, stride = 256, threads = None,
    progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn eval_sweep<'py>(
    py: Python<'py>,
    model: ModelArg,
    points: Option<Bound<'py, PyAny>>,
    ranks: Option<Bound<'py, PyAny>>,
    energies: Option<Bound<'py, PyAny>>,
    int8_groups: Option<Bound<'py, PyAny>>,
    factors: &str,
    embeddings: &str,
    corpus: Option<PathBuf>,
    languages: Option<Strings>,
    max_lines: Option<usize>,
    max_tokens: Option<usize>,
    context: usize,
    stride: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut specs = Vec::new();
    for s in list_items(points)? {
        specs.push(eval::parse_spec(&s).py_err()?);
    }
    for s in list_items(ranks)? {
        specs.push(eval::parse_spec(&format!("lowrank:r{s}:{factors}")).py_err()?);
    }
    for s in list_items(energies)? {
        specs.push(eval::parse_spec(&format!("lowrank:e{s}:{factors}")).py_err()?);
    }
    for s in list_items(int8_groups)? {
        let spec = if s == "row" {
            "int8".to_string()
        } else {
            format!("int8:g{s}")
        };
        specs.push(eval::parse_spec(&spec).py_err()?);
    }
    if specs.is_empty() {
        return Err(input(
            "give the sweep points: points, ranks, energies and/or int8_groups",
        ));
    }
    let embeddings = eval::parse_spec(embeddings).py_err()?;
    let reference = model.open(py, "model")?;
    let ca = CorpusArgs::new(corpus, languages, max_lines);
    let mut prog = Progress::new(progress);
    let opts = EvalOptions { context, stride };
    let r = &reference;
    let r = py.detach(|| {
        with_threads(threads, || -> slimlm::Result<_> {
            let ids = corpus::slice(&ca.texts(r)?, 0, max_tokens)?;
            let points = sweep::uniform_points(&specs, &embeddings);
            sweep::sweep(r, &points, &ids, &opts, &mut |d, t, s| prog.call(d, t, s))
        })
    })?;
    let r = prog.finish(r.py_err())?;
    to_python(py, &r)
}

/// Per-unit sensitivity to the `base` compression and a protection plan within a size budget
/// (`budget_mb`, default: the base size plus a quarter of what protecting everything adds), judged
/// against the uniform base and a uniform plan of about its size. `unit`: "layer", "component" or
/// "layer-component"; `protect`: "keep", "f16", "int8" or "int8:gN". With `max_tokens` the plan is judged
/// on the next `max_tokens` tokens of each text (held out from the ranking). Returns the object `slimlm
/// eval sensitivity --json` prints; its `plan` can be given to `slimlm.compress(plan=...)`.
#[pyfunction(name = "sensitivity")]
#[pyo3(signature = (model, *, base = "lowrank:r32:int8", protect = "int8", embeddings = "int8",
    unit = "layer", budget_mb = None, corpus = None, languages = None,
    max_lines = None, max_tokens = None, context = 256, stride = 256, threads = None,
    progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn eval_sensitivity<'py>(
    py: Python<'py>,
    model: ModelArg,
    base: &str,
    protect: &str,
    embeddings: &str,
    unit: &str,
    budget_mb: Option<f64>,
    corpus: Option<PathBuf>,
    languages: Option<Strings>,
    max_lines: Option<usize>,
    max_tokens: Option<usize>,
    context: usize,
    stride: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let sopts = sensitivity::SensitivityOptions {
        base: eval::parse_spec(base).py_err()?,
        protect: eval::parse_spec(protect).py_err()?,
        embeddings: eval::parse_spec(embeddings).py_err()?,
        granularity: sensitivity::Granularity::parse(unit).py_err()?,
        budget_bytes: match budget_mb {
            Some(mb) if !(mb > 0.0 && mb.is_finite()) => {
                return Err(input(format!(
                    "budget_mb must be a positive size, got {mb}"
                )))
            }
            mb => mb.map(|mb| (mb * 1e6) as usize),
        },
    };
    let reference = model.open(py, "model")?;
    let ca = CorpusArgs::new(corpus, languages, max_lines);
    let r = &reference;
    let full = py.detach(|| ca.texts(r)).py_err()?;
    let ranking = corpus::slice(&full, 0, max_tokens).py_err()?;
    let holdout = match max_tokens {
        None => None,
        Some(n) => match corpus::slice(&full, n, Some(n)) {
            Ok(h) => Some(h),
            Err(e) => {
                let msg = format!("no held-out text ({e}); the plan is judged on the ranking text");
                PyErr::warn(
                    py,
                    &py.get_type::<PyUserWarning>(),
                    &std::ffi::CString::new(msg)?,
                    1,
                )?;
                None
            }
        },
    };
    let mut prog = Progress::new(progress);
    let opts = EvalOptions { context, stride };
    let r = py.detach(|| {
        with_threads(threads, || {
            sensitivity::sensitivity(
                r,
                &ranking,
                holdout.as_deref(),
                &opts,
                &sopts,
                &mut |d, t, s| prog.call(d, t, s),
            )
        })
    })?;
    let r = prog.finish(r.py_err())?;
    to_python(py, &r)
}
