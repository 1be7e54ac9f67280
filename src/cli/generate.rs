//! `slimlm generate`.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use slimlm::{GenerateOptions, Model, Sampling};

use super::CliResult;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (Hugging Face layout). Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long, default_value = "The Debian package manager")]
    prompt: String,
    /// Prompt as comma-separated token ids (instead of --prompt).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed"])]
    greedy: bool,
    /// Sampling temperature (> 0).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating after the end-of-text token.
    #[arg(long)]
    ignore_eos: bool,
    /// Context length (default: the model's; BLOOM, which sets none, 2048).
    #[arg(long)]
    context: Option<usize>,
    /// KV cache element type: f32 (exact) or f16 (half the bytes).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let mut model = Model::open(super::model_dir(a.model))?;
    model.set_kv_dtype(slimlm::KvDtype::parse(&a.kv_cache)?);
    if let Some(n) = a.context {
        model.set_context(n)?;
    }
    let tok = model.tokenizer();
    let prompt_ids = match &a.prompt_ids {
        Some(ids) => ids.clone(),
        None => tok.encode(&a.prompt)?,
    };
    if prompt_ids.is_empty() {
        return Err("the prompt is empty: give --prompt TEXT with at least one token".into());
    }
    let sampling = match a.temperature {
        Some(temperature) if !a.greedy => Sampling::Random {
            temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        _ => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop_at_eos: !a.ignore_eos,
        ..Default::default()
    };
    let mut session = model.session();
    let mut gen = session.generate(&prompt_ids, &opts)?;
    let mut ids = Vec::new();
    let mut out = std::io::stdout().lock();
    if !a.json {
        match &a.prompt_ids {
            Some(p) => write!(out, "{}", tok.decode(p)?)?,
            None => write!(out, "{}", a.prompt)?,
        }
    }
    // Whole characters only: a token may end inside a UTF-8 sequence.
    let mut stream = tok.stream();
    for t in gen.by_ref() {
        let t = t?;
        ids.push(t);
        if !a.json {
            if let Some(piece) = stream.push(t)? {
                write!(out, "{piece}")?;
                out.flush()?;
            }
        }
    }
    let text = tok.decode(&ids)?;
    if a.json {
        let v = json!({
            "model": model.dir(),
            "prompt_ids": prompt_ids,
            "generated_ids": ids,
            "text": text,
            "prompt_tokens": prompt_ids.len(),
            "generated_tokens": ids.len(),
            "prefill_ms": gen.prefill_time().as_secs_f64() * 1e3,
            "decode_ms": gen.decode_time().as_secs_f64() * 1e3,
            "prefill_tokens_per_s": gen.prefill_tokens_per_s(),
            "decode_tokens_per_s": gen.decode_tokens_per_s(),
            "threads": rayon::current_num_threads(),
            "kernels": slimlm::kernels::isa::active().name(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        if let Some(rest) = stream.finish() {
            write!(out, "{rest}")?;
        }
        writeln!(out)?;
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {} new tokens at {:.1} tok/s]",
            prompt_ids.len(),
            gen.prefill_tokens_per_s(),
            ids.len(),
            gen.decode_tokens_per_s()
        );
    }
    Ok(())
}
