//! The GPT-2 byte-level BPE tokenizer, compact.
//!
//! Reads `tokenizer.json` (a `BPE` model with a `ByteLevel` pre-tokenizer) or `vocab.json` + `merges.txt`
//! and keeps only what encoding and decoding need: the bytes of every token in one buffer and the merge
//! table. About 2 MiB in all, where the general-purpose `tokenizers` crate holds 27 MiB of heap for the same
//! vocabulary; its output is the oracle of this one (`tests/tokenizer.rs` compares them on every corpus).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use crate::error::{Error, Result};

/// GPT-2's pre-tokenization pattern, less its `\s+(?!\S)` look-ahead, which [`Tokenizer::pieces`] applies.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Text ⇄ token ids.
pub struct Tokenizer {
    /// Bytes of token `i`: `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// The token of each single byte.
    byte_token: [u32; 256],
    /// `(left, right)` → `(rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens matched verbatim in the text before pre-tokenization (`<|endoftext|>`).
    specials: Vec<(String, u32)>,
    add_prefix_space: bool,
    split: Regex,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab={}, merges={})",
            self.vocab_size(),
            self.merges.len()
        )
    }
}

#[derive(Deserialize)]
struct TokenizerJson<'a> {
    #[serde(borrow)]
    model: ModelJson<'a>,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    normalizer: Option<serde_json::Value>,
    pre_tokenizer: Option<PreTokenizerJson>,
}

