//! Added tokens (special or not), found in the text before pre-tokenization as Hugging Face's
//! `AddedVocabulary` finds them: the tokens with `normalized: false` on the raw text, then those with
//! `normalized: true` on the normalized text between them; leftmost-longest matches.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use super::json::AddedTokenJson;
use super::normalize::Normalizer;

/// A part of the text: an added token's id, or text to normalize or pre-tokenize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part<'t> {
    Token(u32),
    Text(&'t str),
}

/// How one added token matches.
#[derive(Debug, Clone, Copy)]
struct Rule {
    id: u32,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
}

/// The tokens matched in one kind of text (raw or normalized).
#[derive(Debug)]
struct Matcher {
    automaton: AhoCorasick,
    /// By pattern index.
    rules: Vec<Rule>,
}

/// Every added token.
#[derive(Debug, Default)]
pub(super) struct AddedTokens {
    raw: Option<Matcher>,
    normalized: Option<Matcher>,
    /// `(content, id)` of every added token sorted by content, for [`AddedTokens::id`].
    contents: Vec<(Box<str>, u32)>,
    /// `\w` at the end or start of a text, for `single_word`.
    word: Option<(Regex, Regex)>,
}

impl AddedTokens {
    /// Builds the matchers from `added_tokens` (already checked: unique contents, ids agreed), special tokens
    /// first as Hugging Face orders them.
    pub(super) fn new(
        tokens: &[AddedTokenJson],
        normalizer: &Normalizer,
    ) -> Result<AddedTokens, String> {
        let ordered = tokens
            .iter()
            .filter(|t| t.special)
            .chain(tokens.iter().filter(|t| !t.special));
        let (mut raw, mut norm) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for t in ordered {
            let rule = Rule {
                id: t.id,
                single_word: t.single_word,
                lstrip: t.lstrip,
                rstrip: t.rstrip,
            };
            if t.normalized {
                norm.0.push(normalizer.apply(&t.content).into_owned());
                norm.1.push(rule);
            } else {
                raw.0.push(t.content.clone());
                raw.1.push(rule);
            }
        }
        let word = if tokens.iter().any(|t| t.single_word) {
            let re = |p| Regex::new(p).map_err(|e| format!("added tokens: {e}"));
            Some((re(r"\w$")?, re(r"^\w")?))
        } else {
            None
        };
        let mut contents: Vec<(Box<str>, u32)> = tokens
            .iter()
            .map(|t| (t.content.clone().into_boxed_str(), t.id))
            .collect();
        contents.sort_unstable();
        Ok(AddedTokens {
            raw: Matcher::new(raw)?,
            normalized: Matcher::new(norm)?,
            contents,
            word,
        })
    }

    /// The id of the added token `content`.
    pub(super) fn id(&self, content: &str) -> Option<u32> {
        self.contents
            .binary_search_by(|c| (*c.0).cmp(content))
            .ok()
            .map(|i| self.contents[i].1)
    }

    /// Whether some added token is matched on the normalized text.
    pub(super) fn has_normalized(&self) -> bool {
        self.normalized.is_some()
    }

    /// `text` cut at the tokens with `normalized: false`.
    pub(super) fn split_raw<'t>(&self, text: &'t str, out: &mut Vec<Part<'t>>) {
        self.split(self.raw.as_ref(), text, out)
    }

    /// Normalized `text` cut at the tokens with `normalized: true`.
    pub(super) fn split_normalized<'t>(&self, text: &'t str, out: &mut Vec<Part<'t>>) {
        self.split(self.normalized.as_ref(), text, out)
    }

    fn split<'t>(&self, m: Option<&Matcher>, text: &'t str, out: &mut Vec<Part<'t>>) {
        let Some(m) = m else {
            if !text.is_empty() {
                out.push(Part::Text(text));
            }
            return;
        };
        let mut done = 0;
        for hit in m.automaton.find_iter(text) {
            let rule = m.rules[hit.pattern().as_usize()];
            let (mut start, mut end) = (hit.start(), hit.end());
            if rule.single_word {
                if let Some((ends_word, starts_word)) = &self.word {
                    let left = start == 0 || !ends_word.is_match(&text[..start]);
                    let right = end == text.len() || !starts_word.is_match(&text[end..]);
                    if !left || !right {
                        continue;
                    }
                }
            }
            if rule.lstrip {
                start = text[..start].trim_end().len().max(done);
            }
            if rule.rstrip {
                let after = &text[end..];
                end += after.len() - after.trim_start().len();
            }
            // As Hugging Face does, even when a previous `rstrip` took this match's start.
            if done < start {
                out.push(Part::Text(&text[done..start]));
            }
            out.push(Part::Token(rule.id));
            done = end;
        }
        if done < text.len() {
            out.push(Part::Text(&text[done..]));
        }
    }
}

impl Matcher {
    fn new((patterns, rules): (Vec<String>, Vec<Rule>)) -> Result<Option<Matcher>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| format!("added tokens: {e}"))?;
        Ok(Some(Matcher { automaton, rules }))
    }
}
