//! Hot-path helpers: LayerNorm, the MLP activations (gelu_new, exact GELU, ReLU), softmax, rotary
//! position embedding, attention of one query (or a block of queries) over a KV cache (with an
//! optional ALiBi bias).
//!
//! The fast versions are plain Rust written in lane arrays (so reductions vectorise without
//! reassociation licences) and a branch-free `exp`, compiled once per instruction set with
//! `#[target_feature]`. Accuracy against [`reference`] (which works in f64 where it matters):
//! * `layer_norm`: mean and variance two-pass in f64 lanes, as the reference: ≤ 1 ulp-ish of the output;
//! * `gelu_new`: `0.5·x·(1 + tanh(u)) = x·σ(2u) = x / (1 + e^(−2u))` — no cancellation anywhere; the
//!   argument and its ln 2 reduction in f64, the polynomial in f32: relative error ≤ ~5e-7;
//! * `softmax`: f32 `exp` with 7th-order polynomial (≤ 2 ulp), f32 lane sums: relative ≤ ~1e-6;
//! * `gelu_erf`: `0.5·x·(1 + erf(x/√2))` through `erfc` (Numerical Recipes' Chebyshev fit, relative
//!   error < 1.2e-7 everywhere, so the negative tail keeps its relative accuracy), in f64: ≤ ~5e-7;
//! * `attend`: f32 lane dot products + the softmax above; `attend_f16` the same over an F16 KV cache (each
//!   value widened to f32, exactly, as it is used);
//! * `attend_rows` (a prefill chunk's queries of one head as blocks): the same arithmetic per query with
//!   the dot products summed in another order — within f32 rounding of `attend`, not bit for bit.

use half::f16;

use crate::isa::{self, Isa};
use crate::reference;
use crate::simd::{Elem, F32Vec};

/// LayerNorm of one vector into `out`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    layer_norm_with(isa::active(), x, gamma, beta, eps, out)
}

/// `gelu_new` in place.
pub fn gelu_new(x: &mut [f32]) {
    gelu_new_with(isa::active(), x)
}

/// Exact (erf) GELU in place, as PyTorch's `gelu` (GPT-NeoX's `hidden_act = "gelu"`).
pub fn gelu_erf(x: &mut [f32]) {
    gelu_erf_with(isa::active(), x)
}

/// ReLU in place (NaN stays NaN).
pub fn relu(x: &mut [f32]) {
    for v in x.iter_mut() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// Rotary position embedding of one head in place, GPT-NeoX's `rotate_half` pairing: the first
/// `2·cos.len()` values are rotated, value `i` paired with value `i + cos.len()` by the angle whose cosine
/// and sine are `cos[i]`, `sin[i]`; the rest of the head is left as is.
pub fn rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert!(
        sin.len() == half && x.len() >= 2 * half,
        "rotate_half: lengths"
    );
    let (lo, hi) = x[..2 * half].split_at_mut(half);
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x1 * c + x0 * s;
    }
}

/// `ln Σ e^x_i` (e.g. the normaliser of log-softmax over a vocabulary): the maximum subtracted, `e^x` in
/// f32 (≤ 2 ulp) summed in f64 lanes; ≤ ~3e-7 absolute in the result. `-inf` for an empty slice; NaN if
/// any value is NaN.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    log_sum_exp_with(isa::active(), x)
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    softmax_with(isa::active(), x)
}

/// Attention of one query of one head over `n = keys.len() / q.len()` cached positions, the last of
/// which is the query's own: score `j` is `scale·q·k_j − slope·(n − 1 − j)` (`slope` is the head's ALiBi
/// slope, 0 without ALiBi; BLOOM adds `slope·j` instead, which differs by a constant per query and so gives
/// the same softmax).
///
/// `scores` is caller-owned scratch of at least `n` floats (no allocation here).
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_with(isa::active(), q, keys, values, scale, slope, scores, out)
}

/// [`attend`] over keys and values stored as F16 (an F16 KV cache: half the bytes), each value widened to
/// f32 exactly as it is used. `scores` needs `n` floats, as for [`attend`].
pub fn attend_f16(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_f16_with(isa::active(), q, keys, values, scale, slope, scores, out)
}

