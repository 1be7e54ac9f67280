//! Public matrix products: dispatch to the active path and split work over output rows (and the two
//! input halves of an `[in, out]` matvec) with [`par`].
//!
//! Scratch (quantized activations, the rank-r intermediate, GEMM packing panels) lives in thread-local
//! buffers that grow once, so the decode path does not allocate per call. Buffers are taken out of their
//! cell while in use, so a re-entrant call (e.g. from a rayon task stolen while waiting) stays correct.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::dispatch::{kernels, GemmF32, Kernels};
use crate::int8;
use crate::isa::{self, Isa};
use crate::kern::{self, PackSrc};
use crate::matrix::{DenseRef, Elems, Int8Act, Int8Ref, Layout, MatRef, QuantRef};
use crate::par;
use crate::quant;

/// Below this many weight bytes a product stays on the calling thread.
const PAR_MIN_BYTES: usize = 256 * 1024;
/// Output rows per parallel task are a multiple of this (keeps SIMD column blocks whole and tasks on
/// separate cache lines of `y`).
const ROW_ALIGN: usize = 64;
/// A parallel matvec is cut into this many tasks per thread, claimed dynamically, so a thread that gets
/// less memory bandwidth (or is preempted) takes fewer rows instead of making the others wait. (On a quiet
/// machine 1 and 4 measure the same; 4 guards against a noisy neighbour.)
const MATVEC_TASKS_PER_THREAD: usize = 4;
/// `matmul` with fewer tokens than this runs the matvec kernels over blocks of rows, every token per
/// block while the block is in cache ([`matmul_small`]): one pass over the weights, no packing, and
/// outputs bit for bit those of [`matvec`] (a batch of decode steps equals the steps run alone).
const GEMM_MIN_TOKENS: usize = 32;
/// Weight bytes of the row block that [`matmul_small`] runs every token over (stays in L2).
const SMALL_BLOCK_BYTES: usize = 96 * 1024;
/// K-block of the f32 GEMM (a packed `KC × NR` panel is 16 KiB with AVX-512, so it and the packed
/// activations of one token block stay in L1).
const GEMM_KC: usize = 128;
/// Widest column block of one GEMM task.
const GEMM_NC: usize = 256;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const GEMM_PAR_MIN_MACS: usize = 1 << 21;

thread_local! {
    static XQ: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
    static RANK_TMP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_U8: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ACT_U8: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ACT_T: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ACT_SCALE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACT_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static INOUT_PART: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACT_I16: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    static PACK_I16: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    static GROUP_SUMS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static CODES: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on at least `len` elements of a thread-local scratch vector that only ever grows.
fn with_scratch<T: Clone + Default + 'static, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = key.with(|c| c.take());
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    key.with(|c| {
        // Keep the larger buffer if a re-entrant call stored one meanwhile.
        let mut cur = c.borrow_mut();
        if cur.len() < v.len() {
            *cur = v;
        }
    });
    r
}

/// Frees the calling thread's kernel scratch (packed activations, quantized activations, rank buffers,
/// packing panels). They grow to the largest product seen — for prefill, about one copy of the input
/// activations — and are otherwise kept for the thread's lifetime so decode never allocates; call this
/// after a long prompt to give the memory back. (Rayon worker threads keep their small packing panels.)
pub fn release_scratch() {
    XQ.with(|c| c.take());
    RANK_TMP.with(|c| c.take());
    PACK_F32.with(|c| c.take());
    PACK_U8.with(|c| c.take());
    ACT_U8.with(|c| c.take());
    ACT_T.with(|c| c.take());
    ACT_SCALE.with(|c| c.take());
    ACT_F32.with(|c| c.take());
    ACT_I16.with(|c| c.take());
    PACK_I16.with(|c| c.take());
    INOUT_PART.with(|c| c.take());
    GROUP_SUMS.with(|c| c.take());
    CODES.with(|c| c.take());
}

/// Activations as the kernels consume them: f32, and for W8A8 and sub-8-bit weights also quantized
/// (for the latter zero-padded to whole blocks, with `Σ xq` per group in `sums`).
struct Acts<'a> {
    x: &'a [f32],
    q: Option<(&'a [i8], f32)>,
    sums: &'a [i32],
}

/// [`reference::quantize_activations`] (per-token symmetric INT8, `scale = max|x| / 127`), bit for bit,
/// vectorised on the given path. Returns the scale.
///
/// # Panics
/// When `isa` is not supported by this CPU or the lengths differ.
pub fn quantize_activations_with(isa: Isa, x: &[f32], q: &mut [i8]) -> f32 {
    (kernels(isa).quantize)(x, q)
}

/// `y = W·x + bias` for one token.
pub fn matvec(w: &MatRef, bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    matvec_with(isa::active(), w, bias, x, y)
}

/// [`matvec`] on an explicit path (tests, benches).
///
/// # Panics
/// When `isa` is not supported by this CPU, or on shape mismatches.
pub fn matvec_with(isa: Isa, w: &MatRef, bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    matvec_on(kernels(isa), w, bias, x, y)
}

fn matvec_on(kt: &Kernels, w: &MatRef, bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    w.check();
    assert_eq!(x.len(), w.in_dim(), "matvec: input length");
    assert_eq!(y.len(), w.out_dim(), "matvec: output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.out_dim(), "matvec: bias length");
    }
    if let MatRef::Quant(q) = w {
        return quant_matmul(kt, q, bias, x, y, 1);
    }
    let needs_q = matches!(w, MatRef::Int8(q) if q.act == Int8Act::Int8);
    if needs_q {
        with_scratch(&XQ, x.len(), |xq| {
            let xs = (kt.quantize)(x, xq);
            matvec_split(
                kt,
                w,
                bias,
                &Acts {
                    x,
                    q: Some((xq, xs)),
                    sums: &[],
                },
                y,
            );
        })
    } else {
        matvec_split(
            kt,
            w,
            bias,
            &Acts {
                x,
                q: None,
                sums: &[],
            },
            y,
        );
    }
}

