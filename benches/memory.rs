//! Memory benchmark: each model variant generates the same tokens in a fresh process
//! (`slimlm bench memory`), side by side; the report goes to `target/bench-results/memory.{json,md}`.
//!
//! RSS counts file-backed pages of a mapping once they are touched, and a forward pass touches every
//! weight: a memory-mapped model's RSS while generating is its file size plus runtime state. So variants
//! differ by the bytes they *read*, which is what this measures.
//!
//! `SLIMLM_BENCH_MODELS_LIST=ref-gpt2,gpt2-124m` picks the base models (default: ref-gpt2, gpt2-124m,
//! gpt-neo-1.3b); `SLIMLM_BENCH_VARIANTS=f32,int8` the variants; `SLIMLM_BENCH_TOKENS` the tokens
//! generated (default 128).

#[path = "common/models.rs"]
mod models;

use serde_json::{json, Value};

const MIB: f64 = (1 << 20) as f64;

fn main() {
    // `cargo bench` passes `--bench`; with a filter argument, only base models containing it run.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let list = std::env::var("SLIMLM_BENCH_MODELS_LIST")
        .unwrap_or_else(|_| "ref-gpt2,gpt2-124m,gpt-neo-1.3b".into());
    let tokens = std::env::var("SLIMLM_BENCH_TOKENS").unwrap_or_else(|_| "128".into());
    let mut rows = Vec::new();
    for base in list
        .split(',')
        .filter(|b| filter.iter().all(|f| b.contains(f.as_str())))
    {
        for v in models::selected() {
            let dir = models::variant(base, v);
            let out = models::slimlm()
                .args(["bench", "memory", "--tokens", &tokens, "--json", "--model"])
                .arg(&dir)
                .output()
                .expect("run slimlm bench memory");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let r: Value = serde_json::from_slice(&out.stdout).expect("JSON from bench memory");
            let get = |k: &str| r[k].as_f64().unwrap_or(0.0);
            // Anonymous memory that is neither the used part of the KV cache nor the activations written.
            let other_anon =
                get("rss_anon_bytes") - get("kv_cache_used_bytes") - get("activation_bytes");
            eprintln!(
                "{base:>14} {:>18}: peak {:8.1} MiB  anon {:6.1}  file {:8.1}  other anon {:5.1} MiB  {:7.1} tok/s",
                v.name,
                get("peak_rss_bytes") / MIB,
                get("rss_anon_bytes") / MIB,
                get("rss_file_bytes") / MIB,
                other_anon / MIB,
                get("decode_tokens_per_s")
            );
            rows.push(json!({
                "model": base, "variant": v.name, "file_bytes": models::file_bytes(&dir),
                "other_anon_bytes": other_anon, "report": r,
            }));
        }
    }
    let dir = models::results_dir();
    std::fs::write(
        dir.join("memory.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
    let mut md = String::from(
        "| model | variant | file MiB | peak RSS MiB | vs f32 | RssAnon MiB | RssFile MiB | KV used MiB | anon beyond KV+activations MiB | decode tok/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let g = |k: &str| r["report"][k].as_f64().unwrap_or(0.0);
        let f32_peak = rows
            .iter()
            .find(|x| x["model"] == r["model"] && x["variant"] == "f32")
            .map(|x| x["report"]["peak_rss_bytes"].as_f64().unwrap_or(1.0))
            .unwrap_or(1.0);
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r["model"].as_str().unwrap(),
            r["variant"].as_str().unwrap(),
            r["file_bytes"].as_f64().unwrap() / MIB,
            g("peak_rss_bytes") / MIB,
            g("peak_rss_bytes") / f32_peak,
            g("rss_anon_bytes") / MIB,
            g("rss_file_bytes") / MIB,
            g("kv_cache_used_bytes") / MIB,
            r["other_anon_bytes"].as_f64().unwrap() / MIB,
            g("decode_tokens_per_s"),
        );
    }
    std::fs::write(dir.join("memory.md"), &md).unwrap();
    println!("{md}");
    println!("written {}", dir.join("memory.{json,md}").display());
}
