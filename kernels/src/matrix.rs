//! Borrowed views of weight matrices, whatever their storage.

use half::{bf16, f16};

/// Element storage of a dense matrix, borrowed (usually from a memory mapping).
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl Elems<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(s) => s.len(),
            Elems::F16(s) => s.len(),
            Elems::BF16(s) => s.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            Elems::F32(_) => 4,
            Elems::F16(_) | Elems::BF16(_) => 2,
        }
    }

    /// Element `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elems::F32(s) => s[i],
            Elems::F16(s) => s[i].to_f32(),
            Elems::BF16(s) => s[i].to_f32(),
        }
    }
}

/// How a dense matrix of `out_dim × in_dim` is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major `[out, in]` (PyTorch `nn.Linear`, GPT-Neo): each output is a contiguous dot product.
    OutIn,
    /// Row-major `[in, out]` (GPT-2 `Conv1D`): each input scales a contiguous row of outputs.
    InOut,
}

/// A dense matrix computing `y[o] = Σ_i W[o, i]·x[i]`.
#[derive(Clone, Copy, Debug)]
pub struct DenseRef<'a> {
    pub data: Elems<'a>,
    pub layout: Layout,
    pub out_dim: usize,
    pub in_dim: usize,
}

/// How an INT8 matrix multiplies its activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Int8Act {
    /// W8A8: activations quantized per token to i8, integer dot products accumulated in i32.
    #[default]
    Int8,
    /// W8A32: weights dequantized on the fly inside the kernel, f32 activations.
    F32,
}

/// An INT8 matrix, row-major `[out, in]`, symmetric: `W[o, i] = values[o, i] · scales[o, i / group]`.
///
/// Values lie in `[-127, 127]` (never -128, so sign tricks and `maddubs` cannot overflow). `scales` holds
/// `out_dim × in_dim.div_ceil(group)` entries; the last group of a row may be shorter.
#[derive(Clone, Copy, Debug)]
pub struct Int8Ref<'a> {
    pub values: &'a [i8],
    pub scales: &'a [f32],
    pub out_dim: usize,
    pub in_dim: usize,
    pub group: usize,
    pub act: Int8Act,
}

impl Int8Ref<'_> {
    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.in_dim.div_ceil(self.group)
    }
}

/// A 4- or 3-bit matrix, row-major `[out, in]`, in groups of `group` inputs (a multiple of 32) with an
/// F16 scale each and optionally an F16 minimum:
/// `W[o, i] = scale·(q − 2^(bits−1))` (symmetric) or `scale·q + min` (asymmetric), `q ∈ [0, 2^bits)`.
///
/// Codes are packed per block of 32 inputs (see [`crate::quant`]): 16 bytes at 4 bits (byte `j` holds
/// codes `j` and `j + 16`), 12 at 3 bits (2 low bits of codes `j, j+8, j+16, j+24` in byte `j < 8`,
/// then the 32 high bits). A row is `in.div_ceil(32)` blocks; the last group may be shorter.
#[derive(Clone, Copy, Debug)]
pub struct QuantRef<'a> {
    pub bits: u8,
    pub packed: &'a [u8],
    pub scales: &'a [f16],
    pub mins: Option<&'a [f16]>,
    pub out_dim: usize,
    pub in_dim: usize,
    pub group: usize,
}

impl QuantRef<'_> {
    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.in_dim.div_ceil(self.group)
    }

    /// Packed bytes per row.
    pub fn row_bytes(&self) -> usize {
        crate::quant::row_bytes(self.bits, self.in_dim)
    }
}

/// Any weight matrix the kernels can multiply.
#[derive(Clone, Copy, Debug)]
pub enum MatRef<'a> {
    Dense(DenseRef<'a>),
    Int8(Int8Ref<'a>),
    Quant(QuantRef<'a>),
}

impl MatRef<'_> {
    pub fn out_dim(&self) -> usize {
        match self {
            MatRef::Dense(d) => d.out_dim,
            MatRef::Int8(q) => q.out_dim,
            MatRef::Quant(q) => q.out_dim,
        }
    }

    pub fn in_dim(&self) -> usize {
        match self {
            MatRef::Dense(d) => d.in_dim,
            MatRef::Int8(q) => q.in_dim,
            MatRef::Quant(q) => q.in_dim,
        }
    }

    /// Bytes of weight data one full product reads.
    pub fn weight_bytes(&self) -> usize {
        match self {
            MatRef::Dense(d) => d.data.len() * d.data.elem_bytes(),
            MatRef::Int8(q) => q.values.len() + 4 * q.scales.len(),
            MatRef::Quant(q) => {
                q.packed.len() + 2 * q.scales.len() + 2 * q.mins.map_or(0, |m| m.len())
            }
        }
    }

    /// Panics with a clear message when the storage does not match the stated shape.
    pub fn check(&self) {
        match self {
            MatRef::Dense(d) => assert_eq!(
                d.data.len(),
                d.out_dim * d.in_dim,
                "dense matrix {}x{} has {} elements",
                d.out_dim,
                d.in_dim,
                d.data.len()
            ),
            MatRef::Int8(q) => {
                assert!(q.group > 0, "int8 group size is 0");
                assert_eq!(q.values.len(), q.out_dim * q.in_dim, "int8 values length");
                assert_eq!(
                    q.scales.len(),
                    q.out_dim * q.groups_per_row(),
                    "int8 scales length"
                );
            }
            MatRef::Quant(q) => {
                assert!(
                    matches!(q.bits, 3 | 4),
                    "{}-bit matrices are not supported (3 or 4)",
                    q.bits
                );
                assert!(
                    q.group > 0 && q.group % 32 == 0,
                    "sub-8-bit group size {} is not a multiple of 32",
                    q.group
                );
                assert_eq!(
                    q.packed.len(),
                    q.out_dim * q.row_bytes(),
                    "packed codes length"
                );
                let g = q.out_dim * q.groups_per_row();
                assert_eq!(q.scales.len(), g, "sub-8-bit scales length");
                if let Some(m) = q.mins {
                    assert_eq!(m.len(), g, "sub-8-bit minimums length");
                }
            }
        }
    }
}
