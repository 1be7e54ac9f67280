//! Kernel benchmarks: decode (`gemv/…`), prefill (`gemm/…`) and the machine's streaming read bandwidth.
//!
//! Every benchmark declares `Throughput::Bytes` = weight bytes one iteration reads (for `bandwidth/read`:
//! the bytes streamed), so criterion's `thrpt` column compares kernels with the memory system directly.
//! `SLIMLM_BENCH_QUICK=1` runs a subset (the 2048×8192 shapes, one GEMM and the bandwidth probe).
//! The path is the process's active one (`SLIMLM_KERNELS` to force another).

#[path = "common/bandwidth.rs"]
mod bandwidth;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use half::f16;
use slimlm_kernels::{
    lowrank_matmul, lowrank_matvec, matmul, matvec, quant, DenseRef, Elems, Int8Act, Int8Ref,
    Layout, MatRef, QuantRef,
};

const GROUP: usize = 128;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1)
            .collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| ((self.next() >> 32) % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect()
    }
}

/// Owned storage of one matrix in every format a benchmark needs.
struct Mats {
    out_dim: usize,
    in_dim: usize,
    f32: Vec<f32>,
    f16: Vec<f16>,
    q: Vec<i8>,
    s: Vec<f32>,
    /// 4- and 3-bit codes (any bytes are valid codes) with F16 scales and minimums per group.
    q4: Vec<u8>,
    q3: Vec<u8>,
    qs: Vec<f16>,
    qm: Vec<f16>,
}

impl Mats {
    fn new(rng: &mut Rng, out_dim: usize, in_dim: usize, need_f32: bool) -> Mats {
        let n = out_dim * in_dim;
        let f32 = if need_f32 { rng.f32s(n) } else { Vec::new() };
        let f16 = if need_f32 {
            f32.iter().map(|&v| f16::from_f32(v)).collect()
        } else {
            rng.f32s(n).into_iter().map(f16::from_f32).collect()
        };
        let q = rng.i8s(n);
        let s = rng
            .f32s(out_dim * in_dim.div_ceil(GROUP))
            .into_iter()
            .map(|v| v.abs() * 0.01 + 1e-4)
            .collect();
        let groups = out_dim * in_dim.div_ceil(GROUP);
        let qs = rng
            .f32s(groups)
            .into_iter()
            .map(|v| f16::from_f32(v.abs() * 0.1 + 1e-3));
        let qm = rng.f32s(groups).into_iter().map(f16::from_f32);
        Mats {
            out_dim,
            in_dim,
            f32,
            f16,
            q,
            s,
            q4: rng.bytes(out_dim * quant::row_bytes(4, in_dim)),
            q3: rng.bytes(out_dim * quant::row_bytes(3, in_dim)),
            qs: qs.collect(),
            qm: qm.collect(),
        }
    }
    /// 4-bit (`bits` 4) or 3-bit weights, groups of 128 with minimums (`q4_0`-like sizes).
    fn quant(&self, bits: u8) -> MatRef<'_> {
        MatRef::Quant(QuantRef {
            bits,
            packed: if bits == 4 { &self.q4 } else { &self.q3 },
            scales: &self.qs,
            mins: Some(&self.qm),
            out_dim: self.out_dim,
            in_dim: self.in_dim,
            group: GROUP,
        })
    }
    fn f32(&self, layout: Layout) -> MatRef<'_> {
        MatRef::Dense(DenseRef {
            data: Elems::F32(&self.f32),
            layout,
            out_dim: self.out_dim,
            in_dim: self.in_dim,
        })
    }
    fn f16(&self) -> MatRef<'_> {
        MatRef::Dense(DenseRef {
            data: Elems::F16(&self.f16),
            layout: Layout::OutIn,
            out_dim: self.out_dim,
            in_dim: self.in_dim,
        })
    }
    fn int8(&self, act: Int8Act) -> MatRef<'_> {
        MatRef::Int8(Int8Ref {
            values: &self.q,
            scales: &self.s,
            out_dim: self.out_dim,
            in_dim: self.in_dim,
            group: GROUP,
            act,
        })
    }
}

