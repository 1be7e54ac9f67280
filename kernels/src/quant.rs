//! 4- and 3-bit weights ([`QuantRef`]): the packed block format and the W4A8 / W3A8 row kernels.
//!
//! A row is cut into blocks of 32 inputs, each packed so one SIMD load unpacks it without moving
//! bytes across 128-bit lanes:
//! * 4 bits, 16 bytes: byte `j` holds code `j` (low nibble) and code `j + 16` (high nibble);
//! * 3 bits, 12 bytes: byte `j < 8` holds the two low bits of codes `j, j+8, j+16, j+24` (bits 0–1,
//!   2–3, 4–5, 6–7); bytes 8..12 are a little-endian `u32` whose bit `e` is code `e`'s high bit.
//!
//! Inputs past the end of a row are code 0 (the activations there are 0 too).
//!
//! Products quantize the activations per token to INT8 (`x ≈ xq·xs`, as W8A8 does) and compute per
//! group the exact integer sums `Σ q·xq` and `Σ xq`, then, in f32 and in group order,
//! `acc += scale·Σq·xq + off·Σxq` with `off = min` (asymmetric) or `−2^(bits−1)·scale`, and
//! `y = acc·xs`. Every path does these float operations in the same order, so every path gives the
//! reference's bits ([`crate::reference::quant_row`]).

use crate::matrix::QuantRef;

/// Inputs per packed block.
pub const BLOCK: usize = 32;

/// Packed bytes of one block of 32 codes.
pub fn block_bytes(bits: u8) -> usize {
    match bits {
        4 => 16,
        3 => 12,
        _ => panic!("{bits}-bit blocks are not supported (3 or 4)"),
    }
}

/// Packed bytes of a row of `k` inputs.
pub fn row_bytes(bits: u8, k: usize) -> usize {
    k.div_ceil(BLOCK) * block_bytes(bits)
}

/// Packs one row of codes (each `< 2^bits`) into `out` (`row_bytes(bits, codes.len())` bytes).
///
/// # Panics
/// When a code does not fit in `bits` or `out` has the wrong length.
pub fn pack_row(bits: u8, codes: &[u8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        row_bytes(bits, codes.len()),
        "pack_row: output length"
    );
    assert!(
        codes.iter().all(|&c| c >> bits == 0),
        "pack_row: a code does not fit in {bits} bits"
    );
    let bb = block_bytes(bits);
    for (b, dst) in out.chunks_exact_mut(bb).enumerate() {
        let mut c = [0u8; BLOCK];
        let src = &codes[b * BLOCK..codes.len().min((b + 1) * BLOCK)];
        c[..src.len()].copy_from_slice(src);
        dst.fill(0);
        if bits == 4 {
            for j in 0..16 {
                dst[j] = c[j] | c[j + 16] << 4;
            }
        } else {
            let mut high = 0u32;
            for j in 0..8 {
                dst[j] =
                    c[j] & 3 | (c[j + 8] & 3) << 2 | (c[j + 16] & 3) << 4 | (c[j + 24] & 3) << 6;
            }
            for (e, &v) in c.iter().enumerate() {
                high |= ((v >> 2) as u32 & 1) << e;
            }
            dst[8..12].copy_from_slice(&high.to_le_bytes());
        }
    }
}

/// The 32 codes of one packed block.
#[inline]
pub fn unpack_block(bits: u8, block: &[u8], out: &mut [u8; BLOCK]) {
    if bits == 4 {
        for j in 0..16 {
            out[j] = block[j] & 15;
            out[j + 16] = block[j] >> 4;
        }
    } else {
        let high = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
        for e in 0..BLOCK {
            let low = block[e % 8] >> (2 * (e / 8)) & 3;
            out[e] = low | ((high >> e) as u8 & 1) << 2;
        }
    }
}

/// Code `i` of row `o`.
pub fn code(q: &QuantRef, o: usize, i: usize) -> u8 {
    let bb = block_bytes(q.bits);
    let at = o * q.row_bytes() + i / BLOCK * bb;
    let mut c = [0u8; BLOCK];
    unpack_block(q.bits, &q.packed[at..at + bb], &mut c);
    c[i % BLOCK]
}

