//! Random-initialised models with the exact shapes of GPT-2 124M/355M and GPT-Neo 125M/1.3B, written in
//! the Hugging Face layout, so speed and memory are measured at real sizes (no pretrained weights of those
//! sizes can be downloaded here). Initialisation as the originals: N(0, 0.02) weights and embeddings,
//! zero biases, LayerNorm γ = 1, β = 0. F32, like the published checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde_json::json;

use crate::compress::writer::{self, OutTensor};
use crate::config::Arch;
use crate::error::{Error, Result};

/// Sizes of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub arch: Arch,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_ctx: usize,
    /// GPT-Neo local attention window.
    pub window: usize,
}

/// The presets: the published shapes, plus `tiny` for tests.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "124m",
        arch: Arch::Gpt2,
        d_model: 768,
        n_layer: 12,
        n_head: 12,
        n_ctx: 1024,
        window: 0,
    },
    Preset {
        name: "355m",
        arch: Arch::Gpt2,
        d_model: 1024,
        n_layer: 24,
        n_head: 16,
        n_ctx: 1024,
        window: 0,
    },
    Preset {
        name: "tiny",
        arch: Arch::Gpt2,
        d_model: 64,
        n_layer: 2,
        n_head: 4,
        n_ctx: 128,
        window: 0,
    },
    Preset {
        name: "125m",
        arch: Arch::GptNeo,
        d_model: 768,
        n_layer: 12,
        n_head: 12,
        n_ctx: 2048,
        window: 256,
    },
    Preset {
        name: "1.3b",
        arch: Arch::GptNeo,
        d_model: 2048,
        n_layer: 24,
        n_head: 16,
        n_ctx: 2048,
        window: 256,
    },
    Preset {
        name: "tiny",
        arch: Arch::GptNeo,
        d_model: 64,
        n_layer: 2,
        n_head: 4,
        n_ctx: 128,
        window: 16,
    },
];

const VOCAB: usize = 50257;

impl Preset {
    /// The preset `name` (`124m`, `gpt2-124m`, …) of `arch`.
    pub fn find(arch: Arch, name: &str) -> Result<Preset> {
        let short = name
            .trim_start_matches(arch.name())
            .trim_start_matches('-')
            .to_ascii_lowercase();
        PRESETS
            .iter()
            .find(|p| p.arch == arch && p.name == short)
            .copied()
            .ok_or_else(|| {
                let names: Vec<_> = PRESETS
                    .iter()
                    .filter(|p| p.arch == arch)
                    .map(|p| p.name)
                    .collect();
                Error::input(format!(
                    "no preset {name:?} for {}; presets: {}",
                    arch.name(),
                    names.join(", ")
                ))
            })
    }

    /// The Hugging Face `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        let d = self.d_model;
        match self.arch {
            Arch::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                "vocab_size": VOCAB, "n_positions": self.n_ctx, "n_embd": d, "n_layer": self.n_layer,
                "n_head": self.n_head, "n_inner": null, "layer_norm_epsilon": 1e-5,
                "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": true,
                "scale_attn_weights": true, "initializer_range": 0.02,
            }),
            Arch::GptNeo => json!({
                "architectures": ["GPTNeoForCausalLM"], "model_type": "gpt_neo", "activation_function": "gelu_new",
                "vocab_size": VOCAB, "max_position_embeddings": self.n_ctx, "hidden_size": d,
                "num_layers": self.n_layer, "num_heads": self.n_head, "intermediate_size": null,
                "attention_types": [[["global", "local"], self.n_layer / 2]], "window_size": self.window,
                "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
                "tie_word_embeddings": true, "initializer_range": 0.02,
            }),
        }
    }

    /// Every tensor: name, shape and initialisation (`Some(std)` normal, `None` for ones; biases zero).
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (d, ff) = (self.d_model, 4 * self.d_model);
        let mut t = vec![
            (
                "transformer.wte.weight".to_string(),
                vec![VOCAB, d],
                Init::Normal,
            ),
            (
                "transformer.wpe.weight".to_string(),
                vec![self.n_ctx, d],
                Init::Normal,
            ),
        ];
        for i in 0..self.n_layer {
            let h = format!("transformer.h.{i}");
            for ln in ["ln_1", "ln_2"] {
                t.push((format!("{h}.{ln}.weight"), vec![d], Init::Ones));
                t.push((format!("{h}.{ln}.bias"), vec![d], Init::Zeros));
            }
            let mut lin = |name: String, shape: Vec<usize>, bias: Option<usize>| {
                if let Some(b) = bias {
                    t.push((format!("{name}.bias"), vec![b], Init::Zeros));
                }
                t.push((format!("{name}.weight"), shape, Init::Normal));
            };
            match self.arch {
                Arch::Gpt2 => {
                    lin(format!("{h}.attn.c_attn"), vec![d, 3 * d], Some(3 * d));
                    lin(format!("{h}.attn.c_proj"), vec![d, d], Some(d));
                    lin(format!("{h}.mlp.c_fc"), vec![d, ff], Some(ff));
                    lin(format!("{h}.mlp.c_proj"), vec![ff, d], Some(d));
                }
                Arch::GptNeo => {
                    let a = format!("{h}.attn.attention");
                    for p in ["q_proj", "k_proj", "v_proj"] {
                        lin(format!("{a}.{p}"), vec![d, d], None);
                    }
                    lin(format!("{a}.out_proj"), vec![d, d], Some(d));
                    lin(format!("{h}.mlp.c_fc"), vec![ff, d], Some(ff));
                    lin(format!("{h}.mlp.c_proj"), vec![d, ff], Some(d));
                }
            }
        }
        t.push(("transformer.ln_f.weight".into(), vec![d], Init::Ones));
        t.push(("transformer.ln_f.bias".into(), vec![d], Init::Zeros));
        t
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    Ones,
    Zeros,
}

