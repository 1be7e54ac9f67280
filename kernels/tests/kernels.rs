//! Every fast path of every kernel against `reference`, on every instruction set this CPU runs.
//!
//! Tolerances (f32 sums in a different order, FMA contraction):
//! * dense and W8A32 products: `|fast − ref| ≤ 1e-5·(1 + Σ|w·x|)` — a few ulps of the magnitude of the
//!   terms, independent of cancellation;
//! * W8A8 products: the per-group i32 sums are compared **exactly** (`int8_group_dots_with`); the final
//!   floats within `1e-5·(1 + Σ_g |s_g·dot_g|·x_scale)` (only the float rescale order differs);
//! * low-rank: the same bound applied to each stage's magnitude, checked on the final output with the
//!   magnitude of `|U|·|s ⊙ Vh·x|` plus the propagated intermediate error.

use half::{bf16, f16};
use slimlm_kernels::{
    int8_group_dots_with, lowrank_matmul_with, lowrank_matvec_with, matmul_with, matvec_with,
    quantize_activations_with, reference, DenseRef, Elems, Int8Act, Int8Ref, Isa, Layout, MatRef,
};

/// xorshift64* — tiny, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| (self.next() % 255) as i8 as i16 as i8)
            .map(|v| v.max(-127))
            .collect()
    }
}

const DIMS: &[usize] = &[1, 7, 31, 33, 64, 256, 767, 769];

fn isas() -> Vec<Isa> {
    let v = Isa::available();
    assert!(v.contains(&Isa::Scalar) && v.contains(&Isa::Portable));
    v
}

/// Σ|w·x| per output for a dense matrix (the magnitude the tolerance scales with).
fn dense_mag(w: &MatRef, x: &[f32]) -> Vec<f32> {
    let MatRef::Dense(d) = w else { unreachable!() };
    (0..d.out_dim)
        .map(|o| {
            (0..d.in_dim)
                .map(|i| {
                    let wi = match d.layout {
                        Layout::OutIn => d.data.get(o * d.in_dim + i),
                        Layout::InOut => d.data.get(i * d.out_dim + o),
                    };
                    (wi * x[i]).abs()
                })
                .sum()
        })
        .collect()
}