fn matvec_split(kt: &Kernels, w: &MatRef, bias: Option<&[f32]>, a: &Acts, y: &mut [f32]) {
    let n = w.out_dim();
    let threads = par::threads();
    if threads <= 1 || w.weight_bytes() < PAR_MIN_BYTES || n < 2 * ROW_ALIGN {
        matvec_rows(kt, w, bias, a, 0, y);
        return;
    }
    if let MatRef::Dense(d) = w {
        if splits_inout(kt, d) {
            return inout_halves_par(kt, d, bias, a.x, y, threads);
        }
    }
    // A shallow `[in, out]` task (not split in halves) reads a stretch of every input row, as wide as
    // its share of the outputs: one task per thread keeps those stretches long.
    let per_thread = match w {
        MatRef::Dense(d) if d.layout == Layout::InOut => 1,
        _ => MATVEC_TASKS_PER_THREAD,
    };
    let chunk = n.div_ceil(per_thread * threads).div_ceil(ROW_ALIGN) * ROW_ALIGN;
    par::for_each_chunk_mut(y, chunk, |c, yc| matvec_rows(kt, w, bias, a, c * chunk, yc));
}

/// `[in, out]` products at least this deep are summed as two halves of the inputs (see [`splits_inout`]).
const INOUT_SPLIT_MIN_IN: usize = 64;

/// Whether `d` is summed as two halves of its inputs, `y = W[..h]·x[..h] + W[h..]·x[h..]`.
///
/// Cutting the columns of an `[in, out]` matrix between threads makes each thread read a short stretch
/// of every row (half the bandwidth it could stream); cutting its rows in two gives each thread one
/// contiguous half of the matrix. The halves are fixed by the shape alone, and a single thread sums
/// them the same way, so the bits never depend on the thread count. The scalar path keeps the
/// reference's single sum (its column split never depended on the team).
fn splits_inout(kt: &Kernels, d: &DenseRef) -> bool {
    kt.split_inout && d.layout == Layout::InOut && d.in_dim >= INOUT_SPLIT_MIN_IN
}

/// Where the second half of an `[in, out]` product's inputs starts (a multiple of 16).
fn inout_half(k: usize) -> usize {
    (k / 2).div_ceil(16) * 16
}

/// Input rows `i0..i1` of an `[in, out]` matrix, as a matrix of its own.
fn inout_rows<'a>(d: &DenseRef<'a>, i0: usize, i1: usize) -> DenseRef<'a> {
    let n = d.out_dim;
    let data = match d.data {
        Elems::F32(s) => Elems::F32(&s[i0 * n..i1 * n]),
        Elems::F16(s) => Elems::F16(&s[i0 * n..i1 * n]),
        Elems::BF16(s) => Elems::BF16(&s[i0 * n..i1 * n]),
    };
    DenseRef {
        data,
        layout: Layout::InOut,
        out_dim: n,
        in_dim: i1 - i0,
    }
}

