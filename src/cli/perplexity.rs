//! `slimlm perplexity`.

use std::path::PathBuf;

use slimlm::Model;

use super::CliResult;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory. Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Distance between window starts.
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// Score only the first N tokens of the text (as `slimlm eval --max-tokens`).
    #[arg(long, value_parser = super::at_least(2))]
    max_tokens: Option<usize>,
    /// KV cache element type: f32 (exact) or f16 (half the bytes).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// With --json: also `ids` (the tokens) and `nll` (nats per scored token; `nll[i]` is that of
    /// `ids[i + 1]`).
    #[arg(long, requires = "json")]
    per_token: bool,
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let mut model = Model::open(super::model_dir(a.model))?;
    model.set_kv_dtype(slimlm::KvDtype::parse(&a.kv_cache)?);
    let text =
        std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
    let mut ids = model.tokenizer().encode(&text)?;
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let show = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut nll = Vec::new();
    let r = slimlm::perplexity::perplexity_per_token(
        &model,
        &ids,
        a.context,
        a.stride,
        &mut |_, v| {
            if a.per_token {
                nll.push(v)
            }
        },
        &mut |done, total| {
            if show {
                eprint!("\rwindow {done}/{total}");
            }
        },
    )?;
    if show {
        eprintln!();
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = serde_json::json!(model.dir());
        v["text"] = serde_json::json!(a.text);
        if a.per_token {
            v["ids"] = serde_json::json!(ids);
            v["nll"] = serde_json::json!(nll);
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "perplexity {:.4}  (mean NLL {:.6} over {} tokens, {} windows of {} stride {})",
            r.ppl,
            r.mean_nll,
            r.tokens_scored,
            r.windows,
            r.context,
            r.stride
        )?;
        match r.bits_per_byte {
            Some(b) => outln!(
                "bits per byte {b:.4}  (NLL in bits over the {} bytes of the scored tokens)",
                r.bytes_scored
            )?,
            None => outln!("bits per byte n/a (the scored tokens decode to no bytes)")?,
        }
    }
    Ok(())
}
