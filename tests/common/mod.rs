//! Shared test helpers: where ../shared is, and the Hugging Face goldens.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use slimlm::tensor_file::{DType, TensorFile};

/// `../shared` beside the repository (or `$SLIMLM_SHARED`).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("SLIMLM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        p.join("models").is_dir(),
        "{} not found: tests need ../shared (or set SLIMLM_SHARED)",
        p.display()
    );
    p
}

/// A reference model directory in ../shared/models.
pub fn ref_model(name: &str) -> PathBuf {
    shared().join("models").join(name)
}

/// One golden prompt.
pub struct Prompt {
    pub name: String,
    pub text: String,
    pub input_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    pub next_token_logprobs: Vec<f32>,
    /// `[layers + 1][d]`.
    pub last_hidden_per_layer: Vec<Vec<f32>>,
}

/// The goldens of a reference model.
pub struct Golden {
    pub json: Value,
    pub prompts: Vec<Prompt>,
}

fn f32s(f: &TensorFile, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = f.get(name).unwrap_or_else(|| panic!("golden tensor {name}"));
    assert_eq!(t.dtype, DType::F32);
    let v = t
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v, t.shape.clone())
}

fn ids(f: &TensorFile, name: &str) -> Vec<u32> {
    let t = f.get(name).unwrap_or_else(|| panic!("golden tensor {name}"));
    assert_eq!(t.dtype, DType::I64);
    t.bytes()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

/// Loads `../shared/models/<model>/golden`.
pub fn golden(model: &str) -> Golden {
    let dir = ref_model(model).join("golden");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let f = TensorFile::open(&dir.join("golden.safetensors")).unwrap();
    let mut prompts = Vec::new();
    for (name, p) in json["prompts"].as_object().unwrap() {
        let (hidden, shape) = f32s(&f, &format!("{name}.last_hidden_per_layer"));
        prompts.push(Prompt {
            name: name.clone(),
            text: p["text"].as_str().unwrap().to_string(),
            input_ids: ids(&f, &format!("{name}.input_ids")),
            greedy_ids: ids(&f, &format!("{name}.greedy_ids")),
            last_logits: f32s(&f, &format!("{name}.last_logits")).0,
            next_token_logprobs: f32s(&f, &format!("{name}.next_token_logprobs")).0,
            last_hidden_per_layer: hidden.chunks(shape[1]).map(<[f32]>::to_vec).collect(),
        });
    }
    Golden { json, prompts }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Perplexity entries of golden.json: name → (file, context, stride, tokens_scored, ppl).
pub fn golden_ppl(g: &Golden) -> HashMap<String, (String, usize, usize, usize, f64)> {
    g.json["perplexity"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["file"].as_str().unwrap().to_string(),
                    v["context"].as_u64().unwrap() as usize,
                    v["stride"].as_u64().unwrap() as usize,
                    v["tokens_scored"].as_u64().unwrap() as usize,
                    v["ppl"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}
