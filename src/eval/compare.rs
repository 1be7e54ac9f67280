//! Layer-by-layer comparison of a candidate (compressed) model with its reference on one text: cosine
//! similarity of the hidden states and of every linear layer's output, KL divergence of the next-token
//! distributions and top-1 agreement.

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::{argmax, cosine, kl_divergence, Stat};
use super::{check_compatible, Progress};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::session::Observer;

/// Mean and minimum over tokens of a per-token cosine similarity.
#[derive(Clone, Debug, Serialize)]
pub struct CosineStat {
    /// Block index (`hidden`: the state entering block `layer`; `n_layer` is after the final LayerNorm).
    pub layer: usize,
    /// `hidden`, or the linear layer (`attn_qkv`, `attn_q`/`attn_k`/`attn_v` for GPT-Neo, `attn_out`,
    /// `mlp_in`, `mlp_out`).
    pub component: String,
    pub cosine: f64,
    pub min_cosine: f64,
}

/// Next-token distributions compared at every position.
#[derive(Clone, Debug, Serialize)]
pub struct LogitStats {
    /// Mean `KL(P_reference ‖ P_candidate)` in nats.
    pub kl_mean: f64,
    pub kl_max: f64,
    /// Fraction of positions where both models rank the same token first.
    pub top1_agreement: f64,
    pub positions: usize,
}

/// The result of [`compare`] (the `--json` output of `slimlm eval compare`).
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Hidden states, layer 0 (embeddings) to `n_layer` (after `ln_f`).
    pub hidden: Vec<CosineStat>,
    /// Linear layer outputs, in model order.
    pub linears: Vec<CosineStat>,
    pub logits: LogitStats,
    pub tokens: usize,
    pub windows: usize,
    pub context: usize,
}

type Key = (bool, usize, &'static str);

/// Records every observation of the reference pass.
#[derive(Default)]
struct Recorder {
    seen: Vec<(Key, Vec<f32>)>,
}

impl Observer for Recorder {
    fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
        self.seen.push(((true, layer, "hidden"), xs.to_vec()));
    }
    fn linear(&mut self, layer: usize, component: &'static str, ys: &[f32]) {
        self.seen.push(((false, layer, component), ys.to_vec()));
    }
}

/// Compares the candidate pass with the recorded reference, observation by observation.
struct Comparer<'r> {
    reference: &'r [(Key, Vec<f32>)],
    next: usize,
    stats: &'r mut BTreeMap<Key, Stat>,
    d_model: usize,
    /// Width of the final hidden states (`embed_dim`: narrower after OPT's `project_out`).
    d_final: usize,
    n_layer: usize,
    /// Tokens of the current prefill chunk.
    tokens: usize,
    /// Final hidden states (after `ln_f`) of the candidate, for its logits.
    last: Vec<f32>,
    out_of_step: bool,
}

impl Comparer<'_> {
    fn see(&mut self, key: Key, xs: &[f32], width: usize) {
        let Some((rkey, rxs)) = self.reference.get(self.next) else {
            self.out_of_step = true;
            return;
        };
        self.next += 1;
        if *rkey != key || rxs.len() != xs.len() || width == 0 {
            self.out_of_step = true;
            return;
        }
        let stat = self.stats.entry(key).or_default();
        for (a, b) in rxs.chunks_exact(width).zip(xs.chunks_exact(width)) {
            stat.push(cosine(a, b));
        }
    }
}

impl Observer for Comparer<'_> {
    fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
        let width = if layer == self.n_layer {
            self.d_final
        } else {
            self.d_model
        };
        self.tokens = xs.len() / width;
        self.see((true, layer, "hidden"), xs, width);
        if layer == self.n_layer {
            self.last.extend_from_slice(xs);
        }
    }
    fn linear(&mut self, layer: usize, component: &'static str, ys: &[f32]) {
        // Rows are the tokens of the chunk, as counted by the hidden state that preceded it.
        let width = ys.len().checked_div(self.tokens).unwrap_or(0);
        self.see((false, layer, component), ys, width);
    }
}

