//! Text generation over a session: prefill the prompt, then one token at a time through the KV cache,
//! each chosen and decoded by a [`Decoder`] (sampling, end-of-text, stop strings, log-probabilities,
//! cancellation).

use std::time::{Duration, Instant};

use crate::decode::{Cancel, Decoder, Finish, Step};
use crate::error::{Error, Result};
use crate::sampler::Sampling;
use crate::session::Session;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop after emitting the end-of-text token (it is included in the output, as transformers does).
    pub stop_at_eos: bool,
    /// Stop when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Report each token's log-probability and the `k` most likely tokens at its position.
    pub logprobs: Option<usize>,
    /// Stops the generation from another thread (its next token is [`Error::Cancelled`]).
    pub cancel: Option<Cancel>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 48,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
            stop: Vec::new(),
            logprobs: None,
            cancel: None,
        }
    }
}

impl GenerateOptions {
    /// An error unless the prompt and `max_tokens` fit in `n_ctx` after `cached` tokens (the last
    /// generated token is never fed back, so `max_tokens - 1` positions follow the prompt).
    pub fn check_fits(&self, cached: usize, prompt: usize, n_ctx: usize) -> Result<()> {
        let new = prompt.saturating_add(self.max_tokens.saturating_sub(1));
        if cached.saturating_add(new) > n_ctx {
            return Err(Error::ContextOverflow { cached, new, n_ctx });
        }
        Ok(())
    }
}

/// A generation in progress; created by [`Session::generate`]. As an iterator it yields token ids;
/// [`Generation::next_step`] yields each token with its text, log-probability and finish reason.
///
/// A sampled token runs through the model when the next one is asked for, so a stream hands each
/// piece of text over as soon as it is sampled, and the last token costs no forward pass.
pub struct Generation<'s, 'm> {
    session: &'s mut Session<'m>,
    decoder: Decoder,
    /// The last sampled token, not yet run through the model.
    feed: Option<u32>,
    failed: bool,
    prefill_time: Duration,
    decode_time: Duration,
    prompt_tokens: usize,
    steps: usize,
}

impl<'m> Session<'m> {
    /// Prefills `prompt` and returns the generation of up to `opts.max_tokens` new tokens.
    ///
    /// Errors when the prompt is empty, holds an id outside the vocabulary, when the cache, the prompt
    /// and `max_tokens` do not fit in the context (nothing is silently truncated), or on invalid
    /// sampling parameters or stop strings.
    pub fn generate<'s>(
        &'s mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Generation<'s, 'm>> {
        let decoder = Decoder::new(opts, self.model().eos_token_ids())?;
        opts.check_fits(self.position(), prompt.len(), self.model().config.n_ctx)?;
        if decoder.cancelled() {
            return Err(Error::Cancelled);
        }
        let t = Instant::now();
        self.prefill(prompt)?;
        Ok(Generation {
            session: self,
            decoder,
            feed: None,
            failed: false,
            prefill_time: t.elapsed(),
            decode_time: Duration::ZERO,
            prompt_tokens: prompt.len(),
            steps: 0,
        })
    }
}

impl Generation<'_, '_> {
    /// The next token with its text (whole characters, never part of a stop string), log-probability
    /// and, on the last one, why generation ended; `None` after the last one or an error.
    pub fn next_step(&mut self) -> Option<Result<Step>> {
        if self.decoder.finish().is_some() || self.failed {
            return None;
        }
        let r = self.advance();
        match &r {
            Ok(step) if step.finish.is_none() => self.feed = Some(step.token),
            Ok(_) => {}
            // The session may be mid-step: generating on from it would be wrong.
            Err(_) => self.failed = true,
        }
        Some(r)
    }

    fn advance(&mut self) -> Result<Step> {
        if let Some(tok) = self.feed.take() {
            if self.decoder.cancelled() {
                return Err(Error::Cancelled);
            }
            let t = Instant::now();
            self.session.step(tok)?;
            self.decode_time += t.elapsed();
            self.steps += 1;
        }
        let tokenizer = self.session.model().tokenizer();
        self.decoder
            .next(tokenizer, self.session.last_logits_slice())
    }

    /// Why generation ended, once it has.
    pub fn finish(&self) -> Option<Finish> {
        self.decoder.finish()
    }

    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        self.decoder.tokens()
    }

    /// The text handed out so far.
    pub fn text(&self) -> &str {
        self.decoder.text()
    }

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
        self.steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        self.next_step().map(|r| r.map(|s| s.token))
    }
}
