//! From logits to text, one token at a time: sampling, the end-of-text token, stop strings,
//! log-probabilities with their top alternatives, cancellation, and whole characters for streaming.
//!
//! A [`Decoder`] does not run the model: whoever computes the logits (a [`crate::Session`] through
//! [`crate::Generation`], or a [`crate::Batch`] serving many requests) hands them in, and gets back the
//! token, the text it completes and whether generation has ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use crate::sampler::{log_prob, Sampler};
use crate::tokenizer::{Tokenizer, Utf8Stream};

/// Stops a generation from another thread: clone it into [`GenerateOptions::cancel`], call
/// [`Cancel::cancel`]; the generation's next token is then [`Error::Cancelled`].
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every generation holding a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-text token (included in the tokens and the text, as transformers does).
    Eos,
    /// `max_tokens` reached.
    Length,
    /// A stop string appeared: the text ends before it (the tokens include the one that completed it).
    Stop,
}

impl Finish {
    /// `eos`, `length` or `stop`.
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// The log-probability of a chosen token, and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// `log softmax(logits)[token]` of the raw logits (before temperature, top-k, top-p).
    pub logprob: f32,
    /// The `k` most likely tokens and their log-probabilities, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub token: u32,
    /// The text this token completes, ready to show: whole characters, never a part of a stop string
    /// (it may be empty while a character or a possible stop string is incomplete).
    pub text: String,
    /// With [`GenerateOptions::logprobs`].
    pub logprob: Option<TokenLogprob>,
    /// Set on the last token.
    pub finish: Option<Finish>,
}

/// The state of one generation between its forward passes.
pub struct Decoder {
    sampler: Sampler,
    eos: Vec<u32>,
    stop: Vec<String>,
    top_k: Option<usize>,
    cancel: Option<Cancel>,
    remaining: usize,
    bytes: Utf8Stream,
    /// Text withheld because it may be the start of a stop string.
    held: String,
    tokens: Vec<u32>,
    text: String,
    finish: Option<Finish>,
}

impl Decoder {
    /// A decoder for `opts` ending at any of `eos` (when `opts.stop_at_eos`). Errors on invalid sampling
    /// parameters or an empty stop string.
    pub fn new(opts: &GenerateOptions, eos: Vec<u32>) -> Result<Decoder> {
        opts.sampling.validate().map_err(Error::Sampling)?;
        if opts.stop.iter().any(String::is_empty) {
            return Err(Error::input("stop strings must not be empty"));
        }
        Ok(Decoder {
            sampler: Sampler::new(opts.sampling.clone()),
            eos: if opts.stop_at_eos { eos } else { Vec::new() },
            stop: opts.stop.clone(),
            top_k: opts.logprobs,
            cancel: opts.cancel.clone(),
            remaining: opts.max_tokens,
            bytes: Utf8Stream::default(),
            held: String::new(),
            tokens: Vec::with_capacity(opts.max_tokens.min(4096)),
            text: String::new(),
            finish: (opts.max_tokens == 0).then_some(Finish::Length),
        })
    }

    /// Why generation ended, once it has.
    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }

    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The text handed out so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the cancel token (if any) was set.
    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Chooses the token that follows `logits` and decodes it with `tokenizer`. Errors once generation
    /// has ended, or when cancelled.
    pub fn next(&mut self, tokenizer: &Tokenizer, logits: &[f32]) -> Result<Step> {
        if self.finish.is_some() {
            return Err(Error::input("generation has already ended"));
        }
        if self.cancelled() {
            return Err(Error::Cancelled);
        }
        let token = self.sampler.sample(logits);
        let logprob = self.top_k.map(|k| TokenLogprob {
            logprob: log_prob(logits, token as usize) as f32,
            top: top_logprobs(logits, k),
        });
        // An id the model has but the tokenizer does not (padded embeddings) decodes to nothing, as
        // transformers' `decode` skips it.
        let mut piece = self
            .bytes
            .push(tokenizer.token_bytes(token).unwrap_or_default());
        self.tokens.push(token);
        self.remaining -= 1;
        let is_eos = self.eos.contains(&token);
        let ending = is_eos || self.remaining == 0;
        if ending {
            piece.push_str(&self.bytes.finish());
        }
        let text = self.accept(piece, ending);
        if self.finish.is_none() && ending {
            self.finish = Some(if is_eos { Finish::Eos } else { Finish::Length });
        }
        self.text.push_str(&text);
        Ok(Step {
            token,
            text,
            logprob,
            finish: self.finish,
        })
    }

    /// Adds `piece` to the withheld text and returns what can be handed out: everything before a stop
    /// string (ending generation), or everything but the longest tail that could still start one.
    fn accept(&mut self, piece: String, ending: bool) -> String {
        if self.stop.is_empty() {
            return piece;
        }
        self.held.push_str(&piece);
        let first_stop = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            self.finish = Some(Finish::Stop);
            return std::mem::take(&mut self.held);
        }
        if ending {
            return std::mem::take(&mut self.held);
        }
        let keep = self
            .stop
            .iter()
            .map(|s| {
                s.char_indices()
                    .skip(1)
                    .map(|(i, _)| i)
                    .filter(|&i| self.held.ends_with(&s[..i]))
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }
}

/// The `k` most likely tokens and their log-probabilities, most likely first (ties: lower id first).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let lse = slimlm_kernels::ops::log_sum_exp(logits);
    let mut c: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (l, i as u32))
        .collect();
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let k = k.min(c.len());
    if k == 0 {
        return Vec::new();
    }
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, order);
        c.truncate(k);
    }
    c.sort_unstable_by(order);
    c.into_iter()
        .map(|(l, i)| (i, (l as f64 - lse) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_the_largest_in_order_and_normalised() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let top = top_logprobs(&logits, 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, lp) in top {
            let want = (logits[i as usize] as f64).exp() / z;
            assert!((lp as f64 - want.ln()).abs() < 1e-6);
        }
        assert_eq!(top_logprobs(&logits, 0), []);
        assert_eq!(top_logprobs(&logits, 9).len(), 5);
    }
}
