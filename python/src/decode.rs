//! The decode loop behind `Model.generate` and `Model.stream`: the library's session, sampler and
//! incremental detokenizer, plus stop strings and per-token log-probabilities.
//!
//! It follows `slimlm::Generation` (prompt and context checked up front, end-of-text token included in
//! the output) with one difference: a sampled token is run through the model when the *next* token is
//! asked for, so a stream hands each piece of text over as soon as it is sampled, and a stop string ends
//! generation without a wasted forward pass.

use std::time::{Duration, Instant};

use slimlm::sampler::log_prob;
use slimlm::{Error, Model, Result, Sampler, Sampling, Session, TextStream};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Params {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop_at_eos: bool,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    pub logprobs: bool,
    pub threads: Option<usize>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-text token (included in the ids and the text, as transformers does).
    Eos,
    /// `max_tokens` reached.
    Length,
    /// A stop string appeared (the text ends before it; the ids include the token that completed it).
    Stop,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// A generation in progress over one session.
pub struct Decoder<'m> {
    session: Session<'m>,
    text: TextStream<'m>,
    sampler: Sampler,
    eos: Vec<u32>,
    stop: Vec<String>,
    pub logprobs_on: bool,
    remaining: usize,
    /// The last sampled token, not yet run through the model.
    feed: Option<u32>,
    /// Text withheld because it may be the start of a stop string.
    held: String,
    pub prompt: Vec<u32>,
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// The text handed out so far.
    pub out: String,
    pub finish: Option<Finish>,
    /// An error ended generation (no finish reason; nothing more is generated).
    failed: bool,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub steps: usize,
}

impl<'m> Decoder<'m> {
    /// Checks the request, prefills the prompt and gets ready to sample the first token.
    pub fn new(model: &'m Model, prompt: Vec<u32>, p: &Params) -> Result<Decoder<'m>> {
        p.sampling.validate().map_err(Error::Input)?;
        if prompt.is_empty() {
            return Err(Error::Input(
                "the prompt is empty: give a text with at least one token, or token ids".into(),
            ));
        }
        if p.stop.iter().any(String::is_empty) {
            return Err(Error::Input("stop strings must not be empty".into()));
        }
        let n_ctx = model.config.n_ctx;
        // The last generated token is never fed back, so `max_tokens - 1` positions follow the prompt.
        let needed = prompt.len().checked_add(p.max_tokens.saturating_sub(1));
        if !matches!(needed, Some(n) if n <= n_ctx) {
            return Err(Error::Input(format!(
                "prompt of {} tokens + {} new tokens exceeds the context length {n_ctx}; \
                 shorten the prompt or lower max_tokens",
                prompt.len(),
                p.max_tokens
            )));
        }
        let mut session = model.session();
        if let Some(t) = p.threads {
            session.set_threads(t);
        }
        let t = Instant::now();
        session.prefill(&prompt)?;
        let prefill_time = t.elapsed();
        Ok(Decoder {
            session,
            text: model.tokenizer().stream(),
            sampler: Sampler::new(p.sampling.clone()),
            eos: if p.stop_at_eos {
                model.eos_token_ids()
            } else {
                Vec::new()
            },
            stop: p.stop.clone(),
            logprobs_on: p.logprobs,
            remaining: p.max_tokens,
            feed: None,
            held: String::new(),
            prompt,
            ids: Vec::with_capacity(p.max_tokens.min(4096)),
            logprobs: Vec::new(),
            out: String::new(),
            finish: (p.max_tokens == 0).then_some(Finish::Length),
            failed: false,
            prefill_time,
            decode_time: Duration::ZERO,
            steps: 0,
        })
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
        while self.finish.is_none() && !self.failed {
            if let Some(tok) = self.feed.take() {
                let t = Instant::now();
                self.session.step(tok)?;
                self.decode_time += t.elapsed();
                self.steps += 1;
            }
            let logits = self.session.last_logits_slice();
            let tok = self.sampler.sample(logits);
            if self.logprobs_on {
                self.logprobs.push(log_prob(logits, tok as usize) as f32);
            }
            self.ids.push(tok);
            self.remaining -= 1;
            let is_eos = self.eos.contains(&tok);
            let ending = is_eos || self.remaining == 0;
            let mut piece = self.text.push(tok)?.unwrap_or_default();
            if ending {
                piece.extend(self.text.finish());
            }
            let emit = self.accept(piece, ending);
            if self.finish.is_none() {
                if ending {
                    self.finish = Some(if is_eos { Finish::Eos } else { Finish::Length });
                } else {
                    self.feed = Some(tok);
                }
            }
            if !emit.is_empty() {
                self.out.push_str(&emit);
                return Ok(Some(emit));
            }
        }
        Ok(None)
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