/// Compares `candidate` with `reference` on `ids`, in windows of `context` tokens (each seen alone).
pub fn compare(
    reference: &Model,
    candidate: &Model,
    ids: &[u32],
    context: usize,
    progress: Progress,
) -> Result<CompareReport> {
    check_compatible(reference, candidate)?;
    let c = &reference.config;
    if context < 1 || context > c.n_ctx {
        return Err(Error::input(format!(
            "context must be between 1 and the model's context length {}, got {context}",
            c.n_ctx
        )));
    }
    if ids.is_empty() {
        return Err(Error::input("the text has no tokens: nothing to compare"));
    }
    let (d, e, v) = (c.d_model, c.embed_dim, c.vocab_size);
    let mut stats: BTreeMap<Key, Stat> = BTreeMap::new();
    let (mut kl, mut top1, mut positions) = (Stat::default(), 0usize, 0usize);
    let windows: Vec<&[u32]> = ids.chunks(context).collect();
    let (mut rs, mut cs) = (reference.session(), candidate.session());
    const ROWS: usize = 32;
    let (mut rl, mut cl) = (vec![0f32; ROWS * v], vec![0f32; ROWS * v]);
    for (w, window) in windows.iter().enumerate() {
        let mut rec = Recorder::default();
        rs.reset();
        rs.prefill_observed(window, &mut rec)?;
        let mut cmp = Comparer {
            reference: &rec.seen,
            next: 0,
            stats: &mut stats,
            d_model: d,
            d_final: e,
            n_layer: c.n_layer(),
            tokens: 0,
            last: Vec::new(),
            out_of_step: false,
        };
        cs.reset();
        cs.prefill_observed(window, &mut cmp)?;
        if cmp.out_of_step || cmp.next != rec.seen.len() {
            return Err(Error::input(
                "the candidate's forward pass does not follow the reference's layer by layer",
            ));
        }
        let last = std::mem::take(&mut cmp.last);
        let rlast: Vec<f32> = rec
            .seen
            .iter()
            .filter(|(k, _)| *k == (true, c.n_layer(), "hidden"))
            .flat_map(|(_, xs)| xs.iter().copied())
            .collect();
        for t0 in (0..window.len()).step_by(ROWS) {
            let rows = ROWS.min(window.len() - t0);
            let (ra, ca) = (&mut rl[..rows * v], &mut cl[..rows * v]);
            let (rh, ch) = (
                &rlast[t0 * e..(t0 + rows) * e],
                &last[t0 * e..(t0 + rows) * e],
            );
            if rows == 1 {
                reference.lm_head.forward(rh, ra);
                candidate.lm_head.forward(ch, ca);
            } else {
                reference.lm_head.forward_batch(rh, ra);
                candidate.lm_head.forward_batch(ch, ca);
            }
            for (p, q) in ra.chunks_exact(v).zip(ca.chunks_exact(v)) {
                kl.push(kl_divergence(p, q));
                top1 += usize::from(argmax(p) == argmax(q));
                positions += 1;
            }
        }
        progress(w + 1, windows.len(), "compare");
    }
    let stat = |((_, layer, comp), s): (&Key, &Stat)| CosineStat {
        layer: *layer,
        component: comp.to_string(),
        cosine: s.mean(),
        min_cosine: s.min,
    };
    Ok(CompareReport {
        hidden: stats.iter().filter(|(k, _)| k.0).map(stat).collect(),
        linears: linear_order(stats.iter().filter(|(k, _)| !k.0).map(stat).collect()),
        logits: LogitStats {
            kl_mean: kl.mean(),
            kl_max: if kl.count == 0 { 0.0 } else { kl.max },
            top1_agreement: top1 as f64 / positions.max(1) as f64,
            positions,
        },
        tokens: ids.len(),
        windows: windows.len(),
        context,
    })
}

/// Sorts linear stats by layer, then in forward order.
fn linear_order(mut v: Vec<CosineStat>) -> Vec<CosineStat> {
    const ORDER: [&str; 7] = [
        "attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out",
    ];
    let rank = |c: &str| ORDER.iter().position(|o| *o == c).unwrap_or(ORDER.len());
    v.sort_by_key(|s| (s.layer, rank(&s.component)));
    v
}
