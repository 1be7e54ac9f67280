//! The `slimlm` binary: its contract flags, JSON output and error behaviour.

#![cfg(feature = "cli")]

mod common;

use std::process::Command;

fn slimlm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slimlm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn generate_json_matches_golden_greedy() {
    let g = common::golden("ref-gptneo");
    let p = g.prompts.iter().find(|p| p.name == "en_apt").unwrap();
    let model = common::ref_model("ref-gptneo");
    let out = slimlm()
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &p.text,
        ])
        .args(["--max-tokens", "48", "--greedy", "--threads", "2", "--json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    assert_eq!(ids("prompt_ids"), p.input_ids);
    assert_eq!(ids("generated_ids"), p.greedy_ids);
    assert!(v["text"].is_string());
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_default_model_streams_text() {
    let out = slimlm()
        .args([
            "generate",
            "--max-tokens",
            "8",
            "--temperature",
            "0.9",
            "--top-k",
            "20",
            "--top-p",
            "0.9",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("The Debian package manager"), "{text}");
}

#[test]
fn perplexity_json() {
    let g = common::golden("ref-gpt2");
    let (file, ctx, stride, scored, ppl) = common::golden_ppl(&g)["heldout_zh-CN"].clone();
    let text = common::shared().join("corpora/heldout").join(file);
    let out = slimlm()
        .args([
            "perplexity",
            "--model",
            common::ref_model("ref-gpt2").to_str().unwrap(),
        ])
        .args([
            "--text",
            text.to_str().unwrap(),
            "--context",
            &ctx.to_string(),
            "--stride",
            &stride.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["tokens_scored"].as_u64().unwrap() as usize, scored);
    assert!((v["ppl"].as_f64().unwrap() / ppl - 1.0).abs() < 1e-3);
    assert!(v["mean_nll"].as_f64().unwrap() > 0.0);
}

fn fails_with(args: &[&str], needle: &str) {
    let out = slimlm().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    fails_with(&["generate", "--prompt-ids", "1,70000"], "out of range");
    fails_with(&["generate", "--prompt", ""], "empty");
    fails_with(&["generate", "--max-tokens", "600"], "context length 512");
    fails_with(&["generate", "--model", "/nonexistent"], "/nonexistent");
    fails_with(&["generate", "--temperature", "0"], "temperature");
    fails_with(&["generate", "--threads", "0"], "threads");
    fails_with(
        &["perplexity", "--text", "/nonexistent.txt"],
        "nonexistent.txt",
    );
    fails_with(
        &["perplexity", "--text", "Cargo.toml", "--context", "1"],
        "context",
    );
}

#[test]
fn unknown_kernel_path_is_refused() {
    let out = slimlm()
        .env("SLIMLM_KERNELS", "sse9")
        .args(["generate", "--max-tokens", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLIMLM_KERNELS"));
}
