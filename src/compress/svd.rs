//! Truncated SVD of weight matrices (faer, in f64), plain or activation-aware (ASVD), and the choice of
//! rank. Used by the compressor only, never on the inference path.

use super::plan::{RankRule, SFold};

/// A thin SVD `W·diag(d) = U·diag(s)·Vtᵀ` with the scaling `d` already folded back: `W = U·diag(s)·Vt`,
/// where `Vt = Vt'·diag(1/d)`. Row-major; `k = min(m, n)`; `s` non-increasing.
#[derive(Clone, Debug)]
pub struct Svd {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `m × k`.
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// `k × n`.
    pub vt: Vec<f64>,
}

/// Activation-aware column scales: `d_j = mean|x_j|^alpha`, floored at 1e-6·max so none is zero.
pub fn activation_scales(mean_abs: &[f64], alpha: f64) -> Vec<f64> {
    let d: Vec<f64> = mean_abs.iter().map(|&a| a.max(0.0).powf(alpha)).collect();
    let max = d.iter().cloned().fold(0.0, f64::max);
    let floor = if max > 0.0 { max * 1e-6 } else { 1.0 };
    d.into_iter().map(|v| v.max(floor)).collect()
}

/// SVD of the row-major `m × n` matrix `w`, with input columns scaled by `col_scale` (ASVD) if given.
pub fn svd(w: &[f32], m: usize, n: usize, col_scale: Option<&[f64]>) -> Svd {
    let d = |j: usize| col_scale.map_or(1.0, |c| c[j]);
    let a = faer::Mat::<f64>::from_fn(m, n, |i, j| w[i * n + j] as f64 * d(j));
    let t = a.thin_svd();
    let k = m.min(n);
    let (fu, fs, fv) = (t.u(), t.s_diagonal(), t.v());
    // Sort by singular value, descending (faer returns them sorted; do not rely on it).
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| fs.read(b).total_cmp(&fs.read(a)));
    let mut u = vec![0.0; m * k];
    let mut vt = vec![0.0; k * n];
    let mut s = vec![0.0; k];
    for (c, &o) in order.iter().enumerate() {
        s[c] = fs.read(o);
        for i in 0..m {
            u[i * k + c] = fu.read(i, o);
        }
        for j in 0..n {
            vt[c * n + j] = fv.read(j, o) / d(j);
        }
    }
    Svd { m, n, k, u, s, vt }
}

/// Whitened SVD (as SVD-LLM): with the input Gram matrix `G = Σ x·xᵀ = L·Lᵀ` (Cholesky, `n × n`
/// row-major, regularised by 1e-4 of its mean diagonal), decompose `W·L` and fold `L⁻¹` back into `Vt`.
/// Truncating it minimises the error of the layer's *outputs* on the calibration inputs. `None` when `G`
/// is not positive definite even after regularisation. The Gram matrix comes in f32 (as the compressor
/// collects it); the decomposition is done in f64.
pub fn svd_whitened(w: &[f32], m: usize, n: usize, gram: &[f32]) -> Option<Svd> {
    let mean_diag = (0..n).map(|i| gram[i * n + i] as f64).sum::<f64>() / n as f64;
    let eps = 1e-4 * mean_diag.max(1e-30);
    let g = faer::Mat::<f64>::from_fn(n, n, |i, j| {
        gram[i * n + j] as f64 + if i == j { eps } else { 0.0 }
    });
    let l = g.cholesky(faer::Side::Lower).ok()?.compute_l();
    let mut linv = faer::Mat::<f64>::identity(n, n);
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(
        l.as_ref(),
        linv.as_mut(),
        faer::Parallelism::None,
    );
    let a = faer::Mat::<f64>::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let t = (&a * &l).thin_svd();
    let k = m.min(n);
    let (fu, fs, fv) = (t.u(), t.s_diagonal(), t.v());
    // Vt = Vᵀ·L⁻¹
    let vt_mat = fv.transpose() * &linv;
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| fs.read(b).total_cmp(&fs.read(a)));
    let mut u = vec![0.0; m * k];
    let mut vt = vec![0.0; k * n];
    let mut s = vec![0.0; k];
    for (c, &o) in order.iter().enumerate() {
        s[c] = fs.read(o);
        for i in 0..m {
            u[i * k + c] = fu.read(i, o);
        }
        for j in 0..n {
            vt[c * n + j] = vt_mat.read(o, j);
        }
    }
    Some(Svd { m, n, k, u, s, vt })
}

