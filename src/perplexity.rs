//! Perplexity of a text, by the rule of the goldens in `../shared/models/*/golden/golden.json`.
//!
//! ids = tokenizer(text), no BOS; windows of `context` tokens start at 0, `stride` apart (the last may be
//! shorter, at least 2 tokens); the model sees each window alone and every position predicts the next
//! token; a token is scored once, in the first window that predicts it; ppl = exp(mean NLL).
//!
//! Per-token perplexity is not comparable across scripts (a token is one byte of Hindi or a whole English
//! word), so the result also gives **bits per byte**: the total NLL of the scored tokens in bits over the
//! bytes those tokens decode to (`Tokenizer::token_bytes`: for byte-level tokenizers exactly the UTF-8 of
//! the text they cover). Tokens that are not scored are not counted: the first, and — when `stride =
//! context` — the first of every window, which no window predicts.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampler::log_prob;

/// The result of [`perplexity`].
#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    /// `exp(mean_nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood of the scored tokens, in nats.
    pub mean_nll: f64,
    /// Tokens scored: all but the first, and but the first of every later window when `stride = context`.
    pub tokens_scored: usize,
    /// Tokens of the text.
    pub tokens: usize,
    /// Windows run.
    pub windows: usize,
    pub context: usize,
    pub stride: usize,
    /// Bytes the scored tokens decode to (`Tokenizer::token_bytes`; for byte-level tokenizers the UTF-8
    /// bytes of the text those tokens cover).
    pub bytes_scored: usize,
    /// `mean_nll · tokens_scored / ln 2 / bytes_scored`: bits per byte of text. `None` when the scored
    /// tokens decode to no bytes, or some id has no bytes in the tokenizer (ids given by hand).
    pub bits_per_byte: Option<f64>,
}

impl Perplexity {
    /// The total negative log-likelihood of the scored tokens, in nats.
    pub fn total_nll(&self) -> f64 {
        self.mean_nll * self.tokens_scored as f64
    }
}

/// Perplexity of `ids` under `model`; `progress(done, total)` is called after every window.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    context: usize,
    stride: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    perplexity_per_token(model, ids, context, stride, &mut |_, _| {}, progress)
}

/// [`perplexity`], also handing every scored token to `token(index, nll)`: its index in `ids` (1 ..
/// `ids.len()`, in order, each once) and its negative log-likelihood in nats.
pub fn perplexity_per_token(
    model: &Model,
    ids: &[u32],
    context: usize,
    stride: usize,
    token: &mut dyn FnMut(usize, f64),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    let n_ctx = model.config.n_ctx;
    if context < 2 || context > n_ctx {
        return Err(Error::input(format!(
            "context must be between 2 and the model's context length {n_ctx}, got {context}"
        )));
    }
    if stride == 0 || stride > context {
        return Err(Error::input(format!(
            "stride must be between 1 and the context ({context}), got {stride}"
        )));
    }
    if ids.len() < 2 {
        return Err(Error::input(
            "the text has fewer than 2 tokens: nothing to score",
        ));
    }
    let starts: Vec<usize> = window_starts(ids.len(), context, stride);
    let tokenizer = model.tokenizer();
    // Bytes of the scored tokens; `None` once an id has no bytes in the tokenizer.
    let mut bytes_scored: Option<usize> = Some(0);
    let mut session = model.session();
    let (mut nll, mut scored, mut next) = (0.0f64, 0usize, 1usize);
    for (w, &s) in starts.iter().enumerate() {
        let e = (s + context).min(ids.len());
        session.reset();
        let window = &ids[s..e];
        session.prefill_all(window, &mut |i, logits| {
            let target = s + i + 1;
            if target < e && target >= next {
                let t = -log_prob(logits, ids[target] as usize);
                token(target, t);
                nll += t;
                scored += 1;
                bytes_scored = bytes_scored.and_then(|b| {
                    let n = tokenizer.token_bytes(ids[target]).ok()?.len();
                    Some(b + n)
                });
            }
        })?;
        next = next.max(e);
        progress(w + 1, starts.len());
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        ppl: mean_nll.exp(),
        mean_nll,
        tokens_scored: scored,
        tokens: ids.len(),
        windows: starts.len(),
        context,
        stride,
        bytes_scored: bytes_scored.unwrap_or(0),
        bits_per_byte: bytes_scored
            .filter(|&b| b > 0)
            .map(|b| nll / std::f64::consts::LN_2 / b as f64),
    })
}

/// Window starts: 0, stride, 2·stride, … while a window holds at least 2 tokens, stopping after the
/// first window that reaches the end of the text (later ones would score nothing new).
pub fn window_starts(n: usize, context: usize, stride: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut s = 0;
    while s + 2 <= n {
        starts.push(s);
        if s + context >= n {
            break;
        }
        s += stride;
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::window_starts;

    #[test]
    fn windows_cover_the_text_once() {
        assert_eq!(window_starts(10, 4, 4), vec![0, 4, 8]);
        assert_eq!(window_starts(9, 4, 4), vec![0, 4]); // [8, 9) would hold 1 token
        assert_eq!(window_starts(10, 4, 2), vec![0, 2, 4, 6]);
        assert_eq!(window_starts(3, 8, 8), vec![0]);
    }
}
