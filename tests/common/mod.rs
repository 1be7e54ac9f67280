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

/// Every reference model: one or two per family.
pub const REFERENCE_MODELS: [&str; 7] = [
    "ref-gpt2",
    "ref-gptneo",
    "ref-opt",
    "ref-opt-postln",
    "ref-neox",
    "ref-neox-seq",
    "ref-bloom",
];

/// A reference model directory in ../shared/models.
pub fn ref_model(name: &str) -> PathBuf {
    shared().join("models").join(name)
}

/// One golden prompt.
pub struct Prompt {
    pub name: String,
    pub text: String,
    pub input_ids: Vec<u32>,
    /// Up to `greedy_new_tokens`; shorter when transformers stopped at the end-of-text token.
    pub greedy_ids: Vec<u32>,
    /// Greedy steps where transformers' own top-2 logits were within 1e-3 (either choice is right).
    pub near_tie_positions: Vec<usize>,
    pub last_logits: Vec<f32>,
    pub next_token_logprobs: Vec<f32>,
    /// `[layers + 1][d]`; for a model whose final hidden state has another width (OPT with
    /// `project_out`), the entries before it, the final one being in `last_hidden_final`.
    pub last_hidden_per_layer: Vec<Vec<f32>>,
    pub last_hidden_final: Option<Vec<f32>>,
}

impl Prompt {
    /// Every hidden state transformers reports, the final one included.
    pub fn hidden_states(&self) -> Vec<Vec<f32>> {
        let mut v = self.last_hidden_per_layer.clone();
        v.extend(self.last_hidden_final.clone());
        v
    }
}

/// The goldens of a reference model.
pub struct Golden {
    pub json: Value,
    pub prompts: Vec<Prompt>,
}

fn f32s(f: &TensorFile, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = f
        .get(name)
        .unwrap_or_else(|| panic!("golden tensor {name}"));
    assert_eq!(t.dtype, DType::F32);
    let v = t
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v, t.shape.clone())
}