/// Parameters of rank-`r` factors of an `m × n` matrix.
pub fn lowrank_params(m: usize, n: usize, r: usize) -> usize {
    r * (m + n)
}

/// Whether rank `r` stores fewer parameters than the dense `m × n` matrix.
pub fn saves(m: usize, n: usize, r: usize) -> bool {
    lowrank_params(m, n, r) < m * n
}

/// The rank a rule picks for singular values `s` of an `m × n` matrix (may exceed what saves memory;
/// the caller decides).
pub fn choose_rank(rule: RankRule, s: &[f64], m: usize, n: usize) -> usize {
    match rule {
        RankRule::Fixed(r) => r,
        RankRule::Energy(e) => {
            let total: f64 = s.iter().map(|v| v * v).sum();
            if total == 0.0 {
                return 1;
            }
            let mut acc = 0.0;
            for (i, v) in s.iter().enumerate() {
                acc += v * v;
                if acc >= e * total * (1.0 - 1e-12) {
                    return i + 1;
                }
            }
            s.len()
        }
        RankRule::Budget(b) => ((b * (m * n) as f64) / (m + n) as f64).floor().max(1.0) as usize,
    }
}

/// Rank-`r` factors of a decomposition, singular values placed by `fold`: `(u [m×r], vh [r×n], s)`.
pub fn factors(svd: &Svd, r: usize, fold: SFold) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (m, n, k) = (svd.m, svd.n, svd.k);
    let (su, sv): (Vec<f64>, Vec<f64>) = (0..r)
        .map(|c| match fold {
            SFold::Vh => (1.0, svd.s[c]),
            SFold::Sqrt => (svd.s[c].sqrt(), svd.s[c].sqrt()),
            SFold::Separate => (1.0, 1.0),
        })
        .unzip();
    let mut u = vec![0f32; m * r];
    for i in 0..m {
        for c in 0..r {
            u[i * r + c] = (svd.u[i * k + c] * su[c]) as f32;
        }
    }
    let mut vh = vec![0f32; r * n];
    for c in 0..r {
        for j in 0..n {
            vh[c * n + j] = (svd.vt[c * n + j] * sv[c]) as f32;
        }
    }
    let s = (fold == SFold::Separate).then(|| svd.s[..r].iter().map(|&v| v as f32).collect());
    (u, vh, s)
}

/// `U·diag(s)·Vh` as a row-major `m × n` matrix (for measurements and tests).
pub fn reconstruct(
    u: &[f32],
    vh: &[f32],
    s: Option<&[f32]>,
    m: usize,
    n: usize,
    r: usize,
) -> Vec<f32> {
    let mut w = vec![0f32; m * n];
    for i in 0..m {
        for c in 0..r {
            let a = u[i * r + c] * s.map_or(1.0, |s| s[c]);
            for j in 0..n {
                w[i * n + j] += a * vh[c * n + j];
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_rank_reconstructs_and_scaling_folds_back() {
        let (m, n) = (7, 5);
        let w: Vec<f32> = (0..m * n)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0)
            .collect();
        for scale in [None, Some(vec![0.5, 2.0, 1.0, 3.0, 0.1])] {
            let d = svd(&w, m, n, scale.as_deref());
            assert!(d.s.windows(2).all(|p| p[0] >= p[1]));
            for fold in [SFold::Vh, SFold::Sqrt, SFold::Separate] {
                let (u, vh, s) = factors(&d, 5, fold);
                let back = reconstruct(&u, &vh, s.as_deref(), m, n, 5);
                for (a, b) in w.iter().zip(&back) {
                    assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                }
            }
        }
        assert_eq!(
            choose_rank(RankRule::Energy(1.0), &[3.0, 2.0, 1.0], 3, 3),
            3
        );
        assert_eq!(
            choose_rank(RankRule::Energy(0.5), &[3.0, 2.0, 1.0], 3, 3),
            1
        );
        assert_eq!(
            choose_rank(RankRule::Budget(0.5), &[1.0; 256], 256, 1024),
            102
        );
    }
}
