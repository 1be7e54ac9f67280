//! The parts of Hugging Face's `tokenizer.json` that this tokenizer reads, and helpers to read the parts
//! kept as JSON values (normalizer, pre-tokenizer, post-processor, decoder) with errors that name the field.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

/// A `tokenizer.json`. Vocabulary strings borrow from the text where they can.
#[derive(Deserialize)]
pub(super) struct TokenizerJson<'a> {
    #[serde(borrow)]
    pub model: ModelJson<'a>,
    #[serde(default)]
    pub added_tokens: Vec<AddedTokenJson>,
    #[serde(default)]
    pub normalizer: Value,
    #[serde(default)]
    pub pre_tokenizer: Value,
    #[serde(default)]
    pub post_processor: Value,
    #[serde(default)]
    pub decoder: Value,
}

/// `model`: a BPE.
#[derive(Deserialize)]
pub(super) struct ModelJson<'a> {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(borrow)]
    pub vocab: HashMap<Cow<'a, str>, u32>,
    #[serde(borrow, default)]
    pub merges: Vec<Merge<'a>>,
    pub dropout: Option<f64>,
    pub unk_token: Option<String>,
    pub continuing_subword_prefix: Option<String>,
    pub end_of_word_suffix: Option<String>,
    #[serde(default)]
    pub fuse_unk: bool,
    #[serde(default)]
    pub byte_fallback: bool,
    #[serde(default)]
    pub ignore_merges: bool,
}

/// One merge: `"a b"` (older files) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Merge<'a> {
    Pair(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
    Joined(#[serde(borrow)] Cow<'a, str>),
}

impl Merge<'_> {
    /// The two parts.
    pub fn parts(&self) -> Result<(&str, &str), String> {
        match self {
            Merge::Pair(a, b) => Ok((a, b)),
            Merge::Joined(s) => s.split_once(' ').ok_or_else(|| {
                format!("model.merges: {s:?} is not two tokens separated by a space")
            }),
        }
    }
}

/// One entry of `added_tokens`.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct AddedTokenJson {
    pub id: u32,
    pub content: String,
    #[serde(default)]
    pub single_word: bool,
    #[serde(default)]
    pub lstrip: bool,
    #[serde(default)]
    pub rstrip: bool,
    #[serde(default = "yes")]
    pub normalized: bool,
    #[serde(default)]
    pub special: bool,
}

fn yes() -> bool {
    true
}

/// The `type` of a component; `what` names the component in the error.
pub(super) fn kind<'v>(v: &'v Value, what: &str) -> Result<&'v str, String> {
    v.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}: no \"type\" in {}", short(v)))
}

/// The array `field` of a component.
pub(super) fn list<'v>(v: &'v Value, field: &str, what: &str) -> Result<&'v [Value], String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("{what}: {field:?} is not a list in {}", short(v)))
}

/// The boolean `field` of a component, `default` when absent.
pub(super) fn flag(v: &Value, field: &str, default: bool, what: &str) -> Result<bool, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(format!("{what}: {field:?} is {x}, not true or false")),
    }
}

/// The string `field` of a component.
pub(super) fn string<'v>(v: &'v Value, field: &str, what: &str) -> Result<&'v str, String> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}: {field:?} is not a string in {}", short(v)))
}

/// A component's JSON, cut short for error messages.
pub(super) fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// Checks that the `decoder` is `ByteLevel`, the only one that inverts a byte-level BPE.
pub(super) fn check_decoder(v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Err("decoder: null (a byte-level BPE needs the ByteLevel decoder)".into());
    }
    match kind(v, "decoder")? {
        "ByteLevel" => Ok(()),
        "Sequence" => match list(v, "decoders", "decoder")? {
            [one] => check_decoder(one),
            _ => Err("decoder: only a Sequence of one ByteLevel decoder is supported".into()),
        },
        other => Err(format!(
            "decoder type {other:?} is not supported (only ByteLevel)"
        )),
    }
}