/// Attention of several queries of one head over one stretch of its cache (a prefill chunk): query `i`,
/// `q[i·q_stride ..][..d]`, attends to the key/value rows `ranges[i].0 .. ranges[i].1` of `keys` and
/// `values` (`d` floats each) as [`attend`] does over those rows — score `j` is
/// `scale·q·k_j − slope·(hi − 1 − j)` — and its output goes to `out[i·out_stride ..][..d]`. Ranges must
/// be non-empty.
///
/// Blocked over queries: the keys are transposed once, then each block of queries takes its scores as
/// full-width FMAs over the keys (no reduction per key) and its weighted sums with every value row
/// loaded once per block. The dot products sum in another order than [`attend`]'s: equal within f32
/// rounding (relative ~1e-6), not bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: &[f32],
    values: &[f32],
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    attend_rows_with(
        isa::active(),
        q,
        q_stride,
        d,
        keys,
        values,
        ranges,
        scale,
        slope,
        out,
        out_stride,
    )
}

/// [`attend_rows`] over keys and values stored as F16, each value widened to f32 exactly.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_f16(
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: &[f16],
    values: &[f16],
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    attend_rows_f16_with(
        isa::active(),
        q,
        q_stride,
        d,
        keys,
        values,
        ranges,
        scale,
        slope,
        out,
        out_stride,
    )
}

fn check(isa: Isa) {
    assert!(
        isa.supported(),
        "kernel path {} is not supported by this CPU",
        isa.name()
    );
}

/// Dispatches `$f(args)` to the instantiation of the path `$isa` (checked supported first).
macro_rules! dispatch {
    ($isa:expr, $f:ident($($a:expr),*), scalar => $scalar:expr) => {{
        let isa = $isa;
        check(isa);
        match isa {
            Isa::Scalar => $scalar,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `check` verified that this CPU supports AVX-512 F/BW/VL (the AMX path includes it).
            Isa::Avx512 | Isa::Amx => unsafe { avx512::$f($($a),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `check` verified that this CPU supports AVX2 + FMA + F16C.
            Isa::Avx2 => unsafe { avx2::$f($($a),*) },
            // SAFETY: the portable instantiation needs no CPU features.
            _ => unsafe { portable::$f($($a),*) },
        }
    }};
}

/// [`layer_norm`] on an explicit path.
pub fn layer_norm_with(
    isa: Isa,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let n = x.len();
    assert!(
        n > 0 && gamma.len() == n && beta.len() == n && out.len() == n,
        "layer_norm: lengths"
    );
    dispatch!(isa, layer_norm(x, gamma, beta, eps, out), scalar => reference::layer_norm(x, gamma, beta, eps, out))
}

/// [`gelu_new`] on an explicit path.
pub fn gelu_new_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, gelu_new(x), scalar => reference::gelu_new(x))
}

/// [`gelu_erf`] on an explicit path.
pub fn gelu_erf_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, gelu_erf(x), scalar => reference::gelu_erf(x))
}

/// [`log_sum_exp`] on an explicit path.
pub fn log_sum_exp_with(isa: Isa, x: &[f32]) -> f64 {
    dispatch!(isa, log_sum_exp(x), scalar => reference::log_sum_exp(x))
}

/// [`softmax`] on an explicit path.
pub fn softmax_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, softmax(x), scalar => reference::softmax(x))
}

/// [`attend`] on an explicit path.
#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    assert!(
        d > 0 && keys.len().is_multiple_of(d) && values.len() == keys.len() && out.len() == d,
        "attend: lengths"
    );
    assert!(
        scores.len() >= keys.len() / d,
        "attend: scores scratch too short"
    );
    dispatch!(isa, attend(q, keys, values, scale, slope, scores, out), scalar => attend_scalar(q, keys, values, scale, slope, scores, out))
}

/// [`attend_f16`] on an explicit path.
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_with(
    isa: Isa,
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    assert!(
        d > 0 && keys.len().is_multiple_of(d) && values.len() == keys.len() && out.len() == d,
        "attend_f16: lengths"
    );
    assert!(
        scores.len() >= keys.len() / d,
        "attend_f16: scores scratch too short"
    );
    dispatch!(isa, attend_f16(q, keys, values, scale, slope, scores, out), scalar => attend_f16_scalar(q, keys, values, scale, slope, scores, out))
}

