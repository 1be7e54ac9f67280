//! Bits per byte of `slimlm::perplexity` against the goldens, and `slimlm perplexity --max-tokens /
//! --per-token`.
//!
//! The oracle: golden.json gives, per held-out text, the mean NLL and the number of tokens transformers
//! scored; their product in bits over the bytes of the scored tokens is the bits per byte. The bytes are
//! computed here independently of slimlm's rule: the text's UTF-8 (byte-level BPE round-trips exactly; OPT
//! adds its leading `</s>`), minus the tokens the golden rule never scores (the first, and with stride =
//! context the first of every later window) — which must leave exactly the golden's `tokens_scored`.

#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use common::{golden, golden_ppl, ref_model, shared};
use slimlm::Model;

/// Positions the golden rule does not score in a text of `n` tokens.
fn unscored(n: usize, context: usize, stride: usize) -> Vec<usize> {
    if stride < context {
        vec![0]
    } else {
        (0..n).step_by(context).collect()
    }
}

fn check_bits_per_byte(name: &str, keys: &[&str], prefix: &str) {
    let model = Model::open(ref_model(name)).unwrap();
    let g = golden(name);
    let entries = golden_ppl(&g);
    for key in keys {
        let (file, context, stride, scored, ppl) = entries[*key].clone();
        let text = std::fs::read_to_string(shared().join("corpora/heldout").join(&file)).unwrap();
        let ids = model.tokenizer().encode(&text).unwrap();
        // The tokens decode to the text exactly (plus OPT's leading special token).
        let decoded = model.tokenizer().decode(&ids).unwrap();
        assert_eq!(
            decoded,
            format!("{prefix}{text}"),
            "{name}/{key}: round trip"
        );
        let skip = unscored(ids.len(), context, stride);
        assert_eq!(
            ids.len() - skip.len(),
            scored,
            "{name}/{key}: unscored tokens"
        );
        let skipped: usize = skip
            .iter()
            .map(|&i| model.tokenizer().token_bytes(ids[i]).unwrap().len())
            .sum();
        let bytes = decoded.len() - skipped;
        let golden_bpb = ppl.ln() * scored as f64 / std::f64::consts::LN_2 / bytes as f64;

        let r = slimlm::perplexity(&model, &ids, context, stride, &mut |_, _| {}).unwrap();
        assert_eq!(r.bytes_scored, bytes, "{name}/{key}: bytes scored");
        let bpb = r.bits_per_byte.unwrap();
        let rel = (bpb / golden_bpb - 1.0).abs();
        eprintln!("{name}/{key}: {bpb:.5} bits per byte vs golden {golden_bpb:.5} (rel {rel:.1e})");
        assert!(rel <= 1e-3, "{name}/{key}: {bpb} vs {golden_bpb}");
        // Bits per byte and perplexity are the same NLL.
        let nll_bits = r.mean_nll * r.tokens_scored as f64 / std::f64::consts::LN_2;
        assert!((bpb * r.bytes_scored as f64 / nll_bits - 1.0).abs() < 1e-12);
    }
}

#[test]
fn bits_per_byte_matches_the_goldens_gpt2() {
    // Both window rules: overlapping windows, and stride = context (window starts unscored; CJK text).
    check_bits_per_byte("ref-gpt2", &["heldout_en-US_overlap", "heldout_zh-CN"], "");
}

#[test]
fn bits_per_byte_matches_the_goldens_opt() {
    // OPT's tokenizer prepends `</s>`, never scored.
    check_bits_per_byte("ref-opt", &["heldout_ja-JP"], "</s>");
}

#[test]
fn ids_without_bytes_have_no_bits_per_byte() {
    let model = Model::open(ref_model("ref-opt")).unwrap();
    // ref-opt has 50272 embedding rows for 50260 tokens: 50265 runs but decodes to nothing.
    assert!(model.tokenizer().token_bytes(50265).is_err());
    let r = slimlm::perplexity(&model, &[2, 100, 50265, 7], 256, 256, &mut |_, _| {}).unwrap();
    assert_eq!(r.tokens_scored, 3);
    assert!(r.bits_per_byte.is_none() && r.ppl.is_finite());
}

fn slimlm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slimlm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_max_tokens_and_per_token_nll() {
    let model = ref_model("ref-gpt2");
    let text = shared().join("corpora/heldout/de-DE.txt");
    let base = [
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--context",
        "64",
        "--stride",
        "64",
        "--threads",
        "1",
    ];
    let run = |extra: &[&str]| {
        let (ok, out, e) = slimlm(&[&base[..], extra].concat());
        assert!(ok, "{e}");
        out
    };
    let v: serde_json::Value =
        serde_json::from_str(&run(&["--max-tokens", "150", "--json", "--per-token"])).unwrap();
    assert_eq!(v["tokens"], 150);
    // Windows of 64 from 0: tokens 64 and 128 are never predicted.
    assert_eq!(v["tokens_scored"], 147);
    let (ids, nll) = (v["ids"].as_array().unwrap(), v["nll"].as_array().unwrap());
    assert_eq!((ids.len(), nll.len()), (150, 147));
    let mean = nll.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / 147.0;
    assert!((mean - v["mean_nll"].as_f64().unwrap()).abs() < 1e-12);

    // The same as the library on the first 150 tokens.
    let m = Model::open(&model).unwrap();
    let mut all = m
        .tokenizer()
        .encode(&std::fs::read_to_string(&text).unwrap())
        .unwrap();
    all.truncate(150);
    let want: Vec<u64> = all.iter().map(|&i| i as u64).collect();
    let got: Vec<u64> = ids.iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(got, want);
    let r = slimlm::perplexity(&m, &all, 64, 64, &mut |_, _| {}).unwrap();
    assert_eq!(v["ppl"].as_f64().unwrap(), r.ppl);
    assert_eq!(
        v["bits_per_byte"].as_f64().unwrap(),
        r.bits_per_byte.unwrap()
    );
    assert_eq!(v["bytes_scored"].as_u64().unwrap() as usize, r.bytes_scored);

    // Without --per-token the JSON stays small.
    let v: serde_json::Value =
        serde_json::from_str(&run(&["--max-tokens", "150", "--json"])).unwrap();
    assert!(v.get("nll").is_none() && v.get("ids").is_none());
    let out = run(&["--max-tokens", "150"]);
    assert!(out.contains("bits per byte"), "{out}");

    for (args, needle) in [
        (&["--per-token"][..], "--json"),
        (&["--max-tokens", "1"][..], "--max-tokens"),
        (&["--max-tokens", "x"][..], "--max-tokens"),
    ] {
        let (ok, _, e) = slimlm(&[&base[..], args].concat());
        assert!(
            !ok && e.contains(needle) && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
}