/// [`splits_inout`]'s sum with the halves on different threads (and the columns cut between pairs
/// of threads when there are more): the same additions as [`matvec_rows`] on one thread.
fn inout_halves_par(
    kt: &Kernels,
    d: &DenseRef,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
    threads: usize,
) {
    let (k, n) = (d.in_dim, d.out_dim);
    let h = inout_half(k);
    let chunk = n.div_ceil(threads.div_ceil(2)).div_ceil(ROW_ALIGN) * ROW_ALIGN;
    let cols = n.div_ceil(chunk);
    with_scratch(&INOUT_PART, n, |second| {
        let (first, rest) = (OutPtr(y.as_mut_ptr()), OutPtr(second.as_mut_ptr()));
        par::for_each(2 * cols, |task| {
            let (o0, o1) = (task / 2 * chunk, ((task / 2 + 1) * chunk).min(n));
            let (i0, i1, out) = if task % 2 == 0 {
                (0, h, first)
            } else {
                (h, k, rest)
            };
            // SAFETY: `y` and `second` hold `n` floats each and outlive the loop; task (c, half)
            // alone writes columns o0..o1 of its half's buffer.
            let part = unsafe { std::slice::from_raw_parts_mut(out.get().add(o0), o1 - o0) };
            (kt.dense)(&inout_rows(d, i0, i1), &x[i0..i1], o0, part);
        });
        y.iter_mut().zip(&*second).for_each(|(y, s)| *y += s);
    });
    if let Some(b) = bias {
        y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
}

/// Computes outputs `o0 .. o0 + y.len()` on the calling thread.
fn matvec_rows(kt: &Kernels, w: &MatRef, bias: Option<&[f32]>, a: &Acts, o0: usize, y: &mut [f32]) {
    match w {
        MatRef::Dense(d) if splits_inout(kt, d) => {
            let (k, h) = (d.in_dim, inout_half(d.in_dim));
            (kt.dense)(&inout_rows(d, 0, h), &a.x[..h], o0, y);
            with_scratch(&INOUT_PART, y.len(), |second| {
                (kt.dense)(&inout_rows(d, h, k), &a.x[h..], o0, second);
                y.iter_mut().zip(&*second).for_each(|(y, s)| *y += s);
            });
        }
        MatRef::Dense(d) => (kt.dense)(d, a.x, o0, y),
        MatRef::Int8(q) => match a.q {
            Some((xq, xs)) => (kt.w8a8_rows)(q, xq, xs, o0, y),
            None => (kt.w8a32_rows)(q, a.x, o0, y),
        },
        MatRef::Quant(q) => {
            let (xq, xs) = a.q.expect("sub-8-bit products take quantized activations");
            (kt.quant_rows)(q, xq, a.sums, xs, o0, y)
        }
    }
    if let Some(b) = bias {
        for (yo, bo) in y.iter_mut().zip(&b[o0..]) {
            *yo += bo;
        }
    }
}

/// `ys[t] = W·xs[t] + bias` for sub-8-bit weights: every token quantized to INT8 (zero-padded to whole
/// blocks, with its per-group sums), then blocks of rows that stay in cache run every token in turn.
/// Per token the arithmetic is the reference's, whatever the path, the token count or the threads.
fn quant_matmul(
    kt: &Kernels,
    q: &QuantRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let (k, n) = (q.in_dim, q.out_dim);
    if tokens == 0 {
        return;
    }
    if tokens >= GEMM_MIN_TOKENS {
        if let Some(gemm) = kt.gemm_quant {
            return gemm(kt, q, bias, xs, ys, tokens);
        }
    }
    let kp = k.div_ceil(quant::BLOCK) * quant::BLOCK;
    let gpr = q.groups_per_row();
    with_scratch(&XQ, tokens * kp, |xq| {
        with_scratch(&ACT_SCALE, tokens, |xscale| {
            with_scratch(&GROUP_SUMS, tokens * gpr, |sums| {
                let prep = |t: usize, row: &mut [i8], sc: &mut f32, sm: &mut [i32]| {
                    *sc = (kt.quantize)(&xs[t * k..(t + 1) * k], &mut row[..k]);
                    row[k..].fill(0);
                    quant::group_sums(row, q.group, k, sm);
                };
                if tokens == 1 {
                    prep(0, xq, &mut xscale[0], sums);
                } else {
                    let (qp, sp) = (I8Ptr(xq.as_mut_ptr()), OutPtr(xscale.as_mut_ptr()));
                    par::for_each_chunk_mut(sums, gpr, |t, sm| {
                        // SAFETY: `xq` holds `tokens × kp` values and `xscale` `tokens` floats, both
                        // outliving the loop; token t's row and scale are this task's alone.
                        let (row, sc) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(qp.get().add(t * kp), kp),
                                &mut *sp.get().add(t),
                            )
                        };
                        prep(t, row, sc, sm);
                    });
                }
                let (xq, xscale, sums) = (&*xq, &*xscale, &*sums);
                let row_bytes = (q.row_bytes() + 4 * gpr).max(1);
                let block = (SMALL_BLOCK_BYTES / row_bytes).clamp(16, n.max(16)) / 16 * 16;
                let blocks = n.div_ceil(block);
                let threads = par::threads();
                let bytes = MatRef::Quant(*q).weight_bytes();
                let serial = threads <= 1 || bytes < PAR_MIN_BYTES / tokens.min(16);
                let per_task = if serial {
                    blocks
                } else {
                    blocks.div_ceil(MATVEC_TASKS_PER_THREAD * threads)
                };
                let out = OutPtr(ys.as_mut_ptr());
                let task = |ti: usize| {
                    for b in ti * per_task..((ti + 1) * per_task).min(blocks) {
                        let (o0, o1) = (b * block, ((b + 1) * block).min(n));
                        for t in 0..tokens {
                            // SAFETY: `ys` holds `tokens × n` floats (asserted by the callers); rows
                            // o0..o1 of token t are written by the task owning block b alone, and `ys`
                            // outlives the parallel loop.
                            let y = unsafe {
                                std::slice::from_raw_parts_mut(out.get().add(t * n + o0), o1 - o0)
                            };
                            let (xt, st) =
                                (&xq[t * kp..(t + 1) * kp], &sums[t * gpr..(t + 1) * gpr]);
                            (kt.quant_rows)(q, xt, st, xscale[t], o0, y);
                            if let Some(b) = bias {
                                y.iter_mut().zip(&b[o0..o1]).for_each(|(y, b)| *y += b);
                            }
                        }
                    }
                };
                let tasks = blocks.div_ceil(per_task);
                if serial {
                    (0..tasks).for_each(task);
                } else {
                    par::for_each(tasks, task);
                }
            })
        })
    })
}

/// Exact per-group i32 dot products of one INT8 row with quantized activations, on an explicit path.
///
/// `out[g] = Σ_{i in group g} row[i]·xq[i]`; exposed so tests can check the integer kernels bit for bit.
///
/// # Panics
/// When `isa` is unsupported or the lengths disagree (`out.len()` must be `row.len().div_ceil(group)`).
pub fn int8_group_dots_with(isa: Isa, row: &[i8], xq: &[i8], group: usize, out: &mut [i32]) {
    let kt = kernels(isa);
    assert!(group > 0 && row.len() == xq.len() && out.len() == row.len().div_ceil(group));
    (kt.group_dots)(row, xq, group, out)
}

// ---------------------------------------------------------------------------------------------------
// matmul (prefill)
// ---------------------------------------------------------------------------------------------------

/// `ys[t] = W·xs[t] + bias` for `tokens = xs.len() / in_dim` tokens (row-major).
pub fn matmul(w: &MatRef, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32]) {
    matmul_with(isa::active(), w, bias, xs, ys)
}

