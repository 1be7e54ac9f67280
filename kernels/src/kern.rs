//! Generic SIMD kernels over [`F32Vec`], instantiated per instruction set by the wrappers at the bottom.
//!
//! * `dense_outin`: `[out, in]` storage, dot products; 4 rows share every load of `x`.
//! * `dense_inout`: `[in, out]` storage, axpy over column blocks of `y` kept in L1, eight input rows
//!   per pass, every weight row read as one contiguous run.
//! * `w8a32_rows`: INT8 rows dequantized in registers (i8→f32, FMA with `x`, one scale FMA per group).
//! * `gemm_f32_block`: the packed GEMM driver + register-blocked micro-kernel (`MR` tokens × `NV` vectors
//!   of outputs) used by prefill for every storage type (weights are converted to f32 while packing).

// Index loops read better than zipped iterators in these kernels; signatures mirror the math.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use half::{bf16, f16};

use crate::matrix::{DenseRef, Elems, Layout};
use crate::simd::{Elem, F32Vec, PREFETCH_BYTES};

/// Rows of `[out, in]` weights `o0 .. o0 + y.len()`: `y[r] = Σ_i w[(o0 + r)·k + i]·x[i]`.
///
/// # Safety
/// `V`'s instructions must be available; `w.len() ≥ (o0 + y.len())·k`, `x.len() == k` (checked).
#[inline(always)]
pub(crate) unsafe fn dense_outin<V: F32Vec, T: Elem>(
    w: &[T],
    k: usize,
    x: &[f32],
    o0: usize,
    y: &mut [f32],
) {
    assert!(x.len() == k && w.len() >= (o0 + y.len()) * k);
    let kv = k / V::W * V::W;
    let xp = x.as_ptr();
    let mut r = 0;
    while r + 4 <= y.len() {
        let p = w.as_ptr().add((o0 + r) * k);
        let (p0, p1, p2, p3) = (p, p.add(k), p.add(2 * k), p.add(3 * k));
        let (mut a0, mut a1, mut a2, mut a3) = (V::zero(), V::zero(), V::zero(), V::zero());
        let mut i = 0;
        // Rows are short streams, which the hardware prefetcher ramps up on too late.
        let ahead = PREFETCH_BYTES / std::mem::size_of::<T>();
        while i < kv {
            V::prefetch(p0.wrapping_add(i + ahead));
            V::prefetch(p1.wrapping_add(i + ahead));
            V::prefetch(p2.wrapping_add(i + ahead));
            V::prefetch(p3.wrapping_add(i + ahead));
            let xv = V::load(xp.add(i));
            a0 = V::fma(T::vload::<V>(p0.add(i)), xv, a0);
            a1 = V::fma(T::vload::<V>(p1.add(i)), xv, a1);
            a2 = V::fma(T::vload::<V>(p2.add(i)), xv, a2);
            a3 = V::fma(T::vload::<V>(p3.add(i)), xv, a3);
            i += V::W;
        }
        let mut s = [V::reduce(a0), V::reduce(a1), V::reduce(a2), V::reduce(a3)];
        for i in kv..k {
            let xi = x[i];
            s[0] += (*p0.add(i)).f32() * xi;
            s[1] += (*p1.add(i)).f32() * xi;
            s[2] += (*p2.add(i)).f32() * xi;
            s[3] += (*p3.add(i)).f32() * xi;
        }
        y[r..r + 4].copy_from_slice(&s);
        r += 4;
    }
    while r < y.len() {
        let p0 = w.as_ptr().add((o0 + r) * k);
        let (mut a0, mut a1) = (V::zero(), V::zero());
        let mut i = 0;
        while i + 2 * V::W <= kv {
            a0 = V::fma(T::vload::<V>(p0.add(i)), V::load(xp.add(i)), a0);
            a1 = V::fma(
                T::vload::<V>(p0.add(i + V::W)),
                V::load(xp.add(i + V::W)),
                a1,
            );
            i += 2 * V::W;
        }
        if i < kv {
            a0 = V::fma(T::vload::<V>(p0.add(i)), V::load(xp.add(i)), a0);
        }
        let mut s = V::reduce(V::add(a0, a1));
        for i in kv..k {
            s += (*p0.add(i)).f32() * x[i];
        }
        y[r] = s;
        r += 1;
    }
}