fn int8_mag(q: &Int8Ref, x: &[f32]) -> Vec<f32> {
    let gpr = q.groups_per_row();
    (0..q.out_dim)
        .map(|o| {
            (0..q.in_dim)
                .map(|i| {
                    (q.values[o * q.in_dim + i] as f32 * q.scales[o * gpr + i / q.group] * x[i])
                        .abs()
                })
                .sum()
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag.iter().cycle()).enumerate() {
        let tol = rel * (1.0 + m);
        assert!(
            (g - w).abs() <= tol,
            "{what}: [{i}] got {g}, want {w}, |diff| {} > tol {tol}",
            (g - w).abs()
        );
    }
}

struct DenseData {
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
}

impl DenseData {
    fn new(rng: &mut Rng, n: usize, scale: f32) -> DenseData {
        let f32 = rng.vec(n, scale);
        DenseData {
            f16: f32.iter().map(|&v| f16::from_f32(v)).collect(),
            bf16: f32.iter().map(|&v| bf16::from_f32(v)).collect(),
            f32,
        }
    }
    fn all(&self) -> [Elems<'_>; 3] {
        [
            Elems::F32(&self.f32),
            Elems::F16(&self.f16),
            Elems::BF16(&self.bf16),
        ]
    }
}

#[test]
fn dense_matvec_all_paths() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for &k in DIMS {
        for &n in DIMS {
            let data = DenseData::new(&mut rng, n * k, 1.0);
            let x = rng.vec(k, 2.0);
            let bias = rng.vec(n, 1.0);
            for elems in data.all() {
                for layout in [Layout::OutIn, Layout::InOut] {
                    let w = MatRef::Dense(DenseRef {
                        data: elems,
                        layout,
                        out_dim: n,
                        in_dim: k,
                    });
                    let mut want = vec![0.0; n];
                    reference::matvec(&w, Some(&bias), &x, &mut want);
                    let mag = dense_mag(&w, &x);
                    for isa in isas() {
                        let mut got = vec![f32::NAN; n];
                        matvec_with(isa, &w, Some(&bias), &x, &mut got);
                        let what =
                            format!("dense {k}x{n} {layout:?} {:?} {isa:?}", elems.elem_bytes());
                        assert_close(&what, &got, &want, &mag, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn dense_unaligned_slices_and_large_values() {
    let mut rng = Rng(99);
    let (k, n) = (769, 67);
    let big = DenseData::new(&mut rng, n * k + 1, 1e4);
    let xbuf = rng.vec(k + 1, 1e4);
    let x = &xbuf[1..];
    for elems in [
        Elems::F32(&big.f32[1..]),
        Elems::F16(&big.f16[1..]),
        Elems::BF16(&big.bf16[1..]),
    ] {
        for layout in [Layout::OutIn, Layout::InOut] {
            let w = MatRef::Dense(DenseRef {
                data: elems,
                layout,
                out_dim: n,
                in_dim: k,
            });
            let mut want = vec![0.0; n];
            reference::matvec(&w, None, x, &mut want);
            let mag = dense_mag(&w, x);
            for isa in isas() {
                let mut got = vec![0.0; n];
                matvec_with(isa, &w, None, x, &mut got);
                assert_close(
                    &format!("unaligned {layout:?} {isa:?}"),
                    &got,
                    &want,
                    &mag,
                    1e-5,
                );
            }
        }
    }
}

fn int8_matrix(rng: &mut Rng, n: usize, k: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    let mut v = rng.i8s(n * k);
    let gpr = k.div_ceil(group);
    let mut s: Vec<f32> = (0..n * gpr)
        .map(|_| (rng.f().abs() + 0.01) * 0.02)
        .collect();
    // Extremes: a row of ±127, a zero row, a zero scale.
    if n > 2 {
        for (i, q) in v[..k].iter_mut().enumerate() {
            *q = if i % 3 == 0 { -127 } else { 127 };
        }
        v[k..2 * k].fill(0);
        s[2 * gpr] = 0.0;
    }
    (v, s)
}

fn groups_for(k: usize) -> Vec<usize> {
    let mut g = vec![32, 64, 128, k, 48];
    g.sort_unstable();
    g.dedup();
    g
}

#[test]
fn int8_group_sums_exact() {
    let mut rng = Rng(7);
    for &k in &[1usize, 7, 31, 33, 64, 65, 127, 128, 256, 767, 769, 2048] {
        for group in groups_for(k) {
            let row = rng.i8s(k);
            let mut xq = rng.i8s(k);
            if k > 4 {
                xq[0] = -127;
                xq[1] = 127;
                xq[2] = 0;
            }
            let g = k.div_ceil(group);
            let want: Vec<i32> = (0..g)
                .map(|i| {
                    reference::dot_i8(
                        &row[i * group..((i + 1) * group).min(k)],
                        &xq[i * group..((i + 1) * group).min(k)],
                    )
                })
                .collect();
            for isa in isas() {
                let mut got = vec![0; g];
                int8_group_dots_with(isa, &row, &xq, group, &mut got);
                assert_eq!(got, want, "group dots k={k} group={group} {isa:?}");
            }
            // The extreme: every product 127·127 with the same sign (also −127·−127).
            let row = vec![-127i8; k];
            let xq = vec![-127i8; k];
            for isa in isas() {
                let mut got = vec![0; g];
                int8_group_dots_with(isa, &row, &xq, group, &mut got);
                let want: Vec<i32> = (0..g)
                    .map(|i| 16129 * (((i + 1) * group).min(k) - i * group) as i32)
                    .collect();
                assert_eq!(got, want, "saturation extreme k={k} group={group} {isa:?}");
            }
        }
    }
}

#[test]
fn int8_matvec_all_paths() {
    let mut rng = Rng(42);
    for &k in DIMS {
        for &n in DIMS {
            for group in groups_for(k) {
                let (v, s) = int8_matrix(&mut rng, n, k, group);
                let mut x = rng.vec(k, 3.0);
                if k > 3 {
                    x[3] = 1e4; // a large activation dominates the W8A8 scale
                }
                let bias = rng.vec(n, 1.0);
                for act in [Int8Act::Int8, Int8Act::F32] {
                    let q = Int8Ref {
                        values: &v,
                        scales: &s,
                        out_dim: n,
                        in_dim: k,
                        group,
                        act,
                    };
                    let w = MatRef::Int8(q);
                    let mut want = vec![0.0; n];
                    reference::matvec(&w, Some(&bias), &x, &mut want);
                    let mag = int8_mag(&q, &x);
                    for isa in isas() {
                        let mut got = vec![f32::NAN; n];
                        matvec_with(isa, &w, Some(&bias), &x, &mut got);
                        let what = format!("int8 {act:?} {k}x{n} g{group} {isa:?}");
                        // W8A8: Σ|s·qw·qx|·xs ≤ Σ|w·x| + quantization slack; 2× covers it.
                        let m: Vec<f32> = mag.iter().map(|m| 2.0 * m).collect();
                        assert_close(&what, &got, &want, &m, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn int8_zero_activations() {
    let mut rng = Rng(5);
    let (n, k) = (33, 769);
    let (v, s) = int8_matrix(&mut rng, n, k, 64);
    let x = vec![0.0; k];
    for act in [Int8Act::Int8, Int8Act::F32] {
        let w = MatRef::Int8(Int8Ref {
            values: &v,
            scales: &s,
            out_dim: n,
            in_dim: k,
            group: 64,
            act,
        });
        for isa in isas() {
            let mut got = vec![f32::NAN; n];
            matvec_with(isa, &w, None, &x, &mut got);
            assert!(got.iter().all(|&g| g == 0.0), "{act:?} {isa:?}: {got:?}");
        }
    }
}

const MM_DIMS: &[usize] = &[1, 7, 33, 64, 256, 769];
/// 2 and 9 take the few-token path (row blocks, every token per block), 33 and 64 the GEMMs.
const TOKENS: &[usize] = &[1, 2, 9, 33, 64];

#[test]
fn dense_matmul_all_paths() {
    let mut rng = Rng(11);
    for &k in MM_DIMS {
        for &n in MM_DIMS {
            let data = DenseData::new(&mut rng, n * k, 1.0);
            let bias = rng.vec(n, 1.0);
            for &t in TOKENS {
                let xs = rng.vec(t * k, 2.0);
                for elems in data.all() {
                    for layout in [Layout::OutIn, Layout::InOut] {
                        let w = MatRef::Dense(DenseRef {
                            data: elems,
                            layout,
                            out_dim: n,
                            in_dim: k,
                        });
                        let mut want = vec![0.0; t * n];
                        reference::matmul(&w, Some(&bias), &xs, &mut want);
                        let mag: Vec<f32> = xs.chunks(k).flat_map(|x| dense_mag(&w, x)).collect();
                        for isa in isas() {
                            let mut got = vec![f32::NAN; t * n];
                            matmul_with(isa, &w, Some(&bias), &xs, &mut got);
                            let what = format!(
                                "matmul {t}x{k}x{n} {layout:?} {} {isa:?}",
                                elems.elem_bytes()
                            );
                            assert_close(&what, &got, &want, &mag, 1e-5);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn int8_matmul_all_paths() {
    let mut rng = Rng(13);
    for &k in MM_DIMS {
        for &n in MM_DIMS {
            for group in groups_for(k) {
                let (v, s) = int8_matrix(&mut rng, n, k, group);
                let bias = rng.vec(n, 1.0);
                for &t in TOKENS {
                    let mut xs = rng.vec(t * k, 2.0);
                    if t > 2 {
                        xs[k..2 * k].fill(0.0); // an all-zero token
                        xs[2 * k] = 1e4;
                    }
                    for act in [Int8Act::Int8, Int8Act::F32] {
                        let q = Int8Ref {
                            values: &v,
                            scales: &s,
                            out_dim: n,
                            in_dim: k,
                            group,
                            act,
                        };
                        let w = MatRef::Int8(q);
                        let mut want = vec![0.0; t * n];
                        reference::matmul(&w, Some(&bias), &xs, &mut want);
                        let mag: Vec<f32> = xs
                            .chunks(k)
                            .flat_map(|x| int8_mag(&q, x))
                            .map(|m| 2.0 * m)
                            .collect();
                        for isa in isas() {
                            let mut got = vec![f32::NAN; t * n];
                            matmul_with(isa, &w, Some(&bias), &xs, &mut got);
                            let what = format!("int8 matmul {act:?} {t}x{k}x{n} g{group} {isa:?}");
                            assert_close(&what, &got, &want, &mag, 1e-5);
                        }
                    }
                }
            }
        }
    }
}

/// A few tokens at once give exactly what each gives alone: a batch of decode steps equals the steps.
#[test]
fn few_token_matmul_is_matvec_bit_for_bit() {
    let mut rng = Rng(19);
    let (k, n) = (769, 1031);
    let (v, s) = int8_matrix(&mut rng, n, k, k);
    let data = DenseData::new(&mut rng, n * k, 1.0);
    let bias = rng.vec(n, 1.0);
    let mut mats: Vec<MatRef> = data
        .all()
        .into_iter()
        .flat_map(|elems| {
            [Layout::OutIn, Layout::InOut].map(|layout| {
                MatRef::Dense(DenseRef {
                    data: elems,
                    layout,
                    out_dim: n,
                    in_dim: k,
                })
            })
        })
        .collect();
    for act in [Int8Act::Int8, Int8Act::F32] {
        mats.push(MatRef::Int8(Int8Ref {
            values: &v,
            scales: &s,
            out_dim: n,
            in_dim: k,
            group: k,
            act,
        }));
    }
    // Every path's matmul of `t` tokens equals its matvec of each, bit for bit.
    let same_as_matvec = |rng: &mut Rng, w: &MatRef, t: usize, what: &str| {
        let k = w.in_dim();
        let xs = rng.vec(t * k, 2.0);
        for isa in isas() {
            let mut got = vec![f32::NAN; t * n];
            matmul_with(isa, w, Some(&bias), &xs, &mut got);
            for (x, g) in xs.chunks(k).zip(got.chunks(n)) {
                let mut one = vec![f32::NAN; n];
                matvec_with(isa, w, Some(&bias), x, &mut one);
                assert!(one == g, "{what} {t} tokens, {isa:?}: differs from matvec");
            }
        }
    };
    for t in [2, 5, 31] {
        for w in &mats {
            same_as_matvec(&mut rng, w, t, "");
        }
    }
    // W8A8 keeps matvec's bits at any token count through the integer GEMMs (VNNI, AVX2 i16 pairs),
    // per row and with groups (an odd last group of one value, odd group widths).
    let w8a8 = mats[mats.len() - 2];
    let (gv, gs) = int8_matrix(&mut rng, n, k, 32);
    let (ov, os) = int8_matrix(&mut rng, n, k, 45);
    let grouped = |values, scales, group| {
        MatRef::Int8(Int8Ref {
            values,
            scales,
            out_dim: n,
            in_dim: k,
            group,
            act: Int8Act::Int8,
        })
    };
    for w in [w8a8, grouped(&gv, &gs, 32), grouped(&ov, &os, 45)] {
        for t in [33, 70] {
            same_as_matvec(&mut rng, &w, t, "W8A8");
        }
    }
    // K in whole 64-byte steps (the AMX tiles' depth, where the CPU has them), per row and in groups;
    // up to 128 tokens the tiles read the weights in place, past it the packed panels.
    let k64 = 768;
    for group in [k64, 128] {
        let (v64, s64) = int8_matrix(&mut rng, n, k64, group);
        let w = MatRef::Int8(Int8Ref {
            values: &v64,
            scales: &s64,
            out_dim: n,
            in_dim: k64,
            group,
            act: Int8Act::Int8,
        });
        for t in [33, 70, 150] {
            same_as_matvec(&mut rng, &w, t, &format!("W8A8 k{k64} g{group}"));
        }
    }
}

#[test]
fn lowrank_all_paths() {
    let mut rng = Rng(17);
    for &(k, n) in &[(7usize, 33usize), (64, 769), (769, 256), (256, 64)] {
        for &r in &[1usize, 7, 64] {
            let vh = DenseData::new(&mut rng, r * k, 1.0);
            let u = DenseData::new(&mut rng, n * r, 1.0);
            let (vq, vs) = int8_matrix(&mut rng, r, k, 64);
            let (uq, us) = int8_matrix(&mut rng, n, r, 64);
            let s = rng.vec(r, 2.0);
            let bias = rng.vec(n, 1.0);
            for &t in &[1usize, 5, 64] {
                let xs = rng.vec(t * k, 1.0);
                let mut cases: Vec<(MatRef, MatRef)> = vh
                    .all()
                    .into_iter()
                    .zip(u.all())
                    .map(|(a, b)| {
                        (
                            MatRef::Dense(DenseRef {
                                data: a,
                                layout: Layout::OutIn,
                                out_dim: r,
                                in_dim: k,
                            }),
                            MatRef::Dense(DenseRef {
                                data: b,
                                layout: Layout::InOut,
                                out_dim: n,
                                in_dim: r,
                            }),
                        )
                    })
                    .collect();
                for act in [Int8Act::Int8, Int8Act::F32] {
                    cases.push((
                        MatRef::Int8(Int8Ref {
                            values: &vq,
                            scales: &vs,
                            out_dim: r,
                            in_dim: k,
                            group: 64,
                            act,
                        }),
                        MatRef::Int8(Int8Ref {
                            values: &uq,
                            scales: &us,
                            out_dim: n,
                            in_dim: r,
                            group: 64,
                            act,
                        }),
                    ));
                }
                for (vhm, um) in &cases {
                    let mut want = vec![0.0; t * n];
                    for (x, y) in xs.chunks(k).zip(want.chunks_mut(n)) {
                        reference::lowrank_matvec(vhm, Some(&s), um, Some(&bias), x, y);
                    }
                    // Magnitude: |U|·(|s|·|Vh|·|x|), times 2 for W8A8 quantization slack.
                    let mut mag = Vec::new();
                    for x in xs.chunks(k) {
                        let tm: Vec<f32> = abs_mag(vhm, x)
                            .iter()
                            .zip(&s)
                            .map(|(a, b)| a * b.abs())
                            .collect();
                        mag.extend(abs_mag(um, &tm).iter().map(|m| 2.0 * m));
                    }
                    for isa in isas() {
                        let mut got = vec![f32::NAN; t * n];
                        lowrank_matmul_with(isa, vhm, Some(&s), um, Some(&bias), &xs, &mut got);
                        let what = format!("lowrank {t}x{k}x{n} r{r} {isa:?}");
                        // W8A8 re-quantizes the intermediate: a different rounding of t moves a q by
                        // one step (1/127 of its scale), so allow 1e-2 relative for int8 W8A8.
                        let rel = if matches!(vhm, MatRef::Int8(q) if q.act == Int8Act::Int8) {
                            2e-2
                        } else {
                            1e-4
                        };
                        assert_close(&what, &got, &want, &mag, rel);
                        if t == 1 {
                            let mut got1 = vec![f32::NAN; n];
                            lowrank_matvec_with(
                                isa,
                                vhm,
                                Some(&s),
                                um,
                                Some(&bias),
                                &xs,
                                &mut got1,
                            );
                            assert_close(&format!("{what} matvec"), &got1, &want, &mag, rel);
                        }
                    }
                }
            }
        }
    }
}

/// Σ|W|·|x| per output, for any storage.
fn abs_mag(w: &MatRef, x: &[f32]) -> Vec<f32> {
    match w {
        MatRef::Dense(_) => dense_mag(w, x),
        MatRef::Int8(q) => int8_mag(q, x),
        MatRef::Quant(q) => (0..q.out_dim)
            .map(|o| {
                (0..q.in_dim)
                    .map(|i| (slimlm_kernels::quant::weight(q, o, i) * x[i]).abs())
                    .sum()
            })
            .collect(),
    }
}

#[test]
fn isa_parsing_and_support() {
    assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
    assert_eq!(Isa::parse("AMX"), Some(Isa::Amx));
    assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
    assert_eq!(Isa::parse("Scalar"), Some(Isa::Scalar));
    assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
    assert_eq!(Isa::parse("neon"), None);
    for isa in [Isa::Scalar, Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Amx] {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::best(), *Isa::available().last().unwrap());
    // An unsupported path is refused by the `_with` entry points.
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Amx] {
        if !isa.supported() {
            let r = std::panic::catch_unwind(|| {
                let w = [0.0f32];
                let m = MatRef::Dense(DenseRef {
                    data: Elems::F32(&w),
                    layout: Layout::OutIn,
                    out_dim: 1,
                    in_dim: 1,
                });
                matvec_with(isa, &m, None, &[1.0], &mut [0.0]);
            });
            assert!(r.is_err());
        }
    }
}

#[test]
fn slimlm_kernels_values() {
    use slimlm_kernels::isa::resolve;
    assert_eq!(resolve(None), Ok(Isa::best()));
    assert_eq!(resolve(Some("  ")), Ok(Isa::best()));
    assert_eq!(resolve(Some("scalar")), Ok(Isa::Scalar));
    assert_eq!(resolve(Some("PORTABLE")), Ok(Isa::Portable));
    let e = resolve(Some("sse9")).unwrap_err();
    assert!(e.contains("sse9") && e.contains("avx512"), "{e}");
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Amx] {
        match resolve(Some(isa.name())) {
            Ok(got) => assert!(isa.supported() && got == isa),
            Err(e) => assert!(!isa.supported() && e.contains("does not support"), "{e}"),
        }
    }
}

#[test]
fn quantize_bit_exact() {
    let mut rng = Rng(23);
    for &k in &[1usize, 7, 31, 33, 767, 769, 2048] {
        let mut x = rng.vec(k, 5.0);
        // Ties of round-half-away-from-zero: x·(127/amax) = ±n.5 exactly.
        x[0] = 127.0;
        if k > 3 {
            x[1] = 0.5;
            x[2] = -2.5;
            x[3] = 1e-30;
        }
        if k > 6 {
            x[4] = -0.5;
            x[5] = 126.5;
            x[6] = -0.49999997;
        }
        if k > 8 {
            x[7] = f32::NAN;
            x[8] = -126.5;
        }
        for case in 0..3 {
            let x: Vec<f32> = match case {
                0 => x.clone(),
                1 => vec![0.0; k],
                _ => x.iter().map(|v| v * 1e4).collect(),
            };
            let mut want = vec![0i8; k];
            let ws = reference::quantize_activations(&x, &mut want);
            for isa in isas() {
                let mut got = vec![0i8; k];
                let gs = quantize_activations_with(isa, &x, &mut got);
                assert_eq!(
                    gs.to_bits(),
                    ws.to_bits(),
                    "scale k={k} case {case} {isa:?}"
                );
                assert_eq!(got, want, "q k={k} case {case} {isa:?}");
            }
        }
    }
}

mod ops_tests {
    use super::*;
    use slimlm_kernels::ops::{
        attend_f16_with, attend_with, gelu_erf_with, gelu_new_with, layer_norm_with,
        log_sum_exp_with, rotate_half, softmax_with,
    };

    #[test]
    fn layer_norm_all_paths() {
        let mut rng = Rng(31);
        for &n in &[1usize, 7, 33, 768, 769, 2048] {
            for &(offset, spread) in &[(0.0f32, 1.0f32), (100.0, 0.5), (0.0, 1e4), (-3.0, 1e-3)] {
                let x: Vec<f32> = rng.vec(n, spread).into_iter().map(|v| v + offset).collect();
                let g = rng.vec(n, 2.0);
                let b = rng.vec(n, 1.0);
                let mut want = vec![0.0; n];
                reference::layer_norm(&x, &g, &b, 1e-5, &mut want);
                for isa in isas() {
                    let mut got = vec![f32::NAN; n];
                    layer_norm_with(isa, &x, &g, &b, 1e-5, &mut got);
                    // Same f64 statistics as the reference, summed in another order: 1e-6 relative.
                    let mag: Vec<f32> = want
                        .iter()
                        .zip(&b)
                        .map(|(w, bb)| w.abs() + bb.abs())
                        .collect();
                    assert_close(
                        &format!("layer_norm n={n} off={offset} {isa:?}"),
                        &got,
                        &want,
                        &mag,
                        1e-6,
                    );
                }
            }
        }
    }

    #[test]
    fn gelu_new_all_paths() {
        let mut rng = Rng(37);
        let mut x = rng.vec(4099, 8.0);
        x.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 30.0, -30.0, 9.0, -9.0, 1e-3, -1e-3,
        ]);
        let mut want = x.clone();
        reference::gelu_new(&mut want);
        for isa in isas() {
            let mut got = x.clone();
            gelu_new_with(isa, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // vs the reference: 1e-6 relative + 1e-9 absolute. (In the negative tail the reference's
                // own `1 + tanh(u)` cancels in f64 — ~1e-4 relative at x = −6.4 — so relative alone is
                // not a fair test there.)
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs() + 1e-9,
                    "gelu {isa:?} x={} got {g} want {w}",
                    x[i]
                );
                // vs an accurate f64 evaluation of the same function, x·σ(2u): 1e-6 relative
                // (+1e-30 absolute: the fast path stops at e^88, giving ~−1e-37 instead of −0 for x ≪ 0).
                let z = x[i] as f64;
                let exact = (z
                    / (1.0 + (-2.0 * 0.797_884_560_802_865_4 * (z + 0.044715 * z * z * z)).exp()))
                    as f32;
                // (Not for Isa::Scalar, which *is* the reference, cancellation included.)
                let tol = if isa == Isa::Scalar {
                    f32::INFINITY
                } else {
                    1e-6 * exact.abs() + 1e-30
                };
                assert!(
                    (g - exact).abs() <= tol,
                    "gelu {isa:?} x={} got {g} exact {exact}",
                    x[i]
                );
            }
        }
    }

    #[test]
    fn gelu_erf_all_paths() {
        let mut rng = Rng(39);
        let mut x = rng.vec(4099, 8.0);
        x.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 30.0, -30.0, 9.0, -9.0, 5.0, -5.0, 1e-3, -1e-3,
        ]);
        // The reference itself against published values of x·Φ(x).
        let mut known = [1.0f32, -1.0, 2.0, -3.0];
        reference::gelu_erf(&mut known);
        for (k, v) in known.iter().zip([
            0.841_344_746_068_543f64,
            -0.158_655_253_931_457,
            1.954_499_736_103_642,
            -0.004_049_694_008_7,
        ]) {
            let k = *k as f64;
            assert!((k - v).abs() <= 1e-7 * (1.0 + v.abs()), "{k} vs {v}");
        }
        let mut want = x.clone();
        reference::gelu_erf(&mut want);
        for isa in isas() {
            let mut got = x.clone();
            gelu_erf_with(isa, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // erfc's fit is good to 1.2e-7 relative, also in the negative tail (where the result
                // is tiny): 1e-6 relative, plus 1e-30 absolute where e^(−u²) underflows.
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs() + 1e-30,
                    "gelu_erf {isa:?} x={} got {g} want {w}",
                    x[i]
                );
            }
        }
    }

    #[test]
    fn rotate_half_matches_the_definition() {
        // transformers: x·cos + rotate_half(x)·sin with cos, sin repeated over both halves, on the first
        // 2·half values; the rest pass through.
        let mut rng = Rng(40);
        for &(len, half) in &[(8usize, 4usize), (16, 2), (32, 4), (7, 3), (5, 0)] {
            let x = rng.vec(len, 2.0);
            let ang: Vec<f32> = rng.vec(half, 3.0);
            let (cos, sin): (Vec<f32>, Vec<f32>) = ang.iter().map(|a| (a.cos(), a.sin())).unzip();
            let mut got = x.clone();
            rotate_half(&mut got, &cos, &sin);
            for i in 0..len {
                let want = if i < half {
                    x[i] * cos[i] - x[i + half] * sin[i]
                } else if i < 2 * half {
                    x[i] * cos[i - half] + x[i - half] * sin[i - half]
                } else {
                    x[i]
                };
                assert!((got[i] - want).abs() <= 1e-6 * (1.0 + want.abs()), "{i}");
            }
        }
    }

    #[test]
    fn log_sum_exp_all_paths() {
        let mut rng = Rng(42);
        for &n in &[1usize, 7, 16, 33, 12_032, 50_257] {
            for &spread in &[1.0f32, 10.0, 80.0] {
                let x = rng.vec(n, spread);
                let want = reference::log_sum_exp(&x);
                for isa in isas() {
                    let got = log_sum_exp_with(isa, &x);
                    // Each e^x within 2 ulp, summed in f64: the log within ~3e-7 absolute.
                    assert!((got - want).abs() <= 3e-7, "n={n} {isa:?}: {got} vs {want}");
                }
            }
        }
        for isa in isas() {
            assert!(log_sum_exp_with(isa, &[1.0, f32::NAN]).is_nan());
            assert_eq!(log_sum_exp_with(isa, &[]), f64::NEG_INFINITY);
            assert_eq!(log_sum_exp_with(isa, &[f32::INFINITY, 0.0]), f64::INFINITY);
        }
    }

    #[test]
    fn softmax_all_paths() {
        let mut rng = Rng(41);
        for &n in &[1usize, 7, 16, 33, 1024, 2049] {
            for &spread in &[1.0f32, 10.0, 80.0] {
                let x = rng.vec(n, spread);
                let mut want = x.clone();
                reference::softmax(&mut want);
                for isa in isas() {
                    let mut got = x.clone();
                    softmax_with(isa, &mut got);
                    let sum: f32 = got.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "softmax sum {sum}");
                    // 2e-6 relative per probability (exp ≤ 2 ulp, f32 sum), 1e-37 absolute (tiny values).
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 2e-6 * w + 1e-37,
                            "softmax n={n} {isa:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attend_f16_all_paths() {
        let mut rng = Rng(47);
        for &d in &[1usize, 7, 64, 80, 129] {
            for &n in &[1usize, 2, 7, 100, 513] {
                let q = rng.vec(d, 2.0);
                let to_f16 = |v: Vec<f32>| -> Vec<half::f16> {
                    v.into_iter().map(half::f16::from_f32).collect()
                };
                let keys = to_f16(rng.vec(n * d, 2.0));
                let values = to_f16(rng.vec(n * d, 3.0));
                // The reference sees the same (exactly widened) values.
                let kf: Vec<f32> = keys.iter().map(|h| h.to_f32()).collect();
                let vf: Vec<f32> = values.iter().map(|h| h.to_f32()).collect();
                let scale = 1.0 / (d as f32).sqrt();
                for slope in [0.0f32, 0.5] {
                    let mut want = vec![0.0; d];
                    reference::attend(&q, &kf, &vf, scale, slope, &mut want);
                    let vmax = vf.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for isa in isas() {
                        let mut scores = vec![0.0; n];
                        let mut got = vec![f32::NAN; d];
                        attend_f16_with(
                            isa,
                            &q,
                            &keys,
                            &values,
                            scale,
                            slope,
                            &mut scores,
                            &mut got,
                        );
                        assert_close(
                            &format!("attend_f16 d={d} n={n} slope={slope} {isa:?}"),
                            &got,
                            &want,
                            &[vmax],
                            1e-5,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attend_all_paths() {
        let mut rng = Rng(43);
        for &d in &[1usize, 7, 64, 80] {
            for &n in &[1usize, 2, 7, 100, 513] {
                let q = rng.vec(d, 2.0);
                let keys = rng.vec(n * d, 2.0);
                let values = rng.vec(n * d, 3.0);
                let scale = 1.0 / (d as f32).sqrt();
                // Without ALiBi, and with BLOOM-like slopes (a steep one and a shallow one).
                for slope in [0.0f32, 0.5, 0.0039] {
                    let mut want = vec![0.0; d];
                    reference::attend(&q, &keys, &values, scale, slope, &mut want);
                    // Magnitude: max |v| (a convex combination of the values), tolerance 1e-5 of it.
                    let vmax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for isa in isas() {
                        let mut scores = vec![0.0; n + 3];
                        let mut got = vec![f32::NAN; d];
                        attend_with(isa, &q, &keys, &values, scale, slope, &mut scores, &mut got);
                        assert_close(
                            &format!("attend d={d} n={n} slope={slope} {isa:?}"),
                            &got,
                            &want,
                            &[vmax],
                            1e-5,
                        );
                    }
                }
            }
        }
    }
}

/// Query rows for `attend_rows`: a chunk of `m` consecutive positions ending at `top`, each seeing
/// the keys from `max(0, p + 1 − window)` to its own position `p` inclusive.
fn causal_ranges(m: usize, top: usize, window: Option<usize>) -> Vec<(usize, usize)> {
    (top - m..top)
        .map(|p| (window.map_or(0, |w| (p + 1).saturating_sub(w)), p + 1))
        .collect()
}

mod attend_rows_tests {
    use super::*;
    use slimlm_kernels::ops::{attend_rows_f16_with, attend_rows_with};

    /// Every query of a block against [`reference::attend`] over its own rows, on odd head sizes,
    /// blocks that are not whole (1, 5, 9, 17 queries), a prefix already cached before the chunk,
    /// sliding windows (GPT-Neo's local layers) and ALiBi slopes; F32 and F16 keys.
    #[test]
    fn attend_rows_all_paths() {
        let mut rng = Rng(53);
        for &d in &[1usize, 7, 64, 80] {
            for &(m, top, window) in &[
                (1usize, 1usize, None),
                (5, 5, None),
                (9, 30, None),
                (17, 17, Some(4usize)),
                (33, 70, Some(19)),
                (40, 40, None),
            ] {
                let qs = 3 * d + 1; // queries at a stride, as in the fused QKV rows
                let q = rng.vec(m * qs, 2.0);
                let keys = rng.vec(top * d, 2.0);
                let values = rng.vec(top * d, 3.0);
                let keys16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
                let values16: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                let (kw, vw): (Vec<f32>, Vec<f32>) = (
                    keys16.iter().map(|h| h.to_f32()).collect(),
                    values16.iter().map(|h| h.to_f32()).collect(),
                );
                let ranges = causal_ranges(m, top, window);
                let scale = 1.0 / (d as f32).sqrt();
                let vmax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for slope in [0.0f32, 0.5, 0.0039] {
                    let want = |k: &[f32], v: &[f32]| -> Vec<f32> {
                        let mut out = vec![0.0; m * d];
                        for (i, &(lo, hi)) in ranges.iter().enumerate() {
                            reference::attend(
                                &q[i * qs..i * qs + d],
                                &k[lo * d..hi * d],
                                &v[lo * d..hi * d],
                                scale,
                                slope,
                                &mut out[i * d..(i + 1) * d],
                            );
                        }
                        out
                    };
                    let (want32, want16) = (want(&keys, &values), want(&kw, &vw));
                    let name =
                        format!("attend_rows d={d} m={m} top={top} {window:?} slope={slope}");
                    for isa in isas() {
                        let mut got = vec![f32::NAN; m * d];
                        let (k, v) = (&keys, &values);
                        attend_rows_with(isa, &q, qs, d, k, v, &ranges, scale, slope, &mut got, d);
                        assert_close(&format!("{name} {isa:?}"), &got, &want32, &[vmax], 1e-5);
                        let mut got = vec![f32::NAN; m * d];
                        let (k, v) = (&keys16, &values16);
                        attend_rows_f16_with(
                            isa, &q, qs, d, k, v, &ranges, scale, slope, &mut got, d,
                        );
                        assert_close(&format!("{name} f16 {isa:?}"), &got, &want16, &[vmax], 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "empty range")]
    fn attend_rows_rejects_an_empty_range() {
        let (q, k) = (vec![0.0; 4], vec![0.0; 8]);
        let mut out = vec![0.0; 4];
        attend_rows_with(
            isas()[0],
            &q,
            4,
            4,
            &k,
            &k,
            &[(1, 1)],
            1.0,
            0.0,
            &mut out,
            4,
        );
    }
}

/// A random sub-8-bit matrix: codes, F16 scales (some groups all zero), optional F16 minimums.
fn quant_matrix(
    rng: &mut Rng,
    bits: u8,
    n: usize,
    k: usize,
    group: usize,
    asym: bool,
) -> (Vec<u8>, Vec<f16>, Option<Vec<f16>>) {
    let rb = slimlm_kernels::quant::row_bytes(bits, k);
    let mut packed = vec![0u8; n * rb];
    for r in 0..n {
        let codes: Vec<u8> = (0..k)
            .map(|_| (rng.next() >> 33) as u8 % (1 << bits))
            .collect();
        slimlm_kernels::quant::pack_row(bits, &codes, &mut packed[r * rb..(r + 1) * rb]);
    }
    let groups = n * k.div_ceil(group);
    let scales = (0..groups)
        .map(|g| {
            f16::from_f32(if g % 7 == 3 {
                0.0
            } else {
                rng.f().abs() * 0.1 + 1e-3
            })
        })
        .collect();
    let mins = asym.then(|| (0..groups).map(|_| f16::from_f32(rng.f() * 0.5)).collect());
    (packed, scales, mins)
}

/// The i16 sums of the AVX2 kernel at their worst (every code at its top, every activation at ±127, groups
/// of 1024 = 4 chunks of 8 blocks) equal the reference bit for bit.
#[test]
fn quant_worst_case_sums_are_exact() {
    for bits in [3u8, 4] {
        let (n, k, group) = (4, 1024, 1024);
        let rb = slimlm_kernels::quant::row_bytes(bits, k);
        let mut packed = vec![0u8; n * rb];
        for r in 0..n {
            let codes = vec![(1u8 << bits) - 1; k];
            slimlm_kernels::quant::pack_row(bits, &codes, &mut packed[r * rb..(r + 1) * rb]);
        }
        let scales = vec![f16::from_f32(1.0); n];
        let q = slimlm_kernels::QuantRef {
            bits,
            packed: &packed,
            scales: &scales,
            mins: None,
            out_dim: n,
            in_dim: k,
            group,
        };
        let w = MatRef::Quant(q);
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; k];
            let mut want = vec![0.0f32; n];
            reference::matvec(&w, None, &x, &mut want);
            // Σ (top − half)·x = k·(2^(bits−1) − 1)·sign: exact in f32.
            let exact = sign * (k as f32) * (((1u32 << (bits - 1)) - 1) as f32);
            assert_eq!(want[0], exact, "reference q{bits}");
            for isa in isas() {
                let mut got = vec![0.0f32; n];
                matvec_with(isa, &w, None, &x, &mut got);
                assert_eq!(got, want, "{} q{bits} sign {sign}", isa.name());
            }
        }
    }
}

/// Sub-8-bit products on every path, every token count and the threads of the default team equal the
/// reference bit for bit (the integer sums are exact and every path does the float steps in the
/// reference's order); the reference itself is within the activation quantization's error of the
/// dequantized weights times the f32 input.
#[test]
fn quant_matvec_and_matmul_all_paths_bit_exact() {
    let mut rng = Rng(0x5eed_0004);
    for bits in [3u8, 4] {
        for &(n, k, group) in &[
            (1, 1, 32),
            (5, 31, 32),
            (67, 80, 32),
            (64, 96, 64),
            (130, 300, 128),
            (33, 768, 128),
            (9, 2100, 256),
            (6, 1100, 512),
            (5, 2048, 1024),
        ] {
            for asym in [false, true] {
                let (packed, scales, mins) = quant_matrix(&mut rng, bits, n, k, group, asym);
                let q = slimlm_kernels::QuantRef {
                    bits,
                    packed: &packed,
                    scales: &scales,
                    mins: mins.as_deref(),
                    out_dim: n,
                    in_dim: k,
                    group,
                };
                let w = MatRef::Quant(q);
                let bias = rng.vec(n, 1.0);
                for tokens in [1usize, 3, 37, 66] {
                    let xs = rng.vec(tokens * k, 2.0);
                    let mut want = vec![0.0f32; tokens * n];
                    reference::matmul(&w, Some(&bias), &xs, &mut want);
                    // The reference against the dequantized weights (W8A8's error bound: half a step
                    // of x per term).
                    for t in 0..tokens {
                        let x = &xs[t * k..(t + 1) * k];
                        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        for o in 0..n {
                            let (mut dot, mut mag) = (0.0f64, 0.0f64);
                            for (i, &xi) in x.iter().enumerate() {
                                let wi = slimlm_kernels::quant::weight(&q, o, i) as f64;
                                dot += wi * xi as f64;
                                mag += wi.abs();
                            }
                            let got = (want[t * n + o] - bias[o]) as f64;
                            let tol = mag * amax as f64 / 254.0 * 1.01 + 1e-4 * (1.0 + dot.abs());
                            assert!(
                                (got - dot).abs() <= tol,
                                "reference q{bits} g{group} {n}x{k} t{t} o{o}: {got} vs {dot} (tol {tol})"
                            );
                        }
                    }
                    for isa in isas() {
                        let mut got = vec![0.0f32; tokens * n];
                        if tokens == 1 {
                            matvec_with(isa, &w, Some(&bias), &xs, &mut got);
                        } else {
                            matmul_with(isa, &w, Some(&bias), &xs, &mut got);
                        }
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{} q{bits} g{group} asym {asym} {n}x{k} tokens {tokens} at {i}: {g} vs {e}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