/// Writes a random model of `preset` into `out` (atomically), with the tokenizer files of `tokenizer_dir`.
pub fn write_model(
    preset: &Preset,
    out: &Path,
    seed: u64,
    tokenizer_dir: &Path,
    overwrite: bool,
) -> Result<()> {
    let tensors: Vec<OutTensor> = preset
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, init))| {
            let n: usize = shape.iter().product();
            let v = match init {
                Init::Normal => normal(
                    n,
                    0.02,
                    seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            OutTensor::f32(name, shape, &v)
        })
        .collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "slimlm.synth".to_string(),
            format!("{}-{} seed {seed}", preset.arch.name(), preset.name),
        ),
    ]);
    let bytes = writer::serialize(&tensors, &meta)?;
    drop(tensors);
    writer::write_dir_atomically(out, overwrite, |dir| {
        writer::write_synced(&dir.join("model.safetensors"), &bytes)?;
        let cfg =
            serde_json::to_string_pretty(&preset.config_json()).expect("JSON of a json! value");
        writer::write_synced(&dir.join("config.json"), cfg.as_bytes())?;
        let mut copied = false;
        for f in [
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
        ] {
            let src = tokenizer_dir.join(f);
            if src.exists() {
                std::fs::copy(&src, dir.join(f)).map_err(|e| Error::io(&src, e))?;
                copied |= f == "tokenizer.json";
            }
        }
        if !copied {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer.json to copy into the synthetic model",
                tokenizer_dir.display()
            )));
        }
        Ok(())
    })
}

/// `n` samples of N(0, std²), reproducible for a seed whatever the thread count.
fn normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut s = seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut next = || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        for pair in out.chunks_mut(2) {
            // Box–Muller.
            let (u1, u2) = (next().max(1e-300), next());
            let r = (-2.0 * u1.ln()).sqrt() * std as f64;
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if pair.len() > 1 {
                pair[1] = (r * t.sin()) as f32;
            }
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_models() {
        // GPT-2 124M: 124,439,808 parameters; GPT-Neo 125M: 125,198,592; 1.3B: 1,315,575,808 (HF counts).
        assert_eq!(
            Preset::find(Arch::Gpt2, "124m").unwrap().parameters(),
            124_439_808
        );
        assert_eq!(
            Preset::find(Arch::Gpt2, "gpt2-355m").unwrap().parameters(),
            354_823_168
        );
        assert_eq!(
            Preset::find(Arch::GptNeo, "125m").unwrap().parameters(),
            125_198_592
        );
        assert_eq!(
            Preset::find(Arch::GptNeo, "1.3b").unwrap().parameters(),
            1_315_575_808
        );
        assert!(Preset::find(Arch::GptNeo, "355m").is_err());
    }

    #[test]
    fn normal_has_the_right_moments() {
        let v = normal(200_000, 0.02, 5);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 2e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "{}", var.sqrt());
        assert_eq!(v, normal(200_000, 0.02, 5));
    }
}
