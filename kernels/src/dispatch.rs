//! The kernel table: for each path, the function that does each primitive, chosen once.
//!
//! Every product in `gemv.rs` reaches its kernels through the [`Kernels`] of its path ([`kernels`]), so
//! the drivers (threads, scratch, blocking) are written once. A new weight format is one new field with
//! an entry per path — the scalar entry calling [`crate::reference`] — not a new `match` on the path in
//! every driver.
//!
//! Soundness: the x86 tables call `#[target_feature]` functions from safe entries. They are private to
//! this module and handed out only by [`kernels`], which checks that the CPU supports the path first.

use crate::int8;
use crate::isa::{self, Isa};
use crate::kern::{self, PackSrc};
use crate::matrix::{DenseRef, Int8Ref, QuantRef};
use crate::quant;
use crate::reference;

/// W8A8 rows `o0 .. o0 + rows` of `T` consecutive tokens from `t0`, weights read once for all of them
/// (`xq`/`xscale`: every token's quantized activations, `k` each; `out`: `tokens × n` floats; the
/// caller adds the bias).
///
/// # Safety
/// Rows `o0 .. o0 + rows` of tokens `t0 .. t0 + T` of `out` must be valid and written by this call alone.
pub(crate) type W8a8Tokens = unsafe fn(
    q: &Int8Ref,
    xq: &[i8],
    xscale: &[f32],
    t0: usize,
    o0: usize,
    rows: usize,
    out: *mut f32,
    n: usize,
);

/// The several-token W8A8 kernels of a path.
pub(crate) struct TokensKernels {
    /// Entry `T − 1` runs `T` tokens.
    pub run: [W8a8Tokens; 4],
    /// Whether they take the activations offset to u8 (`x ^ 0x80`, for VNNI's `vpdpbusd`).
    pub u8_acts: bool,
}

/// One block of the packed f32 GEMM: tokens `t.0 .. t.1` × outputs `o.0 .. o.1`.
///
/// # Safety
/// `xs` must hold the activations packed with this path's `mr` (`round_up(tokens, mr) × k`), `ys`
/// `tokens × n` floats of which the block is written by this call alone.
pub(crate) type GemmF32Block = unsafe fn(
    src: PackSrc,
    k: usize,
    n: usize,
    xs: *const f32,
    ys: *mut f32,
    bias: Option<&[f32]>,
    t: (usize, usize),
    o: (usize, usize),
    kc_max: usize,
    pack: &mut [f32],
);

/// The f32 GEMM of a path: its micro-tile and block kernel.
pub(crate) struct GemmF32 {
    /// Tokens per micro-tile.
    pub mr: usize,
    /// Outputs per micro-tile.
    pub nr: usize,
    pub block: GemmF32Block,
}

/// An integer W8A8 GEMM: `ys[t] = W·xs[t] + bias` for `tokens` tokens, matvec's bits per token.
pub(crate) type GemmW8a8 =
    fn(kt: &Kernels, q: &Int8Ref, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32], tokens: usize);

/// Sub-8-bit rows `o0 .. o0 + y.len()` of one token: INT8 activations `xq` (scale `xs`) zero-padded to
/// whole blocks, and their per-group sums.
pub(crate) type QuantRows =
    fn(q: &QuantRef, xq: &[i8], sums: &[i32], xs: f32, o0: usize, y: &mut [f32]);

/// A sub-8-bit GEMM: `ys[t] = W·xs[t] + bias` for `tokens` tokens, matvec's bits per token.
pub(crate) type GemmQuant =
    fn(kt: &Kernels, q: &QuantRef, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32], tokens: usize);

