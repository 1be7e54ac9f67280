//! Every family through the whole tool: INT8 and low-rank models of each reference model load through
//! the same memory-mapped path without copies and stay close to the original; every tensor of every file
//! is classified; `eval compare` runs on each family; `synth` makes each family's presets; a config that
//! disagrees with the weights is a clear error.

#![cfg(feature = "eval")]

mod common;

use common::{check_in_place, ref_model, scratch_dir, shared, REFERENCE_MODELS};
use slimlm::compress::{self, FactorDtype, MethodName, Options, Plan, Spec};
use slimlm::eval::compare;
use slimlm::sampler::log_prob;
use slimlm::synth::Preset;
use slimlm::{Arch, Model};

fn spec(method: MethodName) -> Spec {
    Spec {
        method: Some(method),
        ..Spec::default()
    }
}

fn text_ids(model: &Model, tokens: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(shared().join("corpora/heldout/de-DE.txt")).unwrap();
    let mut ids = model.tokenizer().encode(&text[..4000]).unwrap();
    ids.truncate(tokens);
    ids
}

fn mean_nll(model: &Model, ids: &[u32]) -> f64 {
    let mut nll = 0.0;
    model
        .session()
        .prefill_all(ids, &mut |i, logits| {
            if i + 1 < ids.len() {
                nll -= log_prob(logits, ids[i + 1] as usize);
            }
        })
        .unwrap();
    nll / (ids.len() - 1) as f64
}

/// Every tensor of `model`'s file belongs to a known part of the model.
fn check_classified(model: &Model) {
    for name in model.store().names() {
        let (_, part) = compress::classify(model.config(), model.root(), name);
        assert_ne!(
            part,
            "other",
            "{}: {name} unclassified",
            model.dir().display()
        );
    }
}

#[test]
fn every_family_compresses_to_int8_and_low_rank() {
    let int8 = spec(MethodName::Int8);
    let lowrank = Spec {
        rank: Some(32),
        factors: Some(FactorDtype::Int8),
        ..spec(MethodName::Lowrank)
    };
    for name in REFERENCE_MODELS {
        let dense = Model::open(ref_model(name)).unwrap();
        check_classified(&dense);
        let ids = text_ids(&dense, 96);
        let base = mean_nll(&dense, &ids);
        for (case, plan, tol) in [
            ("int8", Plan::uniform(int8.clone(), int8.clone()), 0.02),
            (
                "lowrank r32 int8",
                Plan::uniform(lowrank.clone(), int8.clone()),
                f64::INFINITY,
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            let report = compress::compress(
                &ref_model(name),
                &out,
                &plan,
                &Options::default(),
                &mut |_, _, _| {},
            )
            .unwrap_or_else(|e| panic!("{name}/{case}: {e}"));
            assert!(
                report.file_bytes < report.source_bytes,
                "{name}/{case}: no smaller"
            );
            let model = Model::open(&out).unwrap();
            check_in_place(&model);
            check_classified(&model);
            assert_eq!(model.config().arch, dense.config().arch);
            let nll = mean_nll(&model, &ids);
            assert!(nll.is_finite(), "{name}/{case}: NLL {nll}");
            let rel = (nll - base) / base;
            assert!(
                rel <= tol,
                "{name}/{case}: NLL {nll:.4} vs {base:.4} (+{:.2}%)",
                100.0 * rel
            );
            for (_, c, lin) in model.linears() {
                if c != "lm_head" {
                    assert!(
                        lin.describe().contains("int8"),
                        "{name}/{case}/{c}: {}",
                        lin.describe()
                    );
                }
            }
        }
    }
}

#[test]
fn eval_compare_runs_on_every_family() {
    for name in REFERENCE_MODELS {
        let reference = Model::open(ref_model(name)).unwrap();
        let int8 = spec(MethodName::Int8);
        let (cand, _) = slimlm::eval::build_compressed(
            &reference,
            &Plan::uniform(int8.clone(), int8),
            &mut |_, _, _| {},
        )
        .unwrap();
        let ids = text_ids(&reference, 64);
        let r = compare::compare(&reference, &cand, &ids, 64, &mut |_, _, _| {}).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        let text = json.to_string();
        assert!(
            !text.contains("null") && !text.contains("NaN"),
            "{name}: {text}"
        );
        assert!(
            r.logits.top1_agreement >= 0.9,
            "{name}: top-1 agreement {}",
            r.logits.top1_agreement
        );
    }
}

#[test]
fn synth_presets_of_every_family_load_and_generate() {
    for arch in ["gpt2", "gpt-neo", "opt", "gpt-neox", "bloom"] {
        let arch = Arch::find(arch).unwrap();
        let preset = Preset::find(arch, "tiny").unwrap();
        let dir = scratch_dir(&format!("synth-{arch}"));
        let tok = ref_model(match arch.name() {
            "gpt-neox" => "ref-neox",
            "bloom" => "ref-bloom",
            "opt" => "ref-opt",
            _ => "ref-gpt2",
        });
        slimlm::synth::write_model(&preset, &dir, 7, &tok, true).unwrap();
        let model = Model::open(&dir).unwrap();
        assert_eq!(model.config().arch, arch);
        check_in_place(&model);
        let params: usize = model
            .store()
            .names()
            .map(|n| model.store().require(n).unwrap().numel())
            .sum();
        assert_eq!(
            params,
            preset.parameters(),
            "{arch}: parameters in the file"
        );
        let ids = model.tokenizer().encode("Hello world").unwrap();
        let out: Vec<u32> = model
            .session()
            .generate(&ids, &Default::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!out.is_empty(), "{arch}: nothing generated");
    }
}

/// Copies a reference model with its config edited by `edit`.
fn with_config(
    name: &str,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let src = ref_model(name);
    let dir = scratch_dir(&format!("cfg-{name}-{tag}"));
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// An edit of a config.json.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn configs_inconsistent_with_the_weights_are_clear_errors() {
    // (model, tag, edit, what the error must say)
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        (
            "ref-neox",
            "fewer-layers",
            Box::new(|c| c["num_hidden_layers"] = 5.into()),
            "layer 5",
        ),
        (
            "ref-neox",
            "more-layers",
            Box::new(|c| c["num_hidden_layers"] = 7.into()),
            "layers.6",
        ),
        (
            "ref-neox",
            "heads",
            Box::new(|c| c["num_attention_heads"] = 7.into()),
            "divisible",
        ),
        (
            "ref-neox",
            "rotary",
            Box::new(|c| c["rope_parameters"]["partial_rotary_factor"] = 0.1.into()),
            "rotary",
        ),
        (
            "ref-bloom",
            "width",
            Box::new(|c| c["hidden_size"] = 192.into()),
            "shape",
        ),
        (
            "ref-bloom",
            "layers",
            Box::new(|c| c["n_layer"] = 2.into()),
            "layer 5",
        ),
        (
            "ref-opt-postln",
            "proj",
            Box::new(|c| c["word_embed_proj_dim"] = 256.into()),
            "shape",
        ),
        (
            "ref-opt",
            "type",
            Box::new(|c| c["model_type"] = "llama".into()),
            "gpt_neox",
        ),
    ];
    for (name, tag, edit, want) in cases {
        let dir = with_config(name, tag, edit);
        let e = Model::open(&dir).unwrap_err().to_string();
        assert!(e.contains(want), "{name}/{tag}: {e}");
    }
}
