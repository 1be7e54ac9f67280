//! End-to-end speed: decode (one token with a KV cache of 128) and prefill (512 tokens), for the FP32
//! original and its compressed variants, on 1 thread and on every core; `bandwidth/read` in the same run.
//!
//! Ids: `decode/<model>/<variant>/<threads>t` (throughput: tokens), `prefill/<model>/<variant>/<threads>t`
//! (tokens), `bandwidth/read` (bytes). After the run, `target/bench-results/decode.md` lists tokens/s,
//! weight bytes read per token and the fraction of the memory roofline (bandwidth ÷ bytes per token).
//! `SLIMLM_BENCH_MODELS_LIST` picks base models (default `gpt2-124m`).

#[path = "common/bandwidth.rs"]
mod bandwidth;
#[path = "common/models.rs"]
mod models;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use slimlm::Model;

const CACHE: usize = 128;
const PREFILL: usize = 512;

/// 1 and every core.
fn thread_counts() -> Vec<usize> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    if all > 1 {
        vec![1, all]
    } else {
        vec![1]
    }
}

fn prompt(model: &Model, n: usize) -> Vec<u32> {
    let text =
        "The Debian Administrator's Handbook explains how packages are installed, upgraded and \
                removed with APT, and how the system keeps track of them. ";
    let base = model.tokenizer().encode(text).unwrap();
    base.iter().cycle().take(n).copied().collect()
}

fn bench(c: &mut Criterion, base: &str) {
    for v in models::selected() {
        let dir = models::variant(base, v);
        let model = Model::open(&dir).unwrap();
        let ids = prompt(&model, PREFILL);
        for n in thread_counts() {
            let mut s = model.session();
            s.set_threads(n);
            let mut g = c.benchmark_group("decode");
            g.sample_size(20).measurement_time(Duration::from_secs(4));
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{base}/{}/{n}t", v.name), |b| {
                b.iter_custom(|iters| {
                    s.reset();
                    s.prefill(&ids[..CACHE]).unwrap();
                    let t = Instant::now();
                    for _ in 0..iters {
                        s.rewind(CACHE);
                        black_box(s.step(black_box(ids[CACHE])).unwrap()[0]);
                    }
                    t.elapsed()
                })
            });
            g.finish();
            let mut g = c.benchmark_group("prefill");
            g.sample_size(10).measurement_time(Duration::from_secs(6));
            g.throughput(Throughput::Elements(PREFILL as u64));
            g.bench_function(format!("{base}/{}/{n}t", v.name), |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        s.reset();
                        black_box(s.prefill(black_box(&ids)).unwrap()[0]);
                    }
                    t.elapsed()
                })
            });
            g.finish();
        }
    }
}

fn bandwidth_bench(c: &mut Criterion) {
    let buf = bandwidth::buffer();
    let mut g = c.benchmark_group("bandwidth");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    g.bench_function("read", |b| b.iter(|| bandwidth::read(black_box(&buf))));
    g.finish();
}

/// Mean time in ns of a finished benchmark `group/function`, from criterion's estimates (criterion stores
/// the function id with `/` replaced by `_`).
fn mean_ns(id: &str) -> Option<f64> {
    let (group, function) = id.split_once('/')?;
    let id = format!("{group}/{}", function.replace('/', "_"));
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn summarize(bases: &[String]) {
    let Some(bw_ns) = mean_ns("bandwidth/read") else {
        return;
    };
    let bandwidth = (512u64 << 20) as f64 / (bw_ns * 1e-9);
    let mut md = format!(
        "bandwidth/read: {:.1} GB/s\n\n| model | variant | threads | weight MB/token | decode tok/s | roofline tok/s | fraction | prefill tok/s |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        bandwidth / 1e9
    );
    for base in bases {
        for v in models::selected() {
            let model = Model::open(models::variant(base, v)).unwrap();
            let bytes = model.weight_bytes() as f64;
            for n in [
                1,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ] {
                let id = format!("{base}/{}/{n}t", v.name);
                let (Some(d), p) = (
                    mean_ns(&format!("decode/{id}")),
                    mean_ns(&format!("prefill/{id}")),
                ) else {
                    continue;
                };
                let tps = 1e9 / d;
                let roof = bandwidth / bytes;
                md += &format!(
                    "| {base} | {} | {n} | {:.1} | {:.1} | {:.1} | {:.0}% | {} |\n",
                    v.name,
                    bytes / 1e6,
                    tps,
                    roof,
                    100.0 * tps / roof,
                    p.map_or("-".into(), |p| format!("{:.1}", PREFILL as f64 * 1e9 / p))
                );
            }
        }
    }
    let out = models::results_dir().join("decode.md");
    std::fs::write(&out, &md).unwrap();
    println!("\n{md}\nwritten {}", out.display());
}

fn main() {
    let bases: Vec<String> = std::env::var("SLIMLM_BENCH_MODELS_LIST")
        .unwrap_or_else(|_| "gpt2-124m".into())
        .split(',')
        .map(String::from)
        .collect();
    let mut c = Criterion::default().configure_from_args();
    bandwidth_bench(&mut c);
    for b in &bases {
        bench(&mut c, b);
    }
    c.final_summary();
    summarize(&bases);
}
