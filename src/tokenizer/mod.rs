//! Compact byte-level BPE tokenizers: GPT-2, GPT-Neo, OPT, GPT-NeoX/Pythia and BLOOM.
//!
//! Reads Hugging Face's `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`) and keeps only what
//! encoding and decoding need: the bytes of every token in one buffer, the merge table, the added tokens
//! and the steps around the model (normalizer, pre-tokenizer, post-processor). For GPT-2's vocabulary that
//! is 1.8 MiB of heap once loaded (plus up to 1.4 MiB that the GPT-2 pattern's lazy DFA caches as it is
//! used), where the general-purpose `tokenizers` crate 0.22 holds 6.9 MiB once loaded and 12 MiB once its
//! word cache fills. Its output is the oracle of this one (`tests/tokenizer.rs` compares them on every
//! corpus and every reference tokenizer).
//!
//! The pipeline is Hugging Face's: added tokens with `normalized: false` are found in the raw text; the text
//! between them is normalized (`NFC`, ...) and searched for the added tokens with `normalized: true`; the
//! text left is pre-tokenized (`Split`s, then `ByteLevel`) and each piece encoded by BPE; the post-processor
//! adds its special tokens (OPT's leading `</s>`).

mod added;
mod bpe;
mod byte_level;
mod json;
mod normalize;
mod post;
mod pretokenize;
mod stream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub use stream::{TextStream, Utf8Stream};

use crate::error::{Error, Result};
use added::{AddedTokens, Part};
use bpe::{pair, Bpe, Merges, Table};
use json::{AddedTokenJson, Merge, ModelJson, TokenizerJson};
use normalize::Normalizer;
use post::PostProcessor;
use pretokenize::PreTokenizer;

