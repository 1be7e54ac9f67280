//! Text generation: prefill the prompt, then sample one token at a time through the KV cache.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sampler::{Sampler, Sampling};
use crate::session::Session;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop after emitting the end-of-text token (it is included in the output, as transformers does).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 48,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
        }
    }
}

/// An iterator of generated token ids; created by [`Session::generate`].
pub struct Generation<'s, 'm> {
    session: &'s mut Session<'m>,
    sampler: Sampler,
    eos: Vec<u32>,
    remaining: usize,
    done: bool,
    prefill_time: Duration,
    decode_time: Duration,
    prompt_tokens: usize,
    generated: usize,
}

impl<'m> Session<'m> {
    /// Prefills `prompt` and returns an iterator over up to `opts.max_tokens` new tokens.
    ///
    /// Errors when the prompt is empty, holds an id outside the vocabulary, or when the cache, the
    /// prompt and `max_tokens` do not fit in the context (nothing is silently truncated).
    pub fn generate<'s>(
        &'s mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Generation<'s, 'm>> {
        opts.sampling.validate().map_err(Error::Input)?;
        let n_ctx = self.model().config.n_ctx;
        // The last generated token is never fed back, so `max_tokens - 1` positions follow the prompt.
        let needed =
            (self.position() + prompt.len()).checked_add(opts.max_tokens.saturating_sub(1));
        if !matches!(needed, Some(n) if n <= n_ctx) {
            return Err(Error::input(format!(
                "prompt of {} tokens + {} new tokens{} exceeds the context length {n_ctx}; \
                 shorten the prompt or lower --max-tokens",
                prompt.len(),
                opts.max_tokens,
                if self.position() > 0 {
                    format!(" after {} cached tokens", self.position())
                } else {
                    String::new()
                }
            )));
        }
        let t = Instant::now();
        self.prefill(prompt)?;
        let eos = if opts.stop_at_eos {
            self.model().eos_token_ids()
        } else {
            Vec::new()
        };
        Ok(Generation {
            session: self,
            sampler: Sampler::new(opts.sampling.clone()),
            eos,
            remaining: opts.max_tokens,
            done: opts.max_tokens == 0,
            prefill_time: t.elapsed(),
            decode_time: Duration::ZERO,
            prompt_tokens: prompt.len(),
            generated: 0,
        })
    }
}

impl Generation<'_, '_> {
    /// Time spent on the prompt.
    pub fn prefill_time(&self) -> Duration {
        self.prefill_time
    }

    /// Time spent producing the tokens after the first (one forward pass each).
    pub fn decode_time(&self) -> Duration {
        self.decode_time
    }

    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode forward passes per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        if self.done {
            return None;
        }
        let logits = self.session.last_logits_slice();
        let tok = self.sampler.sample(logits);
        self.remaining -= 1;
        self.generated += 1;
        if self.remaining == 0 || self.eos.contains(&tok) {
            self.done = true;
            return Some(Ok(tok));
        }
        let t = Instant::now();
        if let Err(e) = self.session.step(tok) {
            self.done = true;
            return Some(Err(e));
        }
        self.decode_time += t.elapsed();
        Some(Ok(tok))
    }
}
