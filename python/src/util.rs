//! Helpers shared by the bindings: JSON in and out, thread pools, progress callbacks, prompts.

use pyo3::prelude::*;
use pyo3::types::PyString;
use serde::Serialize;

use crate::errors::input;

/// A serializable value as Python data (dicts, lists, str, int, float, None), through the same JSON the
/// command line prints, so the two agree key for key.
pub fn to_python<'py, T: Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| input(format!("serializing a report: {e}")))?;
    py.import("json")?
        .call_method1("loads", (PyString::new(py, &s),))
}

/// Python data as JSON text.
pub fn to_json(v: &Bound<'_, PyAny>) -> PyResult<String> {
    v.py()
        .import("json")?
        .call_method1("dumps", (v,))?
        .extract::<String>()
}

/// Runs `f` on a pool of `threads` threads (the global pool, one thread per core, when `None`).
/// Sessions made inside take the pool's size as their thread count.
pub fn with_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    match threads {
        None => Ok(f()),
        Some(n) => {
            check_threads(n)?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| input(format!("cannot set up {n} threads: {e}")))?;
            Ok(pool.install(f))
        }
    }
}

/// `threads` within 1..=the kernels' maximum.
pub fn check_threads(n: usize) -> PyResult<()> {
    let max = slimlm::kernels::par::MAX_THREADS;
    if !(1..=max).contains(&n) {
        return Err(input(format!(
            "threads must be between 1 and {max}, got {n}"
        )));
    }
    Ok(())
}

/// A Python progress callback `f(done, total, stage)`, called from computations that run without the
/// GIL. Its first exception is kept and raised when the computation returns (the computation itself
/// cannot be stopped half-way); later calls are skipped.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl Progress {
    pub fn new(callback: Option<Py<PyAny>>) -> Progress {
        Progress {
            callback,
            error: None,
        }
    }

    pub fn call(&mut self, done: usize, total: usize, stage: &str) {
        if self.error.is_some() {
            return;
        }
        if let Some(cb) = &self.callback {
            let r = Python::attach(|py| {
                py.check_signals()?;
                cb.call1(py, (done, total, stage)).map(drop)
            });
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
    }

    /// The callback's exception, if it raised one, else `r`.
    pub fn finish<T>(self, r: PyResult<T>) -> PyResult<T> {
        match self.error {
            Some(e) => Err(e),
            None => r,
        }
    }
}

/// A prompt: text, or token ids.
#[derive(FromPyObject)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl Prompt {
    pub fn ids(self, model: &slimlm::Model) -> slimlm::Result<Vec<u32>> {
        match self {
            Prompt::Text(t) => model.tokenizer().encode(&t),
            Prompt::Ids(ids) => Ok(ids),
        }
    }
}
