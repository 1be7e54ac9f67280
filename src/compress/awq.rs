//! AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization", MLSys 2024): before a matrix is
//! quantized to 4 or 3 bits, each input channel `j` is scaled by `s_j = mean|x_j|^α`, so the weights
//! that meet large activations get finer steps; the layer then multiplies its inputs by `m = 1/s`
//! (stored beside the weights as `base.in_scale`), `y = Q(W·diag(s))·(m ⊙ x)`.
//!
//! `α` is searched on a grid in `[0, 1)` for the smallest calibration output error
//! `‖(W − Q(W·diag(s))·diag(m))·X‖²`, computed from the Gram matrix `XᵀX` (the same statistics GPTQ
//! uses). `α = 0` is plain RTN, so AWQ's calibration error is never above RTN's. As in the reference
//! implementation the scales are normalised by `√(max·min)` and the rounding is RTN; unlike it, the
//! multiplier is kept as a vector rather than folded into the preceding LayerNorm or projection, which
//! works for every layer (also after GELU) and every family.

use super::sub8::{self, Quantized4, Sub8};
use super::svd::activation_scales;
use crate::error::{Error, Result};

/// AWQ options.
#[derive(Clone, Copy, Debug)]
pub struct AwqOptions {
    /// Grid points for `α`: `0, 1/grid, …, (grid − 1)/grid` (20, as in the reference).
    pub grid: usize,
}

impl Default for AwqOptions {
    fn default() -> AwqOptions {
        AwqOptions { grid: 20 }
    }
}

/// A matrix quantized by [`awq`].
#[derive(Clone, Debug)]
pub struct Awq {
    /// The scaled matrix `W·diag(s)`, quantized.
    pub quantized: Quantized4,
    /// The per-input multiplier `m = 1/s` the layer applies to its inputs.
    pub in_scale: Vec<f32>,
    /// The weights the layer effectively applies, `Q(W·diag(s))·diag(m)` (row-major, for reports).
    pub effective: Vec<f32>,
    /// The `α` chosen.
    pub alpha: f64,
    /// Calibration output error over RTN's (≤ 1).
    pub error_vs_rtn: f64,
}

/// AWQ of the row-major `rows × cols` matrix `w`, from the inputs' per-channel mean `|x|` and their
/// Gram matrix `gram` (`cols × cols`, row-major).
pub fn awq(
    w: &[f32],
    rows: usize,
    cols: usize,
    mean_abs: &[f64],
    gram: &[f32],
    q: Sub8,
    opts: &AwqOptions,
) -> Result<Awq> {
    if w.len() != rows * cols {
        return Err(Error::input(format!(
            "AWQ: {} weights for a {rows}×{cols} matrix",
            w.len()
        )));
    }
    if mean_abs.len() != cols || gram.len() != cols * cols {
        return Err(Error::input(format!(
            "AWQ: calibration statistics of {} channels and a Gram matrix of {} values for {cols} inputs",
            mean_abs.len(),
            gram.len()
        )));
    }
    if let Some(j) = mean_abs.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(Error::input(format!(
            "AWQ: calibration activation magnitude {} at input {j}",
            mean_abs[j]
        )));
    }
    if let Some(k) = gram.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "AWQ: the calibration Gram matrix holds {} at ({}, {})",
            gram[k],
            k / cols,
            k % cols
        )));
    }
    if opts.grid == 0 {
        return Err(Error::input("AWQ: the grid needs at least one point"));
    }
    let rtn = sub8::rtn(w, rows, cols, q)?;
    let e_rtn = sub8::output_error(w, &rtn.dequantize(), rows, cols, gram);
    let mut best: Option<Awq> = None;
    let mut best_err = f64::INFINITY;
    for i in 0..opts.grid {
        let alpha = i as f64 / opts.grid as f64;
        let s = normalised_scales(mean_abs, alpha);
        let m: Vec<f32> = s.iter().map(|&v| (1.0 / v) as f32).collect();
        let scaled: Vec<f32> = w
            .chunks_exact(cols)
            .flat_map(|row| row.iter().zip(&s).map(|(&x, &s)| (x as f64 * s) as f32))
            .collect();
        let quantized = sub8::rtn(&scaled, rows, cols, q)?;
        let effective: Vec<f32> = quantized
            .dequantize()
            .chunks_exact(cols)
            .flat_map(|row| row.iter().zip(&m).map(|(&x, &m)| x * m).collect::<Vec<_>>())
            .collect();
        let err = sub8::output_error(w, &effective, rows, cols, gram);
        if err < best_err || best.is_none() {
            best_err = err;
            best = Some(Awq {
                quantized,
                in_scale: m,
                effective,
                alpha,
                error_vs_rtn: 0.0,
            });
        }
    }
    let mut best = best.expect("the grid has a point");
    best.error_vs_rtn = if e_rtn > 0.0 { best_err / e_rtn } else { 1.0 };
    Ok(best)
}

