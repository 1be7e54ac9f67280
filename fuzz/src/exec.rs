//! Running a case: its files laid out in the case directory (only what changed since the last case is
//! written), then slimlm's public API on them, with a small bounded use of whatever loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use slimlm::compress::{compress_model, FactorDtype, Options, Plan};
use slimlm::layers::Component;
use slimlm::tensor_file::{TensorFile, TensorStore};
use slimlm::{GenerateOptions, Model, Sampling, Tokenizer};

use crate::mutate::{Case, Target, TEXTS};

use crate::seeds::{Content, Seeds};

/// What is in a file of the case directory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    /// The file of seed `n`, unchanged.
    Seed(usize),
    Mutated,
}

/// A file of the case: the seed's (`Ok`) or new bytes (`Err`).
type Want<'a> = Result<&'a Content, &'a Arc<Vec<u8>>>;

/// The directory a case's files are written to, reused from case to case.
pub struct CaseDir {
    pub path: PathBuf,
    state: HashMap<String, Tag>,
}

impl CaseDir {
    pub fn new(path: PathBuf) -> std::io::Result<CaseDir> {
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(CaseDir {
            path,
            state: HashMap::new(),
        })
    }

    /// Lays out `case`; returns the total size of its input files.
    pub fn sync(&mut self, seeds: &Seeds, case: &Case) -> std::io::Result<u64> {
        // (name, seed file or new bytes)
        let mut want: Vec<(&str, Want)> = Vec::new();
        if case.target != Target::Plan {
            for f in &seeds.models[case.seed].files {
                if case.changed(&f.name).is_none() {
                    want.push((&f.name, Ok(&f.content)));
                }
            }
        }
        for (name, c) in &case.changes {
            if let Some(c) = c {
                want.push((name, Err(c)));
            }
        }
        let stale: Vec<String> = self
            .state
            .keys()
            .filter(|k| !want.iter().any(|(n, _)| n == k))
            .cloned()
            .collect();
        for k in stale {
            remove(&self.path.join(&k))?;
            self.state.remove(&k);
        }
        let mut total = 0u64;
        for (name, w) in want {
            let p = self.path.join(name);
            match w {
                Err(bytes) => {
                    // Never write through a symlink to a real model: unlink first.
                    remove(&p)?;
                    std::fs::write(&p, &**bytes)?;
                    self.state.insert(name.to_string(), Tag::Mutated);
                    total += bytes.len() as u64;
                }
                Ok(content) => {
                    total += content.len();
                    if self.state.get(name) == Some(&Tag::Seed(case.seed)) {
                        continue;
                    }
                    remove(&p)?;
                    match content {
                        Content::Bytes(b) => std::fs::write(&p, &***b)?,
                        Content::Link { path, .. } => std::os::unix::fs::symlink(path, &p)?,
                    }
                    self.state.insert(name.to_string(), Tag::Seed(case.seed));
                }
            }
        }
        Ok(total)
    }
}

fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// How a case ended (a panic is caught around this).
#[derive(Debug)]
pub enum Outcome {
    /// Everything loaded and ran.
    Ok,
    /// A clean error; `opened` when a model or tokenizer loaded before it.
    Err { opened: bool, msg: String },
    /// A clean return that breaks a property that must hold (e.g. the compressor's output must load).
    Oracle(String),
}

fn err(opened: bool, e: impl ToString) -> Outcome {
    Outcome::Err {
        opened,
        msg: e.to_string(),
    }
}

/// Runs `case`, whose files are in `dir`.
pub fn run(case: &Case, dir: &Path, seeds: &Seeds) -> Outcome {
    match case.target {
        Target::Safetensors | Target::Config | Target::Index => open_and_use(dir, case),
        Target::Tokenizer => {
            let tok = match case.changed("tokenizer.json") {
                Some(Some(b)) => match std::str::from_utf8(b) {
                    Ok(text) => Tokenizer::from_tokenizer_json(text).map_err(|e| e.to_string()),
                    Err(_) => Tokenizer::from_dir(dir).map_err(|e| e.to_string()),
                },
                _ => Tokenizer::from_dir(dir).map_err(|e| e.to_string()),
            };
            match tok {
                Ok(t) => match use_tokenizer(&t, case) {
                    Ok(()) => open_and_use(dir, case),
                    Err(o) => o,
                },
                Err(e) => err(false, e),
            }
        }
        Target::VocabMerges => match Tokenizer::from_dir(dir) {
            Ok(t) => match use_tokenizer(&t, case) {
                Ok(()) => open_and_use(dir, case),
                Err(o) => o,
            },
            Err(e) => err(false, e),
        },
        Target::Plan => run_plan(case, dir, seeds),
    }
}

fn open_and_use(dir: &Path, case: &Case) -> Outcome {
    match Model::open(dir) {
        Ok(m) => match use_model(&m, case) {
            Ok(()) => Outcome::Ok,
            Err(e) => err(true, e),
        },
        Err(e) => err(false, e),
    }
}

