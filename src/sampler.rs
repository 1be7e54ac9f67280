//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, seeded.

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id on ties, as `argmax` in PyTorch).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
    /// (0 = all) and to the smallest set whose probability reaches `top_p` (1.0 = all).
    Random {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Sampling::Greedy => Ok(()),
            Sampling::Random {
                temperature, top_p, ..
            } => {
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return Err(format!("temperature must be > 0, got {temperature}"));
                }
                if !(*top_p > 0.0 && *top_p <= 1.0) {
                    return Err(format!("top-p must be in (0, 1], got {top_p}"));
                }
                Ok(())
            }
        }
    }
}

/// A stateful sampler (its random stream advances with every token).
#[derive(Clone, Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for `sampling`.
    pub fn new(sampling: Sampling) -> Sampler {
        let seed = match &sampling {
            Sampling::Random { seed, .. } => *seed,
            Sampling::Greedy => 0,
        };
        Sampler {
            sampling,
            rng: SplitMix64(seed),
            candidates: Vec::new(),
        }
    }

    /// The next token for `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
                ..
            } => {
                let c = &mut self.candidates;
                c.clear();
                c.extend(
                    logits
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| !l.is_nan())
                        .map(|(i, &l)| (l / temperature, i as u32)),
                );
                if c.is_empty() {
                    return 0;
                }
                let by_logit =
                    |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                if top_k > 0 && top_k < c.len() {
                    c.select_nth_unstable_by(top_k - 1, by_logit);
                    c.truncate(top_k);
                }
                c.sort_unstable_by(by_logit);
                let max = c[0].0;
                let mut total = 0.0f64;
                for e in c.iter_mut() {
                    e.0 = (e.0 - max).exp();
                    total += e.0 as f64;
                }
                let mut keep = c.len();
                if top_p < 1.0 {
                    let mut acc = 0.0f64;
                    for (i, e) in c.iter().enumerate() {
                        acc += e.0 as f64 / total;
                        if acc >= top_p as f64 {
                            keep = i + 1;
                            break;
                        }
                    }
                    total = c[..keep].iter().map(|e| e.0 as f64).sum();
                }
                let mut r = self.rng.next_f64() * total;
                for e in &c[..keep] {
                    r -= e.0 as f64;
                    if r <= 0.0 {
                        return e.1;
                    }
                }
                c[keep - 1].1
            }
        }
    }
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(xs: &[f32]) -> u32 {
    // The largest value, 16 lanes at a time (the compiler vectorizes it; NaN never compares greater),
    // then its first position: a few µs for a 50k vocabulary, once per token of every sequence.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    match xs.iter().position(|&x| x == max) {
        Some(i) => i as u32,
        // Every value is NaN (or there are none).
        None => xs.len().saturating_sub(1) as u32,
    }
}

/// `log softmax(logits)[target]`, computed stably (max-subtracted; within ~1e-6 of an f64 evaluation).
pub fn log_prob(logits: &[f32], target: usize) -> f64 {
    logits[target] as f64 - slimlm_kernels::ops::log_sum_exp(logits)
}

/// SplitMix64: a small, well-known generator; enough for sampling, reproducible across platforms.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
        // Against the plain definition, on ties, NaN and every remainder length.
        let plain = |xs: &[f32]| {
            let mut best = 0;
            for (i, &x) in xs.iter().enumerate() {
                if x > xs[best] || xs[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        let mut state = 7u64;
        for n in 1..70 {
            for _ in 0..20 {
                let xs: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        match state >> 60 {
                            0 => f32::NAN,
                            1 => f32::NEG_INFINITY,
                            v => (v % 5) as f32,
                        }
                    })
                    .collect();
                assert_eq!(argmax(&xs), plain(&xs), "{xs:?}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 7,
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail_and_seed_reproduces() {
        // p = softmax([5, 5, -5]): the third token has probability ~2e-5, below the 0.9 nucleus.
        let logits = [5.0, 5.0, -5.0];
        let run = |seed| {
            let mut s = Sampler::new(Sampling::Random {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                seed,
            });
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run(42);
        assert!(a.iter().all(|&t| t < 2));
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
    }

    #[test]
    fn sampling_frequencies_follow_probabilities() {
        // softmax([ln 1, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(Sampling::Random {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
        });
        let ones = (0..20000).filter(|_| s.sample(&logits) == 1).count() as f64 / 20000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
    }

    #[test]
    fn log_prob_matches_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        // e^x in f32 (≤ 2 ulp), summed in f64.
        assert!((log_prob(&l, 2) - (3.0 - z.ln())).abs() < 3e-7);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = Sampling::Random {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        assert!(bad.validate().is_err());
    }
}
