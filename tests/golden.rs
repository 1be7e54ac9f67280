//! The oracle: slimlm against what Hugging Face transformers outputs for the reference models
//! (`../shared/models/*/golden`, produced by transformers 5.23 in F32).

mod common;

use common::{golden, max_abs_diff, ref_model};
use slimlm::sampler::log_prob;
use slimlm::{GenerateOptions, Model, Observer};

/// Records the last row of every hidden state.
struct LastHidden {
    d: usize,
    layers: Vec<Vec<f32>>,
}

impl Observer for LastHidden {
    fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, Vec::new());
        }
        self.layers[layer] = xs[xs.len() - self.d..].to_vec();
    }
}

fn check_model(name: &str) {
    let model = Model::open(ref_model(name)).unwrap();
    let g = golden(name);
    let tok = model.tokenizer();
    let (mut worst_logit, mut worst_lp, mut worst_hidden) = (0f32, 0f32, 0f32);
    for p in &g.prompts {
        assert_eq!(
            tok.encode(&p.text).unwrap(),
            p.input_ids,
            "{name}/{}: token ids",
            p.name
        );

        // All positions in one prefill: next-token log-probs and the last logits.
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
            d_lp <= 1e-3,
            "{name}/{}: next-token logprobs differ by {d_lp}",
            p.name
        );
        assert!(
            d_logit <= 1e-3,
            "{name}/{}: last logits differ by {d_logit}",
            p.name
        );

        // Hidden states per layer, relative to each layer's scale.
        let mut obs = LastHidden {
            d: model.config.d_model,
            layers: Vec::new(),
        };
        model.session().prefill_observed(ids, &mut obs).unwrap();
        assert_eq!(obs.layers.len(), p.last_hidden_per_layer.len());
        for (l, (ours, theirs)) in obs.layers.iter().zip(&p.last_hidden_per_layer).enumerate() {
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let rel = max_abs_diff(ours, theirs) / scale;
            assert!(
                rel <= 1e-3,
                "{name}/{}: hidden layer {l} differs by {rel} (relative)",
                p.name
            );
            worst_hidden = worst_hidden.max(rel);
        }

        // Greedy continuation through the KV cache, one token at a time.
        let opts = GenerateOptions {
            max_tokens: p.greedy_ids.len().max(48),
            ..Default::default()
        };
        let mut s = model.session();
        let out: Vec<u32> = s
            .generate(ids, &opts)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out, p.greedy_ids, "{name}/{}: greedy continuation", p.name);
        worst_logit = worst_logit.max(d_logit);
        worst_lp = worst_lp.max(d_lp);
    }
    eprintln!(
        "{name}: max |Δlogit| {worst_logit:.2e}, max |Δlogprob| {worst_lp:.2e}, max hidden rel {worst_hidden:.2e}"
    );
}

#[test]
fn gpt2_matches_transformers() {
    check_model("ref-gpt2");
}

#[test]
fn gptneo_matches_transformers() {
    check_model("ref-gptneo");
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

#[test]
fn gpt2_perplexity_matches_transformers() {
    check_perplexity("ref-gpt2");
}

#[test]
fn gptneo_perplexity_matches_transformers() {
    check_perplexity("ref-gptneo");
}
