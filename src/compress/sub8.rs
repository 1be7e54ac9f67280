//! Sub-8-bit (3- and 4-bit) group quantization of weight matrices: round-to-nearest (RTN) and GPTQ.
//!
//! Format. `W` is row-major `[rows = out, cols = in]`. Groups run along the input: group `g` of a row
//! covers columns `g·group .. min((g+1)·group, cols)` (the last group of a row may be shorter), `group`
//! a multiple of 32. Every weight has an unsigned code `q ∈ [0, 2^bits − 1]` (returned unpacked, one
//! `u8` each), every group a scale (and a min) that are F16 values (returned as the exact `f32`s):
//! - symmetric: `w ≈ scale · (q − 2^(bits−1))`; the group's weight of largest magnitude is mapped exactly
//!   onto the long end `−2^(bits−1)` (as llama.cpp's Q4_0), so **the scale is negative** when that weight
//!   is positive; weights of the other sign beyond `(2^(bits−1) − ½)·|scale|` clamp (error < `|scale|`);
//! - asymmetric: `w ≈ scale · q + min`, `scale ≥ 0`; `[min, min + (2^bits − 1)·scale]` covers the group.
//!
//! Scales are rounded *away from zero* and mins *down* to F16 before the codes are computed, so the
//! stored grid always covers the group: a tiny nonzero scale becomes the smallest F16 subnormal (2⁻²⁴),
//! never 0; a scale beyond F16 (|w| > 65504·2^(bits−1) symmetric) is an error. All-zero groups get scale 0.
//!
//! GPTQ (Frantar et al. 2022) quantizes the columns in order and spreads each column's rounding error
//! over the columns not yet quantized so as to minimise `‖(W − Ŵ)·X‖²` on calibration inputs, using
//! the upper Cholesky factor `U` of `H⁻¹`, `H = Σ x·xᵀ` (+ damping), with lazy block updates. Here
//! `U = J·L̃⁻¹·J` from one Cholesky `J·H·J = L̃·L̃ᵀ` (`J` reverses the order), which equals the reference's
//! `chol(H⁻¹)` without forming `H⁻¹`.

use faer::dyn_stack::{GlobalPodBuffer, PodStack};
use faer::linalg::cholesky::llt::compute::{cholesky_in_place, cholesky_in_place_req};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, Parallelism};
use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A sub-8-bit group quantizer: `bits` (3 or 4) per weight, one scale (and min if `asym`) per `group`
/// consecutive inputs of a row (a multiple of 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sub8 {
    pub bits: u8,
    pub group: usize,
    pub asym: bool,
}

impl Sub8 {
    /// The largest code, `2^bits − 1`.
    pub fn max_code(&self) -> u8 {
        (1u8 << self.bits) - 1
    }

    /// The symmetric format's zero point, `2^(bits−1)`.
    pub fn zero_code(&self) -> u8 {
        1u8 << (self.bits - 1)
    }

    fn check(&self) -> Result<()> {
        if !matches!(self.bits, 3 | 4) {
            return Err(Error::Plan(format!(
                "{} bits: sub-8-bit quantization takes 3 or 4 bits",
                self.bits
            )));
        }
        if self.group == 0 || self.group % 32 != 0 {
            return Err(Error::Plan(format!(
                "group size {}: sub-8-bit groups must be a positive multiple of 32",
                self.group
            )));
        }
        Ok(())
    }
}

/// A matrix quantized by [`rtn`] or [`gptq`]: codes `[rows, cols]` (unpacked), scales (and mins)
/// `[rows, groups]`, each an F16 value held as `f32`.
#[derive(Clone, Debug)]
pub struct Quantized4 {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    /// `Some` for the asymmetric format.
    pub mins: Option<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub group: usize,
}

impl Quantized4 {
    /// Groups per row, `cols.div_ceil(group)`.
    pub fn groups(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// The dequantized matrix, `scale·(q − 2^(bits−1))` or `scale·q + min` in f32 (for measurements and
    /// tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let g = self.groups();
        let zero = (1u32 << (self.bits - 1)) as f32;
        self.codes
            .iter()
            .enumerate()
            .map(|(k, &q)| {
                let i = (k / self.cols) * g + (k % self.cols) / self.group;
                match &self.mins {
                    Some(m) => self.scales[i] * q as f32 + m[i],
                    None => self.scales[i] * (q as f32 - zero),
                }
            })
            .collect()
    }
}

/// GPTQ options.
#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// Damping added to the diagonal of `H`, as a fraction of its mean diagonal (0.01). If `H` is still
    /// not positive definite it is retried ×10, up to 3 times.
    pub damp: f64,
    /// Columns per lazy batch update (128); without `act_order` rounded up to a multiple of the group,
    /// so that a group's parameters are computed from fully updated weights. Speed only: the result is
    /// the same for any block (up to floating-point rounding).
    pub block: usize,
    /// Quantize the columns by descending `H_ii` (groups stay in the original column order, their
    /// parameters computed up front from the original weights).
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            block: 128,
            act_order: false,
        }
    }
}

