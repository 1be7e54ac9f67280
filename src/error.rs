//! The error type: every message names the file, tensor or value at fault and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong in slimlm, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: the model file changed while in use ({msg}); replace model files by renaming a new file over them, never by writing into them")]
    Changed { path: PathBuf, msg: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// A token id the vocabulary does not have.
    #[error("invalid input: token id {token} is out of range (vocabulary of {vocab})")]
    TokenOutOfRange { token: u32, vocab: usize },
    /// More tokens than the context holds (for generation, `new` counts the prompt and the tokens to
    /// generate but the last, which is never fed back).
    #[error("invalid input: context overflow: {cached} cached + {new} new tokens exceed the context length {n_ctx}")]
    ContextOverflow {
        cached: usize,
        new: usize,
        n_ctx: usize,
    },
    /// Sampling parameters out of their domain (temperature, top-p, top-k, ...).
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// Generation stopped by [`crate::decode::Cancel`].
    #[error("cancelled")]
    Cancelled,
    #[error("kernels: {0}")]
    Kernels(String),
    #[error("non-finite values: {0}")]
    NonFinite(String),
    #[error("compression plan: {0}")]
    Plan(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
