//! `slimlm bench memory`: generate N tokens, then report this process's memory as the kernel counts it.
//!
//! RSS counts the file-backed pages of a mapping once they are touched: a forward pass touches every
//! weight, so a memory-mapped model's RSS during generation is its file size plus runtime state.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use slimlm::{GenerateOptions, Model};

use super::CliResult;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Peak RSS (VmHWM), anonymous and file-backed RSS while generating N tokens.
    Memory(MemoryArgs),
}

#[derive(clap::Args)]
pub struct MemoryArgs {
    /// Model directory. Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Prompt length in tokens (a fixed English text, repeated). Default: a 4-token prompt.
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache element type: f32 (exact) or f16 (half the bytes).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(b: Bench) -> CliResult {
    match b {
        Bench::Memory(a) => memory(a),
    }
}

/// Fields of /proc/self/status in bytes: (VmHWM, VmRSS, RssAnon, RssFile).
fn proc_status() -> Result<[u64; 4], String> {
    let s = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e} (memory reports need Linux)"))?;
    let field = |k: &str| -> Result<u64, String> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or(format!("/proc/self/status has no {k}"))
    };
    Ok([
        field("VmHWM:")?,
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")?,
    ])
}

fn memory(a: MemoryArgs) -> CliResult {
    super::set_threads(a.threads)?;
    let before = proc_status()?;
    let mut model = Model::open(super::model_dir(a.model))?;
    model.set_kv_dtype(slimlm::KvDtype::parse(&a.kv_cache)?);
    let prompt = match a.prompt_tokens {
        None => model.tokenizer().encode("The Debian package manager")?,
        Some(n) => {
            let text = "The Debian Administrator's Handbook explains how packages are installed, upgraded \
                        and removed with APT, and how the system keeps track of them. ";
            let base = model.tokenizer().encode(text)?;
            base.iter().cycle().take(n).copied().collect()
        }
    };
    let opened = proc_status()?;
    let mut session = model.session();
    let opts = GenerateOptions {
        max_tokens: a.tokens,
        stop_at_eos: false,
        ..Default::default()
    };
    let t = Instant::now();
    let mut gen = session.generate(&prompt, &opts)?;
    let mut n = 0;
    for tok in gen.by_ref() {
        tok?;
        n += 1;
    }
    let (elapsed, decode_tps, prefill_tps) = (
        t.elapsed(),
        gen.decode_tokens_per_s(),
        gen.prefill_tokens_per_s(),
    );
    drop(gen);
    let [hwm, rss, anon, file] = proc_status()?;
    let v = json!({
        "model": model.dir(),
        "tokens": n,
        "peak_rss_bytes": hwm,
        "rss_bytes": rss,
        "rss_anon_bytes": anon,
        "rss_file_bytes": file,
        "weight_bytes": model.weight_bytes(),
        "file_bytes": model.store().file_bytes(),
        "copied_bytes": model.copied_bytes(),
        "kv_cache_bytes": session.kv_cache_bytes(),
        "kv_cache_dtype": format!("{:?}", session.kv_dtype()).to_lowercase(),
        "kv_cache_used_bytes": session.kv_cache_used_bytes(),
        "activation_bytes": session.activation_bytes_used(),
        "activation_bytes_allocated": session.state_bytes() - session.kv_cache_bytes(),
        "process_anon_before_open_bytes": before[2],
        "anon_after_open_bytes": opened[2],
        "seconds": elapsed.as_secs_f64(),
        "prompt_tokens": prompt.len(),
        "decode_tokens_per_s": decode_tps,
        "prefill_tokens_per_s": prefill_tps,
        "threads": rayon::current_num_threads(),
    });
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        outln!(
            "peak RSS {:.1} MiB (anonymous {:.1} MiB, file-backed {:.1} MiB); weights {:.1} MiB, KV cache {:.1} MiB",
            mib(hwm),
            mib(anon),
            mib(file),
            mib(model.weight_bytes() as u64),
            mib(session.kv_cache_bytes() as u64)
        )?;
    }
    Ok(())
}