/// Columns `o0 .. o0 + y.len()` of `[in, out]` weights (`n` outputs per row): `y[c] = Σ_i x[i]·w[i·n + o0 + c]`.
///
/// Streams the matrix row by row: for a column block of at most `CB` outputs (kept in L1), `RB` input
/// rows at a time are FMA'd into `y` (one load/store of `y` per `RB` weight vectors, one prefetch per
/// cache line of each row), so every weight row is read as one long contiguous run. The sum per output runs in input order, like the reference.
///
/// # Safety
/// `V`'s instructions must be available; `w.len() ≥ x.len()·n`, `o0 + y.len() ≤ n` (checked).
#[inline(always)]
pub(crate) unsafe fn dense_inout<V: F32Vec, T: Elem>(
    w: &[T],
    n: usize,
    x: &[f32],
    o0: usize,
    y: &mut [f32],
) {
    /// Outputs per column block: 8 KiB of `y`.
    const CB: usize = 2048;
    /// Input rows per pass over a column block (one load and store of `y` per `RB` weight vectors).
    const RB: usize = 8;
    assert!(o0 + y.len() <= n && w.len() >= x.len() * n);
    let k = x.len();
    let base = w.as_ptr().add(o0);
    let yp = y.as_mut_ptr();
    y.fill(0.0);
    let mut cb = 0;
    while cb < y.len() {
        let cw = (y.len() - cb).min(CB);
        let cv = cw / V::W * V::W;
        // The same columns some rows on: at least RB rows, and PREFETCH_BYTES of this column block.
        let ahead = (PREFETCH_BYTES / (cw * std::mem::size_of::<T>())).max(RB) * n;
        // Vectors per 64-byte line of one weight row: one prefetch per line and row.
        let line = (64 / (V::W * std::mem::size_of::<T>())).max(1);
        let cl = cv / (line * V::W) * (line * V::W);
        let mut i = 0;
        while i < k {
            let rows = (k - i).min(RB);
            let p: [*const T; RB] =
                std::array::from_fn(|r| base.add((i + r.min(rows - 1)) * n + cb));
            if rows == RB {
                let xv: [V::F; RB] = std::array::from_fn(|r| V::splat(x[i + r]));
                let mut c = 0;
                while c < cv {
                    if c < cl && c % (line * V::W) == 0 {
                        for r in 0..RB {
                            V::prefetch(p[r].wrapping_add(c + ahead));
                        }
                    }
                    let mut acc = V::load(yp.add(cb + c));
                    for r in 0..RB {
                        acc = V::fma(T::vload::<V>(p[r].add(c)), xv[r], acc);
                    }
                    V::store(yp.add(cb + c), acc);
                    c += V::W;
                }
            } else {
                for r in 0..rows {
                    let xv = V::splat(x[i + r]);
                    let mut c = 0;
                    while c < cv {
                        let acc = V::fma(T::vload::<V>(p[r].add(c)), xv, V::load(yp.add(cb + c)));
                        V::store(yp.add(cb + c), acc);
                        c += V::W;
                    }
                }
            }
            for r in 0..rows {
                for c in cv..cw {
                    *yp.add(cb + c) += (*p[r].add(c)).f32() * x[i + r];
                }
            }
            i += rows;
        }
        cb += cw;
    }
}

