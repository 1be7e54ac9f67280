//! slimlm: low-memory CPU inference of GPT-2, GPT-Neo, OPT, GPT-NeoX (Pythia) and BLOOM language models.
//!
//! Weights are memory-mapped from safetensors and used in place; INT8 and low-rank compressed models
//! stay compressed in RAM. Open a model, make sessions, generate:
//!
//! ```no_run
//! use slimlm::{GenerateOptions, Model};
//! let model = Model::open("models/ref-gpt2")?;
//! let ids = model.tokenizer().encode("The Debian package manager")?;
//! let mut session = model.session();
//! let out: Vec<u32> = session
//!     .generate(&ids, &GenerateOptions::default())?
//!     .collect::<Result<_, _>>()?;
//! println!("{}", model.tokenizer().decode(&out)?);
//! # Ok::<(), slimlm::Error>(())
//! ```

pub mod arch;
pub mod batch;
#[cfg(feature = "compress")]
pub mod compress;
pub mod decode;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
mod forward;
pub mod generate;
#[cfg(feature = "compress")]
pub mod inspect;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod model;
pub mod perplexity;
pub mod sampler;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
#[cfg(feature = "compress")]
pub mod synth;
pub mod tensor_file;
pub mod tokenizer;

pub use arch::{Arch, Config};
pub use batch::{Batch, SeqId};
pub use decode::{Cancel, Decoder, Finish, Step, TokenLogprob};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation};
pub use kv_cache::KvDtype;
pub use linear::Linear;
pub use model::Model;
pub use perplexity::{perplexity, Perplexity};
pub use sampler::{Sampler, Sampling};
pub use session::{Observer, Session};
pub use slimlm_kernels as kernels;
pub use tokenizer::{TextStream, Tokenizer};

/// Checks that the kernel path requested by `SLIMLM_KERNELS` (if any) can run on this CPU.
pub fn check_kernels() -> Result<kernels::Isa> {
    kernels::isa::try_active().map_err(Error::Kernels)
}
