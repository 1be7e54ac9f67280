//! Python exceptions: `slimlm.Error` and one subclass per variant of `slimlm::Error`.
//!
//! `IoError` is also an `OSError`, and `InputError` and `PlanError` are also `ValueError`s, so code that
//! already catches the built-in kinds keeps working. The library's invalid-argument variants (token out
//! of range, context overflow, sampling parameters) are all `InputError`s; a variant added to the
//! library after these bindings raises the base `Error`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

create_exception!(
    slimlm,
    Error,
    PyException,
    "Base class of every error slimlm raises."
);

/// The subclasses: name, extra built-in base, docstring.
const KINDS: [(&str, Option<&str>, &str); 12] = [
    (
        "IoError",
        Some("OSError"),
        "A file or directory could not be read or written (also an OSError).",
    ),
    (
        "FormatError",
        None,
        "A file is not a valid safetensors file (truncated, malformed header, bad offsets).",
    ),
    (
        "ConfigError",
        None,
        "config.json is missing a field, unsupported, or inconsistent with the weights.",
    ),
    (
        "ChangedError",
        None,
        "A memory-mapped model file changed while in use.",
    ),
    (
        "MissingTensorError",
        None,
        "A tensor the architecture needs is not in the weights.",
    ),
    (
        "TensorError",
        None,
        "A tensor has the wrong dtype, shape or alignment.",
    ),
    (
        "TokenizerError",
        None,
        "The tokenizer files are invalid, or a token id is outside the vocabulary.",
    ),
    (
        "InputError",
        Some("ValueError"),
        "An argument is invalid: empty prompt, id out of range, prompt beyond the context, bad option (also a ValueError).",
    ),
    (
        "KernelsError",
        None,
        "The kernel path requested by SLIMLM_KERNELS cannot run on this CPU.",
    ),
    (
        "NonFiniteError",
        None,
        "A forward pass produced NaN or infinite values (the message names the tensor to blame).",
    ),
    (
        "PlanError",
        Some("ValueError"),
        "A compression plan is invalid (also a ValueError).",
    ),
    (
        "CancelledError",
        None,
        "A generation was cancelled before it ended.",
    ),
];

static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    TYPES.get_or_try_init(py, || {
        let base = py.get_type::<Error>();
        let type_ = py.get_type::<PyType>();
        KINDS
            .iter()
            .map(|(name, extra, doc)| {
                let bases = match extra {
                    Some("OSError") => {
                        PyTuple::new(py, [base.as_any(), py.get_type::<PyOSError>().as_any()])?
                    }
                    Some(_) => {
                        PyTuple::new(py, [base.as_any(), py.get_type::<PyValueError>().as_any()])?
                    }
                    None => PyTuple::new(py, [base.as_any()])?,
                };
                let ns = PyDict::new(py);
                ns.set_item("__module__", "slimlm")?;
                ns.set_item("__doc__", *doc)?;
                let t = type_.call1((*name, bases, ns))?;
                Ok(t.cast_into::<PyType>()?.unbind())
            })
            .collect()
    })
}

/// Adds `Error` and its subclasses to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    for ((name, ..), t) in KINDS.iter().zip(types(py)?) {
        m.add(*name, t.bind(py))?;
    }
    Ok(())
}

/// The index in `KINDS` of a library error's class; `None` (the base `Error`) for a variant these
/// bindings do not know yet.
fn kind_index(e: &slimlm::Error) -> Option<usize> {
    use slimlm::Error as E;
    Some(match e {
        E::Io { .. } => 0,
        E::Format { .. } => 1,
        E::Config { .. } => 2,
        E::Changed { .. } => 3,
        E::MissingTensor { .. } => 4,
        E::Tensor { .. } => 5,
        E::Tokenizer(_) => 6,
        E::Input(_) | E::TokenOutOfRange { .. } | E::ContextOverflow { .. } | E::Sampling(_) => 7,
        E::Kernels(_) => 8,
        E::NonFinite(_) => 9,
        E::Plan(_) => 10,
        E::Cancelled => 11,
        _ => return None,
    })
}

/// The Python exception for a library error, with `path` (and `tensor`, `errno`, `filename` where they
/// apply) set on it.
pub fn to_py(e: slimlm::Error) -> PyErr {
    Python::attach(|py| {
        let ty = match (types(py), kind_index(&e)) {
            (Ok(t), Some(i)) => t[i].bind(py).clone(),
            (Ok(_), None) => py.get_type::<Error>(),
            (Err(err), _) => return err,
        };
        let err = PyErr::from_type(ty, e.to_string());
        let value = err.value(py);
        let set = |k: &str, v: Bound<'_, PyAny>| {
            // Attributes are a convenience: failing to set one must not hide the error itself.
            let _ = value.setattr(k, v);
        };
        use slimlm::Error as E;
        match &e {
            E::Io { path, source } => {
                set(
                    "path",
                    PyString::new(py, &path.display().to_string()).into_any(),
                );
                // `errno` only: with `filename` set, OSError would print its own message instead.
                if let Some(code) = source.raw_os_error() {
                    set("errno", code.into_pyobject(py).unwrap().into_any());
                }
            }
            E::Format { path, .. } | E::Config { path, .. } | E::Changed { path, .. } => {
                set(
                    "path",
                    PyString::new(py, &path.display().to_string()).into_any(),
                );
            }
            E::MissingTensor { path, name } | E::Tensor { path, name, .. } => {
                set(
                    "path",
                    PyString::new(py, &path.display().to_string()).into_any(),
                );
                set("tensor", PyString::new(py, name).into_any());
            }
            _ => {}
        }
        err
    })
}

/// An `InputError` with `msg` (invalid arguments detected by the bindings themselves).
pub fn input(msg: impl Into<String>) -> PyErr {
    to_py(slimlm::Error::Input(msg.into()))
}

/// `?` on library results inside `#[pyfunction]`s.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, slimlm::Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
