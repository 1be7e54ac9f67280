//! Pre-tokenizers: the text between added tokens cut into the pieces that BPE encodes one by one.

use std::borrow::Cow;

use regex::Regex;
use serde_json::Value;

use super::json::{flag, kind, list, short, string};

/// GPT-2's pattern, less its `\s+(?!\S)` look-ahead, which [`gpt2_pieces`] applies.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// What becomes of the pattern's matches (Hugging Face's `SplitDelimiterBehavior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// A `Split` pre-tokenizer.
#[derive(Debug)]
struct Split {
    /// `None` for an empty `String` pattern, which matches nothing.
    pattern: Option<Regex>,
    behavior: Behavior,
    invert: bool,
}

/// The `pre_tokenizer` of a `tokenizer.json`: `Split`s, then the `ByteLevel` step that every byte-level BPE
/// ends with.
#[derive(Debug)]
pub(super) struct PreTokenizer {
    splits: Vec<Split>,
    add_prefix_space: bool,
    /// `Some` when the ByteLevel step splits with GPT-2's pattern (`use_regex`).
    gpt2: Option<Regex>,
}

impl PreTokenizer {
    /// GPT-2's: `ByteLevel` with its pattern and no prefix space.
    pub(super) fn gpt2() -> Result<PreTokenizer, String> {
        Ok(PreTokenizer {
            splits: Vec::new(),
            add_prefix_space: false,
            gpt2: Some(gpt2_regex()?),
        })
    }