/// The kernels of one path.
pub(crate) struct Kernels {
    /// Per-token symmetric INT8 quantization of activations, the reference's bits; returns the scale.
    pub quantize: fn(x: &[f32], q: &mut [i8]) -> f32,
    /// Dense rows `o0 .. o0 + y.len()` of one token, whole sums in input order.
    pub dense: fn(d: &DenseRef, x: &[f32], o0: usize, y: &mut [f32]),
    /// Whether a deep `[in, out]` matvec is summed as two halves of its inputs (`gemv::splits_inout`).
    pub split_inout: bool,
    /// INT8 rows with INT8 activations (`xq`, scale `xs`).
    pub w8a8_rows: fn(q: &Int8Ref, xq: &[i8], xs: f32, o0: usize, y: &mut [f32]),
    /// INT8 rows with f32 activations.
    pub w8a32_rows: fn(q: &Int8Ref, x: &[f32], o0: usize, y: &mut [f32]),
    /// Sub-8-bit rows.
    pub quant_rows: QuantRows,
    /// Exact per-group i32 dot products of one INT8 row with quantized activations.
    pub group_dots: fn(row: &[i8], xq: &[i8], group: usize, out: &mut [i32]),
    /// W8A8 rows of several tokens per pass (None: one token at a time).
    pub w8a8_tokens: Option<TokensKernels>,
    /// The f32 GEMM (None: every token of a `matmul` runs as a matvec).
    pub gemm_f32: Option<GemmF32>,
    /// The integer GEMM for W8A8 prefill (None: row blocks of the matvec kernels).
    pub gemm_w8a8: Option<GemmW8a8>,
    /// The integer GEMM for sub-8-bit prefill (None: row blocks of the matvec kernels).
    pub gemm_quant: Option<GemmQuant>,
}

/// The table of `isa`.
///
/// # Panics
/// When this CPU does not support `isa`.
pub(crate) fn kernels(isa: Isa) -> &'static Kernels {
    assert!(
        isa.supported(),
        "kernel path {} is not supported by this CPU",
        isa.name()
    );
    match isa {
        Isa::Scalar => &SCALAR,
        Isa::Portable => &PORTABLE,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa::has_avx512_vnni() => &AVX512_VNNI,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &AVX512,
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => &AVX512_AMX,
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Amx => {
            unreachable!("x86 paths are never supported elsewhere")
        }
    }
}

/// The definition: every entry is the scalar reference, one output at a time.
static SCALAR: Kernels = Kernels {
    quantize: reference::quantize_activations,
    dense: |d, x, o0, y| {
        for (r, yo) in y.iter_mut().enumerate() {
            *yo = reference::dense_row(d, o0 + r, x);
        }
    },
    split_inout: false,
    w8a8_rows: |q, xq, xs, o0, y| {
        for (r, yo) in y.iter_mut().enumerate() {
            *yo = reference::int8_w8a8_row(q, o0 + r, xq, xs);
        }
    },
    w8a32_rows: |q, x, o0, y| {
        for (r, yo) in y.iter_mut().enumerate() {
            *yo = reference::int8_w8a32_row(q, o0 + r, x);
        }
    },
    quant_rows: |q, xq, _sums, xs, o0, y| {
        for (r, yo) in y.iter_mut().enumerate() {
            *yo = reference::quant_row(q, o0 + r, xq, xs);
        }
    },
    group_dots: |row, xq, group, out| group_dots_by(reference::dot_i8, row, xq, group, out),
    w8a8_tokens: None,
    gemm_f32: None,
    gemm_w8a8: None,
    gemm_quant: None,
};

/// Portable SIMD through `wide` (any target).
static PORTABLE: Kernels = Kernels {
    // SAFETY (this and every `unsafe` entry of this table): the portable kernels need no CPU features.
    quantize: |x, q| unsafe { kern::portable::quantize_row(x, q) },
    // SAFETY: as above.
    dense: |d, x, o0, y| unsafe { kern::portable::dense(d, x, o0, y) },
    split_inout: true,
    w8a8_rows: |q, xq, xs, o0, y| {
        int8::w8a8_rows_portable(q.values, q.scales, q.in_dim, q.group, xq, xs, o0, y)
    },
    // SAFETY: as above.
    w8a32_rows: |q, x, o0, y| unsafe {
        kern::portable::w8a32_rows(q.values, q.scales, q.in_dim, q.group, x, o0, y)
    },
    quant_rows: quant::rows_portable,
    group_dots: |row, xq, group, out| group_dots_by(int8::dot_i8, row, xq, group, out),
    w8a8_tokens: None,
    gemm_f32: Some(GemmF32 {
        mr: kern::portable::MR,
        nr: kern::portable::NR,
        block: kern::portable::gemm_block,
    }),
    gemm_w8a8: None,
    gemm_quant: None,
};

