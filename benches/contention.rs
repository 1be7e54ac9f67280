//! Decode on a busy machine: tokens/s at 1 thread and at the default thread count (one per core), on a
//! quiet machine and while busy threads occupy the cores (4 per core, i.e. a load of 8 on 2 cores).
//!
//! The busy threads live in this process, so the scheduler gives the decode no group-fairness shelter
//! (the harshest case). Each figure is the median of [`ROUNDS`] windows of [`WINDOW`], the thread counts
//! alternating. The goal: under contention the default stays ≥ 0.9× the 1-thread speed measured under the
//! same contention, and is unchanged on a quiet machine. Report: `target/bench-results/contention.md`.
//! `SLIMLM_BENCH_VARIANTS` picks the variants (default `int8`); the model is GPT-2 124M shapes.

#[path = "common/models.rs"]
mod models;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use slimlm::Model;

const CACHE: usize = 128;
const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_millis(1500);
const BUSY_PER_CORE: usize = 4;

/// Decode tokens/s over one window: one step after a 128-token cache, rewound each time.
fn decode_rate(model: &Model, threads: usize, ids: &[u32]) -> f64 {
    let mut s = model.session();
    s.set_threads(threads);
    s.prefill(&ids[..CACHE]).unwrap();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < WINDOW {
        s.rewind(CACHE);
        black_box(s.step(ids[CACHE]).unwrap()[0]);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Busy loops on `n` threads until the returned flag is cleared.
fn busy(n: usize) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<()>>) {
    let on = Arc::new(AtomicBool::new(true));
    let handles = (0..n)
        .map(|_| {
            let on = Arc::clone(&on);
            thread::spawn(move || {
                let mut x = 0u64;
                while on.load(Ordering::Relaxed) {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    (on, handles)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of the 1-thread and `all`-thread rates, alternating.
fn measure(model: &Model, all: usize, ids: &[u32]) -> (f64, f64) {
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        one.push(decode_rate(model, 1, ids));
        many.push(decode_rate(model, all, ids));
    }
    (median(one), median(many))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let all = thread::available_parallelism().map_or(1, |n| n.get());
    let names = std::env::var("SLIMLM_BENCH_VARIANTS").unwrap_or_else(|_| "int8".into());
    let mut md = format!(
        "Decode tok/s, GPT-2 124M shapes, KV cache {CACHE}; busy: {} spinning threads on {all} cores; \
         median of {ROUNDS} windows of {} ms.\n\n| variant | machine | 1 thread | {all} threads (default) | default ÷ 1 thread |\n|---|---|---:|---:|---:|\n",
        BUSY_PER_CORE * all,
        WINDOW.as_millis()
    );
    for v in models::VARIANTS
        .iter()
        .filter(|v| names.split(',').any(|n| n.trim() == v.name))
    {
        let model = Model::open(models::variant("gpt2-124m", v)).unwrap();
        let text = "The Debian Administrator's Handbook explains how packages are installed. ";
        let base = model.tokenizer().encode(text).unwrap();
        let ids: Vec<u32> = base.iter().cycle().take(CACHE + 1).copied().collect();
        let (q1, qn) = measure(&model, all, &ids);
        let (on, handles) = busy(BUSY_PER_CORE * all);
        let (b1, bn) = measure(&model, all, &ids);
        on.store(false, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        for (machine, one, many) in [("quiet", q1, qn), ("busy", b1, bn)] {
            let row = format!(
                "| {} | {machine} | {one:.1} | {many:.1} | {:.2} |\n",
                v.name,
                many / one
            );
            print!("{row}");
            md += &row;
        }
    }
    let out = models::results_dir().join("contention.md");
    std::fs::write(&out, &md).unwrap();
    println!("\n{md}\nwritten {}", out.display());
}