/// [`matmul`] on an explicit path (tests, benches).
///
/// Dense F32/F16/BF16 (either layout) and INT8 W8A32 run a packed, register-blocked f32 GEMM (weights
/// converted/dequantized to f32 while packing); INT8 W8A8 runs an integer GEMM (VNNI `vpdpbusd`, or AVX2
/// `vpmaddwd` on i16 pairs) with matvec's bits, and the matvec row kernels over row blocks on the
/// portable path. Below 32 tokens every product runs the matvec row kernels over cached row blocks (W8A8
/// on AVX2/VNNI: few-token kernels loading each weight once for up to four tokens); one token is a matvec.
///
/// # Panics
/// When `isa` is not supported by this CPU, or on shape mismatches.
pub fn matmul_with(isa: Isa, w: &MatRef, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32]) {
    let kt = kernels(isa);
    w.check();
    let (k, n) = (w.in_dim(), w.out_dim());
    assert!(k > 0 && n > 0, "matmul: empty matrix");
    assert_eq!(xs.len() % k, 0, "matmul: input is not whole tokens");
    let tokens = xs.len() / k;
    assert_eq!(ys.len(), tokens * n, "matmul: output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias length");
    }
    if let MatRef::Quant(q) = w {
        return quant_matmul(kt, q, bias, xs, ys, tokens);
    }
    let Some(gemm) = kt.gemm_f32.as_ref().filter(|_| tokens > 1) else {
        for (x, y) in xs.chunks_exact(k).zip(ys.chunks_exact_mut(n)) {
            matvec_on(kt, w, bias, x, y);
        }
        return;
    };
    if tokens < GEMM_MIN_TOKENS {
        return matmul_small(kt, w, bias, xs, ys, tokens);
    }
    let src = match w {
        MatRef::Dense(d) => match (d.data, d.layout) {
            (Elems::F32(s), Layout::OutIn) => PackSrc::OutInF32(s),
            (Elems::F16(s), Layout::OutIn) => PackSrc::OutInF16(s),
            (Elems::BF16(s), Layout::OutIn) => PackSrc::OutInBF16(s),
            (Elems::F32(s), Layout::InOut) => PackSrc::InOutF32(s),
            (Elems::F16(s), Layout::InOut) => PackSrc::InOutF16(s),
            (Elems::BF16(s), Layout::InOut) => PackSrc::InOutBF16(s),
        },
        MatRef::Int8(q) if q.act == Int8Act::F32 => PackSrc::Int8 {
            values: q.values,
            scales: q.scales,
            group: q.group,
        },
        MatRef::Int8(q) => {
            return match kt.gemm_w8a8 {
                Some(gemm_w8a8) => gemm_w8a8(kt, q, bias, xs, ys, tokens),
                None => matmul_small(kt, w, bias, xs, ys, tokens),
            };
        }
        MatRef::Quant(_) => unreachable!("sub-8-bit products were dispatched above"),
    };
    gemm_f32(gemm, src, k, n, tokens, xs, ys, bias);
}

/// `matmul` for a few tokens (a batch of decode steps): the rows are cut into blocks of about
/// [`SMALL_BLOCK_BYTES`] of weights, and each block runs the matvec row kernel for every token in turn,
/// so the weights come from memory once and from cache for the other tokens. Per token the arithmetic is
/// exactly [`matvec`]'s.
fn matmul_small(
    kt: &Kernels,
    w: &MatRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let (k, n) = (w.in_dim(), w.out_dim());
    let w8a8 = matches!(w, MatRef::Int8(q) if q.act == Int8Act::Int8);
    with_scratch(&XQ, if w8a8 { tokens * k } else { 0 }, |xq| {
        with_scratch(&ACT_SCALE, tokens, |xscale| {
            let multi = kt.w8a8_tokens.as_ref().filter(|_| w8a8);
            let u8_acts = multi.is_some_and(|m| m.u8_acts);
            if w8a8 {
                // One task per token; some several-token kernels take the activations offset to u8.
                let q = I8Ptr(xq.as_mut_ptr());
                par::for_each_chunk_mut(xscale, 1, |t, sc| {
                    // SAFETY: `xq` holds `tokens × k` values; token t's row is this task's alone, and
                    // `xq` outlives the parallel loop.
                    let row = unsafe { std::slice::from_raw_parts_mut(q.get().add(t * k), k) };
                    sc[0] = (kt.quantize)(&xs[t * k..(t + 1) * k], row);
                    if u8_acts {
                        row.iter_mut().for_each(|v| *v ^= i8::MIN);
                    }
                });
            }
            let (xq, xscale) = (&*xq, &*xscale);
            let row_bytes = (w.weight_bytes() / n).max(1);
            let block = (SMALL_BLOCK_BYTES / row_bytes).clamp(16, n.max(16)) / 16 * 16;
            let blocks = n.div_ceil(block);
            let threads = par::threads();
            let serial = threads <= 1 || w.weight_bytes() < PAR_MIN_BYTES;
            // Tasks of whole blocks, a few per thread, claimed dynamically.
            let per_task = if serial {
                blocks
            } else {
                blocks.div_ceil(MATVEC_TASKS_PER_THREAD * threads)
            };
            let out = OutPtr(ys.as_mut_ptr());
            let task = |ti: usize| {
                let b0 = ti * per_task;
                let b1 = ((ti + 1) * per_task).min(blocks);
                for b in b0..b1 {
                    let (o0, o1) = (b * block, ((b + 1) * block).min(n));
                    if let (Some(multi), MatRef::Int8(q)) = (multi, w) {
                        let mut t = 0;
                        while t < tokens {
                            let m = (tokens - t).min(4);
                            // SAFETY: the matrix passed `check` and `xq`/`xscale` hold every token;
                            // rows o0..o1 of every token are this task's alone (see below).
                            unsafe {
                                multi.run[m - 1](q, xq, xscale, t, o0, o1 - o0, out.get(), n)
                            };
                            t += m;
                        }
                        if let Some(b) = bias {
                            for t in 0..tokens {
                                // SAFETY: rows o0..o1 of token t are this task's alone.
                                let yt = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out.get().add(t * n + o0),
                                        o1 - o0,
                                    )
                                };
                                yt.iter_mut().zip(&b[o0..o1]).for_each(|(y, b)| *y += b);
                            }
                        }
                        continue;
                    }
                    for t in 0..tokens {
                        let a = Acts {
                            x: &xs[t * k..(t + 1) * k],
                            q: w8a8.then(|| (&xq[t * k..(t + 1) * k], xscale[t])),
                            sums: &[],
                        };
                        // SAFETY: `ys` holds `tokens × n` floats; rows o0..o1 of token t are written by
                        // the task that owns block b alone, and `ys` outlives the parallel loop.
                        let y = unsafe {
                            std::slice::from_raw_parts_mut(out.get().add(t * n + o0), o1 - o0)
                        };
                        matvec_rows(kt, w, bias, &a, o0, y);
                    }
                }
            };
            let tasks = blocks.div_ceil(per_task);
            if serial {
                (0..tasks).for_each(task);
            } else {
                par::for_each(tasks, task);
            }
        })
    })
}

