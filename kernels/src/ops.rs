//! Hot-path helpers: LayerNorm, gelu_new, softmax, attention of one query over a KV cache.

use crate::reference;

/// LayerNorm of one vector into `out`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    reference::layer_norm(x, gamma, beta, eps, out)
}

/// `gelu_new` in place.
pub fn gelu_new(x: &mut [f32]) {
    reference::gelu_new(x)
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    reference::softmax(x)
}

/// Attention of one query of one head over `n = keys.len() / q.len()` cached positions.
///
/// `scores` is caller-owned scratch of at least `n` floats (no allocation here).
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let n = keys.len() / d;
    let scores = &mut scores[..n];
    for (j, s) in scores.iter_mut().enumerate() {
        *s = scale * dot(q, &keys[j * d..(j + 1) * d]);
    }
    softmax(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
            *o += p * v;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