/// Checks the shapes of an `attend_rows` call: every query, range and output row in bounds.
#[allow(clippy::too_many_arguments)]
fn check_rows(
    q: usize,
    q_stride: usize,
    d: usize,
    keys: usize,
    values: usize,
    ranges: &[(usize, usize)],
    out: usize,
    out_stride: usize,
) {
    let m = ranges.len();
    assert!(
        d > 0 && keys.is_multiple_of(d) && values == keys,
        "attend_rows: lengths"
    );
    let rows_fit = |len: usize, stride: usize| m == 0 || (m - 1) * stride + d <= len;
    assert!(
        rows_fit(q, q_stride) && rows_fit(out, out_stride),
        "attend_rows: query or output rows out of bounds"
    );
    assert!(
        ranges.iter().all(|&(lo, hi)| lo < hi && hi <= keys / d),
        "attend_rows: empty range or range past the keys"
    );
}

/// [`attend_rows`] on an explicit path; the scalar path is [`attend_with`]'s scalar twin per query.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_with(
    isa: Isa,
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: &[f32],
    values: &[f32],
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    let (qs, os) = (q_stride, out_stride);
    check_rows(
        q.len(),
        qs,
        d,
        keys.len(),
        values.len(),
        ranges,
        out.len(),
        os,
    );
    with_rows_scratch(|sc| {
        dispatch!(isa, attend_rows(q, qs, d, keys, values, ranges, scale, slope, out, os, sc),
            scalar => attend_rows_scalar(q, qs, d, keys, values, |x| x, ranges, scale, slope, out, os, sc))
    })
}

/// [`attend_rows_f16`] on an explicit path.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_f16_with(
    isa: Isa,
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: &[f16],
    values: &[f16],
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    let (qs, os) = (q_stride, out_stride);
    check_rows(
        q.len(),
        qs,
        d,
        keys.len(),
        values.len(),
        ranges,
        out.len(),
        os,
    );
    with_rows_scratch(|sc| {
        dispatch!(isa, attend_rows_f16(q, qs, d, keys, values, ranges, scale, slope, out, os, sc),
            scalar => attend_rows_scalar(q, qs, d, keys, values, f16::to_f32, ranges, scale, slope, out, os, sc))
    })
}

thread_local! {
    /// `attend_rows`' scratch (transposed keys and a block of scores), kept per thread.
    static ROWS_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_rows_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut v = ROWS_SCRATCH.with(|c| c.take());
    let r = f(&mut v);
    ROWS_SCRATCH.with(|c| *c.borrow_mut() = v);
    r
}

/// The scalar twin of `attend_rows`: [`attend_scalar_by`] per query over its rows.
#[allow(clippy::too_many_arguments)]
fn attend_rows_scalar<T: Copy>(
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: &[T],
    values: &[T],
    widen: impl Fn(T) -> f32 + Copy,
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    out_stride: usize,
    scores: &mut Vec<f32>,
) {
    for (i, &(lo, hi)) in ranges.iter().enumerate() {
        if scores.len() < hi - lo {
            scores.resize(hi - lo, 0.0);
        }
        let (k, v) = (&keys[lo * d..hi * d], &values[lo * d..hi * d]);
        let qi = &q[i * q_stride..i * q_stride + d];
        let o = &mut out[i * out_stride..i * out_stride + d];
        attend_scalar_by(qi, k, v, widen, scale, slope, scores, o);
    }
}

fn attend_f16_scalar(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_scalar_by(q, keys, values, f16::to_f32, scale, slope, scores, out)
}

fn attend_scalar(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_scalar_by(q, keys, values, |x| x, scale, slope, scores, out)
}