fn ids(f: &TensorFile, name: &str) -> Vec<u32> {
    let t = f
        .get(name)
        .unwrap_or_else(|| panic!("golden tensor {name}"));
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
        let final_name = format!("{name}.last_hidden_final");
        prompts.push(Prompt {
            name: name.clone(),
            text: p["text"].as_str().unwrap().to_string(),
            input_ids: ids(&f, &format!("{name}.input_ids")),
            greedy_ids: ids(&f, &format!("{name}.greedy_ids")),
            near_tie_positions: p["near_tie_positions"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect())
                .unwrap_or_default(),
            last_hidden_final: f.get(&final_name).map(|_| f32s(&f, &final_name).0),
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
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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

/// A tiny model written for tests: tensors (name, dtype, shape, bytes) and a config, both mutable
/// before writing so tests can damage them.
pub struct TinyModel {
    pub config: Value,
    pub tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
}

fn randn_bytes(n: usize, seed: &mut u64, std: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| {
            // Sum of uniforms: roughly normal; the exact distribution does not matter here.
            let mut s = 0.0f32;
            for _ in 0..4 {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s += ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            }
            (s * std * 1.7).to_le_bytes()
        })
        .collect()
}

impl TinyModel {
    /// A random GPT-2 (or GPT-Neo) with d=16, 2 layers, 2 heads, context 32, the GPT-2 vocabulary.
    pub fn new(neo: bool) -> TinyModel {
        let (d, ff, layers, ctx, vocab) = (16usize, 64usize, 2usize, 32usize, 50257usize);
        let mut seed = 1u64;
        let mut t = Vec::new();
        let f32t = safetensors::Dtype::F32;
        let mut add = |name: String, shape: Vec<usize>, std: Option<f32>, seed: &mut u64| {
            let n: usize = shape.iter().product();
            let bytes = match std {
                Some(s) => randn_bytes(n, seed, s),
                None => (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect(),
            };
            t.push((name, f32t, shape, bytes));
        };
        add(
            "transformer.wte.weight".into(),
            vec![vocab, d],
            Some(0.02),
            &mut seed,
        );
        add(
            "transformer.wpe.weight".into(),
            vec![ctx, d],
            Some(0.02),
            &mut seed,
        );
        for i in 0..layers {
            let h = format!("transformer.h.{i}");
            for ln in ["ln_1", "ln_2"] {
                add(format!("{h}.{ln}.weight"), vec![d], None, &mut seed);
                add(format!("{h}.{ln}.bias"), vec![d], Some(0.01), &mut seed);
            }
            if neo {
                let a = format!("{h}.attn.attention");
                for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{a}.{p}.weight"), vec![d, d], Some(0.02), &mut seed);
                }
                add(format!("{a}.out_proj.bias"), vec![d], Some(0.01), &mut seed);
                add(
                    format!("{h}.mlp.c_fc.weight"),
                    vec![ff, d],
                    Some(0.02),
                    &mut seed,
                );
                add(
                    format!("{h}.mlp.c_proj.weight"),
                    vec![d, ff],
                    Some(0.02),
                    &mut seed,
                );
            } else {
                add(
                    format!("{h}.attn.c_attn.weight"),
                    vec![d, 3 * d],
                    Some(0.02),
                    &mut seed,
                );
                add(
                    format!("{h}.attn.c_attn.bias"),
                    vec![3 * d],
                    Some(0.01),
                    &mut seed,
                );
                add(
                    format!("{h}.attn.c_proj.weight"),
                    vec![d, d],
                    Some(0.02),
                    &mut seed,
                );
                add(
                    format!("{h}.attn.c_proj.bias"),
                    vec![d],
                    Some(0.01),
                    &mut seed,
                );
                add(
                    format!("{h}.mlp.c_fc.weight"),
                    vec![d, ff],
                    Some(0.02),
                    &mut seed,
                );
                add(
                    format!("{h}.mlp.c_proj.weight"),
                    vec![ff, d],
                    Some(0.02),
                    &mut seed,
                );
            }
            add(
                format!("{h}.mlp.c_fc.bias"),
                vec![ff],
                Some(0.01),
                &mut seed,
            );
            add(
                format!("{h}.mlp.c_proj.bias"),
                vec![d],
                Some(0.01),
                &mut seed,
            );
        }
        add("transformer.ln_f.weight".into(), vec![d], None, &mut seed);
        add(
            "transformer.ln_f.bias".into(),
            vec![d],
            Some(0.01),
            &mut seed,
        );
        let config = if neo {
            serde_json::json!({"model_type": "gpt_neo", "vocab_size": vocab, "max_position_embeddings": ctx,
                "hidden_size": d, "num_heads": 2, "num_layers": layers, "intermediate_size": ff,
                "attention_types": [[["global", "local"], 1]], "window_size": 4,
                "layer_norm_epsilon": 1e-5, "eos_token_id": 50256})
        } else {
            serde_json::json!({"model_type": "gpt2", "vocab_size": vocab, "n_positions": ctx, "n_embd": d,
                "n_head": 2, "n_layer": layers, "n_inner": ff, "layer_norm_epsilon": 1e-5,
                "eos_token_id": 50256})
        };
        TinyModel { config, tensors: t }
    }

    /// Writes config.json, model.safetensors and the tokenizer into `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), self.config.to_string()).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = self
            .tensors
            .iter()
            .map(|(n, dt, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        std::fs::copy(
            ref_model("ref-gpt2").join("tokenizer.json"),
            dir.join("tokenizer.json"),
        )
        .unwrap();
    }

    /// Index of the tensor `name`.
    pub fn find(&self, name: &str) -> usize {
        self.tensors.iter().position(|t| t.0 == name).unwrap()
    }
}

/// A fresh empty directory under the target dir, removed first if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every stored weight buffer points into the mapping; nothing was copied; every tensor is 64-byte aligned.
pub fn check_in_place(model: &slimlm::Model) {
    let store = model.store();
    let mut mats: Vec<_> = std::iter::once(model.embed())
        .chain(model.positions())
        .collect();
    for (_, _, lin) in model.linears() {
        mats.extend(lin.matrices());
    }
    for m in mats {
        for p in m.data_ptrs() {
            assert!(
                store.is_mapped(p),
                "{}: a weight buffer is not in the mapping",
                model.dir().display()
            );
        }
    }
    assert_eq!(
        model.copied_bytes(),
        0,
        "{}: bytes copied at load",
        model.dir().display()
    );
    let f = TensorFile::open(&model.dir().join("model.safetensors")).unwrap();
    for name in f
        .names()
        .filter(|n| !n.starts_with(slimlm::tensor_file::PAD_PREFIX))
    {
        assert!(
            f.get(name).unwrap().is_aligned(64),
            "{name} is not 64-byte aligned"
        );
    }
}
