//! `slimlm.Session`, `slimlm.Stream` and `slimlm.Completion`.
//!
//! A library `Session<'m>` borrows its `Model`; here each Python object owns an `Arc<Model>` and the
//! session borrowing it, tied together by `self_cell`. A mutex serialises calls on one session or
//! stream (taken with the GIL released, so a thread waiting for it never blocks the others).

use std::sync::{Arc, Mutex, MutexGuard};

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use self_cell::self_cell;
use slimlm::{Model, Session};

use crate::decode::{Generator, Params};
use crate::errors::IntoPy;
use crate::util::{check_threads, Prompt};

self_cell!(
    struct SessionCell {
        owner: Arc<Model>,
        #[covariant]
        dependent: Session,
    }
);

self_cell!(
    struct GeneratorCell {
        owner: Arc<Model>,
        #[covariant]
        dependent: Generator,
    }
);

fn lock<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.lock().map_err(|_| {
        PyRuntimeError::new_err("an earlier call on this object panicked; make a new one")
    })
}

/// The KV cache and scratch buffers of one sequence over a model: feed tokens, read logits.
///
/// `prefill(ids)` appends tokens and returns the logits that follow the last one (float32 numpy,
/// `[vocab]`); `step(id)` appends one. `reset()` empties the cache, `rewind(n)` keeps the first n
/// tokens. Calls release the GIL; calls on one session from several threads run one at a time.
#[pyclass(name = "Session", module = "slimlm", frozen)]
pub struct PySession {
    cell: Mutex<SessionCell>,
}

impl PySession {
    pub fn new(model: Arc<Model>, threads: Option<usize>) -> PyResult<PySession> {
        if let Some(t) = threads {
            check_threads(t)?;
        }
        let cell = SessionCell::new(model, |m| {
            let mut s = m.session();
            if let Some(t) = threads {
                s.set_threads(t);
            }
            s
        });
        Ok(PySession {
            cell: Mutex::new(cell),
        })
    }

    /// Runs `f` on the session with the GIL released.
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Session<'_>) -> slimlm::Result<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let mut g = lock(&self.cell)?;
            g.with_dependent_mut(|_, s| f(s)).py_err()
        })
    }
}

#[pymethods]
impl PySession {
    /// Appends `ids` (a list of token ids, or an int array) to the context and returns the logits after
    /// the last one, float32 `[vocab]`. With `all_logits=True`, the logits after every one of them,
    /// `[len(ids), vocab]` (row i predicts the token after ids[i]).
    #[pyo3(signature = (ids, *, all_logits = false))]
    fn prefill<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        all_logits: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if all_logits {
            let n = ids.len();
            let v = self.run(py, move |s| {
                s.check_tokens(&ids)?;
                let mut out = Vec::with_capacity(n * s.model().config().vocab_size);
                s.prefill_all(&ids, &mut |_, l| out.extend_from_slice(l))?;
                Ok(out)
            })?;
            let width = v.len() / n.max(1);
            let a: Bound<'py, PyArray2<f32>> = PyArray1::from_vec(py, v).reshape([n, width])?;
            Ok(a.into_any())
        } else {
            let v = self.run(py, move |s| {
                s.check_tokens(&ids)?;
                Ok(s.prefill(&ids)?.to_vec())
            })?;
            Ok(PyArray1::from_vec(py, v).into_any())
        }
    }

    /// Appends one token and returns the logits that follow it, float32 `[vocab]`.
    fn step<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let v = self.run(py, move |s| {
            s.check_tokens(&[id])?;
            Ok(s.step(id)?.to_vec())
        })?;
        Ok(PyArray1::from_vec(py, v))
    }

    /// The logits after the last token processed (zeros before any), float32 `[vocab]`.
    fn last_logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let v = self.run(py, |s| Ok(s.last_logits_slice().to_vec()))?;
        Ok(PyArray1::from_vec(py, v))
    }

    /// Forgets the context (position 0); the buffers are kept.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |s| {
            s.reset();
            Ok(())
        })
    }

    /// Forgets every token after the first `position` (to retry from a prefix).
    fn rewind(&self, py: Python<'_>, position: usize) -> PyResult<()> {
        self.run(py, |s| {
            s.rewind(position);
            Ok(())
        })
    }

    /// Tokens in the KV cache.
    #[getter]
    fn position(&self, py: Python<'_>) -> PyResult<usize> {
        self.run(py, |s| Ok(s.position()))
    }

    /// The context length: most tokens the session can hold.
    #[getter]
    fn n_ctx(&self, py: Python<'_>) -> PyResult<usize> {
        self.run(py, |s| Ok(s.model().config().n_ctx))
    }

    /// Threads of a forward pass (settable).
    #[getter]
    fn get_threads(&self, py: Python<'_>) -> PyResult<usize> {
        self.run(py, |s| Ok(s.threads()))
    }

    #[setter]
    fn set_threads(&self, py: Python<'_>, threads: usize) -> PyResult<()> {
        check_threads(threads)?;
        self.run(py, |s| {
            s.set_threads(threads);
            Ok(())
        })
    }

    /// Bytes of KV cache allocated so far.
    #[getter]
    fn kv_cache_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        self.run(py, |s| Ok(s.kv_cache_bytes()))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.run(py, |s| {
            Ok(format!(
                "Session(position={}, n_ctx={}, threads={})",
                s.position(),
                s.model().config().n_ctx,
                s.threads()
            ))
        })
    }
}

