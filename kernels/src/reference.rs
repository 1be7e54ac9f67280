//! Plain scalar references: the definition of every kernel, against which the fast paths are tested.
//!
//! Written for clarity, not speed. Floating-point sums run in index order in f32 unless stated.

use crate::matrix::{DenseRef, Int8Act, Int8Ref, Layout, MatRef, QuantRef};
use crate::quant;

/// Per-token symmetric INT8 quantization of activations: `x ≈ q · scale`, `q ∈ [-127, 127]`.
///
/// `scale = max|x| / 127` (0 for an all-zero vector, then every `q` is 0); `q = round_half_away(x / scale)`.
pub fn quantize_activations(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len());
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    let inv = 127.0 / amax;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Exact integer dot product of two i8 vectors.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// One output of a dense product: `Σ_i w[o][i]·x[i]` in input order.
pub fn dense_row(d: &DenseRef, o: usize, x: &[f32]) -> f32 {
    (0..d.in_dim).map(|i| dense_weight(d, o, i) * x[i]).sum()
}

fn dense_weight(d: &DenseRef, o: usize, i: usize) -> f32 {
    match d.layout {
        Layout::OutIn => d.data.get(o * d.in_dim + i),
        Layout::InOut => d.data.get(i * d.out_dim + o),
    }
}

/// One output of a W8A8 product: Σ_groups (Σ q_x·q_w) · x_scale · w_scale.
pub fn int8_w8a8_row(w: &Int8Ref, o: usize, xq: &[i8], x_scale: f32) -> f32 {
    let row = &w.values[o * w.in_dim..(o + 1) * w.in_dim];
    let scales = &w.scales[o * w.groups_per_row()..(o + 1) * w.groups_per_row()];
    let mut acc = 0.0f32;
    for (g, s) in scales.iter().enumerate() {
        let lo = g * w.group;
        let hi = (lo + w.group).min(w.in_dim);
        acc += dot_i8(&row[lo..hi], &xq[lo..hi]) as f32 * s;
    }
    acc * x_scale
}

/// One output of a W8A32 product: Σ_groups w_scale · Σ q_w·x.
pub fn int8_w8a32_row(w: &Int8Ref, o: usize, x: &[f32]) -> f32 {
    let row = &w.values[o * w.in_dim..(o + 1) * w.in_dim];
    let scales = &w.scales[o * w.groups_per_row()..(o + 1) * w.groups_per_row()];
    let mut acc = 0.0f32;
    for (g, s) in scales.iter().enumerate() {
        let lo = g * w.group;
        let hi = (lo + w.group).min(w.in_dim);
        let part: f32 = row[lo..hi]
            .iter()
            .zip(&x[lo..hi])
            .map(|(&q, &v)| q as f32 * v)
            .sum();
        acc += part * s;
    }
    acc
}

/// One output of a 4-/3-bit product with INT8 activations: in group order,
/// `acc += scale·Σ code·xq + off·Σ xq` (`off`: the value of code 0), then `acc·x_scale`.
pub fn quant_row(w: &QuantRef, o: usize, xq: &[i8], x_scale: f32) -> f32 {
    let mut acc = 0.0f32;
    for g in 0..w.groups_per_row() {
        let lo = g * w.group;
        let hi = (lo + w.group).min(w.in_dim);
        let isum: i32 = (lo..hi)
            .map(|i| quant::code(w, o, i) as i32 * xq[i] as i32)
            .sum();
        let xsum: i32 = xq[lo..hi].iter().map(|&v| v as i32).sum();
        let (s, off) = quant::group_params(w, o, g);
        acc += s * isum as f32 + off * xsum as f32;
    }
    acc * x_scale
}