/// A raw pointer to quantized activations, shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct I8Ptr(*mut i8);
// SAFETY: tasks write disjoint token rows of the buffer, which outlives the parallel loop.
unsafe impl Send for I8Ptr {}
// SAFETY: as above.
unsafe impl Sync for I8Ptr {}

impl I8Ptr {
    fn get(self) -> *mut i8 {
        self.0
    }
}

/// A raw output pointer shared by GEMM tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, column) blocks of the buffer, which outlives the parallel loop.
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer is only dereferenced inside blocks owned by one task.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Splits `tokens × n` into tasks: column blocks of at most `GEMM_NC` (multiples of `nr`), and when there
/// are too few of them for the pool, token blocks (multiples of `mr`) as well.
fn gemm_grid(
    tokens: usize,
    n: usize,
    mr: usize,
    nr: usize,
    macs: usize,
) -> (usize, usize, usize, usize) {
    let threads = if macs < GEMM_PAR_MIN_MACS {
        1
    } else {
        par::threads()
    };
    let want = if threads > 1 { 4 * threads } else { 1 };
    let nc = n.div_ceil(want).div_ceil(nr).max(1) * nr;
    let nc = nc.min(GEMM_NC.div_ceil(nr) * nr);
    let ncb = n.div_ceil(nc);
    let tb = if ncb >= want {
        1
    } else {
        want.div_ceil(ncb).min(tokens.div_ceil(mr))
    };
    let tc = tokens.div_ceil(tb).div_ceil(mr) * mr;
    let ntb = tokens.div_ceil(tc);
    (nc, ncb, tc, ntb)
}

