//! Public matrix products: dispatch to the active path and split work over output rows with rayon.
//!
//! Scratch (quantized activations, the rank-r intermediate) lives in thread-local buffers that grow once,
//! so the decode path does not allocate per call.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::isa::{self, Isa};
use crate::matrix::{DenseRef, Int8Act, Layout, MatRef};
use crate::reference;

/// Below this many weight bytes a product stays on the calling thread.
const PAR_MIN_BYTES: usize = 256 * 1024;
/// Output rows per parallel task are a multiple of this (keeps SIMD column blocks whole).
const ROW_ALIGN: usize = 64;

thread_local! {
    static XQ: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
    static RANK_TMP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Activations as the kernels consume them: f32, and for W8A8 also quantized.
struct Acts<'a> {
    x: &'a [f32],
    q: Option<(&'a [i8], f32)>,
}

/// `y = W·x + bias` for one token.
pub fn matvec(w: &MatRef, bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    w.check();
    assert_eq!(x.len(), w.in_dim(), "matvec: input length");
    assert_eq!(y.len(), w.out_dim(), "matvec: output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.out_dim(), "matvec: bias length");
    }
    let isa = isa::active();
    let needs_q = matches!(w, MatRef::Int8(q) if q.act == Int8Act::Int8);
    if needs_q {
        XQ.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < x.len() {
                buf.resize(x.len(), 0);
            }
            let xq = &mut buf[..x.len()];
            let xs = reference::quantize_activations(x, xq);
            matvec_split(isa, w, bias, &Acts { x, q: Some((xq, xs)) }, y);
        })
    } else {
        matvec_split(isa, w, bias, &Acts { x, q: None }, y);
    }
}

fn matvec_split(isa: Isa, w: &MatRef, bias: Option<&[f32]>, a: &Acts, y: &mut [f32]) {
    let n = w.out_dim();
    let threads = rayon::current_num_threads();
    if threads <= 1 || w.weight_bytes() < PAR_MIN_BYTES || n < 2 * ROW_ALIGN {
        matvec_rows(isa, w, bias, a, 0, y);
        return;
    }
    let chunk = n.div_ceil(threads).div_ceil(ROW_ALIGN) * ROW_ALIGN;
    y.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, yc)| matvec_rows(isa, w, bias, a, c * chunk, yc));
}

/// Computes outputs `o0 .. o0 + y.len()` on the calling thread.
fn matvec_rows(isa: Isa, w: &MatRef, bias: Option<&[f32]>, a: &Acts, o0: usize, y: &mut [f32]) {
    let _ = isa; // fast paths are selected here per storage
    match w {
        MatRef::Dense(d) => dense_rows_scalar(d, a.x, o0, y),
        MatRef::Int8(q) => match a.q {
            Some((xq, xs)) => {
                for (k, yo) in y.iter_mut().enumerate() {
                    *yo = reference::int8_w8a8_row(q, o0 + k, xq, xs);
                }
            }
            None => {
                for (k, yo) in y.iter_mut().enumerate() {
                    *yo = reference::int8_w8a32_row(q, o0 + k, a.x);
                }
            }
        },
    }
    if let Some(b) = bias {
        for (yo, bo) in y.iter_mut().zip(&b[o0..]) {
            *yo += bo;
        }
    }
}

fn dense_rows_scalar(d: &DenseRef, x: &[f32], o0: usize, y: &mut [f32]) {
    match d.layout {
        Layout::OutIn => {
            for (k, yo) in y.iter_mut().enumerate() {
                let base = (o0 + k) * d.in_dim;
                *yo = (0..d.in_dim).map(|i| d.data.get(base + i) * x[i]).sum();
            }
        }
        Layout::InOut => {
            y.fill(0.0);
            for (i, &xi) in x.iter().enumerate() {
                let base = i * d.out_dim + o0;
                for (k, yo) in y.iter_mut().enumerate() {
                    *yo += d.data.get(base + k) * xi;
                }
            }
        }
    }
}

/// `ys[t] = W·xs[t] + bias` for `tokens = xs.len() / in_dim` tokens (row-major).
pub fn matmul(w: &MatRef, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32]) {
    let (k, n) = (w.in_dim(), w.out_dim());
    assert_eq!(xs.len() % k, 0, "matmul: input is not whole tokens");
    assert_eq!(ys.len() / n, xs.len() / k, "matmul: output token count");
    for (x, y) in xs.chunks_exact(k).zip(ys.chunks_exact_mut(n)) {
        matvec(w, bias, x, y);
    }
}

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
    let r = vh.out_dim();
    assert_eq!(u.in_dim(), r, "lowrank: U columns must equal Vh rows");
    RANK_TMP.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < r {
            buf.resize(r, 0.0);
        }
        let t = &mut buf[..r];
        matvec(vh, None, x, t);
        if let Some(s) = s {
            for (ti, si) in t.iter_mut().zip(s) {
                *ti *= si;
            }
        }
        matvec(u, bias, t, y);
    })
}

/// The low-rank product for `tokens = xs.len() / in_dim` tokens.
pub fn lowrank_matmul(
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    xs: &[f32],
    ys: &mut [f32],
) {
    let (k, n) = (vh.in_dim(), u.out_dim());
    for (x, y) in xs.chunks_exact(k).zip(ys.chunks_exact_mut(n)) {
        lowrank_matvec(vh, s, u, bias, x, y);
    }
}