/// AVX2 + FMA + F16C. The INT8 kernels pair i8 products with `vpmaddubsw`/`vpmaddwd`.
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    // SAFETY (this and every `unsafe` entry of this table): `kernels` hands the table out only on a CPU
    // with AVX2, FMA and F16C; the kernels check their slices' lengths.
    quantize: |x, q| unsafe { kern::avx2::quantize_row(x, q) },
    // SAFETY: as above.
    dense: |d, x, o0, y| unsafe { kern::avx2::dense(d, x, o0, y) },
    split_inout: true,
    w8a8_rows: w8a8_rows_avx2,
    // SAFETY: as above.
    w8a32_rows: |q, x, o0, y| unsafe {
        kern::avx2::w8a32_rows(q.values, q.scales, q.in_dim, q.group, x, o0, y)
    },
    quant_rows: quant_rows_avx2,
    group_dots: group_dots_avx2,
    w8a8_tokens: Some(TOKENS_AVX2),
    gemm_f32: Some(GemmF32 {
        mr: kern::avx2::MR,
        nr: kern::avx2::NR,
        block: kern::avx2::gemm_block,
    }),
    gemm_w8a8: Some(crate::gemv::gemm_w8a8_avx2),
    gemm_quant: Some(crate::gemv::gemm_quant_avx2),
};

/// AVX-512 F/BW/VL without VNNI: the f32 kernels at 512 bits, the integer ones of AVX2.
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = AVX512_BASE;

#[cfg(target_arch = "x86_64")]
const AVX512_BASE: Kernels = Kernels {
    // SAFETY (this and every `unsafe` entry of this table): `kernels` hands the table out only on a CPU
    // with AVX-512 F/BW/VL (which this crate requires to come with AVX2, FMA and F16C).
    quantize: |x, q| unsafe { kern::avx512::quantize_row(x, q) },
    // SAFETY: as above.
    dense: |d, x, o0, y| unsafe { kern::avx512::dense(d, x, o0, y) },
    split_inout: true,
    w8a8_rows: w8a8_rows_avx2,
    // SAFETY: as above.
    w8a32_rows: |q, x, o0, y| unsafe {
        kern::avx512::w8a32_rows(q.values, q.scales, q.in_dim, q.group, x, o0, y)
    },
    quant_rows: quant_rows_avx2,
    group_dots: group_dots_avx2,
    w8a8_tokens: Some(TOKENS_AVX2),
    gemm_f32: Some(GemmF32 {
        mr: kern::avx512::MR,
        nr: kern::avx512::NR,
        block: kern::avx512::gemm_block,
    }),
    gemm_w8a8: Some(crate::gemv::gemm_w8a8_avx2),
    gemm_quant: Some(crate::gemv::gemm_quant_avx2),
};

/// AVX-512 with VNNI: the INT8 products through `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = AVX512_VNNI_BASE;

/// AVX-512 with VNNI and AMX: the VNNI table, with the integer GEMMs' 32-token steps as AMX tiles.
#[cfg(target_arch = "x86_64")]
static AVX512_AMX: Kernels = Kernels {
    gemm_w8a8: Some(crate::gemv::gemm_w8a8_amx),
    gemm_quant: Some(crate::gemv::gemm_quant_amx),
    ..AVX512_VNNI_BASE
};

#[cfg(target_arch = "x86_64")]
const AVX512_VNNI_BASE: Kernels = Kernels {
    // SAFETY (every `unsafe` entry of this table): `kernels` hands the table (and the AMX table built
    // on it) out only on a CPU with AVX-512 F/BW/VL and VNNI.
    w8a8_rows: |q, xq, xs, o0, y| unsafe {
        int8::x86::w8a8_rows_vnni(q.values, q.scales, q.in_dim, q.group, xq, xs, o0, y)
    },
    // SAFETY: as above.
    group_dots: |row, xq, group, out| unsafe { int8::x86::group_dots_vnni(row, xq, group, out) },
    w8a8_tokens: Some(TokensKernels {
        run: [
            tokens_vnni::<1>,
            tokens_vnni::<2>,
            tokens_vnni::<3>,
            tokens_vnni::<4>,
        ],
        u8_acts: true,
    }),
    gemm_w8a8: Some(crate::gemv::gemm_w8a8_vnni),
    // SAFETY: as above (with AVX2, FMA and F16C, which this crate requires of AVX-512).
    quant_rows: |q, xq, sums, xs, o0, y| unsafe { quant::x86::rows_vnni(q, xq, sums, xs, o0, y) },
    gemm_quant: Some(crate::gemv::gemm_quant_vnni),
    ..AVX512_BASE
};