/// The scalar attention of [`attend`] over rows of any element type, each value widened by `widen`.
#[allow(clippy::too_many_arguments)]
fn attend_scalar_by<T: Copy>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    widen: impl Fn(T) -> f32,
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let n = keys.len() / d;
    let scores = &mut scores[..n];
    for (j, s) in scores.iter_mut().enumerate() {
        *s = scale
            * q.iter()
                .zip(&keys[j * d..(j + 1) * d])
                .map(|(&a, &b)| a * widen(b))
                .sum::<f32>()
            - slope * (n - 1 - j) as f32;
    }
    reference::softmax(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
            *o += p * widen(v);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Generic bodies (vectorised by the compiler inside each instantiation)
// ---------------------------------------------------------------------------------------------------

const L: usize = 16;

/// `e^x` for f32, branch-free: Cody–Waite reduction by ln 2, degree-7 Taylor polynomial on
/// `|r| ≤ ln2/2` (truncation < 6e-9 relative), exponent by bit assembly. Inputs are clamped to
/// `[-87, 88]` (so the result is always a normal float: `e^-87 ≈ 1.6e-38` stands in for smaller values).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // few significant bits: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let z = x * LOG2E + MAGIC;
    let n = z - MAGIC;
    let ni = (z.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `e^x` as f32 for an f64 argument: the reduction `r = x − n·ln2` runs in f64 (so a large `|x|` loses
/// no accuracy to the argument's rounding), the polynomial in f32 as [`exp_f32`].
#[inline(always)]
pub(crate) fn exp_f64_arg(x: f64) -> f32 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5·2^52
    let x = x.clamp(-87.0, 88.0);
    let z = x * std::f64::consts::LOG2_E + MAGIC;
    let n = z - MAGIC;
    let ni = (z.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64) as i32;
    let r = (x - n * std::f64::consts::LN_2) as f32;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

#[inline(always)]
fn sum_lanes(acc: &[f32; L]) -> f32 {
    let mut h = *acc;
    let mut w = L / 2;
    while w > 0 {
        for j in 0..w {
            h[j] += h[j + w];
        }
        w /= 2;
    }
    h[0]
}

#[inline(always)]
fn layer_norm_body(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    const D: usize = 8;
    let n = x.len() as f64;
    let chunks = x.chunks_exact(D);
    let rem = chunks.remainder();
    let mut acc = [0.0f64; D];
    for c in chunks.clone() {
        for j in 0..D {
            acc[j] += c[j] as f64;
        }
    }
    let mean = (acc.iter().sum::<f64>() + rem.iter().map(|&v| v as f64).sum::<f64>()) / n;
    let mut acc = [0.0f64; D];
    for c in chunks {
        for j in 0..D {
            let d = c[j] as f64 - mean;
            acc[j] += d * d;
        }
    }
    let var =
        (acc.iter().sum::<f64>() + rem.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()) / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = ((v as f64 - mean) * inv) as f32 * g + b;
    }
}

#[inline(always)]
fn gelu_new_body(x: &mut [f32]) {
    const C: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
    for v in x.iter_mut() {
        let z = *v as f64;
        // 0.5·(1 + tanh(u)) = σ(2u); the argument in f64 keeps the tail (|2u| up to ~90) accurate.
        let m2u = -2.0 * C * (z + 0.044715 * z * z * z);
        *v /= 1.0 + exp_f64_arg(m2u);
    }
}

/// `0.5·x·(1 + erf(x/√2))` = `x·(1 − ½·erfc(u))` for x ≥ 0 and `x·½·erfc(u)` below, `u = |x|/√2`;
/// `erfc(u) = t·e^(−u² + P(t))`, `t = 1/(1 + u/2)` (Numerical Recipes' `erfcc`, relative error < 1.2e-7).
#[inline(always)]
fn gelu_erf_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        let z = *v as f64;
        let u = z.abs() * std::f64::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * u);
        let p = -1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let half_erfc = 0.5 * t * exp_f64_arg(-u * u + p) as f64;
        let f = if z >= 0.0 { 1.0 - half_erfc } else { half_erfc };
        *v = (z * f) as f32;
    }
}

/// The largest value (−∞ for an empty slice), in lanes.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; L];
    let chunks = x.chunks_exact(L);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for j in 0..L {
            mx[j] = mx[j].max(c[j]);
        }
    }
    for v in mx {
        m = m.max(v);
    }
    m
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f64 {
    if x.is_empty() {
        return f64::NEG_INFINITY;
    }
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = max_lanes(x);
    if !m.is_finite() {
        return m as f64;
    }
    let mut acc = [0.0f64; L];
    let chunks = x.chunks_exact(L);
    let mut tail = 0.0f64;
    for v in chunks.remainder() {
        tail += exp_f32(*v - m) as f64;
    }
    for c in chunks {
        for j in 0..L {
            acc[j] += exp_f32(c[j] - m) as f64;
        }
    }
    m as f64 + (acc.iter().sum::<f64>() + tail).ln()
}

