//! `slimlm.Model` and `slimlm.Tokenizer`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use slimlm::arch::{Activation, Positions, QkvLayout};
use slimlm::{GenerateOptions, KvDtype, Model, Observer, Sampling};

use crate::decode::{Generator, Params};
use crate::errors::{input, IntoPy};
use crate::session::{PyCompletion, PySession, PyStream};
use crate::util::{check_threads, to_python, Prompt};

/// A model directory, or a Hugging Face hub cache repository (`models--org--name`, holding `refs/` and
/// `snapshots/`) resolved through `refs/<revision>` (or a snapshot hash) to its snapshot.
pub fn resolve_dir(path: &Path, revision: &str) -> PyResult<PathBuf> {
    if path.join("config.json").is_file() || !path.join("snapshots").is_dir() {
        return Ok(path.to_path_buf());
    }
    let snapshots = path.join("snapshots");
    let direct = snapshots.join(revision);
    if direct.is_dir() {
        return Ok(direct);
    }
    let refp = path.join("refs").join(revision);
    let hash = std::fs::read_to_string(&refp).map_err(|e| {
        input(format!(
            "{} looks like a Hugging Face cache repository but has no ref {revision:?} ({}: {e})",
            path.display(),
            refp.display()
        ))
    })?;
    let snap = snapshots.join(hash.trim());
    if !snap.is_dir() {
        return Err(input(format!(
            "{}: refs/{revision} names snapshot {} which is not there",
            path.display(),
            hash.trim()
        )));
    }
    Ok(snap)
}

/// A language model of any supported family (GPT-2, GPT-Neo, OPT, GPT-NeoX, BLOOM), dense or compressed,
/// with its weights memory-mapped. Immutable and safe to share between threads: every thread may call
/// `generate`, `stream`, `session`, `hidden_states` at once (each call has its own KV cache).
#[pyclass(name = "Model", module = "slimlm", frozen)]
pub struct PyModel {
    pub model: Arc<Model>,
    /// What `open` was given, for pickling.
    opened: (PathBuf, String, Option<usize>, String),
}

impl PyModel {
    pub fn inner(&self) -> Arc<Model> {
        self.model.clone()
    }
}

/// Records hidden states and linear-layer outputs of a prefill.
#[derive(Default)]
struct Record {
    linears_on: bool,
    hidden: Vec<Vec<f32>>,
    linears: BTreeMap<(usize, &'static str), Vec<f32>>,
}

impl Observer for Record {
    fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
        if self.hidden.len() <= layer {
            self.hidden.resize_with(layer + 1, Vec::new);
        }
        self.hidden[layer].extend_from_slice(xs);
    }
    fn linear(&mut self, layer: usize, component: &'static str, ys: &[f32]) {
        if self.linears_on {
            self.linears
                .entry((layer, component))
                .or_default()
                .extend_from_slice(ys);
        }
    }
}

fn rows<'py>(py: Python<'py>, v: Vec<f32>, n: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let width = v.len() / n.max(1);
    PyArray1::from_vec(py, v).reshape([n, width])
}

impl PyModel {
    fn record(&self, py: Python<'_>, prompt: Prompt, linears: bool) -> PyResult<(Record, usize)> {
        let model = self.inner();
        py.detach(move || {
            let ids = prompt.ids(&model)?;
            let mut rec = Record {
                linears_on: linears,
                ..Record::default()
            };
            let mut s = model.session();
            s.check_tokens(&ids)?;
            s.prefill_observed(&ids, &mut rec)?;
            Ok((rec, ids.len()))
        })
        .py_err()
    }

    /// The keyword arguments of `generate` and `stream` as the library's options.
    #[allow(clippy::too_many_arguments)]
    fn params(
        &self,
        max_tokens: usize,
        temperature: Option<f32>,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        ignore_eos: bool,
        logprobs: bool,
        threads: Option<usize>,
    ) -> PyResult<Params> {
        if let Some(t) = threads {
            check_threads(t)?;
        }
        let sampling = match temperature {
            None | Some(0.0) => Sampling::Greedy,
            Some(temperature) => Sampling::Random {
                temperature,
                top_k,
                top_p,
                seed,
            },
        };
        Ok(Params {
            opts: GenerateOptions {
                max_tokens,
                sampling,
                stop_at_eos: !ignore_eos,
                stop: stop.unwrap_or_default(),
                // Only the chosen token's log-probability: no alternatives.
                logprobs: logprobs.then_some(0),
                cancel: None,
            },
            threads,
        })
    }
}

