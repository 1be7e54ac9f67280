//! `slimlm inspect`: the plan, bytes per component and layer, and the compression ratio of a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use slimlm::compress::{self, META_FORMAT, META_MATRICES, META_PLAN, META_SOURCE_BYTES};
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
    let store = model.store();
    let md = store.metadata();
    let mut bytes: BTreeMap<(Option<usize>, &'static str), usize> = BTreeMap::new();
    for name in store.names() {
        let t = store.require(name)?;
        *bytes
            .entry(compress::classify(model.config(), model.root(), name))
            .or_default() += t.bytes().len();
    }
    let file_bytes = store.file_bytes();
    let source_bytes: Option<usize> = md.get(META_SOURCE_BYTES).and_then(|s| s.parse().ok());
    let plan: Option<serde_json::Value> =
        md.get(META_PLAN).and_then(|s| serde_json::from_str(s).ok());
    let mut storage: Vec<(String, String)> = vec![(
        "embeddings".to_string(),
        model.embed().storage_name().to_string(),
    )];
    if let Some(p) = model.positions() {
        storage.push(("positions".into(), p.storage_name().into()));
    }
    storage.extend(model.linears().iter().map(|(l, c, lin)| {
        let at = l.map_or("head".to_string(), |l| format!("h.{l}"));
        (format!("{at}.{c}"), lin.describe())
    }));
    let ratio = source_bytes.map(|s| file_bytes as f64 / s as f64);
    if a.json {
        let parts: Vec<_> = bytes
            .iter()
            .map(|((l, p), b)| serde_json::json!({"layer": l, "part": p, "bytes": b}))
            .collect();
        let v = serde_json::json!({
            "dir": a.dir,
            "format_version": md.get(META_FORMAT),
            "plan": plan,
            "matrices": md.get(META_MATRICES).and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
            "storage": storage.iter().cloned().collect::<BTreeMap<_, _>>(),
            "bytes": parts,
            "file_bytes": file_bytes,
            "weight_bytes": model.weight_bytes(),
            "source_bytes": source_bytes,
            "ratio": ratio,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    outln!("model       {}", a.dir.display())?;
    match md.get(META_FORMAT) {
        Some(v) => outln!("format      slimlm compressed, version {v}")?,
        None => outln!("format      not compressed by slimlm")?,
    }
    if let Some(p) = &plan {
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
            .map(|p| bytes.get(&(l, *p)).copied().unwrap_or(0))
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
    for (n, s) in &storage {
        outln!("  {n:<14} {s}")?;
    }
    outln!("\nfile        {file_bytes} bytes")?;
    if let (Some(s), Some(r)) = (source_bytes, ratio) {
        outln!("original    {s} bytes")?;
        outln!("ratio       {r:.4} ({:.2}x smaller)", 1.0 / r)?;
    }
    Ok(())
}