/// `y = W·x + bias` for one token.
pub fn matvec(w: &MatRef, bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    w.check();
    assert_eq!(x.len(), w.in_dim());
    assert_eq!(y.len(), w.out_dim());
    match w {
        MatRef::Dense(d) => {
            for (o, yo) in y.iter_mut().enumerate() {
                *yo = dense_row(d, o, x);
            }
        }
        MatRef::Int8(q) => match q.act {
            Int8Act::F32 => {
                for (o, yo) in y.iter_mut().enumerate() {
                    *yo = int8_w8a32_row(q, o, x);
                }
            }
            Int8Act::Int8 => {
                let mut xq = vec![0i8; x.len()];
                let xs = quantize_activations(x, &mut xq);
                for (o, yo) in y.iter_mut().enumerate() {
                    *yo = int8_w8a8_row(q, o, &xq, xs);
                }
            }
        },
        MatRef::Quant(q) => {
            let mut xq = vec![0i8; x.len()];
            let xs = quantize_activations(x, &mut xq);
            for (o, yo) in y.iter_mut().enumerate() {
                *yo = quant_row(q, o, &xq, xs);
            }
        }
    }
    if let Some(b) = bias {
        for (yo, bo) in y.iter_mut().zip(b) {
            *yo += bo;
        }
    }
}

/// `ys[t] = W·xs[t] + bias` for `xs` = `tokens × in_dim`, `ys` = `tokens × out_dim`, row-major.
pub fn matmul(w: &MatRef, bias: Option<&[f32]>, xs: &[f32], ys: &mut [f32]) {
    let (k, n) = (w.in_dim(), w.out_dim());
    assert_eq!(xs.len() % k.max(1), 0);
    for (x, y) in xs.chunks_exact(k).zip(ys.chunks_exact_mut(n)) {
        matvec(w, bias, x, y);
    }
}

/// The low-rank product `y = U·(s ⊙ (Vh·x)) + bias`; `vh` is `rank × in`, `u` is `out × rank`.
pub fn lowrank_matvec(
    vh: &MatRef,
    s: Option<&[f32]>,
    u: &MatRef,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
) {
    let mut t = vec![0.0f32; vh.out_dim()];
    matvec(vh, None, x, &mut t);
    if let Some(s) = s {
        for (ti, si) in t.iter_mut().zip(s) {
            *ti *= si;
        }
    }
    matvec(u, bias, &t, y);
}

/// LayerNorm over one vector: `(x - mean) / sqrt(var + eps) · gamma + beta` (biased variance), in f64.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for i in 0..x.len() {
        out[i] = ((x[i] as f64 - mean) * inv) as f32 * gamma[i] + beta[i];
    }
}

/// GPT-2's `gelu_new`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, in place.
pub fn gelu_new(x: &mut [f32]) {
    const C: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
    for v in x.iter_mut() {
        let z = *v as f64;
        *v = (0.5 * z * (1.0 + (C * (z + 0.044715 * z * z * z)).tanh())) as f32;
    }
}

/// The exact GELU `0.5·x·(1 + erf(x/√2))` = `0.5·x·erfc(−x/√2)`, in place (`erfc` in f64 from `libm`;
/// the `erfc` form does not cancel in the negative tail).
pub fn gelu_erf(x: &mut [f32]) {
    for v in x.iter_mut() {
        let z = *v as f64;
        *v = (0.5 * z * libm::erfc(-z * std::f64::consts::FRAC_1_SQRT_2)) as f32;
    }
}

/// `ln Σ e^x_i`, in f64 (max-subtracted).
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = x.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Softmax in place (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Attention of one query over `n` cached positions of one head.
///
/// `keys` and `values` are `n × head_dim`, row-major; `out = Σ_j softmax(scale·q·k_j − slope·(n−1−j))_j · v_j`
/// (`slope`: the head's ALiBi slope, 0 without).
pub fn attend(q: &[f32], keys: &[f32], values: &[f32], scale: f32, slope: f32, out: &mut [f32]) {
    let d = q.len();
    let n = keys.len() / d;
    let mut scores: Vec<f32> = (0..n)
        .map(|j| {
            scale
                * q.iter()
                    .zip(&keys[j * d..(j + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                - slope * (n - 1 - j) as f32
        })
        .collect();
    softmax(&mut scores);
    out.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
            *o += p * v;
        }
    }
}
