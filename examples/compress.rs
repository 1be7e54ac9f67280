//! Compress a model with the library API, then open and run the result.
//!
//! ```sh
//! cargo run --release --example compress -- ../shared/models/ref-gpt2 /tmp/ref-gpt2-r64
//! ```

use slimlm::compress::{compress, FactorDtype, MethodName, Options, Plan, Spec};
use slimlm::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (src, dst) = match (args.next(), args.next()) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err("usage: compress SRC_MODEL_DIR OUT_DIR".into()),
    };
    // Rank-64 INT8 factors for every linear layer, INT8 embeddings (the tied LM head).
    let linear = Spec {
        method: Some(MethodName::Lowrank),
        rank: Some(64),
        factors: Some(FactorDtype::Int8),
        ..Spec::default()
    };
    let embeddings = Spec {
        method: Some(MethodName::Int8),
        ..Spec::default()
    };
    let plan = Plan::uniform(linear, embeddings);
    let opts = Options {
        overwrite: true,
        ..Options::default()
    };
    let report = compress(
        src.as_ref(),
        dst.as_ref(),
        &plan,
        &opts,
        &mut |done, total, stage| {
            eprint!("\r{stage}: {done}/{total}   ");
        },
    )?;
    eprintln!();
    println!("{} → {} bytes", report.source_bytes, report.file_bytes);

    let model = Model::open(&dst)?;
    let ids = model.tokenizer().encode("The Debian package manager")?;
    let logits = model.session().prefill(&ids)?.to_vec();
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0);
    println!(
        "next token: {:?}",
        model.tokenizer().decode(&[best as u32])?
    );
    Ok(())
}
