//! The oracle: slimlm against what Hugging Face transformers outputs for the reference models
//! (`../shared/models/*/golden`, produced by transformers 5.23 in F32), one test per model and check,
//! all through the same code: token ids, next-token log-probs (in one prefill, and one token at a time
//! through the KV cache), last logits, hidden states per layer, greedy continuations, perplexities.

mod common;

use common::{golden, max_abs_diff, ref_model, Prompt};
use slimlm::sampler::log_prob;
use slimlm::{GenerateOptions, Model, Observer};

/// Records the last row of every hidden state.
struct LastHidden {
    layers: Vec<Vec<f32>>,
    /// Width of the hidden states, and of the final one (`embed_dim`: OPT's `project_out`).
    d: usize,
    d_final: usize,
    n_layer: usize,
}

impl Observer for LastHidden {
    fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, Vec::new());
        }
        let d = if layer == self.n_layer {
            self.d_final
        } else {
            self.d
        };
        self.layers[layer] = xs[xs.len() - d..].to_vec();
    }
}

const TOL: f32 = 1e-3;

fn check_ids(name: &str, model: &Model, p: &Prompt) {
    assert_eq!(
        model.tokenizer().encode(&p.text).unwrap(),
        p.input_ids,
        "{name}/{}: token ids",
        p.name
    );
}

/// Next-token log-probs and last logits from one prefill of all positions; returns the worst differences.
fn check_prefill(name: &str, model: &Model, p: &Prompt) -> (f32, f32) {
    let mut s = model.session();
    let mut lps = Vec::new();
    let ids = &p.input_ids;
    s.prefill_all(ids, &mut |i, logits| {
        if i + 1 < ids.len() {
            lps.push(log_prob(logits, ids[i + 1] as usize) as f32);
        }
    })
    .unwrap();
    let d_lp = max_abs_diff(&lps, &p.next_token_logprobs);
    let d_logit = max_abs_diff(s.last_logits_slice(), &p.last_logits);
    assert!(
        d_lp <= TOL,
        "{name}/{}: next-token logprobs differ by {d_lp}",
        p.name
    );
    assert!(
        d_logit <= TOL,
        "{name}/{}: last logits differ by {d_logit}",
        p.name
    );
    (d_lp, d_logit)
}

/// The same log-probs, teacher-forced one token at a time through the KV cache: what tests positions
/// (learned offsets, rotary, ALiBi) and the cache over long prompts.
fn check_stepwise(name: &str, model: &Model, p: &Prompt) -> f32 {
    let mut s = model.session();
    let ids = &p.input_ids;
    let mut lps = Vec::new();
    for (i, &t) in ids.iter().enumerate() {
        let logits = s.step(t).unwrap();
        if i + 1 < ids.len() {
            lps.push(log_prob(logits, ids[i + 1] as usize) as f32);
        }
    }
    let d = max_abs_diff(&lps, &p.next_token_logprobs);
    assert!(
        d <= TOL,
        "{name}/{}: step-by-step next-token logprobs differ by {d}",
        p.name
    );
    d
}

/// Hidden states per layer at the last position, relative to each layer's scale.
fn check_hidden(name: &str, model: &Model, p: &Prompt) -> f32 {
    let c = model.config();
    let mut obs = LastHidden {
        layers: Vec::new(),
        d: c.d_model,
        d_final: c.embed_dim,
        n_layer: c.n_layer(),
    };
    model
        .session()
        .prefill_observed(&p.input_ids, &mut obs)
        .unwrap();
    let theirs_all = p.hidden_states();
    assert_eq!(obs.layers.len(), theirs_all.len(), "{name}: hidden states");
    let mut worst = 0f32;
    for (l, (ours, theirs)) in obs.layers.iter().zip(&theirs_all).enumerate() {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let rel = max_abs_diff(ours, theirs) / scale;
        assert!(
            rel <= TOL,
            "{name}/{}: hidden layer {l} differs by {rel} (relative)",
            p.name
        );
        worst = worst.max(rel);
    }
    worst
}

/// Greedy continuation through the KV cache, equal to transformers' up to its first near tie.
fn check_greedy(name: &str, model: &Model, p: &Prompt) {
    let opts = GenerateOptions {
        max_tokens: 48,
        ..Default::default()
    };
    let mut s = model.session();
    let out: Vec<u32> = s
        .generate(&p.input_ids, &opts)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let upto = p
        .near_tie_positions
        .first()
        .copied()
        .unwrap_or(usize::MAX)
        .min(p.greedy_ids.len());
    assert_eq!(
        out[..upto.min(out.len())],
        p.greedy_ids[..upto],
        "{name}/{}: greedy continuation",
        p.name
    );
    if upto == p.greedy_ids.len() {
        assert_eq!(
            out.len(),
            p.greedy_ids.len(),
            "{name}/{}: greedy length",
            p.name
        );
    }
}

fn check_model(name: &str) {
    let model = Model::open(ref_model(name)).unwrap();
    assert_eq!(model.copied_bytes(), 0, "{name}: weights copied at load");
    let g = golden(name);
    let (mut w_lp, mut w_logit, mut w_step, mut w_hidden) = (0f32, 0f32, 0f32, 0f32);
    for p in &g.prompts {
        check_ids(name, &model, p);
        let (lp, logit) = check_prefill(name, &model, p);
        w_lp = w_lp.max(lp);
        w_logit = w_logit.max(logit);
        w_step = w_step.max(check_stepwise(name, &model, p));
        w_hidden = w_hidden.max(check_hidden(name, &model, p));
        check_greedy(name, &model, p);
    }
    eprintln!(
        "{name}: max |Δlogit| {w_logit:.2e}, max |Δlogprob| {w_lp:.2e} (step by step {w_step:.2e}), \
         max hidden rel {w_hidden:.2e}"
    );
}

fn check_perplexity(name: &str) {
    let model = Model::open(ref_model(name)).unwrap();
    let g = golden(name);
    let corpora = common::shared().join("corpora/heldout");
    let mut entries: Vec<_> = common::golden_ppl(&g).into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, (file, context, stride, scored, ppl)) in entries {
        let text = std::fs::read_to_string(corpora.join(&file)).unwrap();
        let ids = model.tokenizer().encode(&text).unwrap();
        let r = slimlm::perplexity(&model, &ids, context, stride, &mut |_, _| {}).unwrap();
        let rel = (r.ppl / ppl - 1.0).abs();
        eprintln!("{name}/{key}: ppl {:.4} vs {ppl:.4} (rel {rel:.2e})", r.ppl);
        assert_eq!(r.tokens_scored, scored, "{name}/{key}: tokens scored");
        assert!(
            rel <= 1e-3,
            "{name}/{key}: perplexity {} vs golden {ppl}",
            r.ppl
        );
    }
}

/// One golden test and one perplexity test per reference model.
macro_rules! reference_models {
    ($($model:ident => $dir:literal),* $(,)?) => {
        mod matches_transformers {
            $(#[test] fn $model() { super::check_model($dir); })*
        }
        mod perplexity_matches_transformers {
            $(#[test] fn $model() { super::check_perplexity($dir); })*
        }
    };
}

reference_models! {
    gpt2 => "ref-gpt2",
    gptneo => "ref-gptneo",
    opt => "ref-opt",
    opt_postln => "ref-opt-postln",
    neox => "ref-neox",
    neox_seq => "ref-neox-seq",
    bloom => "ref-bloom",
}
