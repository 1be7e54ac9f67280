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
    /// Keep generating after <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let model = Model::open(super::model_dir(a.model))?;
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
    };
    let mut session = model.session();
    let mut gen = session.generate(&prompt_ids, &opts)?;
    let mut ids = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    if !a.json {
        write!(out, "{}", tok.decode(&prompt_ids)?)?;
    }
    for t in gen.by_ref() {
        ids.push(t?);
        if !a.json {
            // Print whole characters only: a token may end inside a UTF-8 sequence.
            let text = tok.decode(&ids)?;
            if !text.ends_with('\u{FFFD}') && text.len() > printed {
                write!(out, "{}", &text[printed..])?;
                out.flush()?;
                printed = text.len();
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
        if text.len() > printed {
            write!(out, "{}", &text[printed..])?;
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