fn quick() -> bool {
    std::env::var("SLIMLM_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Low-rank factors of one shape: `vh` is `rank × in`, `u` is `out × rank`.
struct LowRank {
    vh: Mats,
    u: Mats,
    s: Vec<f32>,
}

impl LowRank {
    fn new(rng: &mut Rng, out_dim: usize, in_dim: usize, rank: usize) -> LowRank {
        LowRank {
            vh: Mats::new(rng, rank, in_dim, true),
            u: Mats::new(rng, out_dim, rank, true),
            s: rng.f32s(rank),
        }
    }
    fn pair(&self, kind: &str) -> (MatRef<'_>, MatRef<'_>) {
        match kind {
            "f32" => (self.vh.f32(Layout::OutIn), self.u.f32(Layout::OutIn)),
            "f16" => (self.vh.f16(), self.u.f16()),
            _ => (self.vh.int8(Int8Act::Int8), self.u.int8(Int8Act::Int8)),
        }
    }
}

fn gemv(c: &mut Criterion) {
    let shapes: &[(usize, usize)] = if quick() {
        &[(2048, 8192)]
    } else {
        &[
            (768, 2304),
            (768, 3072),
            (3072, 768),
            (768, 50257),
            (2048, 2048),
            (2048, 8192),
            (8192, 2048),
        ]
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &(k, n) in shapes {
        let mut g = c.benchmark_group("gemv");
        configure(&mut g);
        let m = Mats::new(&mut rng, n, k, true);
        let x = rng.f32s(k);
        let mut y = vec![0.0f32; n];
        let mut run = |g: &mut BenchmarkGroup<'_, _>, name: &str, w: MatRef| {
            g.throughput(Throughput::Bytes(w.weight_bytes() as u64));
            g.bench_function(format!("{k}x{n}/{name}"), |b| {
                b.iter(|| matvec(&w, None, black_box(&x), &mut y))
            });
        };
        run(&mut g, "f32", m.f32(Layout::OutIn));
        run(&mut g, "f32_inout", m.f32(Layout::InOut));
        run(&mut g, "f16", m.f16());
        run(&mut g, "int8_w8a8", m.int8(Int8Act::Int8));
        run(&mut g, "int8_w8a32", m.int8(Int8Act::F32));
        run(&mut g, "q4_w4a8", m.quant(4));
        run(&mut g, "q3_w3a8", m.quant(3));
        drop(m);
        let ranks: &[usize] = if (k, n) == (2048, 8192) {
            &[64, 128, 256]
        } else {
            &[128]
        };
        for &r in ranks {
            let lr = LowRank::new(&mut rng, n, k, r);
            for kind in ["f32", "f16", "int8"] {
                let (vh, u) = lr.pair(kind);
                g.throughput(Throughput::Bytes(
                    (vh.weight_bytes() + u.weight_bytes()) as u64,
                ));
                g.bench_function(format!("{k}x{n}/lowrank_{kind}_r{r}"), |b| {
                    b.iter(|| lowrank_matvec(&vh, Some(&lr.s), &u, None, black_box(&x), &mut y))
                });
            }
        }
        g.finish();
    }
}

fn gemm(c: &mut Criterion) {
    let shapes: &[(usize, usize, usize)] = if quick() {
        &[(512, 2048, 8192)]
    } else {
        &[
            (128, 768, 3072),
            (512, 768, 3072),
            (128, 2048, 8192),
            (512, 2048, 8192),
        ]
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for &(t, k, n) in shapes {
        let mut g = c.benchmark_group("gemm");
        configure(&mut g);
        let m = Mats::new(&mut rng, n, k, true);
        let xs = rng.f32s(t * k);
        let mut ys = vec![0.0f32; t * n];
        let mut run = |g: &mut BenchmarkGroup<'_, _>, name: &str, w: MatRef| {
            g.throughput(Throughput::Bytes(w.weight_bytes() as u64));
            g.bench_function(format!("{t}x{k}x{n}/{name}"), |b| {
                b.iter(|| matmul(&w, None, black_box(&xs), &mut ys))
            });
        };
        run(&mut g, "f32", m.f32(Layout::OutIn));
        run(&mut g, "f32_inout", m.f32(Layout::InOut));
        run(&mut g, "f16", m.f16());
        run(&mut g, "int8_w8a8", m.int8(Int8Act::Int8));
        run(&mut g, "int8_w8a32", m.int8(Int8Act::F32));
        run(&mut g, "q4_w4a8", m.quant(4));
        run(&mut g, "q3_w3a8", m.quant(3));
        drop(m);
        let lr = LowRank::new(&mut rng, n, k, 128);
        let (vh, u) = lr.pair("int8");
        g.throughput(Throughput::Bytes(
            (vh.weight_bytes() + u.weight_bytes()) as u64,
        ));
        g.bench_function(format!("{t}x{k}x{n}/lowrank_int8_r128"), |b| {
            b.iter(|| lowrank_matmul(&vh, Some(&lr.s), &u, None, black_box(&xs), &mut ys))
        });
        g.finish();
    }
}

fn bandwidth_bench(c: &mut Criterion) {
    let buf = bandwidth::buffer();
    let mut g = c.benchmark_group("bandwidth");
    configure(&mut g);
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    g.bench_function("read", |b| b.iter(|| bandwidth::read(black_box(&buf))));
    g.bench_function("read_1t", |b| {
        b.iter(|| buf.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
    });
    g.finish();
}

criterion_group!(benches, bandwidth_bench, gemv, gemm);
criterion_main!(benches);
