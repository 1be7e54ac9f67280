//! `Linear`: the one seam between the model and the kernels, whatever the storage.
//!
//! Weights are borrowed from the memory mapping (a [`TensorView`]); a tensor whose address is not
//! aligned for its element type is the only thing ever copied, and it is counted in
//! [`Linear::copied_bytes`].

use slimlm_kernels::{
    self as kernels, DenseRef, Elems, Int8Act, Int8Ref, Layout, MatRef, QuantRef,
};

use crate::error::Result;
use crate::tensor_file::{DType, Mapped, TensorView};

/// Bytes of a tensor: borrowed from the mapping, or (unaligned tensors only) an aligned copy.
#[derive(Clone, Debug)]
pub enum Bytes {
    Mapped(Mapped),
    Copied(Vec<u64>, usize),
}

impl Bytes {
    /// Borrows `t` in place when it is aligned for `align`, else copies it into an aligned buffer.
    pub fn new(t: &TensorView, align: usize) -> Bytes {
        if t.is_aligned(align) {
            Bytes::Mapped(t.mapped())
        } else {
            let b = t.bytes();
            let mut v = vec![0u64; b.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..b.len()].copy_from_slice(b);
            Bytes::Copied(v, b.len())
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Bytes::Mapped(t) => t.bytes(),
            Bytes::Copied(v, n) => &bytemuck::cast_slice::<u64, u8>(v)[..*n],
        }
    }

    /// Bytes held in process memory (0 when borrowed from the mapping).
    pub fn copied_bytes(&self) -> usize {
        match self {
            Bytes::Mapped(_) => 0,
            Bytes::Copied(_, n) => *n,
        }
    }
}

/// A 1-D parameter (bias, LayerNorm, singular values), read in place from the mapping as F32, F16 or
/// BF16; only a tensor not aligned for its type is converted to an f32 copy (counted in
/// [`Vector::copied_bytes`]).
#[derive(Clone, Debug)]
pub enum Vector {
    Mapped(Mapped, DType),
    Owned(Vec<f32>),
}

impl Vector {
    /// Checks `t` is a float vector of `len` and wraps it.
    pub fn new(t: &TensorView, len: usize) -> Result<Vector> {
        t.expect_shape(&[len])?;
        t.expect_dtype(&[DType::F32, DType::F16, DType::BF16])?;
        Ok(if t.is_aligned(t.dtype.size()) {
            Vector::Mapped(t.mapped(), t.dtype)
        } else {
            Vector::Owned(t.to_f32_vec()?)
        })
    }

    /// Like [`Vector::new`], but always readable as f32 ([`Vector::as_f32`]): other types are converted
    /// (a copy, counted).
    pub fn new_f32(t: &TensorView, len: usize) -> Result<Vector> {
        Ok(match Vector::new(t, len)? {
            v @ (Vector::Mapped(_, DType::F32) | Vector::Owned(_)) => v,
            v => Vector::Owned(v.to_vec()),
        })
    }

