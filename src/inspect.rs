//! What a model directory holds: its compression plan, bytes per component and layer, the storage of
//! every matrix, and the ratio to the original (the report of `slimlm inspect`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::compress::{classify, META_FORMAT, META_MATRICES, META_PLAN, META_SOURCE_BYTES};
use crate::error::Result;
use crate::model::Model;

/// The summary of a model (compressed or not).
#[derive(Clone, Debug)]
pub struct Summary {
    /// The model's directory, as it was opened.
    pub dir: PathBuf,
    /// The compressed format's version (`None`: not compressed by slimlm).
    pub format_version: Option<String>,
    /// The compression plan, as stored.
    pub plan: Option<serde_json::Value>,
    /// What was done to each matrix (`name → description`), as stored.
    pub matrices: Option<serde_json::Value>,
    /// Storage of the embeddings, the positions and every linear layer (`h.0.attn_qkv`, `head.…`), in
    /// the model's order.
    pub storage: Vec<(String, String)>,
    /// Bytes per (layer, part): layer `None` for what belongs to no layer; the parts of
    /// [`crate::compress::classify`].
    pub bytes: BTreeMap<(Option<usize>, &'static str), usize>,
    /// Bytes of the weight files.
    pub file_bytes: usize,
    /// Bytes of weights a forward pass reads.
    pub weight_bytes: usize,
    /// Bytes of the source model's files (compressed models only).
    pub source_bytes: Option<usize>,
}

impl Summary {
    /// The summary of `model`.
    pub fn of(model: &Model) -> Result<Summary> {
        let store = model.store();
        let md = store.metadata();
        let mut bytes = BTreeMap::new();
        for name in store.names() {
            let t = store.require(name)?;
            *bytes
                .entry(classify(model.config(), model.root(), name))
                .or_default() += t.bytes().len();
        }
        let json = |key: &str| -> Option<serde_json::Value> {
            md.get(key).and_then(|s| serde_json::from_str(s).ok())
        };
        let mut storage = vec![(
            "embeddings".to_string(),
            model.embed().storage_name().to_string(),
        )];
        if let Some(p) = model.positions() {
            storage.push(("positions".into(), p.storage_name().into()));
        }
        storage.extend(model.linears().iter().map(|(l, c, lin)| {
            let at = l.map_or("head".to_string(), |l| format!("h.{l}"));
            (format!("{at}.{c}"), lin.describe())
        }));
        Ok(Summary {
            dir: model.dir().to_path_buf(),
            format_version: md.get(META_FORMAT).cloned(),
            plan: json(META_PLAN),
            matrices: json(META_MATRICES),
            storage,
            bytes,
            file_bytes: store.file_bytes(),
            weight_bytes: model.weight_bytes(),
            source_bytes: md.get(META_SOURCE_BYTES).and_then(|s| s.parse().ok()),
        })
    }

    /// File bytes over source bytes (compressed models only).
    pub fn ratio(&self) -> Option<f64> {
        self.source_bytes.map(|s| self.file_bytes as f64 / s as f64)
    }

    /// The JSON object of `slimlm inspect --json` and `slimlm.Model.inspect()`.
    pub fn to_json(&self) -> serde_json::Value {
        let parts: Vec<_> = self
            .bytes
            .iter()
            .map(|((l, p), b)| serde_json::json!({"layer": l, "part": p, "bytes": b}))
            .collect();
        serde_json::json!({
            "dir": self.dir,
            "format_version": self.format_version,
            "plan": self.plan,
            "matrices": self.matrices,
            "storage": self.storage.iter().cloned().collect::<BTreeMap<_, _>>(),
            "bytes": parts,
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "source_bytes": self.source_bytes,
            "ratio": self.ratio(),
        })
    }
}
