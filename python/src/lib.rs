//! Python bindings of slimlm (`import slimlm`): models, sessions and generation with numpy logits,
//! perplexity, hidden states, compression and the quality analyses, on the Rust library.
//!
//! The GIL is released around every computation; errors become `slimlm.Error` subclasses; progress goes
//! to optional callbacks, never to the terminal.

mod analysis;
mod decode;
mod errors;
mod model;
mod session;
mod util;

use std::time::Instant;

use pyo3::prelude::*;
use slimlm::{GenerateOptions, Sampling};

use crate::errors::IntoPy;

/// The kernel path this CPU runs (`scalar`, `portable`, `avx2`, `avx512`; `SLIMLM_KERNELS` forces one).
#[pyfunction]
fn kernels() -> PyResult<&'static str> {
    slimlm::check_kernels().map(|i| i.name()).py_err()
}

/// Benchmark helper: greedy decoding of `max_tokens` tokens after `prompt` through the library's own
/// iterator (`Session::generate` and `Tokenizer::stream`, as the command line and the README's Rust
/// example do), without Python in the loop. Returns (tokens, decode seconds by wall clock after the
/// first token, decode_tokens_per_s as `slimlm generate --json` reports it).
#[pyfunction]
#[pyo3(signature = (model, prompt, max_tokens, threads = None))]
fn _rust_iterator_decode(
    py: Python<'_>,
    model: &model::PyModel,
    prompt: Vec<u32>,
    max_tokens: usize,
    threads: Option<usize>,
) -> PyResult<(usize, f64, f64)> {
    let m = model.inner();
    py.detach(move || -> slimlm::Result<(usize, f64, f64)> {
        let mut s = m.session();
        if let Some(t) = threads {
            s.set_threads(t);
        }
        let opts = GenerateOptions {
            max_tokens,
            sampling: Sampling::Greedy,
            stop_at_eos: false,
            ..Default::default()
        };
        let mut gen = s.generate(&prompt, &opts)?;
        let mut text = m.tokenizer().stream();
        let mut out = String::new();
        let mut n = 0;
        let mut t0 = None;
        for tok in gen.by_ref() {
            if let Some(piece) = text.push(tok?)? {
                out.push_str(&piece);
            }
            n += 1;
            if n == 1 {
                t0 = Some(Instant::now());
            }
        }
        let wall = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        std::hint::black_box(out);
        Ok((n, wall, gen.decode_tokens_per_s()))
    })
    .py_err()
}

#[pymodule]
fn _slimlm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PyTokenizer>()?;
    m.add_class::<session::PySession>()?;
    m.add_class::<session::PyStream>()?;
    m.add_class::<session::PyCompletion>()?;
    m.add_function(wrap_pyfunction!(kernels, m)?)?;
    m.add_function(wrap_pyfunction!(_rust_iterator_decode, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::perplexity, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::compress, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::eval_compare, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::eval_disparity, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::eval_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::eval_sensitivity, m)?)?;
    Ok(())
}
