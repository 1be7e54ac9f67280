//! Normalizers: Unicode normal forms and lower-casing, applied to the text between added tokens.
//!
//! The normal forms follow the current Unicode tables (`unicode-normalization`). Hugging Face's
//! `tokenizers` uses Unicode 9.0 tables, so for the few compositions defined since (Dives Akuru, Kirat Rai,
//! Gurung Khema, Todhri, ...) its NFC leaves text decomposed that this one composes.

use std::borrow::Cow;

use serde_json::Value;
use unicode_normalization::{is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick};
use unicode_normalization::{IsNormalized, UnicodeNormalization};

use super::json::{kind, list};

/// One supported normalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
}

/// The `normalizer` of a `tokenizer.json`: its steps in order (none for `null`).
#[derive(Debug, Default)]
pub(super) struct Normalizer {
    steps: Vec<Step>,
}

impl Normalizer {
    /// Reads a `normalizer` value: `null`, `NFC`, `NFD`, `NFKC`, `NFKD`, `Lowercase` or a `Sequence` of them.
    pub(super) fn from_json(v: &Value) -> Result<Normalizer, String> {
        let mut steps = Vec::new();
        if !v.is_null() {
            push_steps(v, &mut steps)?;
        }
        Ok(Normalizer { steps })
    }

    /// `text` normalized; borrowed when nothing changes.
    pub(super) fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for step in &self.steps {
            let done = match step {
                Step::Nfc => is_nfc_quick(out.chars()),
                Step::Nfd => is_nfd_quick(out.chars()),
                Step::Nfkc => is_nfkc_quick(out.chars()),
                Step::Nfkd => is_nfkd_quick(out.chars()),
                Step::Lowercase => {
                    if out.chars().all(|c| c.to_lowercase().eq(std::iter::once(c))) {
                        IsNormalized::Yes
                    } else {
                        IsNormalized::No
                    }
                }
            };
            if done == IsNormalized::Yes {
                continue;
            }
            out = Cow::Owned(match step {
                Step::Nfc => out.nfc().collect(),
                Step::Nfd => out.nfd().collect(),
                Step::Nfkc => out.nfkc().collect(),
                Step::Nfkd => out.nfkd().collect(),
                // Character by character, as Hugging Face does (no final-sigma rule).
                Step::Lowercase => out.chars().flat_map(char::to_lowercase).collect(),
            });
        }
        out
    }
}

fn push_steps(v: &Value, steps: &mut Vec<Step>) -> Result<(), String> {
    let step = match kind(v, "normalizer")? {
        "NFC" => Step::Nfc,
        "NFD" => Step::Nfd,
        "NFKC" => Step::Nfkc,
        "NFKD" => Step::Nfkd,
        "Lowercase" => Step::Lowercase,
        "Sequence" => {
            for n in list(v, "normalizers", "normalizer")? {
                push_steps(n, steps)?;
            }
            return Ok(());
        }
        other => {
            return Err(format!(
                "normalizer type {other:?} is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, \
                 Sequence)"
            ))
        }
    };
    steps.push(step);
    Ok(())
}
