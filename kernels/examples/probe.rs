//! Contention-robust kernel probe: runs the headline kernels interleaved, round after round, and keeps the
//! **minimum** time of each (the round in which the machine was least disturbed), then prints the ratios
//! the kernel targets are stated in. Complements the criterion benches (`benches/kernels.rs`), whose
//! means suffer when other work shares the cores.
//!
//!     cargo run --release -p slimlm-kernels --example probe [rounds]

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::f16;
use rayon::prelude::*;
use slimlm_kernels::{
    lowrank_matvec, matmul, matvec, DenseRef, Elems, Int8Act, Int8Ref, Layout, MatRef,
};

fn rng_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn time(f: &mut dyn FnMut(), reps: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed() / reps as u32
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let (k, n, r, group) = (2048usize, 8192usize, 128usize, 128usize);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let w32 = rng_vec(&mut seed, n * k);
    let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
    let q: Vec<i8> = w32
        .iter()
        .map(|&v| (v * 2540.0).clamp(-127.0, 127.0) as i8)
        .collect();
    let s: Vec<f32> = vec![1e-3; n * k.div_ceil(group)];
    let vq: Vec<i8> = q[..r * k].to_vec();
    let vs: Vec<f32> = vec![1e-3; r * k.div_ceil(group)];
    let uq: Vec<i8> = q[..n * r].to_vec();
    let us: Vec<f32> = vec![1e-3; n];
    let sv = vec![1.0f32; r];
    let dense = |data| {
        MatRef::Dense(DenseRef {
            data,
            layout: Layout::OutIn,
            out_dim: n,
            in_dim: k,
        })
    };
    let f32m = dense(Elems::F32(&w32));
    let f16m = dense(Elems::F16(&w16));
    let int8 = |act| {
        MatRef::Int8(Int8Ref {
            values: &q,
            scales: &s,
            out_dim: n,
            in_dim: k,
            group,
            act,
        })
    };
    let (w8a8, w8a32) = (int8(Int8Act::Int8), int8(Int8Act::F32));
    let vh = MatRef::Int8(Int8Ref {
        values: &vq,
        scales: &vs,
        out_dim: r,
        in_dim: k,
        group,
        act: Int8Act::Int8,
    });
    let u = MatRef::Int8(Int8Ref {
        values: &uq,
        scales: &us,
        out_dim: n,
        in_dim: r,
        group,
        act: Int8Act::Int8,
    });
    let buf: Vec<u64> = (0..(512usize << 20) / 8).map(|i| i as u64).collect();
    let x = rng_vec(&mut seed, k);
    let xs = rng_vec(&mut seed, 512 * k);
    let mut y = vec![0.0f32; n];
    let mut ys = vec![0.0f32; 512 * n];

    let names = [
        "bandwidth/read",
        "gemv f32",
        "gemv f16",
        "gemv int8_w8a8",
        "gemv int8_w8a32",
        "gemv lowrank_int8_r128",
        "gemm 512 f32",
        "gemm 512 int8_w8a8",
    ];
    let mut best = [Duration::MAX; 8];
    for round in 0..rounds {
        let t = [
            time(
                &mut || {
                    black_box(
                        buf.par_chunks(1 << 20)
                            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                            .reduce(|| 0, u64::wrapping_add),
                    );
                },
                2,
            ),
            time(&mut || matvec(&f32m, None, black_box(&x), &mut y), 20),
            time(&mut || matvec(&f16m, None, black_box(&x), &mut y), 40),
            time(&mut || matvec(&w8a8, None, black_box(&x), &mut y), 100),
            time(&mut || matvec(&w8a32, None, black_box(&x), &mut y), 50),
            time(
                &mut || lowrank_matvec(&vh, Some(&sv), &u, None, black_box(&x), &mut y),
                300,
            ),
            if round % 3 == 0 {
                time(&mut || matmul(&f32m, None, black_box(&xs), &mut ys), 1)
            } else {
                Duration::MAX
            },
            if round % 3 == 0 {
                time(&mut || matmul(&w8a8, None, black_box(&xs), &mut ys), 1)
            } else {
                Duration::MAX
            },
        ];
        for (b, t) in best.iter_mut().zip(t) {
            *b = (*b).min(t);
        }
    }
    let bytes = [
        buf.len() * 8,
        n * k * 4,
        n * k * 2,
        n * k + 4 * s.len(),
        n * k + 4 * s.len(),
        r * k + 4 * vs.len() + n * r + 4 * us.len(),
        n * k * 4,
        n * k + 4 * s.len(),
    ];
    for ((name, b), t) in names.iter().zip(bytes).zip(best) {
        let secs = t.as_secs_f64();
        let extra = if name.starts_with("gemm") {
            format!(
                "  {:.1} GFLOP/s",
                2.0 * 512.0 * k as f64 * n as f64 / secs / 1e9
            )
        } else {
            String::new()
        };
        println!(
            "{name:26} {:10.1} µs  {:7.2} GiB/s (weights){extra}",
            secs * 1e6,
            b as f64 / secs / (1u64 << 30) as f64
        );
    }
    let bw = bytes[0] as f64 / best[0].as_secs_f64();
    let f32_bps = bytes[1] as f64 / best[1].as_secs_f64();
    println!(
        "f32 gemv bytes/s ÷ bandwidth/read      = {:.2}",
        f32_bps / bw
    );
    let best_int8 = best[3].min(best[4]);
    println!(
        "best int8 gemv speed-up over f32 gemv  = {:.2}x",
        best[1].as_secs_f64() / best_int8.as_secs_f64()
    );
    println!(
        "lowrank_int8_r128 speed-up over f32    = {:.2}x",
        best[1].as_secs_f64() / best[5].as_secs_f64()
    );
    println!(
        "gemm 512 f32 GFLOP/s (peak 2 cores × 32 flop/cycle × GHz) = {:.1}",
        2.0 * 512.0 * (k * n) as f64 / best[6].as_secs_f64() / 1e9
    );
}