/// Per-group dots with a plain dot product over each group.
fn group_dots_by(
    dot: fn(&[i8], &[i8]) -> i32,
    row: &[i8],
    xq: &[i8],
    group: usize,
    out: &mut [i32],
) {
    for (g, o) in out.iter_mut().enumerate() {
        let lo = g * group;
        let hi = (lo + group).min(row.len());
        *o = dot(&row[lo..hi], &xq[lo..hi]);
    }
}

/// The AVX2 W8A8 rows (AVX2 and AVX-512 without VNNI).
#[cfg(target_arch = "x86_64")]
fn w8a8_rows_avx2(q: &Int8Ref, xq: &[i8], xs: f32, o0: usize, y: &mut [f32]) {
    // SAFETY: reached only through the AVX2 and AVX-512 tables (both imply AVX2, see `kernels`); the
    // kernel re-checks the lengths.
    unsafe { int8::x86::w8a8_rows_avx2(q.values, q.scales, q.in_dim, q.group, xq, xs, o0, y) }
}

/// The AVX2 sub-8-bit rows.
#[cfg(target_arch = "x86_64")]
fn quant_rows_avx2(q: &QuantRef, xq: &[i8], sums: &[i32], xs: f32, o0: usize, y: &mut [f32]) {
    // SAFETY: as for `w8a8_rows_avx2` (AVX2, FMA and F16C); the matrix passed `check`, the lengths of
    // `xq` and `sums` are re-checked inside.
    unsafe { quant::x86::rows_avx2(q, xq, sums, xs, o0, y) }
}

/// The AVX2 per-group dots.
#[cfg(target_arch = "x86_64")]
fn group_dots_avx2(row: &[i8], xq: &[i8], group: usize, out: &mut [i32]) {
    // SAFETY: as for `w8a8_rows_avx2`.
    unsafe { int8::x86::group_dots_avx2(row, xq, group, out) }
}

/// The AVX2 several-token kernels: four rows per pass for one or two tokens, two for three or four
/// (the accumulators must fit in 16 registers).
#[cfg(target_arch = "x86_64")]
const TOKENS_AVX2: TokensKernels = TokensKernels {
    run: [
        tokens_avx2::<4, 1>,
        tokens_avx2::<4, 2>,
        tokens_avx2::<2, 3>,
        tokens_avx2::<2, 4>,
    ],
    u8_acts: false,
};

/// [`W8a8Tokens`] on AVX2 with `R` rows per pass.
///
/// # Safety
/// [`W8a8Tokens`]'s contract; AVX2 (guaranteed by the tables that hold it).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tokens_avx2<const R: usize, const T: usize>(
    q: &Int8Ref,
    xq: &[i8],
    xscale: &[f32],
    t0: usize,
    o0: usize,
    rows: usize,
    out: *mut f32,
    n: usize,
) {
    let k = q.in_dim;
    int8::x86::w8a8_rows_avx2_t::<R, T>(
        q.values,
        q.scales,
        k,
        q.group,
        std::array::from_fn(|i| &xq[(t0 + i) * k..(t0 + i + 1) * k]),
        std::array::from_fn(|i| xscale[t0 + i]),
        o0,
        rows,
        std::array::from_fn(|i| out.add((t0 + i) * n + o0)),
    )
}

/// [`W8a8Tokens`] with AVX-512 VNNI (activations offset to u8).
///
/// # Safety
/// [`W8a8Tokens`]'s contract; AVX-512 and VNNI (guaranteed by the table that holds it).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tokens_vnni<const T: usize>(
    q: &Int8Ref,
    xq: &[i8],
    xscale: &[f32],
    t0: usize,
    o0: usize,
    rows: usize,
    out: *mut f32,
    n: usize,
) {
    let k = q.in_dim;
    int8::x86::w8a8_rows_vnni_t::<T>(
        q.values,
        q.scales,
        k,
        q.group,
        std::array::from_fn(|i| as_u8(&xq[(t0 + i) * k..(t0 + i + 1) * k])),
        std::array::from_fn(|i| xscale[t0 + i]),
        o0,
        rows,
        std::array::from_fn(|i| out.add((t0 + i) * n + o0)),
    )
}

/// `i8` bytes seen as `u8`.
#[cfg(target_arch = "x86_64")]
fn as_u8(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}