/// Scale and offset (`off`: the value of code 0) of group `g` of row `o`.
#[inline]
pub fn group_params(q: &QuantRef, o: usize, g: usize) -> (f32, f32) {
    let at = o * q.groups_per_row() + g;
    let s = q.scales[at].to_f32();
    let off = match q.mins {
        Some(m) => m[at].to_f32(),
        None => -((1u32 << (q.bits - 1)) as f32) * s,
    };
    (s, off)
}

/// Weight `(o, i)` as f32.
pub fn weight(q: &QuantRef, o: usize, i: usize) -> f32 {
    let (s, off) = group_params(q, o, i / q.group);
    s * code(q, o, i) as f32 + off
}

/// Activations quantized for [`QuantRef`] products: `xq` padded with zeros to whole blocks, and `Σ xq`
/// per group.
pub fn group_sums(xq: &[i8], group: usize, k: usize, sums: &mut [i32]) {
    for (g, s) in sums.iter_mut().enumerate() {
        let lo = g * group;
        *s = xq[lo..k.min(lo + group)].iter().map(|&v| v as i32).sum();
    }
}

/// Rows `o0 .. o0 + y.len()` on the portable path: blocks unpacked into bytes, integer sums in i32.
/// `xq` holds whole blocks (zero-padded), `sums` the per-group `Σ xq`.
pub(crate) fn rows_portable(
    q: &QuantRef,
    xq: &[i8],
    sums: &[i32],
    xs: f32,
    o0: usize,
    y: &mut [f32],
) {
    let (bb, rb, gpr) = (block_bytes(q.bits), q.row_bytes(), q.groups_per_row());
    let bpg = q.group / BLOCK;
    let blocks = q.in_dim.div_ceil(BLOCK);
    assert!(xq.len() >= blocks * BLOCK && sums.len() == gpr);
    let mut c = [0u8; BLOCK];
    for (r, yo) in y.iter_mut().enumerate() {
        let o = o0 + r;
        let row = &q.packed[o * rb..(o + 1) * rb];
        let mut acc = 0.0f32;
        for (g, &xsum) in sums.iter().enumerate() {
            let mut isum = 0i32;
            for b in g * bpg..blocks.min((g + 1) * bpg) {
                unpack_block(q.bits, &row[b * bb..(b + 1) * bb], &mut c);
                let x = &xq[b * BLOCK..(b + 1) * BLOCK];
                isum += c
                    .iter()
                    .zip(x)
                    .map(|(&c, &x)| c as i32 * x as i32)
                    .sum::<i32>();
            }
            let (s, off) = group_params(q, o, g);
            acc += s * isum as f32 + off * xsum as f32;
        }
        *yo = acc * xs;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{block_bytes, group_params, BLOCK};
    use crate::int8::x86::{
        micro_avx2, micro_vnni, pack_values_i16, put_f32, reduce16, QGeom, Q_MR, Q_NR, W_MR, W_NR,
    };
    use crate::matrix::QuantRef;
    use crate::simd::PREFETCH_BYTES;

    /// The 32 codes of a 4-bit block as bytes: the 16 bytes in both lanes, the high lane shifted by 4.
    #[inline(always)]
    unsafe fn unpack4(p: *const u8) -> __m256i {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
        let v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
        _mm256_and_si256(v, _mm256_set1_epi8(15))
    }

    /// The 32 codes of a 3-bit block as bytes.
    #[inline(always)]
    unsafe fn unpack3(p: *const u8) -> __m256i {
        let low = _mm256_set1_epi64x((p as *const i64).read_unaligned());
        let low = _mm256_srlv_epi64(low, _mm256_set_epi64x(6, 4, 2, 0));
        let low = _mm256_and_si256(low, _mm256_set1_epi8(3));
        let high = _mm256_set1_epi32((p.add(8) as *const i32).read_unaligned());
        // Byte e takes the byte of the high bits holding bit e, then tests its bit.
        let sel = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let high = _mm256_and_si256(_mm256_shuffle_epi8(high, sel), bit);
        let high = _mm256_and_si256(_mm256_cmpeq_epi8(high, bit), _mm256_set1_epi8(4));
        _mm256_or_si256(low, high)
    }

    /// i16 values of one packed panel of the sub-8-bit GEMM: the codes as i16 pairs of K, then per group
    /// `W_NR` f32 scales and `W_NR` f32 offsets.
    pub(crate) fn panel_i16s(geo: &QGeom) -> usize {
        geo.kp * W_NR + geo.groups * W_NR * 4
    }

    /// Packs outputs `o0 .. o0 + cols` (≤ `W_NR`) of `q` for the AVX2 integer GEMM (`int8.rs`'s
    /// `micro_avx2` with offsets): each row's codes unpacked into `codes` (`W_NR · k` bytes of scratch)
    /// then laid out as the INT8 panels are, and each group's scale and offset as f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `q` must have passed `MatRef::check`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn pack_panel(
        geo: &QGeom,
        q: &QuantRef,
        o0: usize,
        cols: usize,
        codes: &mut [i8],
        dst: &mut [i16],
    ) {
        assert!(cols <= W_NR && dst.len() >= panel_i16s(geo));
        unpack_rows(q, o0, cols, codes);
        let (vals, fl) = dst.split_at_mut(geo.kp * W_NR);
        pack_values_i16(geo, codes, 0, cols, vals);
        fl.fill(0);
        for j in 0..cols {
            for g in 0..geo.groups {
                let (s, off) = group_params(q, o0 + j, g);
                put_f32(fl, g * W_NR + j, s);
                put_f32(fl, (geo.groups + g) * W_NR + j, off);
            }
        }
    }

    /// Rows `o0 .. o0 + cols` of `q` unpacked: `codes[j·k + i]` = code `(o0 + j, i)`.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    unsafe fn unpack_rows(q: &QuantRef, o0: usize, cols: usize, codes: &mut [i8]) {
        let (k, bb, rb) = (q.in_dim, block_bytes(q.bits), q.row_bytes());
        assert!(codes.len() >= cols * k && q.packed.len() >= (o0 + cols) * rb);
        let mut tmp = [0u8; BLOCK];
        for j in 0..cols {
            let row = q.packed.as_ptr().add((o0 + j) * rb);
            let dst = &mut codes[j * k..(j + 1) * k];
            for b in 0..k.div_ceil(BLOCK) {
                let c = if q.bits == 4 {
                    unpack4(row.add(b * bb))
                } else {
                    unpack3(row.add(b * bb))
                };
                let at = b * BLOCK;
                if at + BLOCK <= k {
                    _mm256_storeu_si256(dst.as_mut_ptr().add(at) as *mut __m256i, c);
                } else {
                    _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, c);
                    for (d, &v) in dst[at..].iter_mut().zip(&tmp) {
                        *d = v as i8;
                    }
                }
            }
        }
    }

    /// Bytes of one packed panel of the sub-8-bit VNNI GEMM: the codes in quads of K and the `128·Σ`
    /// corrections as `int8.rs`'s W8A8 panels, then per group `Q_NR` f32 scales and `Q_NR` f32 offsets.
    pub(crate) fn panel_bytes_vnni(geo: &QGeom) -> usize {
        geo.kp * Q_NR + geo.groups * Q_NR * 12
    }

    /// Packs outputs `o0 .. o0 + cols` (≤ `Q_NR`) of `q` for the VNNI micro-kernel (`int8.rs`'s
    /// `micro_vnni` with offsets), straight from the packed blocks: sixteen rows at a time, each dword
    /// of a block gathered across the rows and its codes masked out in place, so a quad of codes
    /// (4 consecutive inputs) of 16 rows is one vector; `128·Σcode` per group by `vpdpbusd` with ones.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI, AVX2 and F16C must be available; `q` must have passed `MatRef::check`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(crate) unsafe fn pack_panel_vnni(
        geo: &QGeom,
        q: &QuantRef,
        o0: usize,
        cols: usize,
        dst: &mut [u8],
    ) {
        let (bb, rb) = (block_bytes(q.bits), q.row_bytes());
        assert!(cols <= Q_NR && dst.len() >= panel_bytes_vnni(geo));
        assert!(q.packed.len() >= (o0 + cols) * rb && rb * 16 < i32::MAX as usize);
        // Groups are whole blocks (`MatRef::check`), so input i sits at byte i of the padded row.
        assert!(geo.gp == geo.group && geo.group.is_multiple_of(BLOCK));
        let (nq, qpg) = (geo.kp / 4, geo.group / 4);
        let (vals, rest) = dst.split_at_mut(geo.kp * Q_NR);
        let (corr, fl) = rest.split_at_mut(geo.groups * Q_NR * 4);
        let zero = _mm512_setzero_si512();
        let (m15, m3, ones) = (
            _mm512_set1_epi8(15),
            _mm512_set1_epi8(3),
            _mm512_set1_epi8(1),
        );
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(rb as i32),
        );
        for r0 in (0..Q_NR).step_by(16) {
            let live = cols.saturating_sub(r0).min(16);
            let mask = ((1u32 << live) - 1) as __mmask16;
            // Rows past `cols` are masked off: gathered as 0, never read.
            let base = q.packed.as_ptr().wrapping_add((o0 + r0) * rb);
            let mut sum = zero;
            for qq in (0..nq).step_by(8) {
                let bp = base.wrapping_add(qq / 8 * bb);
                let gather = |d: usize| {
                    _mm512_mask_i32gather_epi32::<1>(zero, mask, idx, bp.wrapping_add(4 * d) as _)
                };
                let quads: [__m512i; 8] = if q.bits == 4 {
                    // Dword d holds quad d in its low nibbles and quad d + 4 in its high ones.
                    let g = [gather(0), gather(1), gather(2), gather(3)];
                    std::array::from_fn(|i| {
                        let v = if i < 4 {
                            g[i]
                        } else {
                            _mm512_srli_epi32::<4>(g[i - 4])
                        };
                        _mm512_and_si512(v, m15)
                    })
                } else {
                    // Quad i: its two low bits in dword i % 2 at bit 2·(i / 2) of each byte; its high
                    // bits are bits 4i..4i+4 of dword 2, spread to bit 2 of each byte by a multiply.
                    let (l0, l1, hb) = (gather(0), gather(1), gather(2));
                    std::array::from_fn(|i| {
                        let l = if i % 2 == 0 { l0 } else { l1 };
                        let low = _mm512_and_si512(
                            _mm512_srlv_epi32(l, _mm512_set1_epi32(2 * (i / 2) as i32)),
                            m3,
                        );
                        let h = _mm512_and_si512(
                            _mm512_srlv_epi32(hb, _mm512_set1_epi32(4 * i as i32)),
                            _mm512_set1_epi32(15),
                        );
                        let h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x0020_4081));
                        let high = _mm512_and_si512(_mm512_slli_epi32::<2>(h), _mm512_set1_epi8(4));
                        _mm512_or_si512(low, high)
                    })
                };
                for (i, &v) in quads.iter().enumerate().take(nq - qq) {
                    let qi = qq + i;
                    let at = vals.as_mut_ptr().add((qi * Q_NR + r0) * 4);
                    _mm512_storeu_si512(at as *mut _, v);
                    sum = _mm512_dpbusd_epi32(sum, v, ones);
                    if (qi + 1) % qpg == 0 || qi + 1 == nq {
                        let c = corr.as_mut_ptr().add((qi / qpg * Q_NR + r0) * 4);
                        _mm512_storeu_si512(c as *mut _, _mm512_slli_epi32::<7>(sum));
                        sum = zero;
                    }
                }
            }
        }
        fl[..geo.groups * Q_NR * 8].fill(0);
        for j in 0..cols {
            for g in 0..geo.groups {
                let (s, off) = group_params(q, o0 + j, g);
                let (a, b) = ((g * Q_NR + j) * 4, ((geo.groups + g) * Q_NR + j) * 4);
                fl[a..a + 4].copy_from_slice(&s.to_ne_bytes());
                fl[b..b + 4].copy_from_slice(&off.to_ne_bytes());
            }
        }
    }

    /// [`gemm_block`] with AVX-512 VNNI: activations as `int8.rs`'s `pack_act` lays them out (u8,
    /// offset by 128), panels of [`panel_bytes_vnni`] packed from the blocks (no scratch for codes:
    /// `_codes` may be empty). With `AMX`, whole steps of 32 tokens run as AMX tiles when the groups
    /// allow it (`amx::x86::fits`; the caller then guarantees `amx::available()`).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C must be available; otherwise as [`gemm_block`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_block_vnni<const AMX: bool>(
        geo: &QGeom,
        q: &QuantRef,
        act: &[u8],
        xscale: &[f32],
        xsum: &[f32],
        ys: *mut f32,
        bias: Option<&[f32]>,
        (t0, t1): (usize, usize),
        (n0, n1): (usize, usize),
        panel: &mut [u8],
        _codes: &mut [i8],
    ) {
        let n = q.out_dim;
        assert!(
            act.len() >= t1 * geo.kp
                && xscale.len() >= t1
                && xsum.len() >= t1 * geo.groups
                && panel.len() >= panel_bytes_vnni(geo)
                && n1 <= n
        );
        let amx = AMX && crate::amx::x86::fits(geo);
        let _tiles = if amx {
            Some(crate::amx::x86::Tiles::configure())
        } else {
            None
        };
        let mut o = n0;
        while o < n1 {
            let cols = (n1 - o).min(Q_NR);
            pack_panel_vnni(geo, q, o, cols, panel);
            let b = bias.map(|b| &b[o..o + cols]);
            let mut t = t0;
            while t < t1 {
                if amx && t1 - t >= crate::amx::x86::MR {
                    let (a, c) = (act.as_ptr().add(t * geo.kp), ys.add(t * n + o));
                    let (xsr, xsm) = (
                        &xscale[t..t + crate::amx::x86::MR],
                        xsum.as_ptr().add(t * geo.groups),
                    );
                    let p = panel.as_ptr();
                    crate::amx::x86::tile::<true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols);
                    t += crate::amx::x86::MR;
                    continue;
                }
                let rows = (t1 - t).min(Q_MR);
                let a = act.as_ptr().add(t * geo.kp);
                let (xsr, xsm) = (&xscale[t..t + rows], xsum.as_ptr().add(t * geo.groups));
                let c = ys.add(t * n + o);
                let p = panel.as_ptr();
                match rows {
                    6 => micro_vnni::<6, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    5 => micro_vnni::<5, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    4 => micro_vnni::<4, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    3 => micro_vnni::<3, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    2 => micro_vnni::<2, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    _ => micro_vnni::<1, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                }
                t += rows;
            }
            o += cols;
        }
    }

    /// One block of the sub-8-bit GEMM: tokens `t0 .. t1` × outputs `n0 .. n1`, with the arithmetic of
    /// [`rows_avx2`] per token (so matvec's bits).
    ///
    /// `act` holds every token's INT8 activations as i16 in `geo`'s layout (`int8.rs`'s
    /// `pack_act_i16`), `xscale` their scales, `xsum` their per-group `Σ xq` as f32 (`geo.groups` per
    /// token); `ys` is the whole `tokens × n` output; `panel` and `codes` scratch of [`panel_i16s`] and
    /// `W_NR · k`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `q` must have passed `MatRef::check`; `ys` valid for
    /// `t1 × n` floats and this block not written concurrently by anyone else.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_block(
        geo: &QGeom,
        q: &QuantRef,
        act: &[i16],
        xscale: &[f32],
        xsum: &[f32],
        ys: *mut f32,
        bias: Option<&[f32]>,
        (t0, t1): (usize, usize),
        (n0, n1): (usize, usize),
        panel: &mut [i16],
        codes: &mut [i8],
    ) {
        let n = q.out_dim;
        assert!(
            act.len() >= t1 * geo.kp
                && xscale.len() >= t1
                && xsum.len() >= t1 * geo.groups
                && panel.len() >= panel_i16s(geo)
                && n1 <= n
        );
        let mut o = n0;
        while o < n1 {
            let cols = (n1 - o).min(W_NR);
            pack_panel(geo, q, o, cols, codes, panel);
            let b = bias.map(|b| &b[o..o + cols]);
            let mut t = t0;
            while t < t1 {
                let rows = (t1 - t).min(W_MR);
                let a = act.as_ptr().add(t * geo.kp);
                let (xsr, xsm) = (&xscale[t..t + rows], xsum.as_ptr().add(t * geo.groups));
                let c = ys.add(t * n + o);
                let p = panel.as_ptr();
                match rows {
                    4 => micro_avx2::<4, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    3 => micro_avx2::<3, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    2 => micro_avx2::<2, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                    _ => micro_avx2::<1, true>(geo, a, geo.kp, xsr, xsm, p, b, c, n, cols),
                }
                t += rows;
            }
            o += cols;
        }
    }

    /// Rows `o0 .. o0 + y.len()` with AVX-512 VNNI: sixteen rows per pass share every load of `xq`;
    /// the codes are `vpdpbusd`'s unsigned operand, the activations its signed one (exact, no offset
    /// to undo). 4 bits: four blocks per 64-byte load, its low and its high nibbles each one
    /// `vpdpbusd` against the activations regrouped to match (groups of 32 and 64: two blocks unpacked
    /// per `vpdpbusd`); 3 bits: two blocks unpacked per `vpdpbusd`. Then the sixteen rows' group sums
    /// by one tree
    /// (`int8.rs`'s `reduce16`), and the group's float step for the sixteen rows in one vector, in the
    /// reference's order.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C must be available; otherwise as [`rows_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(crate) unsafe fn rows_vnni(
        q: &QuantRef,
        xq: &[i8],
        sums: &[i32],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let blocks = q.in_dim.div_ceil(BLOCK);
        let gpr = q.groups_per_row();
        assert!(xq.len() >= blocks * BLOCK && sums.len() == gpr);
        assert!(q.packed.len() >= (o0 + y.len()) * q.row_bytes());
        assert!(q.scales.len() >= (o0 + y.len()) * gpr);
        assert!(q.mins.is_none_or(|m| m.len() >= (o0 + y.len()) * gpr));
        match q.bits {
            4 => rows_vnni_r::<4>(q, xq, sums, xs, o0, y),
            _ => rows_vnni_r::<3>(q, xq, sums, xs, o0, y),
        }
    }

    /// The codes of one block (`two`: of two consecutive blocks) as 64 bytes, zero past the end.
    #[inline(always)]
    unsafe fn codes64<const BITS: u8>(p: *const u8, two: bool) -> __m512i {
        if BITS == 4 {
            if two {
                // Bytes [b0 | b1] → 128-bit lanes [b0 | b0 | b1 | b1], the odd lanes' nibbles high.
                let v = _mm512_castsi256_si512(_mm256_loadu_si256(p as *const __m256i));
                let v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), v);
                let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
                _mm512_and_si512(v, _mm512_set1_epi8(15))
            } else {
                _mm512_zextsi256_si512(unpack4(p))
            }
        } else {
            let lo = _mm512_zextsi256_si512(unpack3(p));
            if two {
                _mm512_inserti64x4::<1>(lo, unpack3(p.add(12)))
            } else {
                lo
            }
        }
    }

    /// The mask of the first `n` (≤ 64) bytes of a vector.
    #[inline(always)]
    fn bytes_mask(n: usize) -> u64 {
        if n >= 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    #[inline(always)]
    unsafe fn rows_vnni_r<const BITS: u8>(
        q: &QuantRef,
        xq: &[i8],
        sums: &[i32],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let (bb, rb, gpr) = (block_bytes(BITS), q.row_bytes(), q.groups_per_row());
        let bpg = q.group / BLOCK;
        let blocks = q.in_dim.div_ceil(BLOCK);
        let half = _mm512_set1_ps(-((1u32 << (BITS - 1)) as f32));
        let (scales, mins) = (
            q.scales.as_ptr() as *const u16,
            q.mins.map(|m| m.as_ptr() as *const u16),
        );
        let zero = _mm512_setzero_si512();
        let m15 = _mm512_set1_epi8(15);
        let mut r = 0;
        while r < y.len() {
            let rows = (y.len() - r).min(16);
            let rw: [usize; 16] = std::array::from_fn(|j| o0 + r + j.min(rows - 1));
            let p: [*const u8; 16] = std::array::from_fn(|j| q.packed.as_ptr().add(rw[j] * rb));
            let mut acc = _mm512_setzero_ps();
            for (g, &xsum) in sums.iter().enumerate() {
                let mut d = [zero; 16];
                let (mut b, b1) = (g * bpg, blocks.min((g + 1) * bpg));
                // Four blocks (three at a group's or row's end): 64 bytes of a row, low nibbles codes
                // 0..16 of each block, high nibbles codes 16..32; the activations regrouped to match
                // (two shuffles shared by the sixteen rows), zero past the group's end. Fewer blocks
                // (groups of 32 or 64) go two per instruction below, which wastes no lanes.
                while BITS == 4 && b1 - b >= 3 {
                    let n = (b1 - b).min(4);
                    let xp = xq.as_ptr().add(b * BLOCK);
                    let (xa, xb) = if n == 4 {
                        (
                            _mm512_loadu_si512(xp as *const _),
                            _mm512_loadu_si512(xp.add(64) as *const _),
                        )
                    } else {
                        // Masked-off bytes are neither read nor faulted on.
                        (
                            _mm512_maskz_loadu_epi8(bytes_mask(n * BLOCK), xp),
                            _mm512_maskz_loadu_epi8(
                                bytes_mask((n * BLOCK).saturating_sub(64)),
                                xp.wrapping_add(64),
                            ),
                        )
                    };
                    let xlo = _mm512_shuffle_i64x2::<0b10_00_10_00>(xa, xb);
                    let xhi = _mm512_shuffle_i64x2::<0b11_01_11_01>(xa, xb);
                    let wmask = bytes_mask(n * bb);
                    for j in 0..16 {
                        let at = p[j].add(b * bb);
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
                        let w = if n == 4 {
                            _mm512_loadu_si512(at as *const _)
                        } else {
                            _mm512_maskz_loadu_epi8(wmask, at as *const i8)
                        };
                        let lo = _mm512_and_si512(w, m15);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), m15);
                        d[j] = _mm512_dpbusd_epi32(d[j], lo, xlo);
                        d[j] = _mm512_dpbusd_epi32(d[j], hi, xhi);
                    }
                    b += n;
                }
                while b < b1 {
                    let two = b + 2 <= b1;
                    let xp = xq.as_ptr().add(b * BLOCK);
                    let x = if two {
                        _mm512_loadu_si512(xp as *const _)
                    } else {
                        _mm512_maskz_loadu_epi8(u32::MAX as u64, xp)
                    };
                    for j in 0..16 {
                        let at = p[j].add(b * bb);
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
                        d[j] = _mm512_dpbusd_epi32(d[j], codes64::<BITS>(at, two), x);
                    }
                    b += if two { 2 } else { 1 };
                }
                let isum = _mm512_cvtepi32_ps(reduce16(d));
                let gather = |v: *const u16| {
                    let h: [u16; 16] = std::array::from_fn(|j| *v.add(rw[j] * gpr + g));
                    _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i))
                };
                let sv = gather(scales);
                let off = match mins {
                    Some(m) => gather(m),
                    None => _mm512_mul_ps(half, sv),
                };
                // acc += s·Σq·xq + off·Σxq, rounded step by step as the reference does (no FMA).
                let t = _mm512_add_ps(
                    _mm512_mul_ps(sv, isum),
                    _mm512_mul_ps(off, _mm512_set1_ps(xsum as f32)),
                );
                acc = _mm512_add_ps(acc, t);
            }
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(acc, _mm512_set1_ps(xs)));
            y[r..r + rows].copy_from_slice(&out[..rows]);
            r += rows;
        }
    }

    /// The sums of the 8 lanes of each of 4 vectors.
    #[inline(always)]
    unsafe fn reduce4(a: [__m256i; 4]) -> __m128i {
        let r01 = _mm256_hadd_epi32(a[0], a[1]);
        let r23 = _mm256_hadd_epi32(a[2], a[3]);
        let r = _mm256_hadd_epi32(r01, r23);
        _mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1))
    }

    /// Rows `o0 .. o0 + y.len()` with AVX2: four rows per pass share every load of `xq`; codes times
    /// activations through `vpmaddubsw` (codes ≤ 15 and |xq| ≤ 127 cannot saturate: at most 8 blocks
    /// are summed in i16), the group's float step done for the four rows in one vector, in the
    /// reference's order.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `q` must have passed `MatRef::check`; `xq` holds whole
    /// blocks (checked), `sums` one entry per group (checked).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn rows_avx2(
        q: &QuantRef,
        xq: &[i8],
        sums: &[i32],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let blocks = q.in_dim.div_ceil(BLOCK);
        let gpr = q.groups_per_row();
        assert!(xq.len() >= blocks * BLOCK && sums.len() == gpr);
        assert!(q.packed.len() >= (o0 + y.len()) * q.row_bytes());
        match q.bits {
            4 => rows_r::<4>(q, xq, sums, xs, o0, y),
            _ => rows_r::<3>(q, xq, sums, xs, o0, y),
        }
    }

    #[inline(always)]
    unsafe fn rows_r<const BITS: u8>(
        q: &QuantRef,
        xq: &[i8],
        sums: &[i32],
        xs: f32,
        o0: usize,
        y: &mut [f32],
    ) {
        let (bb, rb, gpr) = (block_bytes(BITS), q.row_bytes(), q.groups_per_row());
        let bpg = q.group / BLOCK;
        let blocks = q.in_dim.div_ceil(BLOCK);
        let half = -((1u32 << (BITS - 1)) as f32);
        let ones = _mm256_set1_epi16(1);
        let scales = q.scales.as_ptr() as *const u16;
        let mins = q.mins.map(|m| m.as_ptr() as *const u16);
        let mut r = 0;
        while r < y.len() {
            let rows = (y.len() - r).min(4);
            let o = o0 + r;
            let rw: [usize; 4] = std::array::from_fn(|j| o + j.min(rows - 1));
            let p: [*const u8; 4] = std::array::from_fn(|j| q.packed.as_ptr().add(rw[j] * rb));
            let mut acc = _mm_setzero_ps();
            for (g, &xsum) in sums.iter().enumerate() {
                let mut isum = [_mm256_setzero_si256(); 4];
                let (b0, b1) = (g * bpg, blocks.min((g + 1) * bpg));
                let mut b = b0;
                while b < b1 {
                    // At most 8 blocks in i16 (8 · 2 · 15 · 127 < 2^15).
                    let end = b1.min(b + 8);
                    let mut s16 = [_mm256_setzero_si256(); 4];
                    while b < end {
                        let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK) as *const __m256i);
                        for j in 0..4 {
                            let c = if BITS == 4 {
                                unpack4(p[j].add(b * bb))
                            } else {
                                unpack3(p[j].add(b * bb))
                            };
                            s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(c, x));
                        }
                        b += 1;
                    }
                    for j in 0..4 {
                        isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(s16[j], ones));
                    }
                }
                let isum = _mm_cvtepi32_ps(reduce4(isum));
                let at: [usize; 4] = std::array::from_fn(|j| rw[j] * gpr + g);
                let sv = _mm_cvtph_ps(_mm_setr_epi16(
                    *scales.add(at[0]) as i16,
                    *scales.add(at[1]) as i16,
                    *scales.add(at[2]) as i16,
                    *scales.add(at[3]) as i16,
                    0,
                    0,
                    0,
                    0,
                ));
                let off = match mins {
                    Some(m) => _mm_cvtph_ps(_mm_setr_epi16(
                        *m.add(at[0]) as i16,
                        *m.add(at[1]) as i16,
                        *m.add(at[2]) as i16,
                        *m.add(at[3]) as i16,
                        0,
                        0,
                        0,
                        0,
                    )),
                    None => _mm_mul_ps(_mm_set1_ps(half), sv),
                };
                // acc += s·Σq·xq + off·Σxq, rounded step by step as the reference does (no FMA).
                let t = _mm_add_ps(
                    _mm_mul_ps(sv, isum),
                    _mm_mul_ps(off, _mm_set1_ps(xsum as f32)),
                );
                acc = _mm_add_ps(acc, t);
            }
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_mul_ps(acc, _mm_set1_ps(xs)));
            y[r..r + rows].copy_from_slice(&out[..rows]);
            r += rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_at_both_widths() {
        for bits in [3u8, 4] {
            for k in [1usize, 31, 32, 33, 80, 96] {
                let codes: Vec<u8> = (0..k).map(|i| ((i * 7 + 3) % (1 << bits)) as u8).collect();
                let mut packed = vec![0u8; row_bytes(bits, k)];
                pack_row(bits, &codes, &mut packed);
                let mut c = [0u8; BLOCK];
                for (i, &want) in codes.iter().enumerate() {
                    let b = i / BLOCK * block_bytes(bits);
                    unpack_block(bits, &packed[b..b + block_bytes(bits)], &mut c);
                    assert_eq!(c[i % BLOCK], want, "bits {bits} k {k} i {i}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_code_too_wide_is_refused() {
        let mut out = vec![0u8; row_bytes(3, 32)];
        pack_row(3, &[8u8; 32], &mut out);
    }
}