/// The result of `Model.generate`: `text` (the new text only), `ids` (the new tokens), `prompt_ids`,
/// `finish_reason` ("eos", "length" or "stop"), `logprobs` (float32 numpy, one per new token, when asked
/// for; else None) and timings. `str(completion)` is the text.
#[pyclass(name = "Completion", module = "slimlm", frozen)]
pub struct PyCompletion {
    #[pyo3(get)]
    text: String,
    #[pyo3(get)]
    ids: Vec<u32>,
    #[pyo3(get)]
    prompt_ids: Vec<u32>,
    #[pyo3(get)]
    finish_reason: &'static str,
    logprobs: Option<Vec<f32>>,
    #[pyo3(get)]
    prompt_tokens: usize,
    #[pyo3(get)]
    generated_tokens: usize,
    #[pyo3(get)]
    prefill_ms: f64,
    #[pyo3(get)]
    decode_ms: f64,
    #[pyo3(get)]
    prefill_tokens_per_s: f64,
    #[pyo3(get)]
    decode_tokens_per_s: f64,
}

impl PyCompletion {
    pub fn from_generator(g: &Generator<'_>) -> PyCompletion {
        let prefill = g.prefill_time.as_secs_f64();
        PyCompletion {
            text: g.text().to_string(),
            ids: g.ids().to_vec(),
            prompt_ids: g.prompt.clone(),
            finish_reason: g.finish().map_or("", |f| f.name()),
            logprobs: g.logprobs.clone(),
            prompt_tokens: g.prompt.len(),
            generated_tokens: g.ids().len(),
            prefill_ms: prefill * 1e3,
            decode_ms: g.decode_time.as_secs_f64() * 1e3,
            prefill_tokens_per_s: g.prompt.len() as f64 / prefill.max(1e-9),
            decode_tokens_per_s: g.decode_tokens_per_s(),
        }
    }
}

#[pymethods]
impl PyCompletion {
    /// Log-probability of every generated token (float32 numpy), or None unless `logprobs=True`.
    #[getter]
    fn logprobs<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.logprobs
            .as_ref()
            .map(|v| PyArray1::from_slice(py, v.as_slice()))
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, generated_tokens={}, finish_reason={:?})",
            self.text, self.generated_tokens, self.finish_reason
        )
    }
}

/// An iterator of text pieces from `Model.stream`. Each piece holds whole characters (a character
/// whose bytes span tokens comes out once complete); `"".join(pieces)` is the completion's text.
/// `completion()` gives the ids, finish reason and timings once the iteration has ended.
#[pyclass(name = "Stream", module = "slimlm", frozen)]
pub struct PyStream {
    cell: Mutex<GeneratorCell>,
}

impl PyStream {
    pub fn new(py: Python<'_>, model: Arc<Model>, prompt: Prompt, p: Params) -> PyResult<PyStream> {
        let cell = py
            .detach(move || {
                GeneratorCell::try_new(model, |m| {
                    let ids = prompt.ids(m)?;
                    Generator::new(m, ids, &p)
                })
            })
            .py_err()?;
        Ok(PyStream {
            cell: Mutex::new(cell),
        })
    }

    /// Reads the generation (waiting, with the GIL released, for a `__next__` in another thread).
    fn look<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Generator<'_>) -> R + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let g = lock(&self.cell)?;
            Ok(f(g.borrow_dependent()))
        })
    }
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        py.detach(|| {
            let mut g = lock(&self.cell)?;
            g.with_dependent_mut(|_, g| g.next_piece()).py_err()
        })
    }

    /// The new token ids so far.
    #[getter]
    fn ids(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        self.look(py, |g| g.ids().to_vec())
    }

    /// The text given out so far.
    #[getter]
    fn text(&self, py: Python<'_>) -> PyResult<String> {
        self.look(py, |g| g.text().to_string())
    }

    /// "eos", "length" or "stop" once generation has ended, else None.
    #[getter]
    fn finish_reason(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        self.look(py, |g| g.finish().map(|f| f.name()))
    }

    /// Runs the stream to its end (if it has not ended) and returns the `Completion`.
    fn completion(&self, py: Python<'_>) -> PyResult<PyCompletion> {
        py.detach(|| {
            let mut g = lock(&self.cell)?;
            g.with_dependent_mut(|_, g| {
                g.run()?;
                Ok(PyCompletion::from_generator(g))
            })
            .py_err()
        })
    }
}
