//! The generation behind `Model.generate` and `Model.stream`: the library's [`slimlm::Decoder`]
//! (sampling, end-of-text, stop strings, log-probabilities, whole characters) over a session this
//! object owns.
//!
//! It is `slimlm::Generation`'s loop (a sampled token is run through the model when the *next* one is
//! asked for, so a stream hands each piece over as soon as it is sampled and the last token costs no
//! forward pass), kept here because a `Generation` borrows its session while a Python object must own
//! it.

use std::time::{Duration, Instant};

use slimlm::{Error, Finish, GenerateOptions, Model, Result, Session};

/// What to generate: the library's options, and the threads of the session.
#[derive(Clone, Debug)]
pub struct Params {
    pub opts: GenerateOptions,
    pub threads: Option<usize>,
}

/// A generation in progress over its own session.
pub struct Generator<'m> {
    session: Session<'m>,
    decoder: slimlm::Decoder,
    /// The last sampled token, not yet run through the model.
    feed: Option<u32>,
    /// An error ended generation (no finish reason; nothing more is generated).
    failed: bool,
    pub prompt: Vec<u32>,
    /// With `logprobs=True`, one per generated token.
    pub logprobs: Option<Vec<f32>>,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub steps: usize,
}

impl<'m> Generator<'m> {
    /// Checks the request, prefills the prompt and gets ready to sample the first token.
    pub fn new(model: &'m Model, prompt: Vec<u32>, p: &Params) -> Result<Generator<'m>> {
        let decoder = slimlm::Decoder::new(&p.opts, model.eos_token_ids())?;
        if prompt.is_empty() {
            return Err(Error::Input(
                "the prompt is empty: give a text with at least one token, or token ids".into(),
            ));
        }
        p.opts
            .check_fits(0, prompt.len(), model.config().n_ctx)
            .map_err(|e| match e {
                Error::ContextOverflow { n_ctx, .. } => Error::Input(format!(
                    "prompt of {} tokens + {} new tokens exceeds the context length {n_ctx}; \
                     shorten the prompt or lower max_tokens",
                    prompt.len(),
                    p.opts.max_tokens
                )),
                e => e,
            })?;
        let mut session = model.session();
        if let Some(t) = p.threads {
            session.set_threads(t);
        }
        let t = Instant::now();
        session.prefill(&prompt)?;
        let prefill_time = t.elapsed();
        Ok(Generator {
            session,
            decoder,
            feed: None,
            failed: false,
            prompt,
            logprobs: p.opts.logprobs.map(|_| Vec::new()),
            prefill_time,
            decode_time: Duration::ZERO,
            steps: 0,
        })
    }

    /// The tokens generated so far.
    pub fn ids(&self) -> &[u32] {
        self.decoder.tokens()
    }

    /// The text handed out so far.
    pub fn text(&self) -> &str {
        self.decoder.text()
    }

    /// Why generation ended, once it has.
    pub fn finish(&self) -> Option<Finish> {
        self.decoder.finish()
    }

    /// The next piece of text (whole characters), or `None` when generation has ended. A token that
    /// completes no character (part of a UTF-8 sequence) or only a possible stop-string prefix makes
    /// no piece: the loop goes on to the next token.
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        let r = self.advance();
        if r.is_err() {
            // The session may be mid-step: generating on from it would be wrong.
            self.failed = true;
        }
        r
    }

    fn advance(&mut self) -> Result<Option<String>> {
        while self.decoder.finish().is_none() && !self.failed {
            if let Some(tok) = self.feed.take() {
                let t = Instant::now();
                self.session.step(tok)?;
                self.decode_time += t.elapsed();
                self.steps += 1;
            }
            let step = self.decoder.next(
                self.session.model().tokenizer(),
                self.session.last_logits_slice(),
            )?;
            if let (Some(v), Some(lp)) = (&mut self.logprobs, &step.logprob) {
                v.push(lp.logprob);
            }
            if step.finish.is_none() {
                self.feed = Some(step.token);
            }
            if !step.text.is_empty() {
                return Ok(Some(step.text));
            }
        }
        Ok(None)
    }

    /// Runs to the end.
    pub fn run(&mut self) -> Result<()> {
        while self.next_piece()?.is_some() {}
        Ok(())
    }

    /// Forward passes per second after the first token (as `slimlm generate --json` reports).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}