#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    gemm: &GemmF32,
    src: PackSrc,
    k: usize,
    n: usize,
    tokens: usize,
    xs: &[f32],
    ys: &mut [f32],
    bias: Option<&[f32]>,
) {
    let (mr, nr) = (gemm.mr, gemm.nr);
    let (nc, ncb, tc, ntb) = gemm_grid(tokens, n, mr, nr, tokens * k * n);
    let kc = GEMM_KC.min(k);
    with_scratch(&ACT_F32, tokens.div_ceil(mr) * mr * k, |packed| {
        kern::pack_acts(xs, k, mr, packed);
        gemm_f32_tasks(
            gemm,
            src,
            k,
            n,
            tokens,
            packed,
            ys,
            bias,
            (nc, ncb, tc, ntb),
            kc,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn gemm_f32_tasks(
    gemm: &GemmF32,
    src: PackSrc,
    k: usize,
    n: usize,
    tokens: usize,
    xs: &[f32],
    ys: &mut [f32],
    bias: Option<&[f32]>,
    (nc, ncb, tc, ntb): (usize, usize, usize, usize),
    kc: usize,
) {
    let out = OutPtr(ys.as_mut_ptr());
    let xp = xs.as_ptr() as usize;
    let task = |ti: usize| {
        let (cb, tb) = (ti % ncb, ti / ncb);
        let (n0, n1) = (cb * nc, ((cb + 1) * nc).min(n));
        let (t0, t1) = (tb * tc, ((tb + 1) * tc).min(tokens));
        let xs = xp as *const f32;
        with_scratch(&PACK_F32, kc * nc, |pack| {
            // SAFETY: `xs` holds the activations packed with this path's MR (`round_up(tokens, MR) ×
            // k`), `ys` `tokens × n` floats (asserted by `matmul_with`); this task alone writes block
            // (t0..t1, n0..n1).
            unsafe { (gemm.block)(src, k, n, xs, out.get(), bias, (t0, t1), (n0, n1), kc, pack) }
        });
    };
    par::for_each(ncb * ntb, task);
}

/// Quantizes and packs every token (`quant(x, scratch, dst) -> scale`, `dst` being the token's `kp`
/// packed values) on the team, a few tokens per task.
fn quantize_tokens<P: Send>(
    xs: &[f32],
    k: usize,
    xscale: &mut [f32],
    act: &mut [P],
    kp: usize,
    quant: impl Fn(&[f32], &mut [i8], &mut [P]) -> f32 + Sync,
) {
    let tokens = xscale.len();
    let per = tokens.div_ceil(2 * par::threads());
    let scales = OutPtr(xscale.as_mut_ptr());
    par::for_each_chunk_mut(&mut act[..tokens * kp], per * kp, |c, dst| {
        with_scratch(&XQ, k, |xq| {
            for (i, d) in dst.chunks_exact_mut(kp).enumerate() {
                let t = c * per + i;
                // SAFETY: `xscale` holds `tokens` floats and outlives the loop; token t is this task's.
                unsafe { *scales.get().add(t) = quant(&xs[t * k..(t + 1) * k], xq, d) };
            }
        })
    });
}

/// One integer GEMM of `int8.rs`: its packed element type `P`, micro-tile and kernels.
#[cfg(target_arch = "x86_64")]
struct W8a8Gemm<P: 'static> {
    mr: usize,
    nr: usize,
    /// Thread-local scratch for the packed activations and for one weight panel.
    act: &'static LocalKey<RefCell<Vec<P>>>,
    panel: &'static LocalKey<RefCell<Vec<P>>>,
    panel_len: fn(&int8::x86::QGeom) -> usize,
    pack_act: fn(&int8::x86::QGeom, &[i8], &mut [P]),
    /// Lays out token tile `tt` of the packed activations as AMX B tiles (`kp · 16` values) in its
    /// thread-local scratch, for blocks that take them (None: the blocks get none).
    b_tiles: Option<(BTiles<P>, Scratch<P>)>,
    /// Computes tokens `t0..t1` × outputs `n0..n1` (see `gemm_w8a8_block`).
    block: W8a8Block<P>,
}

#[cfg(target_arch = "x86_64")]
type BTiles<P> = unsafe fn(&int8::x86::QGeom, &[P], usize, &mut [P]);

#[cfg(target_arch = "x86_64")]
type Scratch<P> = &'static LocalKey<RefCell<Vec<P>>>;

#[cfg(target_arch = "x86_64")]
type W8a8Block<P> = unsafe fn(
    &int8::x86::QGeom,
    &[i8],
    &[f32],
    usize,
    &[P],
    &[f32],
    *mut f32,
    Option<&[f32]>,
    (usize, usize),
    (usize, usize),
    &mut [P],
    &[P],
);

/// The W8A8 GEMM with VNNI: activations offset to u8, `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_w8a8_vnni(
    kt: &Kernels,
    q: &Int8Ref,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let g = w8a8_gemm_vnni(int8::x86::Q_MR, int8::x86::gemm_w8a8_block::<false>, None);
    // SAFETY: only the AVX-512 VNNI and AMX tables hold this driver, and `kernels` hands them out only
    // on a CPU with AVX-512 and VNNI, which `gemm_w8a8_block` needs.
    unsafe { gemm_w8a8(kt, q, bias, xs, ys, tokens, &g) }
}

/// The W8A8 GEMM with AMX tiles of 32 outputs × 32 tokens reading the weights in place (VNNI for the
/// rest).
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_w8a8_amx(
    kt: &Kernels,
    q: &Int8Ref,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let g = w8a8_gemm_vnni(
        crate::amx::x86::MR,
        int8::x86::gemm_w8a8_block::<true>,
        Some((crate::amx::x86::tokens_as_b, &ACT_T)),
    );
    // SAFETY: only the AMX table holds this driver, and `kernels` hands it out only on a CPU with
    // AVX-512, VNNI and AMX enabled for this process, which `gemm_w8a8_block::<true>` needs.
    unsafe { gemm_w8a8(kt, q, bias, xs, ys, tokens, &g) }
}

/// The W8A8 GEMM on the VNNI panels, with `mr` tokens per step of the grid (and for AMX, the B tiles).
#[cfg(target_arch = "x86_64")]
fn w8a8_gemm_vnni(
    mr: usize,
    block: W8a8Block<u8>,
    b_tiles: Option<(BTiles<u8>, Scratch<u8>)>,
) -> W8a8Gemm<u8> {
    W8a8Gemm {
        mr,
        nr: int8::x86::Q_NR,
        act: &ACT_U8,
        panel: &PACK_U8,
        panel_len: int8::x86::panel_bytes,
        pack_act: int8::x86::pack_act,
        b_tiles,
        block,
    }
}

/// The W8A8 GEMM on AVX2 (also AVX-512 without VNNI): i16 pairs through `vpmaddwd`, see `int8.rs`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_w8a8_avx2(
    kt: &Kernels,
    q: &Int8Ref,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    use int8::x86::{gemm_w8a8_block_avx2, pack_act_i16, panel_i16s, W_MR, W_NR};
    let g = W8a8Gemm {
        mr: W_MR,
        nr: W_NR,
        act: &ACT_I16,
        panel: &PACK_I16,
        panel_len: panel_i16s,
        pack_act: pack_act_i16,
        b_tiles: None,
        block: gemm_w8a8_block_avx2,
    };
    // SAFETY: only the AVX2 and AVX-512 tables hold this driver, and `kernels` hands them out only on a
    // CPU with AVX2.
    unsafe { gemm_w8a8(kt, q, bias, xs, ys, tokens, &g) }
}

/// The driver of both integer GEMMs: activations quantized as [`matvec`] quantizes them on `isa` (so
/// the bits are matvec's) and packed on the team, then blocks of (tokens × outputs) as tasks, each
/// packing its own weight panels.
///
/// # Safety
/// The CPU must have what `g.block` needs.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_w8a8<P: Copy + Default + Send + Sync + 'static>(
    kt: &Kernels,
    q: &Int8Ref,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
    g: &W8a8Gemm<P>,
) {
    let (k, n) = (q.in_dim, q.out_dim);
    let geo = int8::x86::QGeom::new(k, q.group);
    with_scratch(g.act, tokens * geo.kp, |act| {
        with_scratch(&ACT_SCALE, tokens, |xscale| {
            quantize_tokens(xs, k, xscale, act, geo.kp, |x, xq, dst| {
                let s = (kt.quantize)(x, xq);
                (g.pack_act)(&geo, xq, dst);
                s
            });
            let with_tiles = |f: &mut dyn FnMut(&[P])| match g.b_tiles {
                // Only rows the tiles can read in place, in blocks that do (see `gemm_w8a8_block`).
                Some((b_tiles, scratch))
                    if crate::amx::x86::reads_rows(&geo)
                        && tokens <= int8::x86::IN_PLACE_MAX_TOKENS =>
                {
                    with_scratch(scratch, tokens / 16 * 16 * geo.kp, |t| {
                        par::for_each_chunk_mut(t, 16 * geo.kp, |tt, dst| {
                            // SAFETY: the CPU has what `g.block` needs, which includes what the B tiles
                            // need (this function's contract); `act` holds `tokens` packed rows.
                            unsafe { b_tiles(&geo, act, tt, dst) }
                        });
                        f(t)
                    })
                }
                _ => f(&[]),
            };
            with_tiles(&mut |act_t| {
                let (nc, ncb, tc, ntb) = gemm_grid(tokens, n, g.mr, g.nr, tokens * k * n / 4);
                let out = OutPtr(ys.as_mut_ptr());
                let (act, xscale) = (&*act, &*xscale);
                let task = |ti: usize| {
                    let (cb, tb) = (ti % ncb, ti / ncb);
                    let (n0, n1) = (cb * nc, ((cb + 1) * nc).min(n));
                    let (t0, t1) = (tb * tc, ((tb + 1) * tc).min(tokens));
                    with_scratch(g.panel, (g.panel_len)(&geo), |panel| {
                        // SAFETY: the CPU has what `g.block` needs (this function's contract); `ys`
                        // holds `tokens × n` floats and this task alone writes block (t0..t1, n0..n1).
                        unsafe {
                            (g.block)(
                                &geo,
                                q.values,
                                q.scales,
                                n,
                                act,
                                xscale,
                                out.get(),
                                bias,
                                (t0, t1),
                                (n0, n1),
                                panel,
                                act_t,
                            )
                        }
                    });
                };
                par::for_each(ncb * ntb, task);
            })
        })
    })
}

