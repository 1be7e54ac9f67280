//! `slimlm serve`: the OpenAI-compatible HTTP server (see `slimlm::server`).

use std::path::PathBuf;

use clap::Parser;
use slimlm::server::{self, ServeOptions};
use slimlm::Model;

use super::CliResult;

/// Serve a model over HTTP: OpenAI-compatible `/v1/completions` (streaming too), `/v1/models`,
/// `/health` and Prometheus `/metrics`; concurrent requests are decoded together (continuous batching).
#[derive(Parser)]
pub struct Args {
    /// Model directory (Hugging Face layout). Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed when listening).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most requests decoded together.
    #[arg(long, default_value_t = 16, value_parser = super::at_least(1))]
    max_batch: usize,
    /// Most requests waiting for a place in the batch; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Context length (default: the model's; BLOOM, which sets none, 2048).
    #[arg(long)]
    context: Option<usize>,
    /// KV cache element type: f32 (exact) or f16 (half the bytes).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
    /// Threads of each forward pass (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let mut model = Model::open(super::model_dir(a.model))?;
    if let Some(n) = a.context {
        model.set_context(n)?;
    }
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        max_batch: a.max_batch,
        queue: a.queue,
        threads: rayon::current_num_threads(),
        kv_dtype: slimlm::KvDtype::parse(&a.kv_cache)?,
    };
    server::serve(model, &opts, |addr| {
        eprintln!("slimlm serve: listening on http://{addr}");
    })?;
    eprintln!("slimlm serve: stopped");
    Ok(())
}