/// Text ⇄ token ids.
pub struct Tokenizer {
    table: Table,
    bpe: Bpe,
    added: AddedTokens,
    normalizer: Normalizer,
    pre: PreTokenizer,
    post: PostProcessor,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab={}, merges={})",
            self.vocab_size(),
            self.bpe.merges.len()
        )
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, or `vocab.json` + `merges.txt` (GPT-2's files: `<|endoftext|>` is then
    /// the one special token).
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
        let merge_list = m
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| Merge::Pair(Cow::Borrowed(a), Cow::Borrowed(b)))
                    .ok_or_else(|| {
                        Error::Tokenizer(format!("{}: bad merge line {l:?}", merges.display()))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let added = vocab_map
            .get("<|endoftext|>")
            .map(|&id| AddedTokenJson {
                id,
                content: "<|endoftext|>".into(),
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: true,
            })
            .into_iter()
            .collect();
        let model = ModelJson {
            kind: Some("BPE".into()),
            vocab: vocab_map,
            merges: merge_list,
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
        };
        let pre = PreTokenizer::gpt2().map_err(Error::Tokenizer)?;
        Tokenizer::build(
            model,
            added,
            Normalizer::default(),
            pre,
            PostProcessor::default(),
        )
        .map_err(|m| {
            // "model.merges[i]: ..." is about merges.txt (its i-th merge); the rest about vocab.json.
            let file = if m.starts_with("model.merges") {
                &merges
            } else {
                &vocab
            };
            Error::Tokenizer(format!("{}: {m}", file.display()))
        })
    }

    /// Parses the text of a Hugging Face `tokenizer.json` with a byte-level `BPE` model. Anything this
    /// tokenizer does not implement is an error that names it; `truncation` and `padding` are ignored, as
    /// transformers ignores them when called without those options.
    pub fn from_tokenizer_json(text: &str) -> Result<Tokenizer, String> {
        let t: TokenizerJson =
            serde_json::from_str(text).map_err(|e| format!("not a tokenizer: {e}"))?;
        json::check_decoder(&t.decoder)?;
        let normalizer = Normalizer::from_json(&t.normalizer)?;
        let pre = PreTokenizer::from_json(&t.pre_tokenizer)?;
        let post = PostProcessor::from_json(&t.post_processor)?;
        Tokenizer::build(t.model, t.added_tokens, normalizer, pre, post)
    }

    fn build(
        model: ModelJson,
        added: Vec<AddedTokenJson>,
        normalizer: Normalizer,
        pre: PreTokenizer,
        post: PostProcessor,
    ) -> Result<Tokenizer, String> {
        check_model(&model)?;
        let vocab = &model.vocab;
        let added = check_added(vocab, added)?;
        // Every id must be below the number of tokens, or some id would have no token: checked before
        // anything is allocated by id.
        let count = vocab.len() + added.len();
        let mut by_id: Vec<Option<&str>> = Vec::new();
        let mut n = 0usize;
        for (what, tok, id) in vocab
            .iter()
            .map(|(s, &id)| ("model.vocab", s.as_ref(), id))
            .chain(
                added
                    .iter()
                    .map(|a| ("added_tokens", a.content.as_str(), a.id)),
            )
        {
            let i = id as usize;
            if i >= count {
                return Err(format!(
                    "{what}: {tok:?} has id {id}, beyond the {count} tokens of the file"
                ));
            }
            n = n.max(i + 1);
        }
        by_id.resize(n, None);
        for (s, &id) in vocab {
            if let Some(other) = by_id[id as usize].replace(s) {
                return Err(format!(
                    "model.vocab: id {id} is given to both {other:?} and {s:?}"
                ));
            }
        }
        for a in &added {
            match by_id[a.id as usize] {
                Some(s) if s != a.content => {
                    return Err(format!(
                        "added_tokens: id {} of {:?} is the vocabulary's {s:?}",
                        a.id, a.content
                    ))
                }
                _ => by_id[a.id as usize] = Some(&a.content),
            }
        }
        if let Some(hole) = by_id.iter().position(Option::is_none) {
            return Err(format!(
                "no token has id {hole} (ids must run from 0 without holes; {n} ids, {count} tokens)"
            ));
        }
        let table = Table::new(
            by_id
                .iter()
                .map(|s| byte_level::decode_token(s.unwrap_or_default())),
        )?;

        let mut byte_token = Bpe::no_bytes();
        let mut missing = Vec::new();
        for (b, slot) in byte_token.iter_mut().enumerate() {
            match vocab.get(byte_level::byte_char(b as u8).to_string().as_str()) {
                Some(&id) => *slot = id,
                None => missing.push(b),
            }
        }
        let unk = match model.unk_token.as_deref() {
            Some(u) => match vocab.get(u) {
                Some(&id) => Some(id),
                None if missing.is_empty() => None,
                None => {
                    return Err(format!(
                        "model.unk_token {u:?} is not in the vocabulary, and bytes {missing:02x?} have no token"
                    ))
                }
            },
            None => None,
        };
        let mut merges = Merges::default();
        merges.reserve(model.merges.len());
        let id_of = |s: &str, i: usize| {
            vocab
                .get(s)
                .copied()
                .ok_or_else(|| format!("model.merges[{i}]: {s:?} is not in the vocabulary"))
        };
        for (i, m) in model.merges.iter().enumerate() {
            let (a, b) = m.parts()?;
            let key = pair(id_of(a, i)?, id_of(b, i)?);
            let merged = id_of(&format!("{a}{b}"), i)?;
            let rank = u32::try_from(i).map_err(|_| "model.merges: too many merges".to_string())?;
            // A pair given twice keeps its last rank, as in Hugging Face.
            merges.insert(key, (rank, merged));
        }
        merges.shrink_to_fit();
        let whole = model.ignore_merges.then(|| {
            let mut ids: Vec<u32> = vocab
                .iter()
                .filter(|(s, _)| byte_level::to_bytes(s).is_some())
                .map(|(_, &id)| id)
                .collect();
            ids.sort_unstable_by(|&x, &y| table.get(x).cmp(&table.get(y)));
            ids
        });
        if let Some(id) = post.ids().find(|&id| id as usize >= n) {
            return Err(format!(
                "post_processor: special token id {id} is beyond the {n} tokens"
            ));
        }
        let added_tokens = AddedTokens::new(&added, &normalizer)?;
        Ok(Tokenizer {
            table,
            bpe: Bpe {
                byte_token,
                merges,
                unk,
                fuse_unk: model.fuse_unk,
                whole,
            },
            added: added_tokens,
            normalizer,
            pre,
            post,
        })
    }

    /// Token ids of `text` as transformers' `tokenizer(text)["input_ids"]` gives them (Hugging Face's
    /// `encode(text, add_special_tokens=true)`): with the post-processor's special tokens, e.g. OPT's leading
    /// `</s>`; GPT-2, GPT-NeoX and BLOOM add none. Added tokens written in the text (`<|endoftext|>`, `</s>`)
    /// become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.post.apply(self.encode_plain(text)?))
    }

    /// Token ids of `text` without the post-processor's special tokens (`add_special_tokens=false`); added
    /// tokens written in the text still become their ids.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut raw = Vec::new();
        self.added.split_raw(text, &mut raw);
        for part in raw {
            let text = match part {
                Part::Token(id) => {
                    ids.push(id);
                    continue;
                }
                Part::Text(t) => t,
            };
            let norm = self.normalizer.apply(text);
            let mut parts = Vec::new();
            if self.added.has_normalized() {
                self.added.split_normalized(&norm, &mut parts);
            } else {
                parts.push(Part::Text(&norm));
            }
            for p in &parts {
                match *p {
                    Part::Token(id) => ids.push(id),
                    Part::Text(t) => self.pre.pieces(t, &mut |piece| {
                        self.bpe.encode(&self.table, piece, &mut ids)
                    }),
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids`: added and special tokens kept as text; bytes that are not UTF-8 become U+FFFD. For
    /// text given out as tokens arrive, see [`TextStream`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The bytes one token decodes to.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.table.get(id).ok_or_else(|| {
            Error::input(format!(
                "token id {id} is out of range (vocabulary of {})",
                self.vocab_size()
            ))
        })
    }

    /// Number of ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// The id of an added token (special or not), e.g. `<|endoftext|>` or `</s>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.added.id(token)
    }

    /// A [`TextStream`] decoding this tokenizer's ids.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream::new(self)
    }
}

