//! `slimlm inspect`: the plan, bytes per component and layer, and the compression ratio of a model.

use std::path::PathBuf;

use slimlm::inspect::Summary;
use slimlm::Model;

use super::CliResult;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (compressed or not).
    dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const PARTS: [&str; 10] = [
    "embeddings",
    "positions",
    "projections",
    "attn_qkv",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "norms",
    "other",
    "padding",
];

pub fn run(a: Args) -> CliResult {
    let model = Model::open(&a.dir)?;
    let summary = Summary::of(&model)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary.to_json())?)?;
        return Ok(());
    }
    outln!("model       {}", a.dir.display())?;
    match &summary.format_version {
        Some(v) => outln!("format      slimlm compressed, version {v}")?,
        None => outln!("format      not compressed by slimlm")?,
    }
    if let Some(p) = &summary.plan {
        outln!("plan        {}", serde_json::to_string(p)?)?;
    }
    let layers = model.config().n_layer();
    out!("\n{:<12}", "bytes")?;
    for p in PARTS {
        out!("{p:>12}")?;
    }
    outln!("{:>12}", "total")?;
    let row = |label: String, l: Option<usize>| {
        let vals: Vec<usize> = PARTS
            .iter()
            .map(|p| summary.bytes.get(&(l, *p)).copied().unwrap_or(0))
            .collect();
        out!("{label:<12}")?;
        for v in &vals {
            out!("{v:>12}")?;
        }
        outln!("{:>12}", vals.iter().sum::<usize>())
    };
    row("global".into(), None)?;
    for l in 0..layers {
        row(format!("layer {l}"), Some(l))?;
    }
    outln!("\nstorage (embeddings, positions, every linear layer):")?;
    for (n, s) in &summary.storage {
        outln!("  {n:<14} {s}")?;
    }
    outln!("\nfile        {} bytes", summary.file_bytes)?;
    if let (Some(s), Some(r)) = (summary.source_bytes, summary.ratio()) {
        outln!("original    {s} bytes")?;
        outln!("ratio       {r:.4} ({:.2}x smaller)", 1.0 / r)?;
    }
    Ok(())
}