/// INT8 W8A32 rows `o0 .. o0 + y.len()`: weights dequantized in registers, `x` in f32.
///
/// # Safety
/// `V`'s instructions must be available; the matrix must have passed `MatRef::check` (re-checked here).
#[inline(always)]
pub(crate) unsafe fn w8a32_rows<V: F32Vec>(
    values: &[i8],
    scales: &[f32],
    k: usize,
    group: usize,
    x: &[f32],
    o0: usize,
    y: &mut [f32],
) {
    let gpr = k.div_ceil(group);
    assert!(
        x.len() == k && values.len() >= (o0 + y.len()) * k && scales.len() >= (o0 + y.len()) * gpr
    );
    let xp = x.as_ptr();
    let mut r = 0;
    while r < y.len() {
        let rows = (y.len() - r).min(4);
        let o = o0 + r;
        let p: [*const i8; 4] =
            std::array::from_fn(|j| values.as_ptr().add((o + j.min(rows - 1)) * k));
        let sp: [*const f32; 4] =
            std::array::from_fn(|j| scales.as_ptr().add((o + j.min(rows - 1)) * gpr));
        let mut accf = [V::zero(); 4];
        let mut tails = [0.0f32; 4];
        for g in 0..gpr {
            let lo = g * group;
            let hi = (lo + group).min(k);
            let hv = lo + (hi - lo) / V::W * V::W;
            let mut acc = [V::zero(); 4];
            let mut i = lo;
            while i < hv {
                let xv = V::load(xp.add(i));
                for j in 0..4 {
                    V::prefetch(p[j].wrapping_add(i + PREFETCH_BYTES));
                    acc[j] = V::fma(V::load_i8(p[j].add(i)), xv, acc[j]);
                }
                i += V::W;
            }
            for j in 0..4 {
                let s = *sp[j].add(g);
                accf[j] = V::fma(acc[j], V::splat(s), accf[j]);
                if hv < hi {
                    let mut t = 0.0f32;
                    for i in hv..hi {
                        t += *p[j].add(i) as f32 * x[i];
                    }
                    tails[j] += t * s;
                }
            }
        }
        for j in 0..rows {
            y[r + j] = V::reduce(accf[j]) + tails[j];
        }
        r += rows;
    }
}

/// `reference::quantize_activations`, the same IEEE operations in the same order, written so that it
/// vectorises once compiled with the wrapper's features (`round` half away from zero becomes an exact
/// SSE4.1/AVX sequence instead of a libm call). Bit-identical to the reference.
#[inline(always)]
pub(crate) fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len());
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    let inv = 127.0 / amax;
    for (qi, &xi) in q.iter_mut().zip(x) {
        // `round()` (half away from zero) spelled so it vectorises: `v - trunc(v)` is exact, so the
        // comparison with 0.5 decides exactly as `round` does.
        let v = xi * inv;
        let t = v.trunc();
        let away = if (v - t).abs() >= 0.5 { 1.0f32 } else { 0.0 };
        // An integer in [-127, 127] plus 1.5·2^23 is exact and leaves it, in two's complement, in the
        // low byte of the bits: a float → int conversion without the scalar saturation fix-ups.
        // NaN gives 0, as `NaN as i8` does.
        // max/min, not `clamp`: clamp's NaN rule keeps this loop scalar (NaN is handled next).
        #[allow(clippy::manual_clamp)]
        let r = (t + away.copysign(v)).max(-127.0).min(127.0);
        let r = if v.is_nan() { 0.0 } else { r };
        *qi = (r + 12_582_912.0).to_bits() as u8 as i8;
    }
    scale
}

// ---------------------------------------------------------------------------------------------------
// GEMM (prefill)
// ---------------------------------------------------------------------------------------------------