#[inline(always)]
fn softmax_body(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let m = max_lanes(x);
    let mut acc = [0.0f32; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for j in 0..L {
            c[j] = exp_f32(c[j] - m);
            acc[j] += c[j];
        }
    }
    let mut tail = 0.0f32;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - m);
        tail += *v;
    }
    let inv = 1.0 / (sum_lanes(&acc) + tail);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Attention of one query over `n` key/value rows of any stored element type, on vector type `V`:
/// scores by full-width FMA dot products (two accumulators, one reduction per key), the softmax, then
/// the weighted sum of the values four vectors of outputs at a time, kept in registers over all keys.
/// Every query's arithmetic is the same however many are run, so a batched decode step equals each
/// sequence's own step.
///
/// # Safety
/// `V`'s instructions must be available; lengths are checked by the callers (`attend_with`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_body<V: F32Vec, E: Elem>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (d, w) = (q.len(), V::W);
    let n = keys.len() / d;
    let dv = d / w * w;
    let scores = &mut scores[..n];
    let (qp, kp, vp) = (q.as_ptr(), keys.as_ptr(), values.as_ptr());
    // Each head's keys and values are a fresh stream of a few KiB: prefetch the keys some rows ahead,
    // and each row's values while its key is read, so the weighted sum below finds them in cache.
    const AHEAD: usize = 8;
    let row_bytes = d * std::mem::size_of::<E>();
    for (j, s) in scores.iter_mut().enumerate() {
        prefetch_bytes(kp.wrapping_add((j + AHEAD) * d) as *const u8, row_bytes);
        prefetch_bytes(vp.wrapping_add(j * d) as *const u8, row_bytes);
        let k = kp.add(j * d);
        let (mut a0, mut a1) = (V::zero(), V::zero());
        let mut i = 0;
        while i + 2 * w <= dv {
            a0 = V::fma(V::load(qp.add(i)), E::vload::<V>(k.add(i)), a0);
            a1 = V::fma(V::load(qp.add(i + w)), E::vload::<V>(k.add(i + w)), a1);
            i += 2 * w;
        }
        if i < dv {
            a0 = V::fma(V::load(qp.add(i)), E::vload::<V>(k.add(i)), a0);
        }
        let mut dot = V::reduce(V::add(a0, a1));
        for (i, &qi) in q.iter().enumerate().skip(dv) {
            dot += qi * (*k.add(i)).f32();
        }
        *s = scale * dot - slope * (n - 1 - j) as f32;
    }
    softmax_body(scores);
    let op = out.as_mut_ptr();
    let mut c = 0;
    while c + 4 * w <= dv {
        let mut acc = [V::zero(); 4];
        for (j, &p) in scores.iter().enumerate() {
            let (p, v) = (V::splat(p), vp.add(j * d + c));
            for (u, a) in acc.iter_mut().enumerate() {
                *a = V::fma(p, E::vload::<V>(v.add(u * w)), *a);
            }
        }
        for (u, a) in acc.iter().enumerate() {
            V::store(op.add(c + u * w), *a);
        }
        c += 4 * w;
    }
    while c < dv {
        let mut acc = V::zero();
        for (j, &p) in scores.iter().enumerate() {
            acc = V::fma(V::splat(p), E::vload::<V>(vp.add(j * d + c)), acc);
        }
        V::store(op.add(c), acc);
        c += w;
    }
    for (i, o) in out.iter_mut().enumerate().skip(dv) {
        *o = scores
            .iter()
            .enumerate()
            .map(|(j, &p)| p * (*vp.add(j * d + i)).f32())
            .sum();
    }
}

/// Queries per block of `attend_rows`' scores (one vector accumulator each).
const QB: usize = 8;
/// Queries per block of `attend_rows`' weighted sums (four vector accumulators each).
const PB: usize = 4;