    /// The values, when they are stored as f32 (else [`Vector::to_f32_into`] converts them).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Vector::Mapped(t, DType::F32) => Some(bytemuck::cast_slice(t.bytes())),
            Vector::Mapped(..) => None,
            Vector::Owned(v) => Some(v),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Vector::Mapped(t, dtype) => t.bytes().len() / dtype.size(),
            Vector::Owned(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `f(i, value)` to every value, converted to f32.
    fn for_each(&self, mut f: impl FnMut(usize, f32)) {
        match self {
            Vector::Mapped(t, DType::F16) => {
                for (i, v) in bytemuck::cast_slice::<u8, half::f16>(t.bytes())
                    .iter()
                    .enumerate()
                {
                    f(i, v.to_f32())
                }
            }
            Vector::Mapped(t, DType::BF16) => {
                for (i, v) in bytemuck::cast_slice::<u8, half::bf16>(t.bytes())
                    .iter()
                    .enumerate()
                {
                    f(i, v.to_f32())
                }
            }
            _ => {
                for (i, &v) in self.as_f32().unwrap_or_default().iter().enumerate() {
                    f(i, v)
                }
            }
        }
    }

    /// Writes the values, as f32, into `out` (of the same length).
    pub fn to_f32_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.len(), "Vector::to_f32_into: length");
        self.for_each(|i, v| out[i] = v);
    }

    /// `y += self`.
    pub fn add_to(&self, y: &mut [f32]) {
        assert_eq!(y.len(), self.len(), "Vector::add_to: length");
        self.for_each(|i, v| y[i] += v);
    }

    /// The values as a new f32 vector.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.to_f32_into(&mut v);
        v
    }

    /// Bytes of the stored values.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Vector::Mapped(t, _) => t.bytes().len(),
            Vector::Owned(v) => 4 * v.len(),
        }
    }

    /// Bytes held in process memory (0 when borrowed from the mapping).
    pub fn copied_bytes(&self) -> usize {
        match self {
            Vector::Mapped(..) => 0,
            Vector::Owned(v) => 4 * v.len(),
        }
    }
}

/// One stored matrix: dense (F32/F16/BF16, either layout) or INT8 `[out, in]` with per-group scales.
#[derive(Clone, Debug)]
pub enum Matrix {
    Dense {
        data: Bytes,
        dtype: DType,
        layout: Layout,
        out_dim: usize,
        in_dim: usize,
    },
    Int8 {
        values: Bytes,
        scales: Bytes,
        group: usize,
        out_dim: usize,
        in_dim: usize,
    },
    /// 4- or 3-bit codes in packed blocks of 32 inputs, F16 scales (and minimums) per group.
    Quant {
        bits: u8,
        packed: Bytes,
        scales: Bytes,
        mins: Option<Bytes>,
        group: usize,
        out_dim: usize,
        in_dim: usize,
    },
}

impl Matrix {
    /// A dense matrix from `t`, whose shape must be `[out, in]` (`OutIn`) or `[in, out]` (`InOut`).
    pub fn dense(t: &TensorView, layout: Layout, out_dim: usize, in_dim: usize) -> Result<Matrix> {
        t.expect_dtype(&[DType::F32, DType::F16, DType::BF16])?;
        match layout {
            Layout::OutIn => t.expect_shape(&[out_dim, in_dim])?,
            Layout::InOut => t.expect_shape(&[in_dim, out_dim])?,
        }
        Ok(Matrix::Dense {
            data: Bytes::new(t, t.dtype.size()),
            dtype: t.dtype,
            layout,
            out_dim,
            in_dim,
        })
    }

