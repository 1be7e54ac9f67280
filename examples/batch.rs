//! Decodes several prompts together: one forward pass over the weights per step for all of them
//! (continuous batching: a sequence leaves as soon as it ends, and others could join between steps).
//!
//! `cargo run --release --example batch -- [MODEL_DIR] [TOKENS] [SEQUENCES]` (default: the bundled
//! model, 32 tokens, 4 sequences).

use std::time::Instant;

use slimlm::{Batch, Decoder, GenerateOptions, Model, SeqId};

fn main() -> Result<(), slimlm::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "models/ref-gpt2".into());
    let tokens: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(32);
    let sequences: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(4);
    let prompts = [
        "The Debian package manager",
        "Die Paketverwaltung von Debian",
        "Le gestionnaire de paquets",
        "All human beings are born free",
    ];
    let model = Model::open(&dir)?;
    let tokenizer = model.tokenizer();
    let opts = GenerateOptions {
        max_tokens: tokens,
        ..Default::default()
    };
    let mut batch = Batch::new(&model);
    // Each sequence: its id, its decoder (sampling, end of text, text) and the token to feed next.
    let mut live: Vec<(SeqId, Decoder, u32)> = Vec::new();
    for p in prompts.iter().cycle().take(sequences) {
        let id = batch.add();
        let logits = batch.prefill(id, &tokenizer.encode(p)?)?;
        let mut dec = Decoder::new(&opts, model.eos_token_ids())?;
        let step = dec.next(tokenizer, logits)?;
        live.push((id, dec, step.token));
    }
    let (t, mut steps, mut generated) = (Instant::now(), 0, 0);
    let mut done = Vec::new();
    while !live.is_empty() {
        let feed: Vec<(SeqId, u32)> = live.iter().map(|(id, _, t)| (*id, *t)).collect();
        let logits = batch.step(&feed)?;
        let v = model.config().vocab_size;
        for (k, (_, dec, next)) in live.iter_mut().enumerate() {
            *next = dec.next(tokenizer, &logits[k * v..(k + 1) * v])?.token;
            generated += 1;
        }
        steps += 1;
        // Finished sequences leave the batch.
        let (ended, going): (Vec<_>, Vec<_>) =
            live.into_iter().partition(|(_, d, _)| d.finish().is_some());
        for (id, dec, _) in ended {
            batch.remove(id);
            done.push((id, dec));
        }
        live = going;
    }
    done.sort_by_key(|(id, _)| *id);
    for ((_, dec), p) in done.iter().zip(prompts.iter().cycle()) {
        println!("{p}{}\n---", dec.text());
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "{steps} steps, {generated} tokens in {s:.2} s: {:.0} tokens/s",
        generated as f64 / s
    );
    Ok(())
}