/// A bounded use of a loaded model: its accounting, the tokenizer on a short text, and a generation of
/// at most 2 tokens after at most 4 prompt tokens, on one thread.
fn use_model(model: &Model, case: &Case) -> slimlm::Result<()> {
    let _ = (
        model.weight_bytes(),
        model.copied_bytes(),
        model.eos_token_ids(),
        model.root(),
        model.check_files(),
    );
    for (_, _, l) in model.linears() {
        let _ = (l.describe(), l.dims(), l.weight_bytes());
    }
    let tok = model.tokenizer();
    let mut ids = tok.encode(&case.text)?;
    ids.truncate(4);
    if ids.is_empty() {
        ids.push(0);
    }
    let _ = tok.decode(&ids);
    let mut session = model.session();
    session.set_threads(1);
    let opts = GenerateOptions {
        max_tokens: 2,
        sampling: if case.random_sampling {
            Sampling::Random {
                temperature: 0.8,
                top_k: 5,
                top_p: 0.9,
                seed: case.text.len() as u64,
            }
        } else {
            Sampling::Greedy
        },
        stop_at_eos: true,
        ..Default::default()
    };
    let mut stream = tok.stream();
    for t in session.generate(&ids, &opts)? {
        let t = t?;
        // Embedding rows beyond the tokenizer (OPT, Pythia pad the vocabulary) can be generated but
        // not decoded: TextStream::push errors on them; that is not what this harness checks.
        if (t as usize) < tok.vocab_size() {
            let _ = stream.push(t)?;
        }
    }
    let _ = stream.finish();
    Ok(())
}

/// A bounded use of a tokenizer: encode, decode (ids in and out of range), a stream, the added tokens.
fn use_tokenizer(t: &Tokenizer, case: &Case) -> Result<(), Outcome> {
    use_tokenizer_inner(t, case).map_err(|e| match e {
        Use::Err(e) => err(true, e),
        Use::Oracle(m) => Outcome::Oracle(m),
    })
}

enum Use {
    Err(slimlm::Error),
    Oracle(String),
}

impl From<slimlm::Error> for Use {
    fn from(e: slimlm::Error) -> Use {
        Use::Err(e)
    }
}

fn use_tokenizer_inner(t: &Tokenizer, case: &Case) -> Result<(), Use> {
    let ids = t.encode(&case.text)?;
    let _ = t.encode_plain(&case.text)?;
    let _ = t.decode(&ids)?;
    // Round trip: decoding the ids of a text gives back bytes; re-encoding them must work too.
    if let Ok(back) = t.decode(&ids) {
        let _ = t.encode(&back)?;
    }
    let n_ids = t.vocab_size() as u32;
    let mut s = t.stream();
    for &id in &case.ids {
        match s.push(id) {
            Ok(_) if id >= n_ids => {
                return Err(Use::Oracle(format!(
                    "TextStream::push accepted id {id} beyond the {n_ids} tokens"
                )))
            }
            _ => {}
        }
        let _ = t.decode(&[id]);
    }
    let _ = s.finish();
    let n = t.vocab_size() as u32;
    for bad in [n, n.wrapping_add(1), u32::MAX] {
        if t.decode(&[bad]).is_ok() {
            return Err(Use::Oracle(format!(
                "Tokenizer::decode accepted id {bad} beyond the {n} tokens"
            )));
        }
    }
    let mut s = t.stream();
    for &id in ids.iter().take(8) {
        let _ = s.push(id)?;
    }
    let _ = s.finish();
    for tok in ["<|endoftext|>", "</s>", "<s>"] {
        let _ = t.token_id(tok);
    }
    Ok(())
}

fn run_plan(case: &Case, dir: &Path, seeds: &Seeds) -> Outcome {
    let Some((name, _)) = case.changes.first() else {
        return err(false, "no plan");
    };
    let plan = match Plan::from_file(&dir.join(name)) {
        Ok(p) => p,
        Err(e) => return err(false, e),
    };
    let _ = Plan::from_json(&plan.to_json());
    let resolved = match plan.validate(case.n_layer) {
        Ok(r) => r,
        Err(e) => return err(false, e),
    };
    for layer in 0..case.n_layer.min(8) {
        for c in Component::ALL {
            let _ = resolved.method(Some(layer), c).describe();
        }
    }
    let _ = resolved.method(None, Component::Embeddings).describe();
    let _ = resolved.needs_calibration(case.n_layer.min(64));
    for f in [FactorDtype::F32, FactorDtype::F16, FactorDtype::Int8] {
        let _ = resolved.s_fold(f);
    }
    if !case.deep {
        return Outcome::Ok;
    }
    // End to end: compress a tiny model by the plan, load the result, run it.
    let Some((_, model)) = seeds.compressible.iter().find(|(i, _)| *i == case.seed) else {
        return Outcome::Ok;
    };
    let opts = Options {
        overwrite: false,
        calibration: vec![TEXTS[0].to_string(), TEXTS[2].to_string()],
        calibration_tokens: 16,
    };
    let bytes = match compress_model(model, &plan, &opts, &mut |_, _, _| {}) {
        Ok((b, _)) => b,
        Err(e) => return err(true, e),
    };
    let store = match TensorFile::from_bytes(&dir.join("compressed.safetensors"), &bytes) {
        Ok(f) => TensorStore::from_file(f),
        Err(e) => {
            return Outcome::Oracle(format!(
                "compress_model wrote a file TensorFile cannot read: {e}"
            ))
        }
    };
    let seed_dir = seeds.seed_root.join(&seeds.models[case.seed].name);
    match Model::from_store(&seed_dir, model.config().clone(), store) {
        Ok(m) => match use_model(&m, case) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Oracle(format!("compress_model's output does not run: {e}")),
        },
        Err(e) => Outcome::Oracle(format!("compress_model's output does not load: {e}")),
    }
}
