//! Random-initialised models with the exact shapes of published ones (GPT-2 124M/355M, GPT-Neo
//! 125M/1.3B, OPT-125m/350m, Pythia-160m/410m, BLOOM-560m), written in the Hugging Face layout, so speed
//! and memory are measured at real sizes (no pretrained weights of those sizes can be downloaded here).
//! Each family's file in [`crate::arch`] gives the presets' `config.json`; the tensors follow from the
//! architecture spec. Initialisation as the originals: N(0, 0.02) weights and embeddings, zero biases,
//! LayerNorm γ = 1, β = 0. F32, like the published checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use slimlm_kernels::Layout;

use crate::arch::{Arch, Config, FAMILIES};
use crate::compress::writer::{self, OutTensor};
use crate::error::{Error, Result};
use crate::layers::{block_prefix, linear_sites};

/// A synthetic model: a family and the `config.json` of one of its published sizes.
#[derive(Clone, Copy)]
pub struct Preset {
    pub arch: Arch,
    pub name: &'static str,
    config: fn() -> serde_json::Value,
}

impl std::fmt::Debug for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.arch, self.name)
    }
}

impl Preset {
    /// Every preset of every family.
    pub fn all() -> Vec<Preset> {
        FAMILIES
            .iter()
            .flat_map(|f| {
                let arch = Arch::find(f.name).expect("a family of the table");
                f.presets
                    .iter()
                    .map(move |&(name, config)| Preset { arch, name, config })
            })
            .collect()
    }

    /// The preset `name` (`124m`, `gpt2-124m`, …) of `arch`.
    pub fn find(arch: Arch, name: &str) -> Result<Preset> {
        let short = name
            .strip_prefix(arch.name())
            .map_or(name, |r| r.trim_start_matches('-'))
            .to_ascii_lowercase();
        let all = Preset::all();
        all.iter()
            .find(|p| p.arch == arch && p.name == short)
            .copied()
            .ok_or_else(|| {
                let names: Vec<_> = all
                    .iter()
                    .filter(|p| p.arch == arch)
                    .map(|p| p.name)
                    .collect();
                Error::input(format!(
                    "no preset {name:?} for {arch}; presets: {}",
                    names.join(", ")
                ))
            })
    }

    /// The Hugging Face `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        (self.config)()
    }

    /// The parsed config.
    pub fn config(&self) -> Config {
        Config::from_value(&self.config_json()).expect("presets are valid configs")
    }

    /// Every tensor: name, shape and initialisation, as the architecture spec names and shapes them.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        expected_tensors(&self.config())
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}

/// The tensors a model of `config` holds, named under the family's first root.
fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>, Init)> {
    let names = &c.family().names;
    let root = names.roots[0];
    let (d, e) = (c.d_model, c.embed_dim);
    let mut t = vec![(
        format!("{root}{}.weight", names.embed),
        vec![c.vocab_size, e],
        Init::Normal,
    )];
    if let (Some(rows), Some(p)) = (c.position_rows(), names.positions) {
        t.push((format!("{root}{p}.weight"), vec![rows, d], Init::Normal));
    }
    let norm = |t: &mut Vec<_>, base: String| {
        t.push((format!("{base}.weight"), vec![d], Init::Ones));
        t.push((format!("{base}.bias"), vec![d], Init::Zeros));
    };
    if let (true, Some(n)) = (c.embed_norm, names.embed_norm) {
        norm(&mut t, format!("{root}{n}"));
    }
    if let (true, Some(pi), Some(po)) = (c.projects(), names.project_in, names.project_out) {
        t.push((format!("{root}{pi}.weight"), vec![d, e], Init::Normal));
        t.push((format!("{root}{po}.weight"), vec![e, d], Init::Normal));
    }
    let sites = linear_sites(c, root);
    for layer in 0..c.n_layer() {
        let h = block_prefix(c, root, layer);
        norm(&mut t, format!("{h}.{}", names.ln1));
        norm(&mut t, format!("{h}.{}", names.ln2));
        for s in sites.iter().filter(|s| s.layer == layer) {
            let shape = match s.layout {
                Layout::OutIn => vec![s.out_dim, s.in_dim],
                Layout::InOut => vec![s.in_dim, s.out_dim],
            };
            t.push((format!("{}.weight", s.base), shape, Init::Normal));
            if s.bias {
                t.push((format!("{}.bias", s.base), vec![s.out_dim], Init::Zeros));
            }
        }
    }
    if let (true, Some(n)) = (c.final_norm, names.final_norm) {
        norm(&mut t, format!("{root}{n}"));
    }
    if !c.tie_word_embeddings {
        t.push((
            format!("{}.weight", names.lm_head),
            vec![c.vocab_size, e],
            Init::Normal,
        ));
    }
    t
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
    writer::check_output(None, out, overwrite)?;
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
            format!("{}-{} seed {seed}", preset.arch, preset.name),
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
        // The counts transformers reports for the published checkpoints.
        let count = |arch: &str, name: &str| {
            Preset::find(Arch::find(arch).unwrap(), name)
                .unwrap()
                .parameters()
        };
        assert_eq!(count("gpt2", "124m"), 124_439_808);
        assert_eq!(count("gpt2", "gpt2-355m"), 354_823_168);
        assert_eq!(count("gpt-neo", "125m"), 125_198_592);
        assert_eq!(count("gpt-neo", "1.3b"), 1_315_575_808);
        assert_eq!(count("opt", "125m"), 125_239_296);
        assert_eq!(count("opt", "opt-350m"), 331_196_416);
        assert_eq!(count("gpt-neox", "160m"), 162_322_944);
        assert_eq!(count("gpt-neox", "410m"), 405_334_016);
        assert_eq!(count("bloom", "560m"), 559_214_592);
        assert!(Preset::find(Arch::find("gpt-neo").unwrap(), "355m").is_err());
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