#[derive(Deserialize)]
struct ModelJson<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    vocab: HashMap<Cow<'a, str>, u32>,
    #[serde(borrow)]
    merges: Vec<Merge<'a>>,
    dropout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Merge<'a> {
    Pair(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
    Joined(#[serde(borrow)] Cow<'a, str>),
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct PreTokenizerJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    add_prefix_space: bool,
}

/// GPT-2's reversible map of bytes to printable characters, as the inverse: character → byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid code point")
        };
        map.insert(c, b);
    }
    map
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, or `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
            return Tokenizer::from_tokenizer_json(&text)
                .map_err(|m| Error::Tokenizer(format!("{}: {m}", json.display())));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.exists() || !merges.exists() {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer.json, nor vocab.json + merges.txt",
                dir.display()
            )));
        }
        let v = std::fs::read_to_string(&vocab).map_err(|e| Error::io(&vocab, e))?;
        let m = std::fs::read_to_string(&merges).map_err(|e| Error::io(&merges, e))?;
        let vocab_map: HashMap<Cow<str>, u32> = serde_json::from_str(&v)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", vocab.display())))?;
        let merge_list: Vec<(&str, &str)> = m
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| l.split_once(' ').ok_or(l))
            .collect::<Result<_, _>>()
            .map_err(|l| Error::Tokenizer(format!("{}: bad merge line {l:?}", merges.display())))?;
        let eot = vocab_map.get("<|endoftext|>").copied();
        let specials = eot
            .map(|id| vec![("<|endoftext|>".to_string(), id)])
            .unwrap_or_default();
        Tokenizer::build(&vocab_map, &merge_list, specials, false)
            .map_err(|m| Error::Tokenizer(format!("{}: {m}", vocab.display())))
    }

    /// Parses the text of a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(text: &str) -> Result<Tokenizer, String> {
        let t: TokenizerJson =
            serde_json::from_str(text).map_err(|e| format!("not a tokenizer: {e}"))?;
        if t.model.kind.as_deref().is_some_and(|k| k != "BPE") {
            return Err(format!(
                "model type {:?} is not BPE",
                t.model.kind.unwrap_or_default()
            ));
        }
        if t.model.dropout.is_some_and(|d| d > 0.0) {
            return Err("BPE dropout is not supported".into());
        }
        if t.normalizer.as_ref().is_some_and(|n| !n.is_null()) {
            return Err("normalizers are not supported (GPT-2 has none)".into());
        }
        let add_prefix_space = match &t.pre_tokenizer {
            Some(p) if p.kind == "ByteLevel" => p.add_prefix_space,
            Some(p) => return Err(format!("pre-tokenizer {:?} is not ByteLevel", p.kind)),
            None => return Err("no pre-tokenizer: a GPT-2 tokenizer has a ByteLevel one".into()),
        };
        let merges: Vec<(&str, &str)> = t
            .model
            .merges
            .iter()
            .map(|m| match m {
                Merge::Pair(a, b) => Ok((a.as_ref(), b.as_ref())),
                Merge::Joined(s) => s.split_once(' ').ok_or(format!("bad merge {s:?}")),
            })
            .collect::<Result<_, _>>()?;
        let specials = t
            .added_tokens
            .into_iter()
            .map(|a| (a.content, a.id))
            .collect();
        Tokenizer::build(&t.model.vocab, &merges, specials, add_prefix_space)
    }

    fn build(
        vocab: &HashMap<Cow<str>, u32>,
        merges: &[(&str, &str)],
        specials: Vec<(String, u32)>,
        add_prefix_space: bool,
    ) -> Result<Tokenizer, String> {
        let u2b = unicode_to_byte();
        let to_bytes = |s: &str| -> Result<Vec<u8>, String> {
            s.chars()
                .map(|c| {
                    u2b.get(&c)
                        .copied()
                        .ok_or(format!("token {s:?} is not byte-level"))
                })
                .collect()
        };
        let n = vocab
            .values()
            .chain(specials.iter().map(|s| &s.1))
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut by_id: Vec<Option<Vec<u8>>> = vec![None; n];
        for (tok, &id) in vocab {
            by_id[id as usize] = Some(match specials.iter().find(|s| s.1 == id) {
                Some(s) => s.0.clone().into_bytes(),
                None => to_bytes(tok)?,
            });
        }
        for (s, id) in &specials {
            by_id[*id as usize].get_or_insert_with(|| s.clone().into_bytes());
        }
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (id, b) in by_id.iter().enumerate() {
            bytes.extend_from_slice(b.as_ref().ok_or(format!("no token has id {id}"))?);
            offsets.push(bytes.len() as u32);
        }
        let id_of = |s: &str| {
            vocab
                .get(s)
                .copied()
                .ok_or(format!("merge part {s:?} is not in the vocabulary"))
        };
        let mut byte_token = [0u32; 256];
        for (c, b) in &u2b {
            byte_token[*b as usize] = id_of(&c.to_string())?;
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = id_of(&format!("{a}{b}"))?;
            merge_map.insert((id_of(a)?, id_of(b)?), (rank as u32, merged));
        }
        Ok(Tokenizer {
            bytes,
            offsets,
            byte_token,
            merges: merge_map,
            specials,
            add_prefix_space,
            split: Regex::new(PATTERN).expect("the GPT-2 pattern compiles"),
        })
    }

    /// Token ids of `text`, with no special tokens added (no BOS), as transformers' GPT-2 tokenizer does;
    /// special tokens written in the text (`<|endoftext|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((len, id))),
                None => (rest, None),
            };
            if !plain.is_empty() {
                let prefixed;
                let plain = if first && self.add_prefix_space && !plain.starts_with(' ') {
                    prefixed = format!(" {plain}");
                    &prefixed
                } else {
                    plain
                };
                for piece in self.pieces(plain) {
                    self.bpe(piece.as_bytes(), &mut ids);
                }
            }
            match special {
                Some((len, id)) => {
                    ids.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => rest = "",
            }
            first = false;
        }
        Ok(ids)
    }

    /// GPT-2's pre-tokenization: the pattern's matches, with `\s+(?!\S)`: a run of white space followed by
    /// more text leaves its last character to start the next piece.
    fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let m = match self.split.find_at(text, pos) {
                Some(m) if m.start() == pos => m,
                // Every character matches some alternative; this is only a guard.
                _ => {
                    out.push(&text[pos..]);
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
            out.push(&text[pos..end]);
            pos = end;
        }
        out
    }

    /// Byte-pair encoding of one piece: merge the lowest-ranked adjacent pair (leftmost on ties) until none
    /// is in the table.
    fn bpe(&self, piece: &[u8], ids: &mut Vec<u32>) {
        let mut syms: Vec<u32> = piece.iter().map(|&b| self.byte_token[b as usize]).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            match best {
                Some((_, i, id)) => {
                    syms[i] = id;
                    syms.remove(i + 1);
                }
                None => break,
            }
        }
        ids.extend_from_slice(&syms);
    }

    /// Text of `ids` (special tokens kept, as text; invalid UTF-8 replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The raw bytes of one token.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        let i = id as usize;
        if i + 1 >= self.offsets.len() {
            return Err(Error::input(format!(
                "token id {id} is out of range (vocabulary of {})",
                self.vocab_size()
            )));
        }
        Ok(&self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize])
    }

    /// Number of ids (special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The id of a special token, e.g. `<|endoftext|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().find(|s| s.0 == token).map(|s| s.1)
    }
}