    /// An INT8 matrix: `values` I8 `[out, in]`, `scales` F32 `[out, groups]` with `groups` dividing `in`.
    ///
    /// Values are expected in `[-127, 127]` (the compressor never writes -128); they are not scanned at load,
    /// which would read the whole file.
    pub fn int8(
        values: &TensorView,
        scales: &TensorView,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Matrix> {
        values.expect_dtype(&[DType::I8])?;
        values.expect_shape(&[out_dim, in_dim])?;
        scales.expect_dtype(&[DType::F32])?;
        if scales.shape.len() != 2 || scales.shape[0] != out_dim || scales.shape[1] == 0 {
            return Err(scales.error(format!(
                "expected shape [{out_dim}, groups], found {:?}",
                scales.shape
            )));
        }
        let groups = scales.shape[1];
        if in_dim % groups != 0 {
            return Err(scales.error(format!("{groups} groups do not divide the {in_dim} inputs")));
        }
        Ok(Matrix::Int8 {
            values: Bytes::new(values, 1),
            scales: Bytes::new(scales, 4),
            group: in_dim / groups,
            out_dim,
            in_dim,
        })
    }

    /// A 4- or 3-bit matrix: `packed` U8 `[out, row_bytes]` (see `slimlm_kernels::quant`), `scales`
    /// and optional `mins` F16 `[out, groups]`. One group per row, or groups of `in / groups` inputs,
    /// which must be a multiple of 32.
    pub fn quant(
        bits: u8,
        packed: &TensorView,
        scales: &TensorView,
        mins: Option<&TensorView>,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Matrix> {
        if !matches!(bits, 3 | 4) {
            return Err(packed.error(format!("{bits}-bit weights are not supported (3 or 4)")));
        }
        packed.expect_dtype(&[DType::U8])?;
        packed.expect_shape(&[out_dim, kernels::quant::row_bytes(bits, in_dim)])?;
        scales.expect_dtype(&[DType::F16])?;
        if scales.shape.len() != 2 || scales.shape[0] != out_dim || scales.shape[1] == 0 {
            return Err(scales.error(format!(
                "expected shape [{out_dim}, groups], found {:?}",
                scales.shape
            )));
        }
        let groups = scales.shape[1];
        let group = if groups == 1 {
            in_dim.div_ceil(kernels::quant::BLOCK) * kernels::quant::BLOCK
        } else if in_dim % groups == 0 && (in_dim / groups) % kernels::quant::BLOCK == 0 {
            in_dim / groups
        } else {
            return Err(scales.error(format!(
                "{groups} groups do not cut the {in_dim} inputs into groups of a multiple of 32"
            )));
        };
        if let Some(m) = mins {
            m.expect_dtype(&[DType::F16])?;
            m.expect_shape(&[out_dim, groups])?;
        }
        Ok(Matrix::Quant {
            bits,
            packed: Bytes::new(packed, 1),
            scales: Bytes::new(scales, 2),
            mins: mins.map(|m| Bytes::new(m, 2)),
            group,
            out_dim,
            in_dim,
        })
    }

    /// Output and input sizes.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Matrix::Dense {
                out_dim, in_dim, ..
            }
            | Matrix::Int8 {
                out_dim, in_dim, ..
            }
            | Matrix::Quant {
                out_dim, in_dim, ..
            } => (*out_dim, *in_dim),
        }
    }

    /// The kernel view; `act` chooses how INT8 matrices multiply.
    pub fn mat_ref(&self, act: Int8Act) -> MatRef<'_> {
        match self {
            Matrix::Dense {
                data,
                dtype,
                layout,
                out_dim,
                in_dim,
            } => {
                let b = data.bytes();
                let data = match dtype {
                    DType::F32 => Elems::F32(bytemuck::cast_slice(b)),
                    DType::F16 => Elems::F16(bytemuck::cast_slice(b)),
                    _ => Elems::BF16(bytemuck::cast_slice(b)),
                };
                MatRef::Dense(DenseRef {
                    data,
                    layout: *layout,
                    out_dim: *out_dim,
                    in_dim: *in_dim,
                })
            }
            Matrix::Int8 {
                values,
                scales,
                group,
                out_dim,
                in_dim,
            } => MatRef::Int8(Int8Ref {
                values: bytemuck::cast_slice(values.bytes()),
                scales: bytemuck::cast_slice(scales.bytes()),
                out_dim: *out_dim,
                in_dim: *in_dim,
                group: *group,
                act,
            }),
            Matrix::Quant {
                bits,
                packed,
                scales,
                mins,
                group,
                out_dim,
                in_dim,
            } => MatRef::Quant(QuantRef {
                bits: *bits,
                packed: packed.bytes(),
                scales: bytemuck::cast_slice(scales.bytes()),
                mins: mins.as_ref().map(|m| bytemuck::cast_slice(m.bytes())),
                out_dim: *out_dim,
                in_dim: *in_dim,
                group: *group,
            }),
        }
    }

    /// The stored buffers.
    fn buffers(&self) -> Vec<&Bytes> {
        match self {
            Matrix::Dense { data, .. } => vec![data],
            Matrix::Int8 { values, scales, .. } => vec![values, scales],
            Matrix::Quant {
                packed,
                scales,
                mins,
                ..
            } => [Some(packed), Some(scales), mins.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    /// Bytes of weight data.
    pub fn weight_bytes(&self) -> usize {
        self.buffers().iter().map(|b| b.bytes().len()).sum()
    }

    /// Bytes copied out of the mapping (unaligned tensors).
    pub fn copied_bytes(&self) -> usize {
        self.buffers().iter().map(|b| b.copied_bytes()).sum()
    }

    /// Pointers to the start of each stored buffer (to check they point into the mapping).
    pub fn data_ptrs(&self) -> Vec<*const u8> {
        self.buffers().iter().map(|b| b.bytes().as_ptr()).collect()
    }

    /// A short storage name: `f32`, `f16`, `bf16`, `int8`, `q4`, `q3`.
    pub fn storage_name(&self) -> &'static str {
        match self {
            Matrix::Dense { dtype, .. } => match dtype {
                DType::F32 => "f32",
                DType::F16 => "f16",
                _ => "bf16",
            },
            Matrix::Int8 { .. } => "int8",
            Matrix::Quant { bits: 4, .. } => "q4",
            Matrix::Quant { .. } => "q3",
        }
    }
}

/// How a linear layer stores its weight.
#[derive(Clone, Debug)]
pub enum LinearKind {
    /// One matrix.
    Full(Matrix),
    /// `W ≈ U·diag(s)·Vh`, `vh` `[rank, in]`, `u` `[out, rank]`.
    LowRank {
        vh: Matrix,
        s: Option<Vector>,
        u: Matrix,
    },
}

/// `y = W·(m ⊙ x) + b`, with the weight in any storage slimlm knows and `m` an optional per-input
/// multiplier (AWQ's: the weights were scaled by `1/m` per input before they were quantized).
#[derive(Clone, Debug)]
pub struct Linear {
    pub kind: LinearKind,
    pub bias: Option<Vector>,
    /// The per-input multiplier `m` (`base.in_scale`, f32), if any.
    pub in_scale: Option<Vector>,
    /// How INT8 matrices multiply (W8A8 by default).
    pub int8_act: Int8Act,
}

thread_local! {
    /// Inputs times `in_scale`, for the layers that have one.
    static SCALED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Linear {
    /// A linear layer over `kind`; shapes of `kind` and `bias` must agree (checked by the loader).
    pub fn new(kind: LinearKind, bias: Option<Vector>) -> Linear {
        Linear {
            kind,
            bias,
            in_scale: None,
            int8_act: Int8Act::default(),
        }
    }

    /// Runs `f` on the inputs as the weights take them: `xs` itself, or `xs ⊙ in_scale` per token.
    fn with_inputs<R>(&self, xs: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        let Some(m) = self.in_scale.as_ref().and_then(Vector::as_f32) else {
            return f(xs);
        };
        let mut buf = SCALED.with(|c| c.take());
        buf.clear();
        for row in xs.chunks_exact(m.len()) {
            buf.extend(row.iter().zip(m).map(|(x, m)| x * m));
        }
        let r = f(&buf);
        SCALED.with(|c| *c.borrow_mut() = buf);
        r
    }

    /// Output and input sizes.
    pub fn dims(&self) -> (usize, usize) {
        match &self.kind {
            LinearKind::Full(m) => m.dims(),
            LinearKind::LowRank { vh, u, .. } => (u.dims().0, vh.dims().1),
        }
    }

    /// The bias as the kernels take it (f32, fused into the product), or as a vector to add afterwards
    /// (F16/BF16 biases, read in place).
    fn bias_parts(&self) -> (Option<&[f32]>, Option<&Vector>) {
        match &self.bias {
            None => (None, None),
            Some(b) => match b.as_f32() {
                Some(f) => (Some(f), None),
                None => (None, Some(b)),
            },
        }
    }

    /// The singular values as f32 (stored f32 by the compressor; converted at load otherwise).
    fn s_f32(s: &Option<Vector>) -> Option<&[f32]> {
        s.as_ref().and_then(Vector::as_f32)
    }

    /// `y = W·x + b` for one token.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.with_inputs(x, |x| self.forward_scaled(x, y))
    }

    fn forward_scaled(&self, x: &[f32], y: &mut [f32]) {
        let (bias, add) = self.bias_parts();
        match &self.kind {
            LinearKind::Full(m) => kernels::matvec(&m.mat_ref(self.int8_act), bias, x, y),
            LinearKind::LowRank { vh, s, u } => kernels::lowrank_matvec(
                &vh.mat_ref(self.int8_act),
                Linear::s_f32(s),
                &u.mat_ref(self.int8_act),
                bias,
                x,
                y,
            ),
        }
        if let Some(b) = add {
            b.add_to(y);
        }
    }

    /// `ys[t] = W·xs[t] + b` for every token (row-major `tokens × in` → `tokens × out`).
    pub fn forward_batch(&self, xs: &[f32], ys: &mut [f32]) {
        self.with_inputs(xs, |xs| self.forward_batch_scaled(xs, ys))
    }

    fn forward_batch_scaled(&self, xs: &[f32], ys: &mut [f32]) {
        let (bias, add) = self.bias_parts();
        match &self.kind {
            LinearKind::Full(m) => kernels::matmul(&m.mat_ref(self.int8_act), bias, xs, ys),
            LinearKind::LowRank { vh, s, u } => kernels::lowrank_matmul(
                &vh.mat_ref(self.int8_act),
                Linear::s_f32(s),
                &u.mat_ref(self.int8_act),
                bias,
                xs,
                ys,
            ),
        }
        if let Some(b) = add {
            for row in ys.chunks_exact_mut(b.len()) {
                b.add_to(row);
            }
        }
    }

    /// The matrices this layer reads.
    pub fn matrices(&self) -> Vec<&Matrix> {
        match &self.kind {
            LinearKind::Full(m) => vec![m],
            LinearKind::LowRank { vh, u, .. } => vec![vh, u],
        }
    }

    /// Bytes of weight data (matrices, factors, scales; bias and `s` included).
    pub fn weight_bytes(&self) -> usize {
        let vecs = self.bias.as_ref().map_or(0, Vector::stored_bytes)
            + self.in_scale.as_ref().map_or(0, Vector::stored_bytes)
            + match &self.kind {
                LinearKind::LowRank { s: Some(s), .. } => s.stored_bytes(),
                _ => 0,
            };
        self.matrices()
            .iter()
            .map(|m| m.weight_bytes())
            .sum::<usize>()
            + vecs
    }

    /// Bytes copied out of the mapping.
    pub fn copied_bytes(&self) -> usize {
        let vecs = self.bias.as_ref().map_or(0, Vector::copied_bytes)
            + self.in_scale.as_ref().map_or(0, Vector::copied_bytes)
            + match &self.kind {
                LinearKind::LowRank { s: Some(s), .. } => s.copied_bytes(),
                _ => 0,
            };
        self.matrices()
            .iter()
            .map(|m| m.copied_bytes())
            .sum::<usize>()
            + vecs
    }

    /// A short description: `f32`, `int8`, `lowrank r=64 int8`, `q4 +in_scale`.
    pub fn describe(&self) -> String {
        let base = self.describe_weights();
        match self.in_scale {
            Some(_) => format!("{base} +in_scale"),
            None => base,
        }
    }

    fn describe_weights(&self) -> String {
        match &self.kind {
            LinearKind::Full(m) => m.storage_name().to_string(),
            LinearKind::LowRank { vh, u, .. } => {
                format!(
                    "lowrank r={} {}/{}",
                    vh.dims().0,
                    vh.storage_name(),
                    u.storage_name()
                )
            }
        }
    }
}
