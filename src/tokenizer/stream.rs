//! Incremental decoding for streaming: text is given out as soon as its characters are complete.

use super::Tokenizer;
use crate::error::Result;

/// Decodes tokens one at a time, giving out only whole characters: a character whose UTF-8 bytes are split
/// across tokens is held back until its last byte arrives. Bytes that can no longer form a character become
/// U+FFFD, exactly as [`Tokenizer::decode`] does, so the pieces put together equal `decode` of all the ids.
///
/// ```no_run
/// use slimlm::tokenizer::{TextStream, Tokenizer};
/// let tok = Tokenizer::from_dir(std::path::Path::new("models/ref-gpt2"))?;
/// let mut stream = TextStream::new(&tok);
/// for id in tok.encode("人人生而自由")? {
///     if let Some(text) = stream.push(id)? {
///         print!("{text}");
///     }
/// }
/// if let Some(rest) = stream.finish() {
///     print!("{rest}");
/// }
/// # Ok::<(), slimlm::Error>(())
/// ```
#[derive(Debug)]
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    bytes: Utf8Stream,
}

impl<'t> TextStream<'t> {
    /// A stream with nothing pending.
    pub fn new(tokenizer: &'t Tokenizer) -> TextStream<'t> {
        TextStream {
            tokenizer,
            bytes: Utf8Stream::default(),
        }
    }

    /// Adds token `id`; returns the text completed by it, if any. An id out of range is an error and
    /// changes nothing.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let s = self.bytes.push(self.tokenizer.token_bytes(id)?);
        Ok((!s.is_empty()).then_some(s))
    }

    /// Gives out what is still pending (an incomplete character becomes U+FFFD) and empties the stream.
    pub fn finish(&mut self) -> Option<String> {
        let s = self.bytes.finish();
        (!s.is_empty()).then_some(s)
    }
}

/// The byte side of [`TextStream`]: bytes in, whole characters out (no tokenizer attached).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// Bytes of an incomplete character.
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes`; returns the characters they complete (possibly none).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        if self.pending.is_empty() {
            // The common case: a token of whole characters.
            if let Ok(s) = std::str::from_utf8(bytes) {
                return s.to_string();
            }
        }
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Bytes that no continuation can complete.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // A character still incomplete at the end: wait for more.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// What is still pending (an incomplete character becomes U+FFFD); empties the stream.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