/// Where the packer reads weights from. Every variant computes `W[o, i]` as f32.
#[derive(Clone, Copy)]
pub(crate) enum PackSrc<'a> {
    OutInF32(&'a [f32]),
    OutInF16(&'a [f16]),
    OutInBF16(&'a [bf16]),
    InOutF32(&'a [f32]),
    InOutF16(&'a [f16]),
    InOutBF16(&'a [bf16]),
    /// INT8 `[out, in]` with per-group scales (W8A32: dequantized while packing).
    Int8 {
        values: &'a [i8],
        scales: &'a [f32],
        group: usize,
    },
}

/// Packs `W[o0 .. o0 + cols, k0 .. k0 + kc]` as `kc` rows of `nr` contiguous f32 (columns ≥ `cols` are 0).
///
/// # Safety
/// `V`'s instructions must be available; `dst.len() ≥ kc·nr`; the ranges lie inside the matrix of
/// `k × n` (checked by slice indexing except in the vector InOut path, whose range is checked first).
#[inline(always)]
unsafe fn pack_panel<V: F32Vec>(
    src: PackSrc,
    k: usize,
    n: usize,
    k0: usize,
    kc: usize,
    o0: usize,
    cols: usize,
    nr: usize,
    dst: &mut [f32],
) {
    #[inline(always)]
    unsafe fn outin<V: F32Vec, T: Elem>(
        w: &[T],
        k: usize,
        k0: usize,
        kc: usize,
        o0: usize,
        cols: usize,
        nr: usize,
        dst: &mut [f32],
    ) {
        for j in 0..cols {
            let row = &w[(o0 + j) * k + k0..(o0 + j) * k + k0 + kc];
            let mut tmp = [0.0f32; 16];
            let mut kk = 0;
            // Convert a vector at a time (F16C / shifts), then scatter down the panel's column.
            while kk + V::W <= kc {
                V::store(tmp.as_mut_ptr(), T::vload::<V>(row.as_ptr().add(kk)));
                for (e, &t) in tmp[..V::W].iter().enumerate() {
                    dst[(kk + e) * nr + j] = t;
                }
                kk += V::W;
            }
            for (kk, v) in row.iter().enumerate().skip(kk) {
                dst[kk * nr + j] = v.f32();
            }
        }
    }
    #[inline(always)]
    unsafe fn inout<V: F32Vec, T: Elem>(
        w: &[T],
        n: usize,
        k0: usize,
        kc: usize,
        o0: usize,
        cols: usize,
        nr: usize,
        dst: &mut [f32],
    ) {
        if cols == nr {
            assert!((k0 + kc) * n <= w.len() && o0 + nr <= n && dst.len() >= kc * nr);
            let d = dst.as_mut_ptr();
            for kk in 0..kc {
                let s = w.as_ptr().add((k0 + kk) * n + o0);
                let mut j = 0;
                while j < nr {
                    V::store(d.add(kk * nr + j), T::vload::<V>(s.add(j)));
                    j += V::W;
                }
            }
        } else {
            for kk in 0..kc {
                let s = &w[(k0 + kk) * n + o0..(k0 + kk) * n + o0 + cols];
                for (j, v) in s.iter().enumerate() {
                    dst[kk * nr + j] = v.f32();
                }
            }
        }
    }
    if cols < nr {
        for kk in 0..kc {
            dst[kk * nr + cols..kk * nr + nr].fill(0.0);
        }
    }
    match src {
        PackSrc::OutInF32(w) => outin::<V, f32>(w, k, k0, kc, o0, cols, nr, dst),
        PackSrc::OutInF16(w) => outin::<V, f16>(w, k, k0, kc, o0, cols, nr, dst),
        PackSrc::OutInBF16(w) => outin::<V, bf16>(w, k, k0, kc, o0, cols, nr, dst),
        PackSrc::InOutF32(w) => inout::<V, f32>(w, n, k0, kc, o0, cols, nr, dst),
        PackSrc::InOutF16(w) => inout::<V, f16>(w, n, k0, kc, o0, cols, nr, dst),
        PackSrc::InOutBF16(w) => inout::<V, bf16>(w, n, k0, kc, o0, cols, nr, dst),
        PackSrc::Int8 {
            values,
            scales,
            group,
        } => {
            let gpr = k.div_ceil(group);
            for j in 0..cols {
                let o = o0 + j;
                let row = &values[o * k + k0..o * k + k0 + kc];
                let srow = &scales[o * gpr..(o + 1) * gpr];
                let mut tmp = [0.0f32; 16];
                let mut kk = 0;
                while kk + V::W <= kc {
                    let (g0, g1) = ((k0 + kk) / group, (k0 + kk + V::W - 1) / group);
                    if g0 == g1 {
                        let v = V::mul(V::load_i8(row.as_ptr().add(kk)), V::splat(srow[g0]));
                        V::store(tmp.as_mut_ptr(), v);
                    } else {
                        for (e, t) in tmp[..V::W].iter_mut().enumerate() {
                            *t = row[kk + e] as f32 * srow[(k0 + kk + e) / group];
                        }
                    }
                    for (e, &t) in tmp[..V::W].iter().enumerate() {
                        dst[(kk + e) * nr + j] = t;
                    }
                    kk += V::W;
                }
                for (kk, &v) in row.iter().enumerate().skip(kk) {
                    dst[kk * nr + j] = v as f32 * srow[(k0 + kk) / group];
                }
            }
        }
    }
}

/// Packs token blocks of `mr` rows of `xs` (`tokens × k`) so that a block's `k` steps are `mr` contiguous
/// floats (rows past the end are zero): `dst[(t / mr)·k·mr + kk·mr + t % mr] = xs[t·k + kk]`.
pub(crate) fn pack_acts(xs: &[f32], k: usize, mr: usize, dst: &mut [f32]) {
    let tokens = xs.len() / k;
    assert!(dst.len() >= tokens.div_ceil(mr) * mr * k);
    for (tb, block) in dst
        .chunks_exact_mut(k * mr)
        .take(tokens.div_ceil(mr))
        .enumerate()
    {
        for r in 0..mr {
            let t = tb * mr + r;
            if t < tokens {
                for (kk, &v) in xs[t * k..(t + 1) * k].iter().enumerate() {
                    block[kk * mr + r] = v;
                }
            } else {
                for kk in 0..k {
                    block[kk * mr + r] = 0.0;
                }
            }
        }
    }
}

/// `MR`-token × `NV·W`-output micro-kernel over a packed panel: `C[r, c] (+)= Σ_kk A[r, kk]·B[kk, c]`.
///
/// `a` points at the packed activations of this token block at `k0` (token `r`, step `kk` at
/// `a[kk·ka + r]`); `b` is the packed
/// `kc × (NV·W)` panel; `c` the output tile (row stride `ldc`), of which `cols` columns are stored.
/// `init` is a bias tile of `NV·W` floats used when not accumulating.
///
/// # Safety
/// `V`'s instructions must be available; all pointers valid for the stated extents.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<V: F32Vec, const R: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    ka: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
    init: *const f32,
) {
    let nr = NV * V::W;
    let mut acc = [[V::zero(); NV]; R];
    if !accumulate && !init.is_null() {
        for row in acc.iter_mut() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = V::load(init.add(v * V::W));
            }
        }
    }
    let mut bp = b;
    for kk in 0..kc {
        let bv: [V::F; NV] = std::array::from_fn(|v| V::load(bp.add(v * V::W)));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = V::splat(*a.add(kk * ka + r));
            for v in 0..NV {
                row[v] = V::fma(av, bv[v], row[v]);
            }
        }
        bp = bp.add(nr);
    }
    if cols == nr {
        for (r, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                let p = c.add(r * ldc + v * V::W);
                let val = if accumulate {
                    V::add(V::load(p), *a)
                } else {
                    *a
                };
                V::store(p, val);
            }
        }
    } else {
        let mut tmp = [0.0f32; 64];
        for (r, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                V::store(tmp.as_mut_ptr().add(v * V::W), *a);
            }
            let p = c.add(r * ldc);
            for (j, t) in tmp[..cols].iter().enumerate() {
                if accumulate {
                    *p.add(j) += *t;
                } else {
                    *p.add(j) = *t;
                }
            }
        }
    }
}