/// `attend_rows` on vector type `V` (see there); `scratch` grows to `d·nk + QB·nk` floats for the `nk`
/// keys the queries span.
///
/// # Safety
/// `V`'s instructions must be available; shapes checked by the callers (`check_rows`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows_body<V: F32Vec, E: Elem>(
    q: &[f32],
    qs: usize,
    d: usize,
    keys: &[E],
    values: &[E],
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
    os: usize,
    scratch: &mut Vec<f32>,
) {
    let (m, w) = (ranges.len(), V::W);
    if m == 0 {
        return;
    }
    let base = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let top = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    // Keys base..top transposed: kt[c·nkp + j] = key (base + j), value c; padding keys are 0.
    let nkp = (top - base).div_ceil(w) * w;
    if scratch.len() < (d + QB) * nkp {
        scratch.resize((d + QB) * nkp, 0.0);
    }
    let (kt, s) = scratch.split_at_mut(d * nkp);
    for (c, col) in kt.chunks_exact_mut(nkp).enumerate() {
        for (j, v) in col[..top - base].iter_mut().enumerate() {
            *v = keys[(base + j) * d + c].f32();
        }
        col[top - base..].fill(0.0);
    }
    let (qp, op, vp) = (q.as_ptr(), out.as_mut_ptr(), values.as_ptr());
    for i0 in (0..m).step_by(QB) {
        let rows = QB.min(m - i0);
        let block = &ranges[i0..i0 + rows];
        let blo = block.iter().map(|r| r.0).min().unwrap_or(0) - base;
        let bhi = block.iter().map(|r| r.1).max().unwrap_or(0) - base;
        let (jb0, jb1) = (blo / w * w, bhi.div_ceil(w) * w);
        let sp = s.as_mut_ptr();
        if rows == QB {
            qk_block::<V, QB>(qp.add(i0 * qs), qs, d, kt.as_ptr(), nkp, (jb0, jb1), sp);
        } else {
            for r in 0..rows {
                let (qr, sr) = (qp.add((i0 + r) * qs), sp.add(r * nkp));
                qk_block::<V, 1>(qr, qs, d, kt.as_ptr(), nkp, (jb0, jb1), sr);
            }
        }
        // Each row's softmax over its own keys; the rest of the block's span weighs 0.
        for (r, &(lo, hi)) in block.iter().enumerate() {
            let row = &mut s[r * nkp..(r + 1) * nkp];
            let (lo, hi) = (lo - base, hi - base);
            for (j, v) in row[lo..hi].iter_mut().enumerate() {
                *v = scale * *v - slope * (hi - 1 - (lo + j)) as f32;
            }
            softmax_body(&mut row[lo..hi]);
            row[blo..lo].fill(0.0);
            row[hi..bhi].fill(0.0);
        }
        let mut r = 0;
        while r < rows {
            let (pr, or) = (s.as_ptr().add(r * nkp), op.add((i0 + r) * os));
            let vb = vp.add(base * d);
            if rows - r >= PB {
                pv_block::<V, E, PB>(pr, nkp, vb, d, (blo, bhi), or, os);
                r += PB;
            } else {
                pv_block::<V, E, 1>(pr, nkp, vb, d, (blo, bhi), or, os);
                r += 1;
            }
        }
    }
}