/// Retries of the Cholesky factorisation with 10× the damping.
const DAMP_RETRIES: usize = 3;

/// The smallest F16 value `≥ x` (`+∞` above 65504), as f64.
fn f16_up(x: f64) -> f64 {
    let c = f16::from_f64(x);
    if c.to_f64() >= x || c.is_nan() {
        return c.to_f64();
    }
    let b = c.to_bits();
    let next = if c.to_f64() == 0.0 {
        0x0001
    } else if b & 0x8000 == 0 {
        b + 1
    } else {
        b - 1
    };
    f16::from_bits(next).to_f64()
}

/// The largest F16 value `≤ x`, as f64.
fn f16_down(x: f64) -> f64 {
    -f16_up(-x)
}

/// One group's parameters (F16 values): `scale`, and `min` (0 for the symmetric format).
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    scale: f64,
    min: f64,
}

/// The parameters of group `g` of row `r` (values `x`, columns `c0..`), or an error naming the group
/// when they do not fit in F16.
fn group_params(
    q: Sub8,
    x: impl Iterator<Item = f64> + Clone,
    r: usize,
    g: usize,
) -> Result<Params> {
    let overflow = |what: &str, v: f64| {
        Error::input(format!(
            "row {r}, group {g} (columns from {}): its {what} {v:e} does not fit in F16 (max 65504); \
             scale the weights down",
            g * q.group
        ))
    };
    if q.asym {
        let (mn, mx) = x.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let min = f16_down(mn) + 0.0;
        if !min.is_finite() {
            return Err(overflow("minimum", mn));
        }
        let exact = (mx - min) / q.max_code() as f64;
        let scale = if exact > 0.0 { f16_up(exact) } else { 0.0 };
        if !scale.is_finite() {
            return Err(overflow("scale", exact));
        }
        Ok(Params { scale, min })
    } else {
        let m = x.fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
        if m == 0.0 {
            return Ok(Params::default());
        }
        let exact = m.abs() / q.zero_code() as f64;
        let mag = f16_up(exact);
        if !mag.is_finite() {
            return Err(overflow("scale", exact));
        }
        Ok(Params {
            scale: if m > 0.0 { -mag } else { mag },
            min: 0.0,
        })
    }
}

/// The code of `w` under `p`, and its dequantized value.
#[inline]
fn encode(q: Sub8, p: Params, w: f64) -> (u8, f64) {
    let max = q.max_code() as f64;
    if q.asym {
        if p.scale == 0.0 {
            return (0, p.min);
        }
        let c = ((w - p.min) / p.scale).round().clamp(0.0, max);
        (c as u8, p.scale * c + p.min)
    } else {
        let zero = q.zero_code() as f64;
        if p.scale == 0.0 {
            return (q.zero_code(), 0.0);
        }
        let c = ((w / p.scale).round() + zero).clamp(0.0, max);
        (c as u8, p.scale * (c - zero))
    }
}

/// Checks the shape and values of a `rows × cols` matrix.
fn check_matrix(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::input(format!("a {rows}×{cols} matrix is too large")))?;
    if n == 0 {
        return Err(Error::input(format!(
            "cannot quantize an empty {rows}×{cols} matrix"
        )));
    }
    if w.len() != n {
        return Err(Error::input(format!(
            "{} values for a {rows}×{cols} matrix",
            w.len()
        )));
    }
    if let Some(k) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "cannot quantize a matrix holding {} (row {}, column {})",
            w[k],
            k / cols,
            k % cols
        )));
    }
    Ok(())
}

fn output(q: Sub8, rows: usize, cols: usize, codes: Vec<u8>, p: &[Params]) -> Quantized4 {
    Quantized4 {
        codes,
        scales: p.iter().map(|p| p.scale as f32).collect(),
        mins: q.asym.then(|| p.iter().map(|p| p.min as f32).collect()),
        rows,
        cols,
        bits: q.bits,
        group: q.group,
    }
}

/// Every group's parameters, from the row-major `rows × cols` matrix `w`.
fn all_params<T: Copy + Into<f64>>(
    w: &[T],
    rows: usize,
    cols: usize,
    q: Sub8,
) -> Result<Vec<Params>> {
    let groups = cols.div_ceil(q.group);
    let mut p = Vec::with_capacity(rows * groups);
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (g, x) in row.chunks(q.group).enumerate() {
            p.push(group_params(q, x.iter().map(|&v| v.into()), r, g)?);
        }
    }
    Ok(p)
}

