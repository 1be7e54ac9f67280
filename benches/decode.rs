//! End-to-end speed: decode (one token with a KV cache of 128) and prefill (512 tokens), for the FP32
//! original and its compressed variants, on 1 thread and on every core; `bandwidth/read` in the same run.
//!
//! Ids: `decode/<model>/<variant>/<threads>t` (throughput: tokens), `prefill/<model>/<variant>/<threads>t`
//! (tokens), `bandwidth/read` (bytes). After the run, `target/bench-results/decode.md` lists tokens/s,
//! weight bytes read per token and the fraction of the memory roofline (bandwidth probed right before
//! each decode case ÷ bytes per token).
//! `SLIMLM_BENCH_MODELS_LIST` picks base models (default `gpt2-124m`).

#[path = "common/bandwidth.rs"]
mod bandwidth;
#[path = "common/models.rs"]
mod models;

use std::collections::HashMap;
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

/// All decode cases first, then all prefill cases: decode measured right after a prefill case (10 s of
/// both cores at full GEMM load) came out up to 10% slower (FP32, 2 threads: 43 vs 48 tok/s).
///
/// Right before each decode case, a quick bandwidth probe (median of 7 passes) gives that case its own
/// roofline; the fractions then compare against the bandwidth of the same minute.
fn bench(c: &mut Criterion, base: &str, buf: &[u64], bw_before: &mut HashMap<String, f64>) {
    let models: Vec<(String, Model)> = models::selected()
        .into_iter()
        .map(|v| {
            let model = Model::open(models::variant(base, v)).unwrap();
            (v.name.to_string(), model)
        })
        .collect();
    for (name, model) in &models {
        let ids = prompt(model, CACHE + 1);
        for n in thread_counts() {
            let mut s = model.session();
            s.set_threads(n);
            let id = format!("{base}/{name}/{n}t");
            bw_before.insert(id.clone(), bandwidth::probe(buf, 7));
            let mut g = c.benchmark_group("decode");
            g.sample_size(20).measurement_time(Duration::from_secs(4));
            g.throughput(Throughput::Elements(1));
            g.bench_function(id, |b| {
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
        }
    }
    for (name, model) in &models {
        let ids = prompt(model, PREFILL);
        for n in thread_counts() {
            let mut s = model.session();
            s.set_threads(n);
            let mut g = c.benchmark_group("prefill");
            g.sample_size(10).measurement_time(Duration::from_secs(6));
            g.throughput(Throughput::Elements(PREFILL as u64));
            g.bench_function(format!("{base}/{name}/{n}t"), |b| {
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

fn bandwidth_bench(c: &mut Criterion, buf: &[u64]) {
    let mut g = c.benchmark_group("bandwidth");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    g.bench_function("read", |b| b.iter(|| bandwidth::read(black_box(buf))));
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

fn summarize(bases: &[String], bw_before: &HashMap<String, f64>) {
    let bandwidth = mean_ns("bandwidth/read").map(|ns| (512u64 << 20) as f64 / (ns * 1e-9));
    let mut md = format!(
        "bandwidth/read (criterion, start of the run): {} GB/s; each decode row uses the bandwidth probed just before it.\n\n| model | variant | threads | weight MB/token | decode tok/s | bandwidth GB/s | roofline tok/s | fraction | prefill tok/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        bandwidth.map_or("-".into(), |b| format!("{:.1}", b / 1e9))
    );
    for base in bases {
        for v in models::selected() {
            let model = Model::open(models::variant(base, v)).unwrap();
            let bytes = model.weight_bytes() as f64;
            for n in thread_counts() {
                let id = format!("{base}/{}/{n}t", v.name);
                let (Some(d), p) = (
                    mean_ns(&format!("decode/{id}")),
                    mean_ns(&format!("prefill/{id}")),
                ) else {
                    continue;
                };
                let Some(bw) = bw_before.get(&id).copied().or(bandwidth) else {
                    continue;
                };
                let tps = 1e9 / d;
                let roof = bw / bytes;
                md += &format!(
                    "| {base} | {} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {} |\n",
                    v.name,
                    bytes / 1e6,
                    tps,
                    bw / 1e9,
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
    let buf = bandwidth::buffer();
    bandwidth_bench(&mut c, &buf);
    let mut bw_before = HashMap::new();
    for b in &bases {
        bench(&mut c, b, &buf, &mut bw_before);
    }
    c.final_summary();
    summarize(&bases, &bw_before);
}