#[pymethods]
impl PyModel {
    /// Opens a model directory (Hugging Face layout: config.json, model.safetensors or shards,
    /// tokenizer.json or vocab.json + merges.txt), or a Hugging Face hub cache repository directory
    /// (`.../hub/models--org--name`), resolved through `refs/<revision>` to its snapshot.
    ///
    /// `context` changes the context length (BLOOM, whose config sets none, defaults to 2048);
    /// `kv_cache` is the KV cache element type of new sessions, "f32" (exact) or "f16" (half the bytes).
    #[staticmethod]
    #[pyo3(signature = (path, *, revision = "main", context = None, kv_cache = "f32"))]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        revision: &str,
        context: Option<usize>,
        kv_cache: &str,
    ) -> PyResult<PyModel> {
        let dir = resolve_dir(&path, revision)?;
        let kv = KvDtype::parse(kv_cache).py_err()?;
        let model = py
            .detach(|| -> slimlm::Result<Model> {
                slimlm::check_kernels()?;
                let mut m = Model::open(&dir)?;
                m.set_kv_dtype(kv);
                if let Some(n) = context {
                    m.set_context(n)?;
                }
                Ok(m)
            })
            .py_err()?;
        Ok(PyModel {
            model: Arc::new(model),
            opened: (path, revision.to_string(), context, kv_cache.to_string()),
        })
    }

    /// The directory the weights were opened from (the snapshot, for a hub cache repository).
    #[getter]
    fn path(&self) -> PathBuf {
        self.model.dir().to_path_buf()
    }

    /// The architecture as slimlm reads it, with the same keys for every family: `arch`, `vocab_size`,
    /// `n_ctx`, `d_model`, `embed_dim`, `n_head`, `head_dim`, `n_layer`, `d_ff`, `positions`, ...
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.model.config();
        let d = PyDict::new(py);
        d.set_item("arch", c.arch.name())?;
        d.set_item("model_type", c.family().model_type)?;
        d.set_item("architectures", c.family().class)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("tokenizer_vocab_size", self.model.tokenizer().vocab_size())?;
        d.set_item("n_ctx", c.n_ctx)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("embed_dim", c.embed_dim)?;
        d.set_item("n_head", c.n_head)?;
        d.set_item("head_dim", c.head_dim())?;
        d.set_item("n_layer", c.n_layer())?;
        d.set_item("d_ff", c.d_ff)?;
        // The f32 as written (1e-5, not 9.99999974e-06).
        let eps: f64 = c.layer_norm_eps.to_string().parse().unwrap_or(0.0);
        d.set_item("layer_norm_eps", eps)?;
        let pos = PyDict::new(py);
        match c.positions {
            Positions::Learned { offset } => {
                pos.set_item("kind", "learned")?;
                pos.set_item("offset", offset)?;
            }
            Positions::Rotary { dims, base } => {
                pos.set_item("kind", "rotary")?;
                pos.set_item("dims", dims)?;
                pos.set_item("base", base)?;
            }
            Positions::Alibi => pos.set_item("kind", "alibi")?,
        }
        d.set_item("positions", pos)?;
        d.set_item("norm", format!("{:?}", c.norm).to_lowercase())?;
        d.set_item("final_norm", c.final_norm)?;
        d.set_item("embed_norm", c.embed_norm)?;
        d.set_item("residual", format!("{:?}", c.residual).to_lowercase())?;
        d.set_item(
            "activation",
            match c.activation {
                Activation::GeluNew => "gelu_new",
                Activation::GeluErf => "gelu",
                Activation::Relu => "relu",
            },
        )?;
        d.set_item(
            "qkv",
            match c.qkv {
                QkvLayout::Fused => "fused",
                QkvLayout::FusedPerHead => "fused_per_head",
                QkvLayout::Separate => "separate",
            },
        )?;
        d.set_item("tie_word_embeddings", c.tie_word_embeddings)?;
        d.set_item("eos_token_ids", self.model.eos_token_ids())?;
        let windows: Vec<Option<usize>> = c.layers.iter().map(|l| l.window).collect();
        d.set_item("attention_windows", windows)?;
        Ok(d)
    }

    /// `config.json` as it is on disk (a dict), for code written against transformers' config keys.
    #[getter]
    fn hf_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let p = self.model.dir().join("config.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| crate::errors::to_py(slimlm::Error::Io { path: p, source: e }))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The tokenizer.
    #[getter]
    fn tokenizer(&self) -> PyTokenizer {
        PyTokenizer {
            model: self.inner(),
        }
    }

    /// Token ids that end generation.
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.model.eos_token_ids()
    }

    /// Bytes of weights a forward pass reads.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Bytes of the weight files.
    #[getter]
    fn file_bytes(&self) -> usize {
        self.model.store().file_bytes()
    }

    /// Bytes of weights copied into memory at load (0 when every tensor is used in place).
    #[getter]
    fn copied_bytes(&self) -> usize {
        self.model.copied_bytes()
    }

    /// The compression plan, bytes per component and layer, storage of every matrix, and the ratio to
    /// the original: the object `slimlm inspect --json DIR` prints (`dir` is the model's directory).
    fn inspect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = slimlm::inspect::Summary::of(&self.model).py_err()?;
        to_python(py, &v.to_json())
    }

    /// A new session: a KV cache and scratch buffers for one sequence. `threads`: threads of its
    /// forward passes (default: one per core; use 1 when running many sessions in parallel).
    #[pyo3(signature = (*, threads = None))]
    fn session(&self, threads: Option<usize>) -> PyResult<PySession> {
        PySession::new(self.inner(), threads)
    }

    /// Generates from `prompt` (text, or a list of token ids) and returns a `Completion` (text, ids,
    /// finish reason, timings, optional log-probabilities).
    ///
    /// Greedy unless `temperature` is given (> 0; 0 means greedy); then sampling from the `top_k` most
    /// likely tokens (0: all) within the nucleus `top_p`, seeded by `seed`. Generation ends after the
    /// end-of-text token (included, unless `ignore_eos`), after `max_tokens`, or when the text contains
    /// one of the `stop` strings (cut before it). `logprobs=True` records the log-probability of every
    /// generated token under the model (before temperature). The GIL is released throughout.
    #[pyo3(signature = (prompt, max_tokens = 48, *, temperature = None, top_k = 0, top_p = 1.0,
        seed = 0, stop = None, ignore_eos = false, logprobs = false, threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        max_tokens: usize,
        temperature: Option<f32>,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        ignore_eos: bool,
        logprobs: bool,
        threads: Option<usize>,
    ) -> PyResult<PyCompletion> {
        let p = self.params(
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            ignore_eos,
            logprobs,
            threads,
        )?;
        let model = self.inner();
        py.detach(move || {
            let ids = prompt.ids(&model)?;
            let mut g = Generator::new(&model, ids, &p)?;
            g.run()?;
            Ok(PyCompletion::from_generator(&g))
        })
        .py_err()
    }

    /// Like `generate`, as an iterator of text pieces (whole characters) given out as they are
    /// generated: `for piece in model.stream(prompt): print(piece, end="", flush=True)`. After the loop,
    /// `stream.completion()` has the ids, finish reason and timings.
    #[pyo3(signature = (prompt, max_tokens = 48, *, temperature = None, top_k = 0, top_p = 1.0,
        seed = 0, stop = None, ignore_eos = false, logprobs = false, threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        max_tokens: usize,
        temperature: Option<f32>,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        ignore_eos: bool,
        logprobs: bool,
        threads: Option<usize>,
    ) -> PyResult<PyStream> {
        let p = self.params(
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            ignore_eos,
            logprobs,
            threads,
        )?;
        PyStream::new(py, self.inner(), prompt, p)
    }

    /// Hidden states of `prompt` (text or ids), one float32 array `[tokens, width]` per entry of
    /// transformers' `output_hidden_states`: entry 0 the embeddings entering block 0, entry i the input
    /// of block i, the last one the final hidden states (after the final LayerNorm, and `project_out`
    /// where the model has it).
    fn hidden_states<'py>(
        &self,
        py: Python<'py>,
        prompt: Prompt,
    ) -> PyResult<Vec<Bound<'py, PyArray2<f32>>>> {
        let (rec, n) = self.record(py, prompt, false)?;
        rec.hidden.into_iter().map(|v| rows(py, v, n)).collect()
    }

    /// Output of every linear layer for `prompt`: a dict `(layer, component) -> float32 [tokens, out]`,
    /// components as in compression plans (`attn_qkv` or `attn_q`/`attn_k`/`attn_v`, `attn_out`,
    /// `mlp_in`, `mlp_out`).
    fn linear_outputs<'py>(&self, py: Python<'py>, prompt: Prompt) -> PyResult<Bound<'py, PyDict>> {
        let (rec, n) = self.record(py, prompt, true)?;
        let d = PyDict::new(py);
        for ((layer, comp), v) in rec.linears {
            d.set_item((layer, comp), rows(py, v, n)?)?;
        }
        Ok(d)
    }

    /// Logits after every token of `prompt`: float32 `[tokens, vocab]` (one prefill; row i predicts
    /// token i + 1).
    fn logits<'py>(&self, py: Python<'py>, prompt: Prompt) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let model = self.inner();
        let (v, n) = py
            .detach(move || -> slimlm::Result<(Vec<f32>, usize)> {
                let ids = prompt.ids(&model)?;
                let mut s = model.session();
                s.check_tokens(&ids)?;
                let mut out = Vec::with_capacity(ids.len() * model.config().vocab_size);
                s.prefill_all(&ids, &mut |_, l| out.extend_from_slice(l))?;
                Ok((out, ids.len()))
            })
            .py_err()?;
        rows(py, v, n)
    }

    fn __repr__(&self) -> String {
        let c = self.model.config();
        format!(
            "Model({:?}, arch={}, layers={}, d_model={}, vocab={}, n_ctx={})",
            self.model.dir().display().to_string(),
            c.arch.name(),
            c.n_layer(),
            c.d_model,
            c.vocab_size,
            c.n_ctx
        )
    }

    /// Pickles as the arguments of `open`, so a model can be handed to worker processes (each maps the
    /// files again; nothing is copied).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let me = slf.get();
        let (path, rev, ctx, kv) = &me.opened;
        let open = py.import("slimlm")?.getattr("_open_for_pickle")?;
        PyTuple::new(
            py,
            [
                open,
                PyTuple::new(
                    py,
                    [
                        path.clone().into_pyobject(py)?.into_any(),
                        rev.into_pyobject(py)?.into_any(),
                        ctx.into_pyobject(py)?.into_any(),
                        kv.into_pyobject(py)?.into_any(),
                    ],
                )?
                .into_any(),
            ],
        )
    }
}