/// Rejects the BPE options this tokenizer does not implement.
fn check_model(m: &ModelJson) -> Result<(), String> {
    if let Some(k) = m.kind.as_deref().filter(|&k| k != "BPE") {
        return Err(format!("model type {k:?} is not supported (only BPE)"));
    }
    if m.dropout.is_some_and(|d| d != 0.0) {
        return Err("model.dropout: BPE dropout is not supported".into());
    }
    if m.byte_fallback {
        return Err(
            "model.byte_fallback is not supported (a byte-level BPE has every byte)".into(),
        );
    }
    for (field, v) in [
        ("continuing_subword_prefix", &m.continuing_subword_prefix),
        ("end_of_word_suffix", &m.end_of_word_suffix),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            return Err(format!("model.{field} {v:?} is not supported"));
        }
    }
    Ok(())
}

/// The added tokens as Hugging Face keeps them: exact repeats dropped, a content given twice with other
/// options an error, and each id the one Hugging Face gives (the vocabulary's id if the content is in it,
/// else the next id after the vocabulary and the added tokens before it), an error when the file disagrees.
fn check_added(
    vocab: &HashMap<Cow<str>, u32>,
    tokens: Vec<AddedTokenJson>,
) -> Result<Vec<AddedTokenJson>, String> {
    let mut kept: Vec<AddedTokenJson> = Vec::with_capacity(tokens.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(tokens.len());
    let mut next = vocab.len() as u64;
    for t in tokens {
        if let Some(&k) = seen.get(&t.content) {
            if kept[k] == t {
                continue;
            }
            return Err(format!(
                "added_tokens: {:?} is given twice, with different options",
                t.content
            ));
        }
        if t.content.is_empty() {
            return Err(format!("added_tokens: the token of id {} is empty", t.id));
        }
        let expected = match vocab.get(t.content.as_str()) {
            Some(&id) => u64::from(id),
            None => {
                next += 1;
                next - 1
            }
        };
        if u64::from(t.id) != expected {
            return Err(format!(
                "added_tokens: {:?} has id {}, but Hugging Face gives it {expected} (its id in the \
                 vocabulary, or the next one after the vocabulary and the added tokens before it)",
                t.content, t.id
            ));
        }
        seen.insert(t.content.clone(), kept.len());
        kept.push(t);
    }
    Ok(kept)
}
