//! Comparison metrics: cosine similarity, KL divergence of logits, top-1 agreement, degradation.

/// Cosine similarity of two vectors, in f64. Two zero vectors are identical (1); a zero vector against a
/// non-zero one shares no direction (0).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// `log softmax(logits)` in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// `KL(P ‖ Q)` in nats, `P = softmax(p_logits)` (the reference), `Q = softmax(q_logits)` (the candidate).
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    let kl: f64 = lp
        .iter()
        .zip(&lq)
        .map(|(&a, &b)| {
            if a == f64::NEG_INFINITY {
                0.0
            } else {
                a.exp() * (a - b)
            }
        })
        .sum();
    // Rounding can make a true 0 slightly negative; NaN (non-finite logits) stays NaN.
    if kl < 0.0 {
        0.0
    } else {
        kl
    }
}

/// Index of the largest logit (the first of equals); `None` for an empty slice.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map(|(i, _)| i)
}

/// Relative perplexity degradation: `candidate / reference − 1` (0: no change, 0.05: 5 % worse).
pub fn degradation(reference_ppl: f64, candidate_ppl: f64) -> f64 {
    candidate_ppl / reference_ppl - 1.0
}

/// Running mean and minimum of a per-token metric.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Default for Stat {
    fn default() -> Self {
        Stat {
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            count: 0,
        }
    }
}

impl Stat {
    /// Adds one value.
    pub fn push(&mut self, v: f64) {
        self.sum += v;
        // `f64::min`/`max` would drop a NaN; keep it visible.
        self.min = if v.is_nan() || v < self.min {
            v
        } else {
            self.min
        };
        self.max = if v.is_nan() || v > self.max {
            v
        } else {
            self.max
        };
        self.count += 1;
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_is_kept_not_clamped_away() {
        let p = [1.0f32, 2.0, 3.0];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        assert!(kl_divergence(&p, &[1.0, f32::NAN, 3.0]).is_nan());
        let mut s = Stat::default();
        for v in [0.5, f64::NAN, 0.25] {
            s.push(v);
        }
        assert!(s.max.is_nan() && s.min.is_nan() && s.mean().is_nan());
    }
}