/// Round-to-nearest quantization of the row-major `rows × cols` matrix `w`.
pub fn rtn(w: &[f32], rows: usize, cols: usize, q: Sub8) -> Result<Quantized4> {
    q.check()?;
    check_matrix(w, rows, cols)?;
    let p = all_params(w, rows, cols, q)?;
    let groups = cols.div_ceil(q.group);
    let codes = w
        .iter()
        .enumerate()
        .map(|(k, &v)| encode(q, p[(k / cols) * groups + (k % cols) / q.group], v as f64).0)
        .collect();
    Ok(output(q, rows, cols, codes, &p))
}

/// The Gram matrix's diagonal, after checking its length and values.
fn check_gram(gram: &[f32], n: usize) -> Result<Vec<f64>> {
    if n.checked_mul(n) != Some(gram.len()) {
        return Err(Error::input(format!(
            "Gram matrix of {} values for {n} inputs (expected {n}×{n})",
            gram.len()
        )));
    }
    if let Some(k) = gram.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "Gram matrix holds {} at ({}, {})",
            gram[k],
            k / n,
            k % n
        )));
    }
    let diag: Vec<f64> = (0..n).map(|i| gram[i * n + i] as f64).collect();
    if let Some(i) = diag.iter().position(|&d| d < 0.0) {
        return Err(Error::input(format!(
            "Gram matrix has a negative diagonal {} at ({i}, {i})",
            diag[i]
        )));
    }
    Ok(diag)
}

/// Below this order a triangular matrix is inverted through a small copy.
const TRI_INV_LEAF: usize = 128;

/// Inverts the lower-triangular `l` in place (its strict upper part is neither read nor written), by
/// halves: `[[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]]`, `B` solved against the original `A` and
/// `C` before they are inverted. No `n × n` copy, unlike `faer`'s out-of-place inverse.
fn invert_lower_in_place(l: faer::MatMut<'_, f32>, par: Parallelism) {
    let n = l.nrows();
    if n <= TRI_INV_LEAF {
        let mut inv = Mat::<f32>::zeros(n, n);
        faer::linalg::triangular_inverse::invert_lower_triangular(inv.as_mut(), l.rb(), par);
        let mut l = l;
        for j in 0..n {
            for i in j..n {
                l.write(i, j, inv.read(i, j));
            }
        }
        return;
    }
    let k = n / 2;
    let (a, _, mut b, c) = l.split_at_mut(k, k);
    // B ← C⁻¹·B, then B ← B·A⁻¹ (Bᵀ ← A⁻ᵀ·Bᵀ), then −B.
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(c.rb(), b.rb_mut(), par);
    faer::linalg::triangular_solve::solve_upper_triangular_in_place(
        a.rb().transpose(),
        b.rb_mut().transpose_mut(),
        par,
    );
    for j in 0..b.ncols() {
        for i in 0..b.nrows() {
            b.write(i, j, -b.read(i, j));
        }
    }
    invert_lower_in_place(a, par);
    invert_lower_in_place(c, par);
}

/// `M = L̃⁻¹` (lower triangular; its strict upper part is garbage) where `L̃·L̃ᵀ = J·H·J`, `H` the
/// symmetric part of `gram` taken in the column order `order`, with dead inputs' diagonal set to 1 and
/// `damp`·mean(diag) added to the diagonal (×10 on failure). `J·M·J` (`M.reverse_rows_and_cols()`) is
/// the upper Cholesky factor of `H⁻¹`.
///
/// Memory: one `n × n` f32 matrix (the factorisation and the inverse are both done in place), beside
/// the caller's Gram matrix. f32 as in the reference implementation; the damping keeps `H` well
/// enough conditioned for it.
fn inverse_factor(gram: &[f32], diag: &[f64], order: &[usize], damp: f64) -> Result<Mat<f32>> {
    let n = order.len();
    let h_diag = |a: usize| if diag[a] == 0.0 { 1.0 } else { diag[a] };
    let mean = (0..n).map(h_diag).sum::<f64>() / n as f64;
    let par = Parallelism::Rayon(0);
    let req = cholesky_in_place_req::<f32>(n, par, Default::default())
        .map_err(|_| Error::input(format!("{n} inputs: Cholesky workspace too large")))?;
    let mut mem = GlobalPodBuffer::new(req);
    let mut h = Mat::<f32>::zeros(n, n);
    let mut frac = damp;
    for _ in 0..=DAMP_RETRIES {
        let lambda = frac * mean;
        // Lower triangle of J·H·J: (i, j) ↦ H(n−1−i, n−1−j).
        for j in 0..n {
            let b = order[n - 1 - j];
            let col = h.col_as_slice_mut(j);
            for (i, x) in col.iter_mut().enumerate().skip(j) {
                let a = order[n - 1 - i];
                *x = if a == b {
                    (h_diag(a) + lambda) as f32
                } else {
                    0.5 * (gram[a * n + b] + gram[b * n + a])
                };
            }
        }
        let ok = cholesky_in_place(
            h.as_mut(),
            Default::default(),
            par,
            PodStack::new(&mut mem),
            Default::default(),
        )
        .is_ok();
        // f32 can factor a matrix whose pivots are barely positive into a useless factor: demand
        // finite values.
        if ok && (0..n).all(|i| h.read(i, i).is_finite() && h.read(i, i) > 0.0) {
            invert_lower_in_place(h.as_mut(), par);
            if (0..n).all(|i| h.read(i, i).is_finite()) {
                return Ok(h);
            }
        }
        frac = if frac == 0.0 { 1e-4 } else { frac * 10.0 };
    }
    Err(Error::input(format!(
        "Gram matrix ({n}×{n}) is not positive definite even with damping {:.0e} of its mean diagonal",
        frac / 10.0
    )))
}