/// Output block of the GEMM: tokens `t0 .. t1`, outputs `n0 .. n1`, all of `k`.
///
/// `xs` are the activations packed by [`pack_acts`] with `MR`; `ys` is the whole `tokens × n` output
/// (row stride `n`), written only inside the block; `pack` is scratch of at least
/// `kc_max · round_up(n1 - n0, NV·W)` floats.
///
/// # Safety
/// `V`'s instructions must be available; `xs` holds `round_up(t1, MR) · k` floats, `ys` `t1 · n`, `bias` `n`;
/// no other thread writes this block of `ys` concurrently.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32_block<V: F32Vec, const MR: usize, const NV: usize>(
    src: PackSrc,
    k: usize,
    n: usize,
    xs: *const f32,
    ys: *mut f32,
    bias: Option<&[f32]>,
    (t0, t1): (usize, usize),
    (n0, n1): (usize, usize),
    kc_max: usize,
    pack: &mut [f32],
) {
    let nr = NV * V::W;
    let panels = (n1 - n0).div_ceil(nr);
    assert!(pack.len() >= kc_max * panels * nr && nr <= 64);
    let mut bias_tiles = [0.0f32; 64];
    let mut k0 = 0;
    while k0 < k {
        let kc = (k - k0).min(kc_max);
        for p in 0..panels {
            let o = n0 + p * nr;
            let cols = (n1 - o).min(nr);
            pack_panel::<V>(
                src,
                k,
                n,
                k0,
                kc,
                o,
                cols,
                nr,
                &mut pack[p * kc * nr..(p + 1) * kc * nr],
            );
        }
        let accumulate = k0 > 0;
        let mut t = t0;
        while t < t1 {
            let rows = (t1 - t).min(MR);
            let a = xs.add(t * k + k0 * MR);
            for p in 0..panels {
                let o = n0 + p * nr;
                let cols = (n1 - o).min(nr);
                let init = match bias {
                    Some(b) if !accumulate => {
                        bias_tiles[..cols].copy_from_slice(&b[o..o + cols]);
                        bias_tiles[cols..nr].fill(0.0);
                        bias_tiles.as_ptr()
                    }
                    _ => std::ptr::null(),
                };
                let bp = pack.as_ptr().add(p * kc * nr);
                let c = ys.add(t * n + o);
                macro_rules! go {
                    ($($r:literal)*) => {
                        match rows {
                            $($r => micro::<V, $r, NV>(kc, a, MR, bp, c, n, cols, accumulate, init),)*
                            _ => unreachable!(),
                        }
                    };
                }
                if rows == MR {
                    micro::<V, MR, NV>(kc, a, MR, bp, c, n, cols, accumulate, init);
                } else {
                    go!(1 2 3 4 5 6 7);
                }
            }
            t += rows;
        }
        k0 += kc;
    }
}