/// `mean|x|^α` per channel (floored as ASVD floors it), divided by `√(max·min)`.
fn normalised_scales(mean_abs: &[f64], alpha: f64) -> Vec<f64> {
    let s = activation_scales(mean_abs, alpha);
    let (lo, hi) = s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let norm = (lo * hi).sqrt();
    s.into_iter().map(|v| v / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// Activations with a few outlier channels (the case AWQ is for): `tokens × cols`.
    fn activations(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f64> {
        (0..tokens * cols)
            .map(|i| {
                let j = i % cols;
                let big = if j % 17 == 3 { 40.0 } else { 1.0 };
                rng.next() * big
            })
            .collect()
    }

    fn stats(x: &[f64], cols: usize) -> (Vec<f64>, Vec<f32>) {
        let tokens = x.len() / cols;
        let mut mean = vec![0.0; cols];
        let mut gram = vec![0.0f64; cols * cols];
        for t in x.chunks_exact(cols) {
            for (j, &v) in t.iter().enumerate() {
                mean[j] += v.abs() / tokens as f64;
                for (k, &u) in t.iter().enumerate() {
                    gram[j * cols + k] += v * u;
                }
            }
        }
        (mean, gram.into_iter().map(|v| v as f32).collect())
    }

    #[test]
    fn awq_beats_rtn_on_held_out_activations_with_outlier_channels() {
        let (rows, cols) = (24, 128);
        let mut rng = Rng(0x0a3c_5e77);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next() as f32).collect();
        let calib = activations(&mut rng, 256, cols);
        let held = activations(&mut rng, 256, cols);
        let (mean, gram) = stats(&calib, cols);
        let (_, gram_held) = stats(&held, cols);
        for bits in [4u8, 3] {
            let q = Sub8 {
                bits,
                group: 64,
                asym: true,
            };
            let a = awq(&w, rows, cols, &mean, &gram, q, &AwqOptions::default()).unwrap();
            assert!(a.alpha > 0.0, "q{bits}: the search kept plain RTN");
            assert!(a.error_vs_rtn < 0.9, "q{bits}: {}", a.error_vs_rtn);
            let rtn = sub8::rtn(&w, rows, cols, q).unwrap().dequantize();
            let (e_awq, e_rtn) = (
                sub8::output_error(&w, &a.effective, rows, cols, &gram_held),
                sub8::output_error(&w, &rtn, rows, cols, &gram_held),
            );
            assert!(
                e_awq < 0.9 * e_rtn,
                "q{bits} held out: AWQ {e_awq} vs RTN {e_rtn}"
            );
            // The layer's product equals the effective weights' (what the loader and kernels do).
            let x: Vec<f32> = held[..cols].iter().map(|&v| v as f32).collect();
            let deq = a.quantized.dequantize();
            for r in 0..rows {
                let layer: f64 = (0..cols)
                    .map(|j| deq[r * cols + j] as f64 * (x[j] * a.in_scale[j]) as f64)
                    .sum();
                let eff: f64 = (0..cols)
                    .map(|j| a.effective[r * cols + j] as f64 * x[j] as f64)
                    .sum();
                assert!((layer - eff).abs() <= 1e-4 * (1.0 + eff.abs()), "row {r}");
            }
        }
    }

    #[test]
    fn uniform_activations_keep_rtn_and_bad_statistics_are_errors() {
        let (rows, cols) = (4, 64);
        let mut rng = Rng(7);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next() as f32).collect();
        let mut gram = vec![0.0f32; cols * cols];
        for j in 0..cols {
            gram[j * cols + j] = 1.0;
        }
        let q = Sub8 {
            bits: 4,
            group: 32,
            asym: false,
        };
        // Equal magnitudes: every α gives the same scales, so RTN's codes.
        let a = awq(
            &w,
            rows,
            cols,
            &vec![0.5; cols],
            &gram,
            q,
            &AwqOptions::default(),
        )
        .unwrap();
        let rtn = sub8::rtn(&w, rows, cols, q).unwrap();
        assert_eq!(a.quantized.codes, rtn.codes);
        assert!(a.error_vs_rtn <= 1.0 + 1e-12);
        let bad = |mean: &[f64], gram: &[f32], grid: usize| {
            awq(&w, rows, cols, mean, gram, q, &AwqOptions { grid }).unwrap_err()
        };
        let mut nan = vec![0.5; cols];
        nan[3] = f64::NAN;
        assert!(bad(&nan, &gram, 20).to_string().contains("input 3"));
        assert!(bad(&vec![0.5; cols - 1], &gram, 20)
            .to_string()
            .contains("channels"));
        let mut g = gram.clone();
        g[5] = f32::INFINITY;
        assert!(bad(&vec![0.5; cols], &g, 20).to_string().contains("Gram"));
        assert!(bad(&vec![0.5; cols], &gram, 0).to_string().contains("grid"));
    }
}