/// The sub-8-bit GEMM on AVX2 (and AVX-512 without VNNI): the i16 GEMM of `int8.rs`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_quant_avx2(
    kt: &Kernels,
    q: &QuantRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let g = QuantGemm {
        mr: int8::x86::W_MR,
        nr: int8::x86::W_NR,
        act: &ACT_I16,
        panel: &PACK_I16,
        panel_len: quant::x86::panel_i16s,
        pack_act: int8::x86::pack_act_i16,
        zero: 0,
        codes_rows: int8::x86::W_NR,
        block: quant::x86::gemm_block,
    };
    // SAFETY: only the AVX2 and AVX-512 tables hold this driver, and `kernels` hands them out only on a
    // CPU with AVX2, FMA and F16C, which `gemm_block` needs.
    unsafe { gemm_quant(kt, q, bias, xs, ys, tokens, &g) }
}

/// The sub-8-bit GEMM with AVX-512 VNNI: the `vpdpbusd` GEMM of `int8.rs`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_quant_vnni(
    kt: &Kernels,
    q: &QuantRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let g = quant_gemm_vnni(int8::x86::Q_MR, quant::x86::gemm_block_vnni::<false>);
    // SAFETY: only the AVX-512 VNNI and AMX tables hold this driver, and `kernels` hands them out only
    // on a CPU with AVX-512 and VNNI (and AVX2, FMA, F16C), which `gemm_block_vnni` needs.
    unsafe { gemm_quant(kt, q, bias, xs, ys, tokens, &g) }
}

/// The sub-8-bit GEMM with AMX tiles of 32 tokens (VNNI for the rest).
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_quant_amx(
    kt: &Kernels,
    q: &QuantRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
) {
    let g = quant_gemm_vnni(crate::amx::x86::MR, quant::x86::gemm_block_vnni::<true>);
    // SAFETY: only the AMX table holds this driver, and `kernels` hands it out only on a CPU with
    // AVX-512, VNNI and AMX enabled for this process, which `gemm_block_vnni::<true>` needs.
    unsafe { gemm_quant(kt, q, bias, xs, ys, tokens, &g) }
}

/// The sub-8-bit GEMM on the VNNI panels, with `mr` tokens per step of the grid.
#[cfg(target_arch = "x86_64")]
fn quant_gemm_vnni(mr: usize, block: QuantBlock<u8>) -> QuantGemm<u8> {
    QuantGemm {
        mr,
        nr: int8::x86::Q_NR,
        act: &ACT_U8,
        panel: &PACK_U8,
        panel_len: quant::x86::panel_bytes_vnni,
        pack_act: int8::x86::pack_act,
        zero: 128,
        codes_rows: 0,
        block,
    }
}

/// One sub-8-bit GEMM of `quant.rs`: its packed activation type `P`, micro-tile and kernels.
#[cfg(target_arch = "x86_64")]
struct QuantGemm<P: 'static> {
    mr: usize,
    nr: usize,
    /// Thread-local scratch for the packed activations and for one weight panel.
    act: &'static LocalKey<RefCell<Vec<P>>>,
    panel: &'static LocalKey<RefCell<Vec<P>>>,
    panel_len: fn(&int8::x86::QGeom) -> usize,
    pack_act: fn(&int8::x86::QGeom, &[i8], &mut [P]),
    /// The packed value of an activation of 0.
    zero: i32,
    /// Rows of unpacked codes (`k` bytes each) the block needs as scratch.
    codes_rows: usize,
    /// Computes tokens `t0..t1` × outputs `n0..n1` (see `quant::x86::gemm_block`).
    block: QuantBlock<P>,
}

