//! Typed, checked reads of `config.json` fields, shared by the families' parsers.
//!
//! Every size is bounded here, before anything is allocated from it; the loader then checks each against
//! the weights.

use serde_json::Value;

/// Upper bounds of sizes read from a config (far above any model slimlm is meant for).
pub mod limits {
    /// Transformer blocks.
    pub const LAYERS: usize = 1024;
    /// Attention heads.
    pub const HEADS: usize = 1024;
    /// Hidden, embedding and MLP widths.
    pub const WIDTH: usize = 1 << 17;
    /// Context length.
    pub const CONTEXT: usize = 1 << 20;
    /// Vocabulary (embedding rows).
    pub const VOCAB: usize = 1 << 22;
}

/// A parsed `config.json`.
pub struct Fields<'a>(pub &'a Value);

impl<'a> Fields<'a> {
    /// The raw value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A positive integer at most `max`.
    pub fn size(&self, key: &str, max: usize) -> Result<usize, String> {
        let v = self.get(key).ok_or(format!("missing field `{key}`"))?;
        positive(key, v, max)
    }

    /// The first of `keys` present, as [`Fields::size`] (transformers accepts aliases, e.g. BLOOM's
    /// `n_layer` / `num_hidden_layers`).
    pub fn size_any(&self, keys: &[&str], max: usize) -> Result<usize, String> {
        match keys.iter().find(|k| self.get(k).is_some()) {
            Some(k) => self.size(k, max),
            None => Err(format!("missing field `{}`", keys.join("` or `"))),
        }
    }

    /// A positive integer at most `max`, or `None` when absent or null.
    pub fn opt_size(&self, key: &str, max: usize) -> Result<Option<usize>, String> {
        self.get(key).map(|v| positive(key, v, max)).transpose()
    }

    /// A boolean, `default` when absent or null.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or(format!("field `{key}` must be a boolean, found {v}")),
        }
    }

    /// A string, `default` when absent or null.
    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or(format!("field `{key}` must be a string, found {v}")),
        }
    }

    /// A positive finite number, `default` when absent or null.
    pub fn positive_f64_or(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or(format!(
                    "field `{key}` must be a positive number, found {v}"
                )),
        }
    }

    /// A LayerNorm epsilon: positive and representable as a positive finite f32.
    pub fn epsilon_or(&self, key: &str, default: f64) -> Result<f32, String> {
        let e = self.positive_f64_or(key, default)?;
        let f = e as f32;
        if f > 0.0 && f.is_finite() && f <= 1.0 {
            Ok(f)
        } else {
            Err(format!(
                "field `{key}` = {e} is not a usable LayerNorm epsilon (0 < ε ≤ 1)"
            ))
        }
    }

    /// Token ids of `key` (a number or a list of numbers, as transformers allows for `eos_token_id`), each
    /// below `vocab`.
    pub fn token_ids(&self, key: &str, vocab: usize) -> Result<Vec<u32>, String> {
        let list: Vec<&Value> = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
        };
        list.into_iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&n| (n as usize) < vocab)
                    .map(|n| n as u32)
                    .ok_or(format!(
                        "field `{key}`: {v} is not a token id below vocab_size {vocab}"
                    ))
            })
            .collect()
    }
}

fn positive(key: &str, v: &Value, max: usize) -> Result<usize, String> {
    v.as_u64()
        .filter(|&n| n > 0 && n as u128 <= max as u128)
        .map(|n| n as usize)
        .ok_or(format!(
            "field `{key}` must be a positive integer at most {max}, found {v}"
        ))
}
