//! Streams a greedy continuation as text, whole characters at a time (a character split across tokens —
//! common in Arabic, Hindi or CJK text — is held back until its bytes are complete), and ends at a stop
//! string if one is given.
//!
//! `cargo run --release --example stream -- [MODEL_DIR] [PROMPT]` (default: the bundled model).

use std::io::Write;

use slimlm::{GenerateOptions, Model, Sampling};

fn main() -> Result<(), slimlm::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/ref-gpt2".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "Die Paketverwaltung von Debian".into());
    let model = Model::open(&dir)?; // maps the weights, copies none
    let ids = model.tokenizer().encode(&prompt)?;
    let mut session = model.session(); // KV cache + scratch, allocated once
    let opts = GenerateOptions {
        max_tokens: 32,
        sampling: Sampling::Greedy,
        stop_at_eos: true,
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}").ok();
    let mut gen = session.generate(&ids, &opts)?;
    while let Some(step) = gen.next_step() {
        write!(out, "{}", step?.text).ok();
        out.flush().ok();
    }
    writeln!(out).ok();
    Ok(())
}