#[cfg(target_arch = "x86_64")]
type QuantBlock<P> = unsafe fn(
    &int8::x86::QGeom,
    &QuantRef,
    &[P],
    &[f32],
    &[f32],
    *mut f32,
    Option<&[f32]>,
    (usize, usize),
    (usize, usize),
    &mut [P],
    &mut [i8],
);

/// The driver of both sub-8-bit GEMMs: every token quantized as [`matvec`] quantizes it and packed,
/// with its per-group `Σ xq`, then blocks of (tokens × outputs) as tasks, each unpacking its weight
/// panels once for all its tokens.
///
/// # Safety
/// The CPU must have what `g.block` needs.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_quant<P: Copy + Default + Into<i32> + Send + Sync + 'static>(
    kt: &Kernels,
    q: &QuantRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
    tokens: usize,
    g: &QuantGemm<P>,
) {
    let (k, n) = (q.in_dim, q.out_dim);
    let geo = int8::x86::QGeom::new(k, q.group);
    with_scratch(g.act, tokens * geo.kp, |act| {
        with_scratch(&ACT_SCALE, tokens, |xscale| {
            quantize_tokens(xs, k, xscale, act, geo.kp, |x, xq, dst| {
                let s = (kt.quantize)(x, xq);
                (g.pack_act)(&geo, xq, dst);
                s
            });
            with_scratch(&ACT_F32, tokens * geo.groups, |xsum| {
                // Padding holds `zero`, so each group's sum may run over its padded stretch.
                for (t, sums) in xsum.chunks_exact_mut(geo.groups).enumerate() {
                    let row = &act[t * geo.kp..(t + 1) * geo.kp];
                    for (gi, s) in sums.iter_mut().enumerate() {
                        let part = &row[gi * geo.gp..((gi + 1) * geo.gp).min(geo.kp)];
                        let sum: i32 = part.iter().map(|&v| v.into() - g.zero).sum();
                        *s = sum as f32;
                    }
                }
                let (nc, ncb, tc, ntb) = gemm_grid(tokens, n, g.mr, g.nr, tokens * k * n / 4);
                let out = OutPtr(ys.as_mut_ptr());
                let (act, xscale, xsum) = (&*act, &*xscale, &*xsum);
                let task = |ti: usize| {
                    let (cb, tb) = (ti % ncb, ti / ncb);
                    let (n0, n1) = (cb * nc, ((cb + 1) * nc).min(n));
                    let (t0, t1) = (tb * tc, ((tb + 1) * tc).min(tokens));
                    with_scratch(g.panel, (g.panel_len)(&geo), |panel| {
                        with_scratch(&CODES, g.codes_rows * k, |codes| {
                            // SAFETY: the CPU has what `g.block` needs (this function's contract);
                            // the matrix passed `check`; `ys` holds `tokens × n` floats (asserted by
                            // the callers) and this task alone writes block (t0..t1, n0..n1).
                            unsafe {
                                (g.block)(
                                    &geo,
                                    q,
                                    act,
                                    xscale,
                                    xsum,
                                    out.get(),
                                    bias,
                                    (t0, t1),
                                    (n0, n1),
                                    panel,
                                    codes,
                                )
                            }
                        })
                    });
                };
                par::for_each(ncb * ntb, task);
            })
        })
    })
}

// ---------------------------------------------------------------------------------------------------
// Low rank
// ---------------------------------------------------------------------------------------------------

/// The fused low-rank product `y = U·(s ⊙ (Vh·x)) + bias` for one token; the rank-r intermediate stays
/// in a thread-local buffer.
pub fn lowrank_matvec(
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    lowrank_matvec_with(isa::active(), vh, s, u, bias, x, y)
}

/// [`lowrank_matvec`] on an explicit path.
pub fn lowrank_matvec_with(
    isa: Isa,
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    let r = check_lowrank(vh, s, u);
    with_scratch(&RANK_TMP, r, |t| {
        matvec_with(isa, vh, None, x, t);
        if let Some(s) = s {
            for (ti, si) in t.iter_mut().zip(s) {
                *ti *= si;
            }
        }
        matvec_with(isa, u, bias, t, y);
    })
}

/// Checks that the factors fit together; returns the rank.
fn check_lowrank(vh: &MatRef, s: Option<&[f32]>, u: &MatRef) -> usize {
    let r = vh.out_dim();
    assert_eq!(u.in_dim(), r, "lowrank: U columns must equal Vh rows");
    if let Some(s) = s {
        assert_eq!(s.len(), r, "lowrank: s length");
    }
    r
}

/// The low-rank product for `tokens = xs.len() / in_dim` tokens: two GEMMs (`T = X·Vhᵀ`, scaled by `s`,
/// then `Y = T·Uᵀ + bias`).
pub fn lowrank_matmul(
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
) {
    lowrank_matmul_with(isa::active(), vh, s, u, bias, xs, ys)
}

/// [`lowrank_matmul`] on an explicit path.
pub fn lowrank_matmul_with(
    isa: Isa,
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
) {
    let (k, r) = (vh.in_dim(), check_lowrank(vh, s, u));
    assert_eq!(xs.len() % k, 0, "lowrank: input is not whole tokens");
    let tokens = xs.len() / k;
    with_scratch(&RANK_TMP, tokens * r, |t| {
        matmul_with(isa, vh, None, xs, t);
        if let Some(s) = s {
            for row in t.chunks_exact_mut(r) {
                for (ti, si) in row.iter_mut().zip(s) {
                    *ti *= si;
                }
            }
        }
        matmul_with(isa, u, bias, t, ys);
    })
}