/// Byte-level BPE tokenizer of a model (slimlm's own, token for token equal to Hugging Face
/// `tokenizers`).
#[pyclass(name = "Tokenizer", module = "slimlm", frozen)]
pub struct PyTokenizer {
    model: Arc<Model>,
}

#[pymethods]
impl PyTokenizer {
    /// Token ids of `text`, with the special tokens the tokenizer adds (OPT's leading `</s>`).
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let m = self.model.clone();
        let text = text.to_string();
        py.detach(move || m.tokenizer().encode(&text)).py_err()
    }

    /// Token ids of `text` without the special tokens of the post-processor.
    fn encode_plain(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let m = self.model.clone();
        let text = text.to_string();
        py.detach(move || m.tokenizer().encode_plain(&text))
            .py_err()
    }

    /// The text of `ids` (bytes that form no character become U+FFFD).
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.model.tokenizer().decode(&ids).py_err()
    }

    /// The bytes of one token (may be part of a UTF-8 character).
    fn token_bytes<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.model.tokenizer().token_bytes(id).py_err()?;
        Ok(PyBytes::new(py, b))
    }

    /// The id of a token given by its text (e.g. "<|endoftext|>"), or None.
    fn token_id(&self, token: &str) -> Option<u32> {
        self.model.tokenizer().token_id(token)
    }

    /// Number of tokens.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.tokenizer().vocab_size()
    }

    fn __len__(&self) -> usize {
        self.model.tokenizer().vocab_size()
    }

    /// Decodes `ids` one at a time as the incremental detokenizer of a stream does: the list of text
    /// pieces, each made of whole characters (a character split across tokens comes out with its last
    /// token). `"".join(pieces) == decode(ids)`.
    fn decode_pieces(&self, ids: Vec<u32>) -> PyResult<Vec<String>> {
        let mut s = self.model.tokenizer().stream();
        let mut out = Vec::new();
        for id in ids {
            out.extend(s.push(id).py_err()?);
        }
        out.extend(s.finish());
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(vocab_size={})",
            self.model.tokenizer().vocab_size()
        )
    }
}
