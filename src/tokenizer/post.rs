//! Post-processors: the special tokens put around the text's tokens when special tokens are added.

use serde_json::Value;

use super::json::{kind, list, short};

/// One part of the `single` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// The ids of a special token.
    Ids(Vec<u32>),
    /// The text's own tokens (`$A`).
    Text,
}

/// What the post-processor makes of one text: its template (none: the tokens as they are).
#[derive(Debug, Default)]
pub(super) struct PostProcessor {
    template: Option<Vec<Piece>>,
}

impl PostProcessor {
    /// Reads a `post_processor`: `null`, `ByteLevel` (adds nothing), `TemplateProcessing` (its `single`
    /// template), `RobertaProcessing`/`BertProcessing` (`cls` text `sep`), or a `Sequence` of these with at
    /// most one that adds tokens.
    pub(super) fn from_json(v: &Value) -> Result<PostProcessor, String> {
        let mut template = None;
        if !v.is_null() {
            read(v, &mut template)?;
        }
        Ok(PostProcessor { template })
    }

    /// Every id the template adds, to check against the vocabulary.
    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.template
            .iter()
            .flatten()
            .flat_map(|p| match p {
                Piece::Ids(ids) => ids.as_slice(),
                Piece::Text => &[],
            })
            .copied()
    }

    /// `body` with the template applied.
    pub(super) fn apply(&self, body: Vec<u32>) -> Vec<u32> {
        let Some(template) = &self.template else {
            return body;
        };
        let mut out = Vec::with_capacity(body.len() + 4);
        for piece in template {
            match piece {
                Piece::Ids(ids) => out.extend_from_slice(ids),
                Piece::Text => out.extend_from_slice(&body),
            }
        }
        out
    }
}

fn read(v: &Value, template: &mut Option<Vec<Piece>>) -> Result<(), String> {
    let t = kind(v, "post_processor")?;
    let pieces = match t {
        "ByteLevel" => return Ok(()),
        "Sequence" => {
            for p in list(v, "processors", "post_processor")? {
                read(p, template)?;
            }
            return Ok(());
        }
        "TemplateProcessing" => template_pieces(v)?,
        "RobertaProcessing" | "BertProcessing" => {
            let id = |field: &str| -> Result<u32, String> {
                v.get(field)
                    .and_then(|p| p.get(1))
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("post_processor {t}: bad {field:?} in {}", short(v)))
            };
            vec![Piece::Ids(vec![id("cls")?]), Piece::Text, Piece::Ids(vec![id("sep")?])]
        }
        other => {
            return Err(format!(
                "post_processor type {other:?} is not supported (supported: ByteLevel, TemplateProcessing, \
                 RobertaProcessing, BertProcessing, Sequence)"
            ))
        }
    };
    if template.is_some() {
        return Err(
            "post_processor: a Sequence with two processors that add tokens is not supported"
                .into(),
        );
    }
    *template = Some(pieces);
    Ok(())
}

fn template_pieces(v: &Value) -> Result<Vec<Piece>, String> {
    let what = "post_processor TemplateProcessing";
    let specials = v.get("special_tokens");
    let mut pieces = Vec::new();
    for item in list(v, "single", what)? {
        if let Some(s) = item.get("Sequence") {
            match s.get("id").and_then(Value::as_str) {
                // Repeating the text would multiply every encoding (a template of n copies makes each
                // text n times longer): at most once, as every real tokenizer has it.
                Some("A") if pieces.iter().any(|p| matches!(p, Piece::Text)) => {
                    return Err(format!(
                        "{what}: the single template has the sequence A more than once"
                    ))
                }
                Some("A") => pieces.push(Piece::Text),
                _ => {
                    return Err(format!(
                        "{what}: the single template has the sequence {} (only A)",
                        short(s)
                    ))
                }
            }
        } else if let Some(s) = item.get("SpecialToken") {
            let name = s
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{what}: bad special token {}", short(s)))?;
            let ids = specials
                .and_then(|m| m.get(name))
                .and_then(|t| t.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{what}: special token {name:?} is not in special_tokens"))?
                .iter()
                .map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| format!("{what}: bad ids of special token {name:?}"))?;
            pieces.push(Piece::Ids(ids));
        } else {
            return Err(format!("{what}: bad template item {}", short(item)));
        }
    }
    Ok(pieces)
}
