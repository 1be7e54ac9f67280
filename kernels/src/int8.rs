//! INT8 W8A8 kernels: integer dot products per group, one float rescale per group.
//!
//! * AVX-512 VNNI: `vpdpbusd` (u8 × i8, four products summed into an i32 lane). The activations are the
//!   unsigned side: `|x|` as u8, and the sign of `x` is moved onto the weight (`w' = x < 0 ? -w : w`).
//!   Exact because values lie in `[-127, 127]` (never -128, whose negation would wrap).
//! * AVX2: `vpmaddubsw` (u8 × i8, adjacent pairs summed with **i16 saturation**) then `vpmaddwd` with
//!   ones to widen to i32. With the same sign trick both factors are at most 127 in magnitude, so a pair
//!   sums to at most `2·127·127 = 32258 < 32767`: saturation cannot happen. (Feeding an offset `x + 128`
//!   as the unsigned side, as the VNNI GEMM does, would overflow here: `2·255·127 = 64770`.)
//! * Portable: plain i32 loops (auto-vectorised).
//!
//! The prefill GEMM on AVX2 widens both sides to i16 and uses `vpmaddwd` alone (exact, no sign fix-up;
//! see its section below).
//!
//! The prefill GEMM with VNNI uses the offset form instead (the sign of a token cannot be moved onto a
//! weight shared by many tokens): `a = x + 128` as u8, `Σ a·w = Σ x·w + 128·Σ w`, and `128·Σ w` per
//! output and group is computed while packing the weights, so the integer result stays exact.

// Index loops read better than zipped iterators in these kernels; signatures mirror the math.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