/// Scores of `R` queries (`q`, stride `qs`) against the transposed keys `kt` (stride `nkp`), key vectors
/// `j0..j1` (whole vectors), into `s` (stride `nkp`).
#[inline(always)]
unsafe fn qk_block<V: F32Vec, const R: usize>(
    q: *const f32,
    qs: usize,
    d: usize,
    kt: *const f32,
    nkp: usize,
    (j0, j1): (usize, usize),
    s: *mut f32,
) {
    let mut jb = j0;
    while jb < j1 {
        let mut acc = [V::zero(); R];
        for c in 0..d {
            let k = V::load(kt.add(c * nkp + jb));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = V::fma(V::splat(*q.add(r * qs + c)), k, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            V::store(s.add(r * nkp + jb), *a);
        }
        jb += V::W;
    }
}

/// `R` outputs (`o`, stride `os`) = the weights `p` (stride `nkp`) of keys `j0..j1` times their value
/// rows (`v`, `d` each), four vectors of outputs at a time, then one, then scalar.
#[inline(always)]
unsafe fn pv_block<V: F32Vec, E: Elem, const R: usize>(
    p: *const f32,
    nkp: usize,
    v: *const E,
    d: usize,
    (j0, j1): (usize, usize),
    o: *mut f32,
    os: usize,
) {
    let w = V::W;
    let dv = d / w * w;
    let mut c = 0;
    while c + 4 * w <= dv {
        let mut acc = [[V::zero(); 4]; R];
        for j in j0..j1 {
            let vr = v.add(j * d + c);
            let vv = [
                E::vload::<V>(vr),
                E::vload::<V>(vr.add(w)),
                E::vload::<V>(vr.add(2 * w)),
                E::vload::<V>(vr.add(3 * w)),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                let pj = V::splat(*p.add(r * nkp + j));
                for (u, au) in a.iter_mut().enumerate() {
                    *au = V::fma(pj, vv[u], *au);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (u, au) in a.iter().enumerate() {
                V::store(o.add(r * os + c + u * w), *au);
            }
        }
        c += 4 * w;
    }
    while c < dv {
        let mut acc = [V::zero(); R];
        for j in j0..j1 {
            let vv = E::vload::<V>(v.add(j * d + c));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = V::fma(V::splat(*p.add(r * nkp + j)), vv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            V::store(o.add(r * os + c), *a);
        }
        c += w;
    }
    for c in dv..d {
        for r in 0..R {
            let mut t = 0.0f32;
            for j in j0..j1 {
                t += *p.add(r * nkp + j) * (*v.add(j * d + c)).f32();
            }
            *o.add(r * os + c) = t;
        }
    }
}

/// Prefetches `len` bytes from `p` into L1 (a hint: never faults).
#[inline(always)]
fn prefetch_bytes(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..len).step_by(64) {
        // SAFETY: a prefetch is only a hint; it never faults, whatever the address; SSE is baseline
        // on x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(i) as *const i8
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

macro_rules! instantiate_ops {
    ($name:ident, $v:ty, #[$feat:meta]) => {
        mod $name {
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn layer_norm(
                x: &[f32],
                gamma: &[f32],
                beta: &[f32],
                eps: f32,
                out: &mut [f32],
            ) {
                super::layer_norm_body(x, gamma, beta, eps, out)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn gelu_new(x: &mut [f32]) {
                super::gelu_new_body(x)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn gelu_erf(x: &mut [f32]) {
                super::gelu_erf_body(x)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn log_sum_exp(x: &[f32]) -> f64 {
                super::log_sum_exp_body(x)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn softmax(x: &mut [f32]) {
                super::softmax_body(x)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn attend(
                q: &[f32],
                keys: &[f32],
                values: &[f32],
                scale: f32,
                slope: f32,
                scores: &mut [f32],
                out: &mut [f32],
            ) {
                super::attend_body::<$v, f32>(q, keys, values, scale, slope, scores, out)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(super) unsafe fn attend_f16(
                q: &[f32],
                keys: &[half::f16],
                values: &[half::f16],
                scale: f32,
                slope: f32,
                scores: &mut [f32],
                out: &mut [f32],
            ) {
                super::attend_body::<$v, half::f16>(q, keys, values, scale, slope, scores, out)
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn attend_rows(
                q: &[f32],
                qs: usize,
                d: usize,
                keys: &[f32],
                values: &[f32],
                ranges: &[(usize, usize)],
                scale: f32,
                slope: f32,
                out: &mut [f32],
                os: usize,
                scratch: &mut Vec<f32>,
            ) {
                super::attend_rows_body::<$v, f32>(
                    q, qs, d, keys, values, ranges, scale, slope, out, os, scratch,
                )
            }
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn attend_rows_f16(
                q: &[f32],
                qs: usize,
                d: usize,
                keys: &[half::f16],
                values: &[half::f16],
                ranges: &[(usize, usize)],
                scale: f32,
                slope: f32,
                out: &mut [f32],
                os: usize,
                scratch: &mut Vec<f32>,
            ) {
                super::attend_rows_body::<$v, half::f16>(
                    q, qs, d, keys, values, ranges, scale, slope, out, os, scratch,
                )
            }
        }
    };
}

instantiate_ops!(portable, crate::simd::Wide, #[inline(never)]);
#[cfg(target_arch = "x86_64")]
instantiate_ops!(avx2, crate::simd::V256, #[target_feature(enable = "avx2,fma,f16c")]);
#[cfg(target_arch = "x86_64")]
instantiate_ops!(avx512, crate::simd::V512, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]);