// ---------------------------------------------------------------------------------------------------
// Per-ISA instantiations
// ---------------------------------------------------------------------------------------------------

/// Generates the entry points of one instruction set: every generic kernel above compiled with `$feat`.
macro_rules! instantiate {
    ($(#[$m:meta])* $name:ident, $V:ty, #[$feat:meta], MR = $mr:literal, NV = $nv:literal) => {
        $(#[$m])*
        pub(crate) mod $name {
            use super::*;

            /// Tokens per GEMM micro-tile.
            pub(crate) const MR: usize = $mr;
            /// Outputs per GEMM micro-tile.
            pub(crate) const NR: usize = $nv * <$V as F32Vec>::W;

            /// Rows `o0 .. o0 + y.len()` of any dense matrix (both layouts, every element type).
            ///
            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(crate) unsafe fn dense(d: &DenseRef, x: &[f32], o0: usize, y: &mut [f32]) {
                let (k, n) = (d.in_dim, d.out_dim);
                match (d.data, d.layout) {
                    (Elems::F32(w), Layout::OutIn) => super::dense_outin::<$V, f32>(w, k, x, o0, y),
                    (Elems::F16(w), Layout::OutIn) => super::dense_outin::<$V, f16>(w, k, x, o0, y),
                    (Elems::BF16(w), Layout::OutIn) => super::dense_outin::<$V, bf16>(w, k, x, o0, y),
                    (Elems::F32(w), Layout::InOut) => super::dense_inout::<$V, f32>(w, n, x, o0, y),
                    (Elems::F16(w), Layout::InOut) => super::dense_inout::<$V, f16>(w, n, x, o0, y),
                    (Elems::BF16(w), Layout::InOut) => super::dense_inout::<$V, bf16>(w, n, x, o0, y),
                }
            }

            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(crate) unsafe fn w8a32_rows(
                values: &[i8],
                scales: &[f32],
                k: usize,
                group: usize,
                x: &[f32],
                o0: usize,
                y: &mut [f32],
            ) {
                super::w8a32_rows::<$V>(values, scales, k, group, x, o0, y)
            }

            /// # Safety
            /// The CPU must support this instruction set.
            #[$feat]
            pub(crate) unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
                super::quantize_row(x, q)
            }

            /// # Safety
            /// The CPU must support this instruction set; see [`super::gemm_f32_block`].
            #[$feat]
            #[allow(clippy::too_many_arguments)]
            pub(crate) unsafe fn gemm_block(
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
            ) {
                super::gemm_f32_block::<$V, $mr, $nv>(src, k, n, xs, ys, bias, t, o, kc_max, pack)
            }
        }
    };
}

instantiate!(
    /// Portable `wide` path (no target features needed).
    portable, crate::simd::Wide, #[inline(never)], MR = 4, NV = 2
);
#[cfg(target_arch = "x86_64")]
instantiate!(
    /// AVX2 + FMA + F16C.
    avx2, crate::simd::V256, #[target_feature(enable = "avx2,fma,f16c")], MR = 6, NV = 2
);
#[cfg(target_arch = "x86_64")]
instantiate!(
    /// AVX-512 F/BW/VL.
    avx512, crate::simd::V512, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")], MR = 8, NV = 2
);
