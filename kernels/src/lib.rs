//! Compute kernels for slimlm.
//!
//! Slices in, slices out: this crate knows nothing of models or files. Every kernel has a plain scalar
//! reference in [`reference`]; the fast paths (AVX-512/VNNI, AVX2, portable `wide`) are chosen once at run
//! time by [`isa`] and tested against that reference.
//!
//! The entry points are [`matvec`] / [`matmul`] (dense F32/F16/BF16 in either layout, INT8 W8A8 or
//! W8A32), [`lowrank_matvec`] / [`lowrank_matmul`] (the fused `y = U·(S ⊙ (Vh·x)) + b`) and the helpers
//! in [`ops`].

pub mod isa;
pub mod matrix;
pub mod ops;
pub mod par;
pub mod quant;
pub mod reference;

mod amx;
mod dispatch;
mod gemv;
mod int8;
mod kern;
mod simd;

pub use gemv::{
    int8_group_dots_with, lowrank_matmul, lowrank_matmul_with, lowrank_matvec, lowrank_matvec_with,
    matmul, matmul_with, matvec, matvec_with, quantize_activations_with, release_scratch,
};
pub use isa::Isa;
pub use matrix::{DenseRef, Elems, Int8Act, Int8Ref, Layout, MatRef, QuantRef};
pub use par::Team;