    /// Reads a `pre_tokenizer`: `ByteLevel`, or a `Sequence` of `Split`s ending with one `ByteLevel`.
    pub(super) fn from_json(v: &Value) -> Result<PreTokenizer, String> {
        if v.is_null() {
            return Err(
                "pre_tokenizer: null (a byte-level BPE needs a ByteLevel pre-tokenizer)".into(),
            );
        }
        let mut steps = Vec::new();
        flatten(v, &mut steps)?;
        let Some((last, splits)) = steps.split_last() else {
            return Err(
                "pre_tokenizer: an empty Sequence (a ByteLevel pre-tokenizer is needed)".into(),
            );
        };
        if kind(last, "pre_tokenizer")? != "ByteLevel" {
            return Err(format!(
                "pre_tokenizer: the last step is {} (only a ByteLevel step can end it)",
                short(last)
            ));
        }
        let what = "pre_tokenizer ByteLevel";
        let add_prefix_space = flag(last, "add_prefix_space", true, what)?;
        let gpt2 = match flag(last, "use_regex", true, what)? {
            true => Some(gpt2_regex()?),
            false => None,
        };
        let splits = splits
            .iter()
            .map(|s| match kind(s, "pre_tokenizer")? {
                "Split" => Split::from_json(s),
                "ByteLevel" => Err(
                    "pre_tokenizer: ByteLevel before another step is not supported (it must be last)".into(),
                ),
                other => Err(format!(
                    "pre_tokenizer type {other:?} is not supported (supported: ByteLevel, Split, Sequence)"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer {
            splits,
            add_prefix_space,
            gpt2,
        })
    }

    /// Calls `f` with the bytes of each piece of `text`, in order.
    pub(super) fn pieces(&self, text: &str, f: &mut dyn FnMut(&[u8])) {
        let mut parts: Vec<&str> = vec![text];
        for split in &self.splits {
            let mut next = Vec::with_capacity(parts.len());
            for p in parts {
                split.apply(p, &mut next);
            }
            parts = next;
        }
        for p in parts {
            if p.is_empty() {
                continue;
            }
            let p: Cow<str> = if self.add_prefix_space && !p.starts_with(' ') {
                Cow::Owned(format!(" {p}"))
            } else {
                Cow::Borrowed(p)
            };
            match &self.gpt2 {
                Some(re) => gpt2_pieces(re, &p, f),
                None => f(p.as_bytes()),
            }
        }
    }
}

fn gpt2_regex() -> Result<Regex, String> {
    Regex::new(GPT2_PATTERN).map_err(|e| format!("GPT-2 pattern: {e}"))
}

/// The steps of a (possibly nested) `Sequence`, in order.
fn flatten<'v>(v: &'v Value, out: &mut Vec<&'v Value>) -> Result<(), String> {
    if kind(v, "pre_tokenizer")? == "Sequence" {
        for p in list(v, "pretokenizers", "pre_tokenizer")? {
            flatten(p, out)?;
        }
    } else {
        out.push(v);
    }
    Ok(())
}

impl Split {
    fn from_json(v: &Value) -> Result<Split, String> {
        let what = "pre_tokenizer Split";
        let p = v
            .get("pattern")
            .ok_or_else(|| format!("{what}: no pattern in {}", short(v)))?;
        let pattern = if let Some(re) = p.get("Regex").and_then(Value::as_str) {
            Some(Regex::new(re).map_err(|e| {
                format!(
                    "{what}: the regex {re:?} is not supported by the regex crate (look-around and \
                     back-references are not): {e}"
                )
            })?)
        } else if let Some(s) = p.get("String").and_then(Value::as_str) {
            match s {
                "" => None,
                s => Some(Regex::new(&regex::escape(s)).map_err(|e| format!("{what}: {e}"))?),
            }
        } else {
            return Err(format!(
                "{what}: the pattern {} is neither Regex nor String",
                short(p)
            ));
        };
        let behavior = match string(v, "behavior", what)? {
            "Removed" => Behavior::Removed,
            "Isolated" => Behavior::Isolated,
            "MergedWithPrevious" => Behavior::MergedWithPrevious,
            "MergedWithNext" => Behavior::MergedWithNext,
            "Contiguous" => Behavior::Contiguous,
            other => return Err(format!("{what}: behavior {other:?} is not supported")),
        };
        Ok(Split {
            pattern,
            behavior,
            invert: flag(v, "invert", false, what)?,
        })
    }

    /// Appends the non-empty parts of `text` to `out`.
    fn apply<'t>(&self, text: &'t str, out: &mut Vec<&'t str>) {
        // (start, end, is a match), covering `text`.
        let mut spans: Vec<(usize, usize, bool)> = Vec::new();
        let mut prev = 0;
        if let Some(re) = &self.pattern {
            for m in re.find_iter(text) {
                if prev != m.start() {
                    spans.push((prev, m.start(), self.invert));
                }
                spans.push((m.start(), m.end(), !self.invert));
                prev = m.end();
            }
        }
        if prev != text.len() {
            spans.push((prev, text.len(), self.invert));
        }
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        match self.behavior {
            Behavior::Isolated => kept.extend(spans.iter().map(|&(s, e, _)| (s, e))),
            Behavior::Removed => {
                kept.extend(spans.iter().filter(|x| !x.2).map(|&(s, e, _)| (s, e)))
            }
            Behavior::Contiguous | Behavior::MergedWithPrevious => {
                let contiguous = self.behavior == Behavior::Contiguous;
                let mut previous_match = false;
                for &(s, e, m) in &spans {
                    let join = if contiguous {
                        m == previous_match
                    } else {
                        m && !previous_match
                    };
                    match kept.last_mut() {
                        Some(last) if join => last.1 = e,
                        _ => kept.push((s, e)),
                    }
                    previous_match = m;
                }
            }
            Behavior::MergedWithNext => {
                let mut previous_match = false;
                for &(s, e, m) in spans.iter().rev() {
                    match kept.last_mut() {
                        Some(last) if m && !previous_match => last.0 = s,
                        _ => kept.push((s, e)),
                    }
                    previous_match = m;
                }
                kept.reverse();
            }
        }
        out.extend(
            kept.into_iter()
                .filter(|(s, e)| s < e)
                .map(|(s, e)| &text[s..e]),
        );
    }
}

/// GPT-2's pre-tokenization: the pattern's matches, with `\s+(?!\S)`: a run of white space followed by more
/// text leaves its last character to start the next piece.
fn gpt2_pieces(re: &Regex, text: &str, f: &mut dyn FnMut(&[u8])) {
    let mut pos = 0;
    while pos < text.len() {
        let m = match re.find_at(text, pos) {
            Some(m) if m.start() == pos => m,
            // Every character matches some alternative; this is only a guard.
            _ => {
                f(&text.as_bytes()[pos..]);
                break;
            }
        };
        let s = m.as_str();
        let mut end = m.end();
        if end < text.len() && s.chars().all(char::is_whitespace) {
            let last = s.chars().next_back().map_or(0, char::len_utf8);
            if s.len() > last {
                end -= last;
            }
        }
        f(&text.as_bytes()[pos..end]);
        pos = end;
    }
}