/// Exact i32 dot product of one group (portable, also the tail of the SIMD paths).
#[inline(always)]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Chunks of 16 keep the i16-free i32 sums vectorisable.
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// W8A8 rows on the portable path: per group exact i32, `acc += dot as f32 · scale`, like the reference.
#[allow(clippy::too_many_arguments)]
pub(crate) fn w8a8_rows_portable(
    values: &[i8],
    scales: &[f32],
    k: usize,
    group: usize,
    xq: &[i8],
    xs: f32,
    o0: usize,
    y: &mut [f32],
) {
    let gpr = k.div_ceil(group);
    for (r, yo) in y.iter_mut().enumerate() {
        let o = o0 + r;
        let row = &values[o * k..(o + 1) * k];
        let srow = &scales[o * gpr..(o + 1) * gpr];
        let mut acc = 0.0f32;
        for (g, &s) in srow.iter().enumerate() {
            let lo = g * group;
            let hi = (lo + group).min(k);
            acc += dot_i8(&row[lo..hi], &xq[lo..hi]) as f32 * s;
        }
        *yo = acc * xs;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::dot_i8;
    use crate::simd::PREFETCH_BYTES;
    use std::arch::x86_64::*;

    // ------------------------------------------------------------------ AVX2 (maddubs + madd)

    /// Exact i32 group dot products of `R` weight rows with one activation vector (`len` bytes each).
    ///
    /// `ahead` is the prefetch distance in bytes (`PREFETCH_BYTES`).
    ///
    /// # Safety
    /// AVX2 must be available; every pointer valid for `len` bytes; values in `[-127, 127]`.
    #[inline(always)]
    pub(crate) unsafe fn group_dot_avx2<const R: usize>(
        p: [*const i8; R],
        x: *const i8,
        len: usize,
        ahead: usize,
    ) -> [i32; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); R];
        let mut i = 0;
        while i + 32 <= len {
            let xv = _mm256_loadu_si256(x.add(i) as *const __m256i);
            let ax = _mm256_abs_epi8(xv);
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T1>(p[r].wrapping_add(i + ahead));
                let wv = _mm256_loadu_si256(p[r].add(i) as *const __m256i);
                // w·sign(x): |x|·w' = x·w; pairs ≤ 2·127·127 < 2^15, so maddubs never saturates.
                let ws = _mm256_sign_epi8(wv, xv);
                acc[r] = _mm256_add_epi32(
                    acc[r],
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, ws), ones),
                );
            }
            i += 32;
        }
        let mut out = [0i32; R];
        for r in 0..R {
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(acc[r]),
                _mm256_extracti128_si256::<1>(acc[r]),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let tail = if i < len {
                dot_i8(
                    std::slice::from_raw_parts(p[r].add(i), len - i),
                    std::slice::from_raw_parts(x.add(i), len - i),
                )
            } else {
                0
            };
            out[r] = _mm_cvtsi128_si32(s) + tail;
        }
        out
    }

    /// W8A8 rows `o0 .. o0 + y.len()` with AVX2; float accumulation in the reference's order.
    ///
    /// # Safety
    /// AVX2 must be available; the matrix must have passed `MatRef::check` (re-checked here).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn w8a8_rows_avx2(
        values: &[i8],
        scales: &[f32],
        k: usize,
        group: usize,
        xq: &[i8],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let gpr = k.div_ceil(group);
        assert!(
            xq.len() == k
                && values.len() >= (o0 + y.len()) * k
                && scales.len() >= (o0 + y.len()) * gpr
        );
        let mut r = 0;
        while r < y.len() {
            let rows = (y.len() - r).min(4);
            let o = o0 + r;
            let p: [*const i8; 4] =
                std::array::from_fn(|j| values.as_ptr().add((o + j.min(rows - 1)) * k));
            let mut acc = [0.0f32; 4];
            for g in 0..gpr {
                let lo = g * group;
                let len = (k - lo).min(group);
                let d = group_dot_avx2::<4>(
                    p.map(|q| q.add(lo)),
                    xq.as_ptr().add(lo),
                    len,
                    PREFETCH_BYTES,
                );
                for j in 0..4 {
                    acc[j] += d[j] as f32 * scales[(o + j.min(rows - 1)) * gpr + g];
                }
            }
            for j in 0..rows {
                y[r + j] = acc[j] * xs;
            }
            r += rows;
        }
    }

    /// Exact i32 group dot products of `R` weight rows with `T` tokens' activations (`len` bytes each),
    /// each weight vector loaded once for every token. The sign moves onto the activations here
    /// (`|w|·(±x) = x·w`, the activation negated where `w < 0`): a weight may be -128 (`|w|` = 128 as
    /// u8), and a pair sums to at most `2·128·127 = 32512 < 32767`, so `maddubs` never saturates.
    ///
    /// # Safety
    /// AVX2 must be available; every pointer valid for `len` bytes; activations in `[-127, 127]`.
    #[inline(always)]
    unsafe fn group_dots_avx2_t<const R: usize, const T: usize>(
        p: [*const i8; R],
        x: [*const i8; T],
        len: usize,
        ahead: usize,
    ) -> [[i32; T]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        let mut i = 0;
        while i + 32 <= len {
            let xv: [__m256i; T] =
                std::array::from_fn(|t| _mm256_loadu_si256(x[t].add(i) as *const __m256i));
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T1>(p[r].wrapping_add(i + ahead));
                let wv = _mm256_loadu_si256(p[r].add(i) as *const __m256i);
                let aw = _mm256_abs_epi8(wv);
                for t in 0..T {
                    let xs = _mm256_sign_epi8(xv[t], wv);
                    acc[r][t] = _mm256_add_epi32(
                        acc[r][t],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones),
                    );
                }
            }
            i += 32;
        }
        // Totals of up to 8 vectors at a time by a tree of horizontal adds.
        let mut out = [[0i32; T]; R];
        let mut lanes = [_mm256_setzero_si256(); 8];
        let mut done = 0;
        while done < R * T {
            let m = (R * T - done).min(8);
            for j in 0..8 {
                lanes[j] = if j < m {
                    let f = done + j;
                    acc[f / T][f % T]
                } else {
                    _mm256_setzero_si256()
                };
            }
            let mut s = [0i32; 8];
            _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, hsum8(lanes));
            for j in 0..m {
                let f = done + j;
                out[f / T][f % T] = s[j];
            }
            done += m;
        }
        if i < len {
            for r in 0..R {
                let w = std::slice::from_raw_parts(p[r].add(i), len - i);
                for t in 0..T {
                    out[r][t] += dot_i8(w, std::slice::from_raw_parts(x[t].add(i), len - i));
                }
            }
        }
        out
    }

    /// Lane `j` of the result: the sum of `v[j]`'s eight i32 lanes.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn hsum8(v: [__m256i; 8]) -> __m256i {
        let a = _mm256_hadd_epi32(v[0], v[1]);
        let b = _mm256_hadd_epi32(v[2], v[3]);
        let c = _mm256_hadd_epi32(v[4], v[5]);
        let d = _mm256_hadd_epi32(v[6], v[7]);
        // Per 128-bit half: [v0, v1, v2, v3] (and [v4 .. v7]) partial sums of that half.
        let ab = _mm256_hadd_epi32(a, b);
        let cd = _mm256_hadd_epi32(c, d);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(ab, cd),
            _mm256_permute2x128_si256::<0x31>(ab, cd),
        )
    }

    /// W8A8 rows `o0 .. o0 + n` for `T` tokens with AVX2, `R` rows per pass, each weight loaded once
    /// for all tokens: per group an exact i32 dot, `acc += dot · scale`, then `y = acc · x_scale` —
    /// [`w8a8_rows_avx2`]'s and the reference's arithmetic, so every token count gives the same bits.
    ///
    /// # Safety
    /// AVX2 must be available; the matrix must have passed `MatRef::check` (re-checked); every `y[t]`
    /// must be valid for writing `n` floats.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn w8a8_rows_avx2_t<const R: usize, const T: usize>(
        values: &[i8],
        scales: &[f32],
        k: usize,
        group: usize,
        xq: [&[i8]; T],
        xs: [f32; T],
        o0: usize,
        n: usize,
        y: [*mut f32; T],
    ) {
        let gpr = k.div_ceil(group);
        assert!(
            xq.iter().all(|x| x.len() == k)
                && values.len() >= (o0 + n) * k
                && scales.len() >= (o0 + n) * gpr
        );
        let mut r = 0;
        while r < n {
            let rows = (n - r).min(R);
            let o = o0 + r;
            let p: [*const i8; R] =
                std::array::from_fn(|j| values.as_ptr().add((o + j.min(rows - 1)) * k));
            let mut acc = [[0.0f32; T]; R];
            for g in 0..gpr {
                let lo = g * group;
                let len = (k - lo).min(group);
                let d = group_dots_avx2_t::<R, T>(
                    p.map(|q| q.add(lo)),
                    xq.map(|x| x.as_ptr().add(lo)),
                    len,
                    PREFETCH_BYTES,
                );
                for j in 0..R {
                    let s = scales[(o + j.min(rows - 1)) * gpr + g];
                    for t in 0..T {
                        acc[j][t] += d[j][t] as f32 * s;
                    }
                }
            }
            for j in 0..rows {
                for t in 0..T {
                    *y[t].add(r + j) = acc[j][t] * xs[t];
                }
            }
            r += rows;
        }
    }

    /// Per-group exact sums of one row (AVX2), for tests.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn group_dots_avx2(row: &[i8], xq: &[i8], group: usize, out: &mut [i32]) {
        assert!(row.len() == xq.len() && out.len() == row.len().div_ceil(group));
        for (g, o) in out.iter_mut().enumerate() {
            let lo = g * group;
            let len = (row.len() - lo).min(group);
            *o = group_dot_avx2::<1>([row.as_ptr().add(lo)], xq.as_ptr().add(lo), len, 0)[0];
        }
    }

    // ------------------------------------------------------------------ AVX-512 VNNI (vpdpbusd)

    /// Lane-wise exact i32 partial sums of `R` rows' group dot products (sum the 16 lanes for the total).
    ///
    /// # Safety
    /// AVX-512 F/BW + VNNI must be available; every pointer valid for `len` bytes; values in `[-127, 127]`.
    #[inline(always)]
    unsafe fn group_dot_vnni<const R: usize>(
        p: [*const i8; R],
        x: *const i8,
        len: usize,
        ahead: usize,
    ) -> [__m512i; R] {
        let zero = _mm512_setzero_si512();
        let mut acc = [zero; R];
        let mut i = 0;
        while i < len {
            let (xv, full) = if i + 64 <= len {
                (_mm512_loadu_si512(x.add(i) as *const _), true)
            } else {
                (_mm512_maskz_loadu_epi8(tail_mask(len - i), x.add(i)), false)
            };
            let ax = _mm512_abs_epi8(xv);
            let neg = _mm512_movepi8_mask(xv);
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T1>(p[r].wrapping_add(i + ahead));
                let wv = if full {
                    _mm512_loadu_si512(p[r].add(i) as *const _)
                } else {
                    _mm512_maskz_loadu_epi8(tail_mask(len - i), p[r].add(i))
                };
                // w' = -w where x < 0, so |x|·w' = x·w; |w| ≤ 127 keeps the negation exact.
                let ws = _mm512_mask_sub_epi8(wv, neg, zero, wv);
                acc[r] = _mm512_dpbusd_epi32(acc[r], ax, ws);
            }
            i += 64;
        }
        acc
    }

    #[inline(always)]
    fn tail_mask(n: usize) -> u64 {
        if n >= 64 {
            !0
        } else {
            (1u64 << n) - 1
        }
    }

    /// W8A8 rows `o0 .. o0 + y.len()` with AVX-512 VNNI for one token (decode): the same arithmetic
    /// as [`w8a8_rows_vnni_t`] — exact i32 dot per group, `acc = fma(dot, scale, acc)`, `y = acc ·
    /// x_scale` — with the integer dots taken by sign (`|x|·(±w)`, no offset to undo) and the four rows'
    /// totals by a short tree.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI must be available; the matrix must have passed `MatRef::check` (re-checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn w8a8_rows_vnni(
        values: &[i8],
        scales: &[f32],
        k: usize,
        group: usize,
        xq: &[i8],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let gpr = k.div_ceil(group);
        assert!(
            xq.len() == k
                && values.len() >= (o0 + y.len()) * k
                && scales.len() >= (o0 + y.len()) * gpr
        );
        let xsv = _mm_set1_ps(xs);
        let mut r = 0;
        while r < y.len() {
            let rows = (y.len() - r).min(4);
            let o = o0 + r;
            let p: [*const i8; 4] =
                std::array::from_fn(|j| values.as_ptr().add((o + j.min(rows - 1)) * k));
            let mut acc = _mm_setzero_ps();
            for g in 0..gpr {
                let lo = g * group;
                let len = (k - lo).min(group);
                let d = group_dot_vnni::<4>(
                    p.map(|q| q.add(lo)),
                    xq.as_ptr().add(lo),
                    len,
                    PREFETCH_BYTES,
                );
                let sc: [f32; 4] = std::array::from_fn(|j| scales[(o + j.min(rows - 1)) * gpr + g]);
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(reduce4(d)), _mm_loadu_ps(sc.as_ptr()), acc);
            }
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_mul_ps(acc, xsv));
            y[r..r + rows].copy_from_slice(&out[..rows]);
            r += rows;
        }
    }

    /// The totals of 4 vectors of i32 (lane `j` of the result: the sum of `v[j]`), as [`reduce16`] does
    /// its first levels.
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline(always)]
    pub(crate) unsafe fn reduce4(v: [__m512i; 4]) -> __m128i {
        let c0 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[0], v[1]),
            _mm512_unpackhi_epi32(v[0], v[1]),
        );
        let c1 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[2], v[3]),
            _mm512_unpackhi_epi32(v[2], v[3]),
        );
        // Position j of each 128-bit lane: the sum of v[j] over that lane.
        let d = _mm512_add_epi32(_mm512_unpacklo_epi64(c0, c1), _mm512_unpackhi_epi64(c0, c1));
        let h = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64::<1>(d));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    }

    /// W8A8 rows `o0 .. o0 + n` for `T` tokens (activations given offset to `u8`: `x + 128`) with
    /// AVX-512 VNNI, each weight loaded once for all of
    /// them. Per group, each (row, token) dot product is exact in i32 (activations offset to `u8` by
    /// 128, the offset's share `128·Σw` taken off); then `acc = fma(dot, scale, acc)` per group and
    /// `y = acc · x_scale` — the VNNI GEMM's arithmetic, so one token, a few, or a GEMM's worth give
    /// the same bits.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI must be available; the matrix must have passed `MatRef::check` (re-checked);
    /// every `y[t]` must be valid for writing `n` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn w8a8_rows_vnni_t<const T: usize>(
        values: &[i8],
        scales: &[f32],
        k: usize,
        group: usize,
        xu: [&[u8]; T],
        xs: [f32; T],
        o0: usize,
        n: usize,
        y: [*mut f32; T],
    ) {
        let gpr = k.div_ceil(group);
        assert!(
            xu.iter().all(|x| x.len() == k)
                && values.len() >= (o0 + n) * k
                && scales.len() >= (o0 + n) * gpr
        );
        let zero = _mm512_setzero_si512();
        // Lane `4j + t` of the vectors below is row `j` (of 4), token `t`.
        let xsv: [f32; 16] = std::array::from_fn(|i| xs[(i % 4).min(T - 1)]);
        let xsv = _mm512_loadu_ps(xsv.as_ptr());
        let mut r = 0;
        while r < n {
            let rows = (n - r).min(4);
            let o = o0 + r;
            let p: [*const i8; 4] =
                std::array::from_fn(|j| values.as_ptr().add((o + j.min(rows - 1)) * k));
            let mut acc = _mm512_setzero_ps();
            for g in 0..gpr {
                let lo = g * group;
                let len = (k - lo).min(group);
                let (d, sw) = group_dots_vnni_t::<T>(
                    p.map(|q| q.add(lo)),
                    xu.map(|x| x.as_ptr().add(lo)),
                    len,
                    PREFETCH_BYTES,
                );
                let mut v = [zero; 16];
                for j in 0..4 {
                    let corr = _mm512_slli_epi32::<7>(sw[j]);
                    for t in 0..T {
                        v[4 * j + t] = _mm512_sub_epi32(d[j][t], corr);
                    }
                }
                let sc: [f32; 16] =
                    std::array::from_fn(|i| scales[(o + (i / 4).min(rows - 1)) * gpr + g]);
                acc = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(reduce16(v)),
                    _mm512_loadu_ps(sc.as_ptr()),
                    acc,
                );
            }
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(acc, xsv));
            for j in 0..rows {
                for t in 0..T {
                    *y[t].add(r + j) = out[4 * j + t];
                }
            }
            r += rows;
        }
    }

    /// The totals of 16 vectors of i32, lane `i` of the result being the sum of `v[i]`'s lanes: a tree
    /// of 15 additions (pairs within 128-bit lanes, then across them) instead of 16 horizontal sums.
    /// (Plain loops, no closures: a closure is a function of its own without the caller's target
    /// features, and once LLVM stops inlining it every intrinsic in it becomes a call — it halved
    /// 4-bit decode.)
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline(always)]
    pub(crate) unsafe fn reduce16(v: [__m512i; 16]) -> __m512i {
        // Within each 128-bit lane q: c[i] holds 2 partial sums of v[2i] and 2 of v[2i+1] ...
        let mut c = [_mm512_setzero_si512(); 8];
        for (i, ci) in c.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *ci = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        }
        // ... d[j], position r of lane q: the sum of v[4j + r] over lane q ...
        let mut d = [_mm512_setzero_si512(); 4];
        for (j, dj) in d.iter_mut().enumerate() {
            let (a, b) = (c[2 * j], c[2 * j + 1]);
            *dj = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        }
        // ... then the four 128-bit lanes are added pairwise, twice.
        let mut e = [_mm512_setzero_si512(); 2];
        for (m, em) in e.iter_mut().enumerate() {
            let (a, b) = (d[2 * m], d[2 * m + 1]);
            *em = _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0x88>(a, b),
                _mm512_shuffle_i32x4::<0xDD>(a, b),
            );
        }
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(e[0], e[1]),
            _mm512_shuffle_i32x4::<0xDD>(e[0], e[1]),
        )
    }

    /// The 16 × 16 transpose of 32-bit lanes: `out[j][i] = r[i][j]` (plain loops, see [`reduce16`]).
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline(always)]
    pub(crate) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // a[2k], a[2k+1]: rows 2k, 2k+1 interleaved by element within each 128-bit lane.
        let mut a = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            a[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // b[4m + c], 128-bit lane L: column 4L + c of rows 4m .. 4m + 4.
        let mut b = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            for h in 0..2 {
                let x = _mm512_castps_pd(a[4 * m + h]);
                let y = _mm512_castps_pd(a[4 * m + 2 + h]);
                b[4 * m + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
                b[4 * m + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let (x, y, z, w) = (b[c], b[4 + c], b[8 + c], b[12 + c]);
            let p0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y);
            let p1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y);
            let q0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(z, w);
            let q1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(z, w);
            out[c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(p0, q0);
            out[4 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(p0, q0);
            out[8 + c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(p1, q1);
            out[12 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(p1, q1);
        }
        out
    }

    /// Lane-wise i32 sums of 4 rows' group dot products with `T` tokens' activations offset to `u8`
    /// (`Σ (x + 128)·w`, `x` given as `x + 128`), and lane-wise `Σw` of each row; exact (|w| ≤ 127, groups under 2^16).
    ///
    /// # Safety
    /// AVX-512 F/BW + VNNI must be available; every pointer valid for `len` bytes.
    #[inline(always)]
    unsafe fn group_dots_vnni_t<const T: usize>(
        p: [*const i8; 4],
        x: [*const u8; T],
        len: usize,
        ahead: usize,
    ) -> ([[__m512i; T]; 4], [__m512i; 4]) {
        let zero = _mm512_setzero_si512();
        let ones = _mm512_set1_epi8(1);
        let mut acc = [[zero; T]; 4];
        let mut sw = [zero; 4];
        let mut i = 0;
        while i < len {
            let m = tail_mask(len - i);
            let a: [__m512i; T] =
                std::array::from_fn(|t| _mm512_maskz_loadu_epi8(m, x[t].add(i) as *const i8));
            for r in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(p[r].wrapping_add(i + ahead));
                let wv = _mm512_maskz_loadu_epi8(m, p[r].add(i));
                sw[r] = _mm512_dpbusd_epi32(sw[r], ones, wv);
                for t in 0..T {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], a[t], wv);
                }
            }
            i += 64;
        }
        (acc, sw)
    }

    /// Per-group exact sums of one row (VNNI), for tests.
    ///
    /// # Safety
    /// AVX-512 F/BW + VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn group_dots_vnni(row: &[i8], xq: &[i8], group: usize, out: &mut [i32]) {
        assert!(row.len() == xq.len() && out.len() == row.len().div_ceil(group));
        for (g, o) in out.iter_mut().enumerate() {
            let lo = g * group;
            let len = (row.len() - lo).min(group);
            let v = group_dot_vnni::<1>([row.as_ptr().add(lo)], xq.as_ptr().add(lo), len, 0)[0];
            *o = _mm512_reduce_add_epi32(v);
        }
    }

    // ------------------------------------------------------------------ VNNI GEMM (prefill W8A8)

    /// Outputs per W8A8 GEMM panel (two zmm of i32 lanes).
    pub(crate) const Q_NR: usize = 32;
    /// Tokens per W8A8 GEMM micro-tile.
    pub(crate) const Q_MR: usize = 6;

    /// Geometry of the group-padded K axis: every group is padded to a multiple of 4 bytes.
    #[derive(Clone, Copy)]
    pub(crate) struct QGeom {
        pub k: usize,
        pub group: usize,
        pub groups: usize,
        /// Padded bytes of a full group.
        pub gp: usize,
        /// Padded bytes of one row.
        pub kp: usize,
    }

    impl QGeom {
        pub(crate) fn new(k: usize, group: usize) -> QGeom {
            let groups = k.div_ceil(group);
            let gp = group.div_ceil(4) * 4;
            let last = k - (groups - 1) * group;
            QGeom {
                k,
                group,
                groups,
                gp,
                kp: (groups - 1) * gp + last.div_ceil(4) * 4,
            }
        }
        pub(crate) fn len(&self, g: usize) -> usize {
            (self.k - g * self.group).min(self.group)
        }
    }

    /// Writes token activations, already quantized to `q`, as `q + 128` (u8) in the group-padded layout.
    pub(crate) fn pack_act(geo: &QGeom, q: &[i8], dst: &mut [u8]) {
        dst[..geo.kp].fill(128);
        for g in 0..geo.groups {
            let src = &q[g * geo.group..g * geo.group + geo.len(g)];
            for (d, &v) in dst[g * geo.gp..].iter_mut().zip(src) {
                *d = (v as i16 + 128) as u8;
            }
        }
    }

    /// Bytes of one packed weight panel (values, then per group `NR` i32 corrections and `NR` f32 scales).
    pub(crate) fn panel_bytes(geo: &QGeom) -> usize {
        geo.kp * Q_NR + geo.groups * Q_NR * 8
    }

    /// Packs outputs `o0 .. o0 + cols` (≤ `Q_NR`) of `[out, in]` INT8 weights for the VNNI micro-kernel:
    /// per 4-byte quad of K, `Q_NR` outputs × 4 bytes; then `128·Σw` and the scale per group and output.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn pack_weights(
        geo: &QGeom,
        values: &[i8],
        scales: &[f32],
        o0: usize,
        cols: usize,
        dst: &mut [u8],
    ) {
        let (head, sc) = dst.split_at_mut(geo.kp * Q_NR + geo.groups * Q_NR * 4);
        if geo.k.is_multiple_of(4) && geo.group.is_multiple_of(4) {
            pack_values_t(geo, values, o0, cols, head);
        } else {
            pack_values_u8(geo, values, o0, cols, head);
        }
        sc.fill(0);
        for j in 0..cols {
            for g in 0..geo.groups {
                let c = (g * Q_NR + j) * 4;
                sc[c..c + 4].copy_from_slice(&scales[(o0 + j) * geo.groups + g].to_ne_bytes());
            }
        }
    }

    /// The values and corrections of [`pack_weights`] (`geo.kp · Q_NR` bytes of quads, then
    /// `geo.groups · Q_NR` i32 `128·Σw`): rows `o0 .. o0 + cols` of `values` (`[out, geo.k]`).
    pub(crate) fn pack_values_u8(
        geo: &QGeom,
        values: &[i8],
        o0: usize,
        cols: usize,
        dst: &mut [u8],
    ) {
        let (vals, corr) = dst.split_at_mut(geo.kp * Q_NR);
        let corr = &mut corr[..geo.groups * Q_NR * 4];
        vals.fill(0);
        corr.fill(0);
        let k = geo.k;
        for j in 0..cols {
            let o = o0 + j;
            let row = &values[o * k..(o + 1) * k];
            for g in 0..geo.groups {
                let src = &row[g * geo.group..g * geo.group + geo.len(g)];
                // Whole quads move as one u32 (the usual case: groups and rows multiples of 4).
                let quads = src.len() / 4;
                let q0 = g * geo.gp / 4;
                for (qi, c) in src.chunks_exact(4).enumerate() {
                    let d = (q0 + qi) * Q_NR * 4 + j * 4;
                    vals[d..d + 4].copy_from_slice(bytemuck::cast_slice(c));
                }
                for (e, &v) in src.iter().enumerate().skip(quads * 4) {
                    let kk = g * geo.gp + e;
                    vals[(kk / 4) * Q_NR * 4 + j * 4 + kk % 4] = v as u8;
                }
                let sum: i32 = src.iter().map(|&v| v as i32).sum();
                let c = g * Q_NR + j;
                corr[c * 4..c * 4 + 4].copy_from_slice(&(128 * sum).to_ne_bytes());
            }
        }
    }

    /// [`pack_values_u8`] when every quad of K is 4 bytes of one row and one group (`k` and the group
    /// multiples of 4, so no padding): 64 bytes of sixteen rows transposed into 16 quads × 16 rows,
    /// `Σw` per group by `vpdpbusd` with ones.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pack_values_t(geo: &QGeom, values: &[i8], o0: usize, cols: usize, dst: &mut [u8]) {
        let k = geo.k;
        assert!(k.is_multiple_of(4) && geo.group.is_multiple_of(4) && geo.kp == k);
        assert!(cols <= Q_NR && values.len() >= (o0 + cols) * k);
        let (vals, corr) = dst.split_at_mut(geo.kp * Q_NR);
        assert!(corr.len() >= geo.groups * Q_NR * 4);
        let (nq, qpg) = (k / 4, geo.group / 4);
        let zero = _mm512_setzero_si512();
        let ones = _mm512_set1_epi8(1);
        for r0 in (0..Q_NR).step_by(16) {
            let live = cols.saturating_sub(r0).min(16);
            let mut sum = zero;
            for c in (0..nq).step_by(16) {
                // Quads c .. c + 16 of each live row (masked past the row's end), 0 for the others.
                let m = (u32::MAX >> (32 - (nq - c).min(16))) as __mmask16;
                let rows: [__m512; 16] = std::array::from_fn(|j| {
                    _mm512_castsi512_ps(if j < live {
                        let row = values.as_ptr().add((o0 + r0 + j) * k + c * 4);
                        _mm512_maskz_loadu_epi32(m, row as *const i32)
                    } else {
                        zero
                    })
                });
                let quads = transpose16(rows);
                for (i, v) in quads.iter().enumerate().take(nq - c) {
                    let (qi, v) = (c + i, _mm512_castps_si512(*v));
                    _mm512_storeu_si512(vals.as_mut_ptr().add((qi * Q_NR + r0) * 4) as *mut _, v);
                    sum = _mm512_dpbusd_epi32(sum, ones, v);
                    if (qi + 1) % qpg == 0 || qi + 1 == nq {
                        let at = corr.as_mut_ptr().add((qi / qpg * Q_NR + r0) * 4);
                        _mm512_storeu_si512(at as *mut _, _mm512_slli_epi32::<7>(sum));
                        sum = zero;
                    }
                }
            }
        }
    }

    /// One group's float step of the integer GEMMs, per lane: `acc + dot·s` as one FMA (INT8), or with
    /// `OFF` (sub-8-bit weights `s·code + off`) `acc + (s·dot + off·Σxq)` rounded step by step, as
    /// `quant.rs`'s reference does. `off` and `xsum` are unused without `OFF`.
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline(always)]
    pub(crate) unsafe fn group_step<const OFF: bool>(
        acc: __m512,
        dot: __m512,
        s: __m512,
        off: __m512,
        xsum: __m512,
    ) -> __m512 {
        if OFF {
            let t = _mm512_add_ps(_mm512_mul_ps(s, dot), _mm512_mul_ps(off, xsum));
            _mm512_add_ps(acc, t)
        } else {
            _mm512_fmadd_ps(dot, s, acc)
        }
    }

    /// `R` tokens × `Q_NR` outputs over one packed panel; writes `(Σ_g s·(Σ a·w − 128Σw))·x_scale + bias`.
    /// With `OFF` (sub-8-bit weights `s·code + off`) the panel holds the offsets after the scales,
    /// `xsum` the tokens' per-group `Σ xq` as f32 (stride `geo.groups`), and the group's step is
    /// `acc += s·dot + off·Σxq` without fused multiply-adds, as in `quant.rs`.
    ///
    /// # Safety
    /// AVX-512 F/BW + VNNI; `a` holds `R` rows of `geo.kp` bytes at stride `lda`; `panel` is from
    /// [`pack_weights`] (or `quant::x86::pack_panel_vnni`); `c` valid for `R` rows (stride `ldc`) of
    /// `cols` floats; with `OFF`, `xsum` holds `R · geo.groups` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn micro_vnni<const R: usize, const OFF: bool>(
        geo: &QGeom,
        a: *const u8,
        lda: usize,
        xscale: &[f32],
        xsum: *const f32,
        panel: *const u8,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let vals = panel;
        let corr = panel.add(geo.kp * Q_NR) as *const i32;
        let sc = panel.add(geo.kp * Q_NR + geo.groups * Q_NR * 4) as *const f32;
        let offs = sc.add(geo.groups * Q_NR);
        let mut accf = [[_mm512_setzero_ps(); 2]; R];
        for g in 0..geo.groups {
            let mut acci = [[_mm512_setzero_si512(); 2]; R];
            let q0 = g * geo.gp / 4;
            let q1 = q0 + geo.len(g).div_ceil(4);
            for q in q0..q1 {
                let b0 = _mm512_loadu_si512(vals.add(q * Q_NR * 4) as *const _);
                let b1 = _mm512_loadu_si512(vals.add(q * Q_NR * 4 + 64) as *const _);
                for (r, acc) in acci.iter_mut().enumerate() {
                    let av =
                        _mm512_set1_epi32((a.add(r * lda + q * 4) as *const i32).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                }
            }
            let c0 = _mm512_loadu_si512(corr.add(g * Q_NR) as *const _);
            let c1 = _mm512_loadu_si512(corr.add(g * Q_NR + 16) as *const _);
            let s0 = _mm512_loadu_ps(sc.add(g * Q_NR));
            let s1 = _mm512_loadu_ps(sc.add(g * Q_NR + 16));
            let (off0, off1) = if OFF {
                (
                    _mm512_loadu_ps(offs.add(g * Q_NR)),
                    _mm512_loadu_ps(offs.add(g * Q_NR + 16)),
                )
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            for (r, (acc, f)) in acci.iter().zip(accf.iter_mut()).enumerate() {
                let xs = if OFF {
                    _mm512_set1_ps(*xsum.add(r * geo.groups + g))
                } else {
                    _mm512_setzero_ps()
                };
                let d0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[0], c0));
                let d1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[1], c1));
                f[0] = group_step::<OFF>(f[0], d0, s0, off0, xs);
                f[1] = group_step::<OFF>(f[1], d1, s1, off1, xs);
            }
        }
        let mut tmp = [0.0f32; Q_NR];
        for (r, f) in accf.iter().enumerate() {
            let xs = _mm512_set1_ps(xscale[r]);
            _mm512_storeu_ps(tmp.as_mut_ptr(), _mm512_mul_ps(f[0], xs));
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16), _mm512_mul_ps(f[1], xs));
            let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
            match bias {
                Some(b) => {
                    for ((o, t), bb) in out.iter_mut().zip(&tmp).zip(b) {
                        *o = t + bb;
                    }
                }
                None => out.copy_from_slice(&tmp[..cols]),
            }
        }
    }

    /// Tokens of a block up to which the AMX tiles read the weights in place rather than packed
    /// (GPT-2 124M shapes: 128 tokens 0.55 ms in place vs 0.60 packed, 512 tokens 1.77 vs 1.57).
    pub(crate) const IN_PLACE_MAX_TOKENS: usize = 128;

    /// One block of the W8A8 GEMM: tokens `t0 .. t1` × outputs `n0 .. n1`.
    ///
    /// `act` holds every token's packed activations (`geo.kp` bytes each), `xscale` their scales; `ys` is the whole `tokens × n` output; `panel`
    /// scratch of [`panel_bytes`]. With `AMX`, steps of 32 tokens run as AMX tiles when the groups allow
    /// it (`amx::x86::fits`); blocks of up to [`IN_PLACE_MAX_TOKENS`] read the weights in place when
    /// the rows allow it (`amx::x86::reads_rows`) and `act_t` holds the tokens as AMX B tiles
    /// (`amx::x86::tokens_as_b`, every whole tile of 16 tokens).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI must be available (and with `AMX`, `amx::available()`); `ys` valid for
    /// `t1 × n` floats and this block not written concurrently by anyone else.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_w8a8_block<const AMX: bool>(
        geo: &QGeom,
        values: &[i8],
        scales: &[f32],
        n: usize,
        act: &[u8],
        xscale: &[f32],
        ys: *mut f32,
        bias: Option<&[f32]>,
        (t0, t1): (usize, usize),
        (n0, n1): (usize, usize),
        panel: &mut [u8],
        act_t: &[u8],
    ) {
        use crate::amx::x86 as amx;
        assert!(act.len() >= t1 * geo.kp && xscale.len() >= t1 && panel.len() >= panel_bytes(geo));
        // With AMX, steps of 32 tokens are AMX tiles: for a few steps, on whole panels read in place
        // (no packing); for more, on the packed panel, which they reuse enough to pay for it.
        let amx_on = AMX && amx::fits(geo);
        let in_place = amx_on
            && t1 - t0 <= IN_PLACE_MAX_TOKENS
            && amx::reads_rows(geo)
            && act_t.len() >= t1 / 16 * 16 * geo.kp;
        assert!(!in_place || t0.is_multiple_of(16));
        let _tiles = if amx_on {
            Some(amx::Tiles::configure())
        } else {
            None
        };
        let mut o = n0;
        while o < n1 {
            let cols = (n1 - o).min(Q_NR);
            let b = bias.map(|b| &b[o..o + cols]);
            let mut t = t0;
            if in_place && cols == Q_NR {
                // The next 32 rows (contiguous), prefetched in shares over this block's passes.
                let (r0, r1) = ((o + Q_NR).min(n1), (o + 2 * Q_NR).min(n1));
                let next = &values[r0 * geo.k..r1 * geo.k];
                let passes = (t1 - t) / amx::MR;
                let share = next.len().div_ceil(passes.max(1)).div_ceil(64) * 64;
                let mut i = 0;
                while t1 - t >= amx::MR {
                    let (xsr, c) = (&xscale[t..t + amx::MR], ys.add(t * n + o));
                    let ahead =
                        &next[(i * share).min(next.len())..((i + 1) * share).min(next.len())];
                    amx::tile_rows(
                        geo,
                        values,
                        scales,
                        o,
                        act_t,
                        t / 16,
                        xsr,
                        bias,
                        c,
                        n,
                        ahead,
                    );
                    t += amx::MR;
                    i += 1;
                }
            }
            if t < t1 {
                pack_weights(geo, values, scales, o, cols, panel);
            }
            while t < t1 {
                if amx_on && t1 - t >= amx::MR {
                    let (a, c) = (act.as_ptr().add(t * geo.kp), ys.add(t * n + o));
                    let (xsr, none) = (&xscale[t..t + amx::MR], std::ptr::null());
                    let p = panel.as_ptr();
                    amx::tile::<false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols);
                    t += amx::MR;
                    continue;
                }
                let rows = (t1 - t).min(Q_MR);
                let a = act.as_ptr().add(t * geo.kp);
                let xsr = &xscale[t..t + rows];
                let c = ys.add(t * n + o);
                let (none, p) = (std::ptr::null(), panel.as_ptr());
                match rows {
                    6 => micro_vnni::<6, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    5 => micro_vnni::<5, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    4 => micro_vnni::<4, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    3 => micro_vnni::<3, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    2 => micro_vnni::<2, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    _ => micro_vnni::<1, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                }
                t += rows;
            }
            o += cols;
        }
    }

    // ------------------------------------------------------------------ AVX2 GEMM (prefill W8A8)
    //
    // `vpmaddwd` on i16 pairs: exact (|x·w| ≤ 127·128, summed in i32), no sign fix-up per product, and
    // on Zen 3 one multiply-pipe op per 16 products — where the few-token kernels' `vpsignb` +
    // `vpmaddubsw` + `vpmaddwd` take three per 32. Both operands are widened once: the activations per
    // token, the weights per packed panel (used by every token).

    /// ymm vectors of i32 lanes (8 outputs each) per AVX2 W8A8 GEMM panel.
    const W_NB: usize = 2;
    /// Outputs per AVX2 W8A8 GEMM panel.
    pub(crate) const W_NR: usize = 8 * W_NB;
    /// Tokens per AVX2 W8A8 GEMM micro-tile.
    pub(crate) const W_MR: usize = 4;

    /// Writes token activations, already quantized to `q`, as i16 in the group-padded layout of `geo`
    /// (`geo.kp` values; padding 0).
    pub(crate) fn pack_act_i16(geo: &QGeom, q: &[i8], dst: &mut [i16]) {
        dst[..geo.kp].fill(0);
        for g in 0..geo.groups {
            let src = &q[g * geo.group..g * geo.group + geo.len(g)];
            for (d, &v) in dst[g * geo.gp..].iter_mut().zip(src) {
                *d = v as i16;
            }
        }
    }

    /// i16 values of one packed AVX2 panel (then, as f32 bits in pairs of i16, the scales).
    pub(crate) fn panel_i16s(geo: &QGeom) -> usize {
        geo.kp * W_NR + geo.groups * W_NR * 2
    }

    /// Packs outputs `o0 .. o0 + cols` (≤ `W_NR`) of `[out, in]` INT8 weights for [`micro_avx2`]: per
    /// pair of K, `W_NR` outputs × 2 i16 (one i32 lane per output); then the scale per group and output.
    ///
    /// # Safety
    /// AVX2 must be available; `dst` holds [`panel_i16s`] values; the rows exist in `values`/`scales`.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn pack_weights_i16(
        geo: &QGeom,
        values: &[i8],
        scales: &[f32],
        o0: usize,
        cols: usize,
        dst: &mut [i16],
    ) {
        assert!(
            cols <= W_NR
                && dst.len() >= panel_i16s(geo)
                && values.len() >= (o0 + cols) * geo.k
                && scales.len() >= (o0 + cols) * geo.groups
        );
        let (vals, sc) = dst.split_at_mut(geo.kp * W_NR);
        pack_values_i16(geo, values, o0, cols, vals);
        sc.fill(0);
        for j in 0..cols {
            for g in 0..geo.groups {
                put_f32(sc, g * W_NR + j, scales[(o0 + j) * geo.groups + g]);
            }
        }
    }

    /// Stores `v` as f32 number `i` of a panel's float part (pairs of i16).
    pub(crate) fn put_f32(dst: &mut [i16], i: usize, v: f32) {
        let bits = v.to_bits();
        dst[2 * i] = bits as u16 as i16;
        dst[2 * i + 1] = (bits >> 16) as u16 as i16;
    }

    /// The value part of [`pack_weights_i16`]: rows `o0 .. o0 + cols` of `values` (`[out, geo.k]`) as i16
    /// pairs of K, `W_NR` outputs per pair (`geo.kp · W_NR` values, zero where there is no weight).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn pack_values_i16(
        geo: &QGeom,
        values: &[i8],
        o0: usize,
        cols: usize,
        vals: &mut [i16],
    ) {
        assert!(cols <= W_NR && vals.len() >= geo.kp * W_NR && values.len() >= (o0 + cols) * geo.k);
        vals.fill(0);
        let k = geo.k;
        let lane = |p: usize, j: usize| 2 * (p * W_NR + j);
        for j0 in (0..cols).step_by(8) {
            let rows = (cols - j0).min(8);
            for g in 0..geo.groups {
                let (lo, len) = (g * geo.group, geo.len(g));
                let p0 = g * geo.gp / 2;
                // 16 values (8 pairs) of 8 rows at a time: widen, then an 8×8 transpose of i32 lanes.
                let mut e = 0;
                if rows == 8 {
                    while e + 16 <= len {
                        let v: [__m256i; 8] = std::array::from_fn(|r| {
                            let src = values.as_ptr().add((o0 + j0 + r) * k + lo + e);
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(src as *const __m128i))
                        });
                        for (p, t) in transpose8x8(v).into_iter().enumerate() {
                            let d = vals.as_mut_ptr().add(lane(p0 + e / 2 + p, j0));
                            _mm256_storeu_si256(d as *mut __m256i, t);
                        }
                        e += 16;
                    }
                }
                for r in 0..rows {
                    let row = &values[(o0 + j0 + r) * k + lo..(o0 + j0 + r) * k + lo + len];
                    for (i, &v) in row.iter().enumerate().skip(e) {
                        vals[lane(p0 + i / 2, j0 + r) + i % 2] = v as i16;
                    }
                }
            }
        }
    }

    /// Row `p` of the result: lane `p` (an i32) of each of the eight inputs.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn transpose8x8(v: [__m256i; 8]) -> [__m256i; 8] {
        let a: [__m256i; 8] = std::array::from_fn(|i| {
            let (x, y) = (v[i & !1], v[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(x, y)
            } else {
                _mm256_unpackhi_epi32(x, y)
            }
        });
        // a[0] = r0r1 lanes (0,1 | 4,5), a[1] = r0r1 (2,3 | 6,7), a[2] = r2r3 (0,1 | 4,5), ...
        let b: [__m256i; 8] = std::array::from_fn(|i| {
            let (x, y) = (a[(i / 4) * 4 + i % 2], a[(i / 4) * 4 + 2 + i % 2]);
            if (i / 2) % 2 == 0 {
                _mm256_unpacklo_epi64(x, y)
            } else {
                _mm256_unpackhi_epi64(x, y)
            }
        });
        // b[0]: lane 0 of rows 0..4 (| lane 4), b[2]: lane 1, b[1]: lane 2, b[3]: lane 3; b[4..]: rows 4..8.
        let order = [0, 2, 1, 3];
        std::array::from_fn(|p| {
            let (x, y) = (b[order[p % 4]], b[4 + order[p % 4]]);
            if p < 4 {
                _mm256_permute2x128_si256::<0x20>(x, y)
            } else {
                _mm256_permute2x128_si256::<0x31>(x, y)
            }
        })
    }

    /// `R` tokens × `W_NR` outputs over one packed panel; writes `(Σ_g dot_g·s_g)·x_scale + bias`
    /// with [`w8a8_rows_avx2`]'s float operations (a product, then a sum, per group), so the bits are
    /// matvec's. With `OFF` (sub-8-bit weights `s·code + off`) the panel holds the offsets after the
    /// scales, `xsum` the tokens' per-group `Σ xq` as f32 (stride `geo.groups`), and the group's step is
    /// `acc += s·dot + off·Σxq`, as in `quant.rs`.
    ///
    /// # Safety
    /// AVX2; `a` holds `R` rows of `geo.kp` i16 at stride `lda`; `panel` is from [`pack_weights_i16`]
    /// (or `quant::x86::pack_panel`); `c` valid for `R` rows (stride `ldc`) of `cols` floats; with
    /// `OFF`, `xsum` holds `R · geo.groups` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn micro_avx2<const R: usize, const OFF: bool>(
        geo: &QGeom,
        a: *const i16,
        lda: usize,
        xscale: &[f32],
        xsum: *const f32,
        panel: *const i16,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let sc = panel.add(geo.kp * W_NR) as *const f32;
        let offs = sc.add(geo.groups * W_NR);
        let mut accf = [[_mm256_setzero_ps(); W_NB]; R];
        for g in 0..geo.groups {
            let mut acci = [[_mm256_setzero_si256(); W_NB]; R];
            let p0 = g * geo.gp / 2;
            let p1 = p0 + geo.len(g).div_ceil(2);
            for p in p0..p1 {
                let b = panel.add(p * W_NR * 2);
                let bv: [__m256i; W_NB] =
                    std::array::from_fn(|i| _mm256_loadu_si256(b.add(16 * i) as *const __m256i));
                for (r, acc) in acci.iter_mut().enumerate() {
                    let av =
                        _mm256_set1_epi32((a.add(r * lda + 2 * p) as *const i32).read_unaligned());
                    for i in 0..W_NB {
                        acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(av, bv[i]));
                    }
                }
            }
            let s: [__m256; W_NB] =
                std::array::from_fn(|i| _mm256_loadu_ps(sc.add(g * W_NR + 8 * i)));
            if OFF {
                let off: [__m256; W_NB] =
                    std::array::from_fn(|i| _mm256_loadu_ps(offs.add(g * W_NR + 8 * i)));
                for (r, (acc, f)) in acci.iter().zip(accf.iter_mut()).enumerate() {
                    let xs = _mm256_set1_ps(*xsum.add(r * geo.groups + g));
                    for i in 0..W_NB {
                        let t = _mm256_add_ps(
                            _mm256_mul_ps(s[i], _mm256_cvtepi32_ps(acc[i])),
                            _mm256_mul_ps(off[i], xs),
                        );
                        f[i] = _mm256_add_ps(f[i], t);
                    }
                }
            } else {
                for (acc, f) in acci.iter().zip(accf.iter_mut()) {
                    for i in 0..W_NB {
                        f[i] = _mm256_add_ps(f[i], _mm256_mul_ps(_mm256_cvtepi32_ps(acc[i]), s[i]));
                    }
                }
            }
        }
        let mut tmp = [0.0f32; W_NR];
        for (r, f) in accf.iter().enumerate() {
            let xs = _mm256_set1_ps(xscale[r]);
            for i in 0..W_NB {
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * i), _mm256_mul_ps(f[i], xs));
            }
            let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
            match bias {
                Some(b) => {
                    for ((o, t), bb) in out.iter_mut().zip(&tmp).zip(b) {
                        *o = t + bb;
                    }
                }
                None => out.copy_from_slice(&tmp[..cols]),
            }
        }
    }

    /// One block of the AVX2 W8A8 GEMM: tokens `t0 .. t1` × outputs `n0 .. n1`.
    ///
    /// `act` holds every token's activations from [`pack_act_i16`] (`geo.kp` each), `xscale` their
    /// scales; `ys` is the whole `tokens × n` output; `panel` scratch of [`panel_i16s`].
    ///
    /// # Safety
    /// AVX2 must be available; `ys` valid for `t1 × n` floats and this block not written concurrently
    /// by anyone else.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_w8a8_block_avx2(
        geo: &QGeom,
        values: &[i8],
        scales: &[f32],
        n: usize,
        act: &[i16],
        xscale: &[f32],
        ys: *mut f32,
        bias: Option<&[f32]>,
        (t0, t1): (usize, usize),
        (n0, n1): (usize, usize),
        panel: &mut [i16],
        _act_t: &[i16],
    ) {
        assert!(act.len() >= t1 * geo.kp && xscale.len() >= t1 && panel.len() >= panel_i16s(geo));
        let mut o = n0;
        while o < n1 {
            let cols = (n1 - o).min(W_NR);
            pack_weights_i16(geo, values, scales, o, cols, panel);
            let b = bias.map(|b| &b[o..o + cols]);
            let mut t = t0;
            while t < t1 {
                let rows = (t1 - t).min(W_MR);
                let a = act.as_ptr().add(t * geo.kp);
                let xsr = &xscale[t..t + rows];
                let c = ys.add(t * n + o);
                let p = panel.as_ptr();
                let none = std::ptr::null();
                match rows {
                    4 => micro_avx2::<4, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    3 => micro_avx2::<3, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    2 => micro_avx2::<2, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                    _ => micro_avx2::<1, false>(geo, a, geo.kp, xsr, none, p, b, c, n, cols),
                }
                t += rows;
            }
            o += cols;
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    #[test]
    fn reduce16_sums_each_vector_into_its_lane() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let vals: Vec<[i32; 16]> = (0..16)
            .map(|i| {
                std::array::from_fn(|l| {
                    (i * 1000 + l * 7) as i32 - 5000 + (l as i32 % 3) * 1_000_000
                })
            })
            .collect();
        // SAFETY: AVX-512 F checked above; the arrays hold 16 i32 each.
        let got = unsafe {
            let v: [__m512i; 16] =
                std::array::from_fn(|i| _mm512_loadu_si512(vals[i].as_ptr() as *const _));
            let mut out = [0i32; 16];
            _mm512_storeu_si512(out.as_mut_ptr() as *mut _, super::x86::reduce16(v));
            out
        };
        for (i, v) in vals.iter().enumerate() {
            assert_eq!(got[i], v.iter().sum::<i32>(), "lane {i}");
        }
        // SAFETY: as above.
        let got4 = unsafe {
            let v: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(vals[i].as_ptr() as *const _));
            let mut out = [0i32; 4];
            _mm_storeu_si128(out.as_mut_ptr() as *mut _, super::x86::reduce4(v));
            out
        };
        for (i, v) in vals[..4].iter().enumerate() {
            assert_eq!(got4[i], v.iter().sum::<i32>(), "reduce4 lane {i}");
        }
    }
}