/// GPTQ quantization of the row-major `rows × cols` matrix `w`, with `gram` (`cols × cols`, row-major)
/// = `Σ x·xᵀ` over calibration inputs `x` (its symmetric part is used). Inputs that are always zero
/// (`gram[i][i] = 0`) have their weights quantized as 0, as in the reference implementation.
///
/// Arithmetic in f32, as the reference implementation; working memory beside the arguments: one
/// `cols × cols` f32 matrix (the inverse factor) and an f32 copy of `w`.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f32],
    q: Sub8,
    opts: &GptqOptions,
) -> Result<Quantized4> {
    q.check()?;
    if opts.block == 0 {
        return Err(Error::Plan("GPTQ block of 0 columns".into()));
    }
    if !(opts.damp.is_finite() && opts.damp >= 0.0) {
        return Err(Error::Plan(format!(
            "GPTQ damping {} (a fraction of the mean diagonal, ≥ 0)",
            opts.damp
        )));
    }
    check_matrix(w, rows, cols)?;
    let n = cols;
    let diag = check_gram(gram, n)?;
    let groups = n.div_ceil(q.group);

    // The working weights, with dead inputs zeroed.
    let mut wf: Vec<f32> = w.to_vec();
    for row in wf.chunks_exact_mut(n) {
        for (x, &d) in row.iter_mut().zip(&diag) {
            if d == 0.0 {
                *x = 0.0;
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut params = vec![Params::default(); rows * groups];
    if opts.act_order {
        // Static groups, from the original weights; then columns by descending H_ii (dead: 1).
        params = all_params(&wf, rows, n, q)?;
        let h = |a: usize| if diag[a] == 0.0 { 1.0 } else { diag[a] };
        order.sort_by(|&a, &b| h(b).total_cmp(&h(a)));
        let mut orig = vec![0f32; n];
        for row in wf.chunks_exact_mut(n) {
            orig.copy_from_slice(row);
            for (x, &o) in row.iter_mut().zip(&order) {
                *x = orig[o];
            }
        }
    }
    let m = inverse_factor(gram, &diag, &order, opts.damp)?;
    let u = m.as_ref().reverse_rows_and_cols();

    let block = if opts.act_order {
        opts.block
    } else {
        opts.block.div_ceil(q.group).saturating_mul(q.group)
    }
    .min(n);
    let mut codes = vec![0u8; rows * n];
    let mut err = vec![0f32; rows * block];
    let mut ublk = vec![0f32; block * block];
    for i1 in (0..n).step_by(block) {
        let i2 = (i1 + block).min(n);
        let b = i2 - i1;
        for i in 0..b {
            for j in i..b {
                ublk[i * b + j] = u.read(i1 + i, i1 + j);
            }
        }
        let ublk = &ublk[..b * b];
        let order = &order;
        wf.par_chunks_mut(n)
            .zip(err.par_chunks_mut(block))
            .zip(codes.par_chunks_mut(n))
            .zip(params.par_chunks_mut(groups))
            .enumerate()
            .with_min_len(8)
            .try_for_each(|(r, (((wr, er), cr), pr))| -> Result<()> {
                let seg = &mut wr[i1..i2];
                for i in 0..b {
                    let k = i1 + i;
                    let g = order[k] / q.group;
                    if !opts.act_order && k % q.group == 0 {
                        // The whole group lies in this block (block is a multiple of the group).
                        let end = (i + q.group).min(b);
                        pr[g] = group_params(q, seg[i..end].iter().map(|&v| v as f64), r, g)?;
                    }
                    let (c, deq) = encode(q, pr[g], seg[i] as f64);
                    cr[order[k]] = c;
                    let e = (seg[i] - deq as f32) / ublk[i * b + i];
                    er[i] = e;
                    let (_, rest) = seg.split_at_mut(i + 1);
                    for (x, &uij) in rest.iter_mut().zip(&ublk[i * b + i + 1..(i + 1) * b]) {
                        *x -= e * uij;
                    }
                }
                Ok(())
            })?;
        if i2 < n {
            // W[:, i2..] −= Err · U[i1..i2, i2..]
            let e = faer::mat::from_row_major_slice_with_stride(&err, rows, b, block);
            let dst = faer::mat::from_row_major_slice_mut(&mut wf, rows, n).subcols_mut(i2, n - i2);
            faer::linalg::matmul::matmul(
                dst,
                e,
                u.submatrix(i1, i2, b, n - i2),
                Some(1.0),
                -1.0,
                Parallelism::Rayon(0),
            );
        }
    }
    Ok(output(q, rows, cols, codes, &params))
}

/// `‖(W − Ŵ)·X‖² = Σ_r e_r·G·e_rᵀ` (`e_r` the rows of `w − approx`), from the Gram matrix `gram`
/// (`cols × cols`, row-major, f32 as the compressor collects it) of the inputs `X`; accumulated in f64.
///
/// # Panics
/// If the lengths disagree with `rows × cols`.
pub fn output_error(w: &[f32], approx: &[f32], rows: usize, cols: usize, gram: &[f32]) -> f64 {
    assert!(
        w.len() == rows * cols && approx.len() == w.len() && gram.len() == cols * cols,
        "output_error: lengths {}, {}, {} for a {rows}×{cols} matrix",
        w.len(),
        approx.len(),
        gram.len()
    );
    let g = faer::mat::from_row_major_slice(gram, cols, cols);
    let chunk = 64;
    let mut total = 0.0;
    for r0 in (0..rows).step_by(chunk) {
        let nr = chunk.min(rows - r0);
        let e = Mat::<f32>::from_fn(nr, cols, |i, j| {
            let k = (r0 + i) * cols + j;
            w[k] - approx[k]
        });
        let eg = &e * g;
        for j in 0..cols {
            for i in 0..nr {
                total += eg.read(i, j) as f64 * e.read(i, j) as f64;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 with Box–Muller normals.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
        fn normals(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.normal()).collect()
        }
    }

    fn weights(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * std) as f32).collect()
    }

    /// `Σ x·xᵀ` over the rows of the row-major `samples × n` matrix `x` (computed in f64, stored in f32
    /// as the compressor stores it).
    fn gram_of(x: &[f64], n: usize) -> Vec<f32> {
        let xm = faer::mat::from_row_major_slice(x, x.len() / n, n);
        let g = xm.transpose() * xm;
        (0..n * n).map(|k| g.read(k / n, k % n) as f32).collect()
    }

    /// Correlated activations `Z·A` (`A` a random mixing matrix), with a few loud channels.
    fn activations(rng: &mut Rng, samples: usize, n: usize) -> Vec<f64> {
        let z = faer::Mat::<f64>::from_fn(samples, n, |_, _| rng.normal());
        let a = faer::Mat::<f64>::from_fn(n, n, |_, _| rng.normal() / (n as f64).sqrt());
        let loud: Vec<f64> = (0..n)
            .map(|j| if j % 17 == 0 { 4.0 } else { 1.0 })
            .collect();
        let x = &z * &a;
        (0..samples * n)
            .map(|k| x.read(k / n, k % n) * loud[k % n])
            .collect()
    }

    fn is_f16(v: f32) -> bool {
        f16::from_f32(v).to_f32() == v
    }

    /// Codes in range, parameters F16-exact, and every weight within half a step (symmetric: within a
    /// step where the short end clamps).
    fn check_rtn(w: &[f32], rows: usize, cols: usize, q: Sub8) {
        let r = rtn(w, rows, cols, q).unwrap();
        assert_eq!(r.groups(), cols.div_ceil(q.group));
        assert_eq!(r.scales.len(), rows * r.groups());
        assert_eq!(r.mins.is_some(), q.asym);
        assert!(r.codes.iter().all(|&c| c <= q.max_code()));
        assert!(r.scales.iter().all(|&s| is_f16(s)));
        if let Some(m) = &r.mins {
            assert!(m.iter().all(|&v| is_f16(v)));
            assert!(r.scales.iter().all(|&s| s >= 0.0));
        }
        let deq = r.dequantize();
        let half = q.zero_code() as f32;
        for (k, (&a, &b)) in w.iter().zip(&deq).enumerate() {
            let gi = (k / cols) * r.groups() + (k % cols) / q.group;
            let s = r.scales[gi];
            let min = r.mins.as_ref().map_or(0.0, |m| m[gi]);
            let err = (a - b).abs();
            let tol = 1e-6 * (a.abs() + 16.0 * s.abs() + min.abs());
            if !q.asym && s != 0.0 && a / s > half - 0.5 {
                // The short end of a symmetric grid: clamped.
                assert!(a / s <= half * (1.0 + 1e-6), "{a} / {s}");
                assert!(err <= s.abs() + tol, "w {a} → {b}, scale {s}");
            } else {
                assert!(err <= 0.5 * s.abs() + tol, "w {a} → {b}, scale {s}, {q:?}");
            }
        }
    }

    #[test]
    fn rtn_round_trip() {
        let mut rng = Rng(1);
        for bits in [3, 4] {
            for asym in [false, true] {
                for &(rows, cols, group) in &[(1, 80, 32), (5, 80, 32), (3, 256, 64), (2, 96, 128)]
                {
                    let q = Sub8 { bits, group, asym };
                    let mut w = weights(&mut rng, rows * cols, 0.05);
                    // A shifted group, a zero group, a constant group, a tiny group.
                    w[..32].iter_mut().for_each(|v| *v += 0.3);
                    if cols >= 64 && rows >= 2 {
                        w[cols..cols + 32].fill(0.0);
                        w[cols + 32..cols + 64].fill(0.123);
                    }
                    w[cols * (rows - 1)..cols * (rows - 1) + 5].fill(1e-9);
                    check_rtn(&w, rows, cols, q);
                }
            }
        }
    }

    #[test]
    fn rtn_edge_groups() {
        for asym in [false, true] {
            let q = Sub8 {
                bits: 4,
                group: 32,
                asym,
            };
            // Zero group: scale 0, dequantizes to exactly 0.
            let r = rtn(&[0.0; 32], 1, 32, q).unwrap();
            assert_eq!(r.scales, vec![0.0]);
            assert!(r.dequantize().iter().all(|&v| v == 0.0));
            // Below F16's range: the smallest subnormal, never 0, still within half a step.
            let mut w = vec![0f32; 32];
            w[3] = 1e-9;
            w[7] = -3e-9;
            let r = rtn(&w, 1, 32, q).unwrap();
            assert!(r.scales[0] != 0.0 && is_f16(r.scales[0]));
            check_rtn(&w, 1, 32, q);
            // The largest weights F16 allows, and just beyond.
            let big = if asym {
                65504.0 * 15.0 / 2.0
            } else {
                65504.0 * 8.0
            };
            let mut w = vec![0f32; 32];
            w[0] = big;
            w[1] = -big;
            assert_eq!(rtn(&w, 1, 32, q).is_ok(), !asym);
            w[0] = 1.0e6;
            w[1] = -1.0e6;
            assert!(matches!(rtn(&w, 1, 32, q), Err(Error::Input(_))));
        }
        // The symmetric extreme maps exactly onto the long end, with a negative scale if positive.
        let q = Sub8 {
            bits: 3,
            group: 32,
            asym: false,
        };
        let mut w = vec![0.1f32; 32];
        w[5] = 2.0;
        let r = rtn(&w, 1, 32, q).unwrap();
        assert_eq!(r.scales[0], -0.5);
        assert_eq!(r.codes[5], 0);
        assert_eq!(r.dequantize()[5], 2.0);
    }

    fn sub8(bits: u8, group: usize, asym: bool) -> Sub8 {
        Sub8 { bits, group, asym }
    }

    #[test]
    fn errors_not_panics() {
        let w = vec![0.5f32; 2 * 64];
        let g: Vec<f32> = (0..64 * 64)
            .map(|k| if k / 64 == k % 64 { 1.0 } else { 0.0 })
            .collect();
        let o = GptqOptions::default();
        let ok = sub8(4, 32, false);
        let plan = |r: Result<Quantized4>| assert!(matches!(r, Err(Error::Plan(_))), "{r:?}");
        let input = |r: Result<Quantized4>| assert!(matches!(r, Err(Error::Input(_))), "{r:?}");
        for bad in [sub8(2, 32, false), sub8(5, 32, true), sub8(8, 32, false)] {
            plan(rtn(&w, 2, 64, bad));
            plan(gptq(&w, 2, 64, &g, bad, &o));
        }
        for group in [0, 16, 48, 100] {
            plan(rtn(&w, 2, 64, sub8(4, group, false)));
            plan(gptq(&w, 2, 64, &g, sub8(4, group, true), &o));
        }
        plan(gptq(&w, 2, 64, &g, ok, &GptqOptions { block: 0, ..o }));
        for damp in [-0.1, f64::NAN, f64::INFINITY] {
            plan(gptq(&w, 2, 64, &g, ok, &GptqOptions { damp, ..o }));
        }
        input(rtn(&w, 3, 64, ok));
        input(rtn(&w[..100], 2, 64, ok));
        input(rtn(&[], 0, 64, ok));
        input(rtn(&w, usize::MAX, 3, ok));
        input(gptq(&w, 3, 64, &g, ok, &o));
        input(gptq(&w, 2, 64, &g[..64 * 63], ok, &o));
        for bad in [f32::NAN, f32::INFINITY] {
            let mut wb = w.clone();
            wb[70] = bad;
            let e = rtn(&wb, 2, 64, ok).unwrap_err().to_string();
            assert!(e.contains("row 1, column 6"), "{e}");
            input(gptq(&wb, 2, 64, &g, ok, &o));
        }
        let mut gb = g.clone();
        gb[64 * 3 + 5] = f32::NAN;
        let e = gptq(&w, 2, 64, &gb, ok, &o).unwrap_err().to_string();
        assert!(e.contains("(3, 5)"), "{e}");
        gb[64 * 3 + 5] = 0.0;
        gb[64 * 2 + 2] = -1.0;
        input(gptq(&w, 2, 64, &gb, ok, &o));
        // Indefinite (a strong negative correlation between equal channels): no damping saves it.
        let mut gi = g.clone();
        gi[1] = -50.0;
        gi[64] = -50.0;
        input(gptq(&w, 2, 64, &gi, ok, &o));
        // F16 overflow inside GPTQ.
        let mut wb = w.clone();
        wb[64 + 40] = 1e6;
        let e = gptq(&wb, 2, 64, &g, ok, &o).unwrap_err().to_string();
        assert!(e.contains("row 1, group 1"), "{e}");
    }

    /// With a diagonal Gram matrix no error is fed to other columns: GPTQ is RTN, code for code, in
    /// either column order; dead inputs are quantized as 0.
    #[test]
    fn gptq_diagonal_gram_is_rtn() {
        let mut rng = Rng(7);
        let (rows, cols) = (6, 160);
        let w = weights(&mut rng, rows * cols, 0.1);
        let mut g = vec![0f32; cols * cols];
        for i in 0..cols {
            g[i * cols + i] = (0.1 + rng.uniform() * 10.0) as f32;
        }
        for q in [sub8(4, 32, false), sub8(3, 64, true), sub8(4, 128, true)] {
            let r = rtn(&w, rows, cols, q).unwrap();
            for act_order in [false, true] {
                let o = GptqOptions {
                    act_order,
                    block: 48,
                    ..GptqOptions::default()
                };
                let p = gptq(&w, rows, cols, &g, q, &o).unwrap();
                assert_eq!(p.codes, r.codes, "{q:?} {o:?}");
                assert_eq!(p.scales, r.scales);
                assert_eq!(p.mins, r.mins);
            }
        }
        // A dead input.
        g[5 * cols + 5] = 0.0;
        let q = sub8(4, 32, false);
        let p = gptq(&w, rows, cols, &g, q, &GptqOptions::default()).unwrap();
        let deq = p.dequantize();
        assert!((0..rows).all(|r| deq[r * cols + 5] == 0.0));
        let mut w0 = w.clone();
        (0..rows).for_each(|r| w0[r * cols + 5] = 0.0);
        assert_eq!(p.codes, rtn(&w0, rows, cols, q).unwrap().codes);
    }

    /// `H`'s inverse factor, in f32 and past the in-place inverse's leaf size (300 → 150 → 75):
    /// upper triangular with a positive diagonal, and `Uᵀ·U·H = I` (`H` permuted) to f32 accuracy.
    #[test]
    fn inverse_factor_is_cholesky_of_inverse() {
        let mut rng = Rng(3);
        for n in [70, 300] {
            let x = activations(&mut rng, 4 * n, n);
            let g = gram_of(&x, n);
            let diag: Vec<f64> = (0..n).map(|i| g[i * n + i] as f64).collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.reverse();
            order.swap(3, 40);
            let m = inverse_factor(&g, &diag, &order, 0.0).unwrap();
            let u = m.as_ref().reverse_rows_and_cols();
            let h = Mat::<f64>::from_fn(n, n, |i, j| g[order[i] * n + order[j]] as f64);
            let ut =
                Mat::<f64>::from_fn(n, n, |i, j| if j >= i { u.read(i, j) as f64 } else { 0.0 });
            for i in 0..n {
                assert!(u.read(i, i) > 0.0);
            }
            let p = ut.transpose() * &ut * &h;
            let mut worst = 0f64;
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    worst = worst.max((p.read(i, j) - want).abs());
                }
            }
            // f32 and no damping: the error is about κ(H)·ε_f32 (~1e-3 here); a wrong factor is O(1) off.
            println!("n = {n}: max |UᵀUH − I| = {worst:.2e}");
            assert!(worst < 1e-2, "n = {n}: {worst}");
        }
    }

    /// The in-place triangular inverse equals faer's out-of-place one, and leaves the upper part alone.
    #[test]
    fn lower_inverse_in_place() {
        let mut rng = Rng(13);
        for n in [1, 5, TRI_INV_LEAF, TRI_INV_LEAF + 1, 301] {
            let l = Mat::<f32>::from_fn(n, n, |i, j| {
                if i == j {
                    1.0 + rng.uniform() as f32
                } else {
                    (0.3 * rng.normal() / (n as f64).sqrt()) as f32
                }
            });
            let mut want = Mat::<f32>::zeros(n, n);
            faer::linalg::triangular_inverse::invert_lower_triangular(
                want.as_mut(),
                l.as_ref(),
                Parallelism::None,
            );
            let mut got = l.clone();
            invert_lower_in_place(got.as_mut(), Parallelism::Rayon(2));
            for j in 0..n {
                for i in 0..n {
                    let (g, w) = (got.read(i, j), want.read(i, j));
                    if i < j {
                        assert_eq!(g, l.read(i, j), "upper ({i}, {j}) touched");
                    } else {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "n {n} ({i}, {j}): {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The key property: on held-out inputs, GPTQ's output error is well below RTN's.
    #[test]
    fn gptq_beats_rtn_on_held_out_inputs() {
        let mut rng = Rng(42);
        let (rows, cols, samples) = (64, 256, 2048);
        let w = weights(&mut rng, rows * cols, 0.05);
        let x = activations(&mut rng, samples, cols);
        let (fit, held) = x.split_at(samples / 2 * cols);
        let (g_fit, g_held) = (gram_of(fit, cols), gram_of(held, cols));
        for bits in [4, 3] {
            for group in [32, 128] {
                for asym in [false, true] {
                    let q = sub8(bits, group, asym);
                    let base = output_error(
                        &w,
                        &rtn(&w, rows, cols, q).unwrap().dequantize(),
                        rows,
                        cols,
                        &g_held,
                    );
                    for act_order in [false, true] {
                        let o = GptqOptions {
                            act_order,
                            ..GptqOptions::default()
                        };
                        let p = gptq(&w, rows, cols, &g_fit, q, &o).unwrap();
                        assert!(p.codes.iter().all(|&c| c <= q.max_code()));
                        let e = output_error(&w, &p.dequantize(), rows, cols, &g_held);
                        println!(
                            "{q:?} act_order={act_order}: GPTQ/RTN held-out = {:.3}",
                            e / base
                        );
                        assert!(e < 0.8 * base, "{q:?} {o:?}: {e} vs RTN {base}");
                    }
                }
            }
        }
    }

    /// Lazy batch updates: the block size changes nothing but rounding.
    #[test]
    fn gptq_block_size_invariant() {
        let mut rng = Rng(9);
        let (rows, cols) = (16, 192);
        let w = weights(&mut rng, rows * cols, 0.05);
        let g = gram_of(&activations(&mut rng, 600, cols), cols);
        for act_order in [false, true] {
            let q = sub8(4, 32, false);
            let run = |block| {
                let o = GptqOptions {
                    block,
                    act_order,
                    ..GptqOptions::default()
                };
                gptq(&w, rows, cols, &g, q, &o).unwrap()
            };
            let (a, b) = (run(1), run(1000));
            let same = a.codes.iter().zip(&b.codes).filter(|(x, y)| x == y).count();
            assert!(
                same as f64 >= 0.99 * a.codes.len() as f64,
                "{same} of {}",
                a.codes.len()
            );
            let (ea, eb) = (
                output_error(&w, &a.dequantize(), rows, cols, &g),
                output_error(&w, &b.dequantize(), rows, cols, &g),
            );
            assert!((ea - eb).abs() <= 0.02 * ea, "{ea} vs {eb}");
        }
    }

    #[test]
    fn output_error_matches_direct() {
        let mut rng = Rng(5);
        let (rows, cols, samples) = (70, 40, 90);
        let w = weights(&mut rng, rows * cols, 1.0);
        let a = weights(&mut rng, rows * cols, 1.0);
        let x = rng.normals(samples * cols);
        let mut direct = 0.0;
        for r in 0..rows {
            for t in 0..samples {
                let y: f64 = (0..cols)
                    .map(|j| (w[r * cols + j] as f64 - a[r * cols + j] as f64) * x[t * cols + j])
                    .sum();
                direct += y * y;
            }
        }
        // f32 Gram matrix and products: f32 accuracy.
        let e = output_error(&w, &a, rows, cols, &gram_of(&x, cols));
        assert!((e - direct).abs() <= 1e-5 * direct, "{e} vs {direct}");
    }

    /// Timing of the two GPT-2-sized shapes (release, `--ignored`).
    #[test]
    #[ignore]
    fn gptq_timing() {
        let mut rng = Rng(11);
        for (rows, cols) in [(3072, 768), (768, 3072)] {
            let w = weights(&mut rng, rows * cols, 0.05);
            let x = rng.normals(2 * cols * cols);
            let g = gram_of(&x, cols);
            let t = std::time::Instant::now();
            let _ = rtn(&w, rows, cols, sub8(4, 128, false)).unwrap();
            let t_rtn = t.elapsed();
            for act_order in [false, true] {
                let t = std::time::Instant::now();
                let o = GptqOptions {
                    act_order,
                    ..GptqOptions::default()
                };
                gptq(&w, rows, cols, &g, sub8(4, 128, false), &o).unwrap();
                println!(
                    "{rows}×{cols}: GPTQ act_order={act_order} {:.2?} (RTN {t_rtn:.2?})",
                    t.elapsed()
                );
            }
        }
    }
}
