//! Seeds: the real model directories (`../shared/models/ref-*`, `models/ref-gpt2`) and tiny models derived
//! from them.
//!
//! The real models are 12–71 MB with 50k-token tokenizers, so one load costs tens of milliseconds. For
//! throughput most cases start from *tiny* seeds made here at startup, one per reference model: its
//! `config.json` with every key kept and only the sizes shrunk (width 16–24, 2 layers, context 16), its
//! `tokenizer.json` with the same normalizer / pre-tokenizer / post-processor / added tokens but only the
//! 256 byte tokens plus the first merges (ids renumbered the way Hugging Face numbers them), and weights
//! laid out as the loader wants them (F32, F16, BF16 or mixed, like the references). Compressed (INT8,
//! low rank, F16) and sharded variants are made from those with slimlm's own compressor and writer. Real
//! seeds are still used, rarely, with their big files symlinked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};
use slimlm::compress::writer::{self, OutTensor};
use slimlm::compress::{compress_model, Options, Plan};
use slimlm::layers::{block_prefix, linear_sites};
use slimlm::tensor_file::DType;
use slimlm::{Config, Model};

use crate::rng::Rng;

/// The bytes of a seed file: held in memory, or (big files of real models) a path symlinked into case
/// directories and read only when a mutation needs it.
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    Link {
        path: PathBuf,
        len: u64,
        cache: OnceLock<Arc<Vec<u8>>>,
    },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Link { len, .. } => *len,
        }
    }

    /// The bytes (read once for a link).
    pub fn bytes(&self) -> Arc<Vec<u8>> {
        match self {
            Content::Bytes(b) => Arc::clone(b),
            Content::Link { path, cache, .. } => {
                Arc::clone(cache.get_or_init(|| Arc::new(std::fs::read(path).unwrap_or_default())))
            }
        }
    }
}

pub struct SeedFile {
    pub name: String,
    pub content: Content,
}

/// A model directory to mutate.
pub struct ModelSeed {
    pub name: String,
    pub files: Vec<SeedFile>,
    /// A real reference model (big; used rarely).
    pub real: bool,
    pub n_layer: usize,
}

impl ModelSeed {
    pub fn file(&self, name: &str) -> Option<&SeedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_some()
    }

    /// Names of its safetensors files (one, or the shards).
    pub fn weight_files(&self) -> Vec<&str> {
        self.files
            .iter()
            .map(|f| f.name.as_str())
            .filter(|n| n.ends_with(".safetensors"))
            .collect()
    }

    pub fn is_sharded(&self) -> bool {
        self.has("model.safetensors.index.json")
    }
}

/// A plan file: `plan.toml` or `plan.json`.
pub struct PlanSeed {
    pub file: &'static str,
    pub text: Vec<u8>,
}

/// Strings worth inserting: keys and short string values of every JSON seed, plus a fixed list.
#[derive(Default)]
pub struct Dict {
    pub keys: Vec<String>,
    pub strings: Vec<String>,
}

pub struct Seeds {
    pub models: Vec<ModelSeed>,
    pub plans: Vec<PlanSeed>,
    pub dict: Dict,
    /// Uncompressed tiny models opened once, for compressing with fuzzed plans (index into `models`).
    pub compressible: Vec<(usize, Model)>,
    /// Where the tiny seeds were written (their tokenizers serve the compressed models of plan cases).
    pub seed_root: PathBuf,
}

impl Seeds {
    /// Indices of seeds matching `f`.
    pub fn select(&self, f: impl Fn(&ModelSeed) -> bool) -> Vec<usize> {
        (0..self.models.len())
            .filter(|&i| f(&self.models[i]))
            .collect()
    }
}

/// The tiny derivatives: name, reference directory (under the shared models, or `bundled`), dtype of the
/// weights, extra embedding rows beyond the tokenizer (as OPT and Pythia have), whether the tokenizer is
/// written as `vocab.json` + `merges.txt`, hidden width and heads. Widths are chosen so every tensor is a
/// multiple of 64 bytes: slimlm's writer then needs no `__pad__` tensors and every tensor is aligned.
const TINY: &[(&str, &str, Dt, usize, bool, usize, usize)] = &[
    ("tiny-gpt2", "ref-gpt2", Dt::F32, 0, false, 16, 2),
    ("tiny-gptneo", "ref-gptneo", Dt::F32, 0, false, 16, 2),
    ("tiny-opt", "ref-opt", Dt::F16, 12, false, 32, 2),
    (
        "tiny-opt-postln",
        "ref-opt-postln",
        Dt::F16,
        12,
        false,
        64,
        2,
    ),
    ("tiny-neox", "ref-neox", Dt::F16, 7, false, 32, 2),
    ("tiny-neox-seq", "ref-neox-seq", Dt::Bf16, 7, false, 32, 2),
    ("tiny-bloom", "ref-bloom", Dt::F16, 0, false, 96, 3),
    ("tiny-gpt2-vm", "bundled", Dt::Mixed, 0, true, 32, 2),
    // Odd widths (remainder paths of the kernels; these need `__pad__` tensors).
    ("tiny-gpt2-odd", "ref-gpt2", Dt::F32, 0, false, 12, 3),
    ("tiny-neox-odd", "ref-neox", Dt::F32, 3, false, 20, 2),
    (
        "tiny-opt-postln-odd",
        "ref-opt-postln",
        Dt::F16,
        1,
        false,
        24,
        3,
    ),
];

/// Families of the reference directories, for the fallback when a directory is missing.
fn family_of(reference: &str) -> &'static str {
    match reference {
        "ref-gptneo" => "gpt_neo",
        "ref-opt" | "ref-opt-postln" => "opt",
        "ref-neox" | "ref-neox-seq" => "gpt_neox",
        "ref-bloom" => "bloom",
        _ => "gpt2",
    }
}

/// Compressed variants: (name, source tiny seed, plan).
const COMPRESSED: &[(&str, &str, &str)] = &[
    (
        "tiny-gpt2-int8",
        "tiny-gpt2",
        "[default]\nmethod = \"int8\"\ngroup = 8\n[components.embeddings]\nmethod = \"int8\"\n",
    ),
    (
        "tiny-neox-lowrank",
        "tiny-neox",
        "s_fold = \"separate\"\n[default]\nmethod = \"lowrank\"\nrank = 4\nfactors = \"int8\"\ngroup = 4\n\
         [components.embeddings]\nmethod = \"f16\"\n",
    ),
    (
        "tiny-opt-postln-mixed",
        "tiny-opt-postln",
        "[default]\nmethod = \"lowrank\"\nrank = 2\nfactors = \"f16\"\n[components.embeddings]\nmethod = \"int8\"\n\
         [[overrides]]\nlayers = [1]\nmethod = \"int8\"\n",
    ),
    (
        "tiny-gptneo-energy",
        "tiny-gptneo",
        "[default]\nmethod = \"lowrank\"\nenergy = 0.9\nfactors = \"f32\"\n[components.mlp_in]\nmethod = \"f16\"\n",
    ),
    (
        "tiny-bloom-int8-rows",
        "tiny-bloom",
        "[default]\nmethod = \"int8\"\n",
    ),
];

/// Sharded variants: (name, source tiny seed, shards).
const SHARDED: &[(&str, &str, usize)] = &[
    ("tiny-gpt2-sharded", "tiny-gpt2", 2),
    ("tiny-neox-sharded", "tiny-neox", 3),
];

/// Plans in TOML: the documented examples and some edge cases. JSON seeds are these converted.
const PLANS_TOML: &[&str] = &[
    "svd = \"activation\"\nalpha = 0.5\ns_fold = \"sqrt\"\n[default]\nmethod = \"lowrank\"\nrank = 64\nfactors = \"int8\"\n\
     [components.embeddings]\nmethod = \"int8\"\n[[overrides]]\nlayers = [0, 5]\ncomponents = [\"mlp_out\"]\nmethod = \"keep\"\n",
    "svd = \"plain\"\nalpha = 0.5\ns_fold = \"sqrt\"\n[default]\nmethod = \"lowrank\"\nrank = 64\nfactors = \"int8\"\ngroup = 64\n\
     [components.embeddings]\nmethod = \"int8\"\n[components.mlp_out]\nmethod = \"int8\"\ngroup = 128\n\
     [[overrides]]\nlayers = [0, 5]\ncomponents = [\"attn_qkv\"]\nmethod = \"keep\"\n",
    "[default]\nmethod = \"int8\"\ngroup = 8\n[components.embeddings]\nmethod = \"f16\"\n",
    "[default]\nmethod = \"lowrank\"\nenergy = 0.9\n[components.attn_out]\nmethod = \"lowrank\"\nbudget = 0.5\nfactors = \"f16\"\n",
    "svd = \"whiten\"\n[default]\nmethod = \"lowrank\"\nrank = 2\nfactors = \"int8\"\ngroup = 2\nforce = true\n",
    "s_fold = \"separate\"\n[default]\nmethod = \"f16\"\n[[overrides]]\nmethod = \"int8\"\n[[overrides]]\nlayers = [1]\n\
     components = [\"attn_qkv\", \"mlp_in\"]\nmethod = \"lowrank\"\nrank = 3\nfactors = \"f32\"\n",
    "",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dt {
    F32,
    F16,
    Bf16,
    /// 2-D tensors F16, 1-D F32 (the bundled model's layout).
    Mixed,
}

/// Everything the seeds are made from.
pub struct Sources {
    /// `../shared/models`.
    pub shared: PathBuf,
    /// `models/ref-gpt2`.
    pub bundled: PathBuf,
    /// Where tiny seeds are written (for the self-check and for the models plan cases compress).
    pub scratch: PathBuf,
}

pub fn load(src: &Sources, log: &mut dyn FnMut(String)) -> Result<Seeds, String> {
    let mut models: Vec<ModelSeed> = Vec::new();
    let mut tensors_of: HashMap<String, Vec<OutTensor>> = HashMap::new();
    let mut rng = Rng::new(0x5eed);
    let ref_dir = |r: &str| -> PathBuf {
        if r == "bundled" {
            src.bundled.clone()
        } else {
            src.shared.join(r)
        }
    };
    // A tokenizer to fall back on when a reference directory is missing.
    let any_tokenizer = TINY
        .iter()
        .map(|t| ref_dir(t.1).join("tokenizer.json"))
        .find(|p| p.exists());
    for &(name, reference, dt, extra, vm, width, heads) in TINY {
        let dir = ref_dir(reference);
        let (config, tok_path) = if dir.join("config.json").exists() {
            let c: Value = read_json(&dir.join("config.json"))?;
            let t = dir.join("tokenizer.json");
            (
                c,
                if t.exists() {
                    Some(t)
                } else {
                    any_tokenizer.clone()
                },
            )
        } else {
            let arch = slimlm::Arch::find(family_of(reference)).map_err(|e| e.to_string())?;
            let preset = slimlm::synth::Preset::find(arch, "tiny").map_err(|e| e.to_string())?;
            log(format!(
                "note: {} not found; {name} derived from the {arch} tiny preset",
                dir.display()
            ));
            (preset.config_json(), any_tokenizer.clone())
        };
        let Some(tok_path) = tok_path else {
            log(format!("note: no tokenizer.json anywhere; {name} skipped"));
            continue;
        };
        let tok: Value = read_json(&tok_path)?;
        let (tiny_tok, remap, n_tokens) = shrink_tokenizer(&tok, 48)?;
        let cfg = shrink_config(&config, n_tokens + extra, &remap, width, heads)?;
        let parsed = Config::from_value(&cfg).map_err(|e| format!("{name}: config: {e}"))?;
        let tensors = make_tensors(&parsed, dt, &mut rng);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let st = writer::serialize(&tensors, &meta).map_err(|e| e.to_string())?;
        let mut files = vec![
            file("config.json", pretty(&cfg)),
            file("model.safetensors", st),
        ];
        if vm {
            let (vocab, merges) = vocab_merges(&tiny_tok);
            files.push(file("vocab.json", vocab));
            files.push(file("merges.txt", merges));
        } else {
            files.push(file("tokenizer.json", pretty(&tiny_tok)));
        }
        tensors_of.insert(name.to_string(), tensors);
        models.push(ModelSeed {
            name: name.to_string(),
            files,
            real: false,
            n_layer: parsed.n_layer(),
        });
    }

    // Write the tiny seeds out: the self-check opens them, the compressor reads them.
    let seed_root = src.scratch.join("seeds");
    let _ = std::fs::remove_dir_all(&seed_root);
    for m in &models {
        write_seed(&seed_root.join(&m.name), m)?;
    }
    // The odd-width seeds hold `__pad__` tensors, which `compress_model` copies into its output (a bug
    // this harness found: the output then has two tensors of one name): they are not compressed here.
    let mut compressible = Vec::new();
    for (i, m) in models.iter().enumerate() {
        match Model::open(seed_root.join(&m.name)) {
            Ok(model) if !m.name.ends_with("-odd") => compressible.push((i, model)),
            Ok(_) => {}
            Err(e) => log(format!("warning: tiny seed {} does not open: {e}", m.name)),
        }
    }

    // Compressed variants, by slimlm's compressor.
    for &(name, source, plan) in COMPRESSED {
        let Some(&(i, ref model)) = compressible.iter().find(|(i, _)| models[*i].name == source)
        else {
            continue;
        };
        let plan = Plan::from_toml(plan).map_err(|e| e.to_string())?;
        let opts = Options::default();
        match compress_model(model, &plan, &opts, &mut |_, _, _| {}) {
            Ok((bytes, _)) => {
                let files = models[i]
                    .files
                    .iter()
                    .map(|f| {
                        if f.name == "model.safetensors" {
                            file("model.safetensors", bytes.clone())
                        } else {
                            file(&f.name, f.content.bytes().to_vec())
                        }
                    })
                    .collect();
                let n_layer = models[i].n_layer;
                models.push(ModelSeed {
                    name: name.to_string(),
                    files,
                    real: false,
                    n_layer,
                });
            }
            Err(e) => log(format!("warning: compressing {source} for {name}: {e}")),
        }
    }

    // Sharded variants.
    for &(name, source, shards) in SHARDED {
        let (Some(i), Some(tensors)) = (
            models.iter().position(|m| m.name == source),
            tensors_of.get(source),
        ) else {
            continue;
        };
        let mut files: Vec<SeedFile> = models[i]
            .files
            .iter()
            .filter(|f| f.name != "model.safetensors")
            .map(|f| file(&f.name, f.content.bytes().to_vec()))
            .collect();
        let per = tensors.len().div_ceil(shards);
        let mut weight_map = Map::new();
        let mut total = 0usize;
        for (k, chunk) in tensors.chunks(per).enumerate() {
            let shard = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
            for t in chunk {
                weight_map.insert(t.name.clone(), Value::String(shard.clone()));
                total += t.data.len();
            }
            let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            files.push(file(
                &shard,
                writer::serialize(chunk, &meta).map_err(|e| e.to_string())?,
            ));
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        files.push(file("model.safetensors.index.json", pretty(&index)));
        let n_layer = models[i].n_layer;
        models.push(ModelSeed {
            name: name.to_string(),
            files,
            real: false,
            n_layer,
        });
    }

    // Self-check: every tiny seed must open and run (else the fuzzer would only ever test errors).
    for m in models.iter().skip(TINY.len()) {
        let dir = seed_root.join(&m.name);
        write_seed(&dir, m)?;
        if let Err(e) = Model::open(&dir) {
            log(format!("warning: tiny seed {} does not open: {e}", m.name));
        }
    }

    // Real seeds: every file the loader reads, linked, not copied.
    let mut real_dirs: Vec<PathBuf> = std::fs::read_dir(&src.shared)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").exists())
                .collect()
        })
        .unwrap_or_default();
    real_dirs.sort();
    if src.bundled.join("config.json").exists() {
        real_dirs.push(src.bundled.clone());
    }
    for dir in real_dirs {
        let mut files = Vec::new();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
        ] {
            let p = dir.join(f);
            if let Ok(md) = std::fs::metadata(&p) {
                let path = std::fs::canonicalize(&p).unwrap_or(p);
                files.push(SeedFile {
                    name: f.to_string(),
                    content: Content::Link {
                        path,
                        len: md.len(),
                        cache: OnceLock::new(),
                    },
                });
            }
        }
        let n_layer = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| Config::from_json(&t).ok())
            .map_or(6, |c| c.n_layer());
        let label = if dir == src.bundled {
            "bundled-ref-gpt2".to_string()
        } else {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        models.push(ModelSeed {
            name: format!("real-{label}"),
            files,
            real: true,
            n_layer,
        });
    }
    if models.iter().all(|m| m.real) {
        return Err("no tiny seed could be made (no reference model found)".into());
    }

    // Plans: TOML, their JSON forms, and the plans stored in the compressed seeds.
    let mut plans: Vec<PlanSeed> = PLANS_TOML
        .iter()
        .map(|t| PlanSeed {
            file: "plan.toml",
            text: t.as_bytes().to_vec(),
        })
        .collect();
    for t in PLANS_TOML {
        if let Ok(p) = Plan::from_toml(t) {
            plans.push(PlanSeed {
                file: "plan.json",
                text: p.to_json().into_bytes(),
            });
        }
    }
    for m in &models {
        if let Some(f) = m.file("model.safetensors").filter(|_| !m.real) {
            let b = f.content.bytes();
            if let Some(p) = header_json(&b).as_ref().and_then(|h| {
                h.get("__metadata__")?
                    .get("slimlm.plan")?
                    .as_str()
                    .map(String::from)
            }) {
                plans.push(PlanSeed {
                    file: "plan.json",
                    text: p.into_bytes(),
                });
            }
        }
    }

    let dict = harvest(&models, &plans);
    Ok(Seeds {
        models,
        plans,
        dict,
        compressible,
        seed_root,
    })
}

fn file(name: &str, bytes: Vec<u8>) -> SeedFile {
    SeedFile {
        name: name.to_string(),
        content: Content::Bytes(Arc::new(bytes)),
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn read_json(p: &Path) -> Result<Value, String> {
    let t = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_slice(&t).map_err(|e| format!("{}: {e}", p.display()))
}

/// Writes every file of `m` into `dir` (created).
pub fn write_seed(dir: &Path, m: &ModelSeed) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for f in &m.files {
        let p = dir.join(&f.name);
        std::fs::write(&p, &*f.content.bytes()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// The JSON header of safetensors bytes, if it parses.
pub fn header_json(b: &[u8]) -> Option<Value> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()
}

/// The parts of a merge, in either format (`["a", "b"]` or `"a b"`).
fn merge_parts(m: &Value) -> Option<(String, String)> {
    match m {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_str()?.into(), a[1].as_str()?.into())),
        Value::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
        _ => None,
    }
}

/// A tokenizer with the same pipeline and specials but only the one-character tokens and the first
/// `keep_merges` usable merges; ids renumbered in the original order, added tokens numbered as Hugging
/// Face does. Returns it, the map old id → new id, and its number of ids.
fn shrink_tokenizer(
    t: &Value,
    keep_merges: usize,
) -> Result<(Value, HashMap<u64, u64>, usize), String> {
    let model = t.get("model").ok_or("tokenizer.json without model")?;
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("tokenizer.json without model.vocab")?;
    let old: HashMap<&str, u64> = vocab
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()?)))
        .collect();
    let added = t
        .get("added_tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut keep: HashSet<String> = old
        .keys()
        .filter(|k| k.chars().count() == 1)
        .map(|k| k.to_string())
        .collect();
    for a in &added {
        if let Some(c) = a.get("content").and_then(Value::as_str) {
            if old.contains_key(c) {
                keep.insert(c.to_string());
            }
        }
    }
    let mut merges = Vec::new();
    if let Some(ms) = model.get("merges").and_then(Value::as_array) {
        for m in ms.iter().take(20_000) {
            if merges.len() >= keep_merges {
                break;
            }
            let Some((a, b)) = merge_parts(m) else {
                continue;
            };
            let ab = format!("{a}{b}");
            if keep.contains(&a) && keep.contains(&b) && old.contains_key(ab.as_str()) {
                keep.insert(ab);
                merges.push(m.clone());
            }
        }
    }
    let mut order: Vec<&str> = keep.iter().map(String::as_str).collect();
    order.sort_by_key(|k| old[k]);
    let new_vocab: Map<String, Value> = order
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), json!(i)))
        .collect();
    let mut by_content: HashMap<String, u64> = order
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), i as u64))
        .collect();
    let mut next = order.len() as u64;
    let mut new_added = Vec::new();
    let mut old_to_content: HashMap<u64, String> =
        old.iter().map(|(k, &v)| (v, k.to_string())).collect();
    for mut a in added {
        let Some(c) = a.get("content").and_then(Value::as_str).map(String::from) else {
            continue;
        };
        if let Some(id) = a.get("id").and_then(Value::as_u64) {
            old_to_content.insert(id, c.clone());
        }
        let id = match by_content.get(&c) {
            Some(&id) => id,
            None => {
                next += 1;
                by_content.insert(c.clone(), next - 1);
                next - 1
            }
        };
        a["id"] = json!(id);
        new_added.push(a);
    }
    let mut out = t.clone();
    out["model"]["vocab"] = Value::Object(new_vocab);
    out["model"]["merges"] = Value::Array(merges);
    out["added_tokens"] = Value::Array(new_added);
    if let Some(pp) = out.get_mut("post_processor") {
        remap_post(pp, &by_content);
    }
    let remap = old_to_content
        .into_iter()
        .filter_map(|(old_id, c)| Some((old_id, *by_content.get(&c)?)))
        .collect();
    Ok((out, remap, next as usize))
}

/// Renumbers the special tokens of a post-processor by their text.
fn remap_post(v: &mut Value, ids: &HashMap<String, u64>) {
    match v {
        Value::Object(o) => {
            let tokens: Option<Vec<String>> = o.get("tokens").and_then(Value::as_array).map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            });
            if let (Some(tokens), Some(Value::Array(list))) = (tokens, o.get_mut("ids")) {
                for (slot, t) in list.iter_mut().zip(tokens) {
                    if let Some(&id) = ids.get(&t) {
                        *slot = json!(id);
                    }
                }
            }
            for (_, x) in o.iter_mut() {
                remap_post(x, ids);
            }
        }
        Value::Array(a) => {
            if let [Value::String(s), n @ Value::Number(_)] = a.as_mut_slice() {
                if let Some(&id) = ids.get(s.as_str()) {
                    *n = json!(id);
                }
            }
            for x in a {
                remap_post(x, ids);
            }
        }
        _ => {}
    }
}

/// A reference `config.json` with every key kept and the sizes shrunk; token ids renumbered.
fn shrink_config(
    c: &Value,
    vocab: usize,
    remap: &HashMap<u64, u64>,
    d: usize,
    heads: usize,
) -> Result<Value, String> {
    let mut c = c.clone();
    let o = c.as_object_mut().ok_or("config.json is not an object")?;
    let model_type = o
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("gpt2")
        .to_string();
    let projects = o
        .get("word_embed_proj_dim")
        .is_some_and(|p| Some(p) != o.get("hidden_size"));
    let sizes: Vec<(&str, Value)> = match model_type.as_str() {
        "gpt2" => vec![
            ("n_embd", json!(d)),
            ("n_head", json!(heads)),
            ("n_layer", json!(2)),
            ("n_positions", json!(16)),
        ],
        "gpt_neo" => vec![
            ("hidden_size", json!(d)),
            ("num_heads", json!(heads)),
            ("num_layers", json!(2)),
            ("max_position_embeddings", json!(16)),
            ("intermediate_size", json!(4 * d)),
            ("window_size", json!(4)),
            ("attention_types", json!([[["global", "local"], 1]])),
            ("attention_layers", json!(["global", "local"])),
        ],
        "opt" => vec![
            ("hidden_size", json!(d)),
            ("num_attention_heads", json!(heads)),
            ("num_hidden_layers", json!(2)),
            ("ffn_dim", json!(4 * d)),
            ("max_position_embeddings", json!(16)),
            (
                "word_embed_proj_dim",
                json!(if projects { d / 2 } else { d }),
            ),
        ],
        "gpt_neox" => vec![
            ("hidden_size", json!(d)),
            ("num_attention_heads", json!(heads)),
            ("num_hidden_layers", json!(2)),
            ("intermediate_size", json!(4 * d)),
            ("max_position_embeddings", json!(16)),
        ],
        "bloom" => {
            o.remove("n_embed");
            o.remove("num_attention_heads");
            o.remove("num_hidden_layers");
            vec![
                ("hidden_size", json!(d)),
                ("n_head", json!(heads)),
                ("n_layer", json!(2)),
            ]
        }
        other => return Err(format!("unknown model_type {other}")),
    };
    for (k, v) in sizes {
        o.insert(k.to_string(), v);
    }
    o.insert("vocab_size".into(), json!(vocab));
    for (k, v) in o.iter_mut() {
        if !k.ends_with("_token_id") {
            continue;
        }
        let map = |x: &Value| match x.as_u64() {
            Some(id) => json!(remap.get(&id).copied().unwrap_or(0)),
            None => x.clone(),
        };
        let new = match &*v {
            Value::Array(a) => Value::Array(a.iter().map(map).collect()),
            x => map(x),
        };
        *v = new;
    }
    Ok(c)
}

/// `vocab.json` and `merges.txt` of a tokenizer.
fn vocab_merges(t: &Value) -> (Vec<u8>, Vec<u8>) {
    let vocab = serde_json::to_vec(&t["model"]["vocab"]).unwrap_or_default();
    let mut merges = String::from("#version: 0.2\n");
    for m in t["model"]["merges"].as_array().into_iter().flatten() {
        if let Some((a, b)) = merge_parts(m) {
            merges.push_str(&format!("{a} {b}\n"));
        }
    }
    (vocab, merges.into_bytes())
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    Ones,
    Zeros,
}

/// The tensors a model of `c` holds (as `slimlm synth` makes them), in `dt`.
fn make_tensors(c: &Config, dt: Dt, rng: &mut Rng) -> Vec<OutTensor> {
    let names = &c.family().names;
    let root = names.roots[0];
    let (d, e) = (c.d_model, c.embed_dim);
    let mut t: Vec<(String, Vec<usize>, Init)> = vec![(
        format!("{root}{}.weight", names.embed),
        vec![c.vocab_size, e],
        Init::Normal,
    )];
    if let (Some(rows), Some(p)) = (c.position_rows(), names.positions) {
        t.push((format!("{root}{p}.weight"), vec![rows, d], Init::Normal));
    }
    let norm = |t: &mut Vec<(String, Vec<usize>, Init)>, base: String| {
        t.push((format!("{base}.weight"), vec![d], Init::Ones));
        t.push((format!("{base}.bias"), vec![d], Init::Zeros));
    };
    if let (true, Some(n)) = (c.embed_norm, names.embed_norm) {
        norm(&mut t, format!("{root}{n}"));
    }
    if let (true, Some(pi), Some(po)) = (c.projects(), names.project_in, names.project_out) {
        t.push((format!("{root}{pi}.weight"), vec![d, e], Init::Normal));
        t.push((format!("{root}{po}.weight"), vec![e, d], Init::Normal));
    }
    let sites = linear_sites(c, root);
    for layer in 0..c.n_layer() {
        let h = block_prefix(c, root, layer);
        norm(&mut t, format!("{h}.{}", names.ln1));
        norm(&mut t, format!("{h}.{}", names.ln2));
        for s in sites.iter().filter(|s| s.layer == layer) {
            let shape = match s.layout {
                slimlm::kernels::Layout::OutIn => vec![s.out_dim, s.in_dim],
                slimlm::kernels::Layout::InOut => vec![s.in_dim, s.out_dim],
            };
            t.push((format!("{}.weight", s.base), shape, Init::Normal));
            if s.bias {
                t.push((format!("{}.bias", s.base), vec![s.out_dim], Init::Zeros));
            }
        }
    }
    if let (true, Some(n)) = (c.final_norm, names.final_norm) {
        norm(&mut t, format!("{root}{n}"));
    }
    if !c.tie_word_embeddings {
        t.push((
            format!("{}.weight", names.lm_head),
            vec![c.vocab_size, e],
            Init::Normal,
        ));
    }
    t.into_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = match init {
                Init::Normal => (0..n).map(|_| (rng.f64() as f32 - 0.5) * 0.07).collect(),
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            let two_d = shape.len() == 2;
            let (dtype, data): (DType, Vec<u8>) = match dt {
                Dt::F32 => (DType::F32, f32_bytes(&v)),
                Dt::Mixed if !two_d => (DType::F32, f32_bytes(&v)),
                Dt::F16 | Dt::Mixed => (
                    DType::F16,
                    v.iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                Dt::Bf16 => (
                    DType::BF16,
                    v.iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
            };
            OutTensor {
                name,
                dtype,
                shape,
                data,
            }
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Keys and short strings of every JSON seed (vocabularies excepted), plus a fixed list.
fn harvest(models: &[ModelSeed], plans: &[PlanSeed]) -> Dict {
    let mut keys: HashSet<String> = HashSet::new();
    let mut strings: HashSet<String> = HashSet::new();
    fn walk(v: &Value, keys: &mut HashSet<String>, strings: &mut HashSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if o.len() < 200 {
                        keys.insert(k.clone());
                    }
                    if k != "vocab" && k != "merges" {
                        walk(x, keys, strings);
                    }
                }
            }
            Value::Array(a) => {
                for x in a.iter().take(64) {
                    walk(x, keys, strings);
                }
            }
            Value::String(s) if s.len() <= 64 => {
                strings.insert(s.clone());
            }
            _ => {}
        }
    }
    for m in models.iter().filter(|m| !m.real) {
        for f in &m.files {
            let b = f.content.bytes();
            let v = if f.name.ends_with(".safetensors") {
                header_json(&b)
            } else if f.name.ends_with(".json") {
                serde_json::from_slice(&b).ok()
            } else {
                None
            };
            if let Some(v) = v {
                walk(&v, &mut keys, &mut strings);
            }
        }
    }
    for p in plans {
        let v: Option<Value> = if p.file.ends_with(".json") {
            serde_json::from_slice(&p.text).ok()
        } else {
            std::str::from_utf8(&p.text)
                .ok()
                .and_then(|t| toml::from_str::<toml::Table>(t).ok())
                .and_then(|t| serde_json::to_value(t).ok())
        };
        if let Some(v) = v {
            walk(&v, &mut keys, &mut strings);
        }
    }
    for s in EXTRA_STRINGS {
        strings.insert(s.to_string());
    }
    for k in EXTRA_KEYS {
        keys.insert(k.to_string());
    }
    let mut keys: Vec<String> = keys.into_iter().collect();
    let mut strings: Vec<String> = strings.into_iter().collect();
    keys.sort();
    strings.sort();
    Dict { keys, strings }
}

const EXTRA_STRINGS: &[&str] = &[
    "gpt2",
    "gpt_neo",
    "opt",
    "gpt_neox",
    "bloom",
    "llama",
    "gpt-neo",
    "gpt-neox",
    "BPE",
    "WordPiece",
    "Unigram",
    "ByteLevel",
    "Split",
    "Sequence",
    "NFC",
    "NFD",
    "NFKC",
    "NFKD",
    "Lowercase",
    "Strip",
    "Prepend",
    "Replace",
    "Metaspace",
    "Whitespace",
    "TemplateProcessing",
    "RobertaProcessing",
    "BertProcessing",
    "Isolated",
    "Removed",
    "MergedWithPrevious",
    "MergedWithNext",
    "Contiguous",
    "global",
    "local",
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "silu",
    "tanh",
    "default",
    "linear",
    "dynamic",
    "keep",
    "f16",
    "int8",
    "lowrank",
    "f32",
    "i8",
    "plain",
    "activation",
    "whiten",
    "vh",
    "sqrt",
    "separate",
    "attn_qkv",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "embeddings",
    "attn_q",
    "lm_head",
    "F32",
    "F16",
    "BF16",
    "I8",
    "U8",
    "I16",
    "I32",
    "I64",
    "U16",
    "U32",
    "U64",
    "F64",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
    "F8_E8M0",
    "F4",
    "F6_E2M3",
    "C64",
    "pt",
    "1",
    "2",
    "0",
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "config.json",
    "tokenizer.json",
    "..",
    "/",
    "../model.safetensors",
    "",
    " ",
    "  ",
    "\u{0}",
    "é",
    "e\u{301}",
    "日本語",
    "🦀",
    "\u{FEFF}",
    "\u{202E}",
    "\u{FFFD}",
    "\u{10FFFF}",
    "Ġ",
    "Ċ",
    "<|endoftext|>",
    "</s>",
    "<s>",
    "<unk>",
    "<pad>",
    "NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "-inf",
    "1e999",
    "0x10",
    "-1",
    "A",
    "(",
    ")",
    "[",
    "\\",
    "\\p{L}+",
    "(a+)+$",
    "a{100000}",
    "(?i)",
    "\\b",
    ".*",
    "[^\\s]+",
    "\\s+(?!\\S)",
    "(?<x>a)",
    "x{1000}{1000}",
    "[[:alpha:]]",
    "\\p{Foo}",
    "A",
    "B",
];

const EXTRA_KEYS: &[&str] = &[
    "__metadata__",
    "dtype",
    "shape",
    "data_offsets",
    "weight_map",
    "metadata",
    "total_size",
    "model_type",
    "vocab_size",
    "n_layer",
    "n_head",
    "n_embd",
    "n_positions",
    "n_inner",
    "hidden_size",
    "num_heads",
    "num_layers",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "ffn_dim",
    "max_position_embeddings",
    "word_embed_proj_dim",
    "window_size",
    "attention_types",
    "attention_layers",
    "rotary_pct",
    "rotary_emb_base",
    "rope_theta",
    "partial_rotary_factor",
    "rope_parameters",
    "rope_scaling",
    "rope_type",
    "use_parallel_residual",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "tie_word_embeddings",
    "eos_token_id",
    "bos_token_id",
    "do_layer_norm_before",
    "_remove_final_layer_norm",
    "enable_bias",
    "attention_bias",
    "layer_norm_elementwise_affine",
    "activation_function",
    "hidden_act",
    "add_cross_attention",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "apply_residual_connection_post_layernorm",
    "n_embed",
    "type",
    "pattern",
    "Regex",
    "String",
    "behavior",
    "invert",
    "add_prefix_space",
    "trim_offsets",
    "use_regex",
    "normalizers",
    "pretokenizers",
    "special_tokens",
    "single",
    "pair",
    "ids",
    "tokens",
    "id",
    "content",
    "single_word",
    "lstrip",
    "rstrip",
    "normalized",
    "special",
    "unk_token",
    "dropout",
    "fuse_unk",
    "byte_fallback",
    "ignore_merges",
    "continuing_subword_prefix",
    "end_of_word_suffix",
    "sep",
    "cls",
    "prepend_scheme",
    "svd",
    "alpha",
    "s_fold",
    "default",
    "components",
    "overrides",
    "method",
    "rank",
    "energy",
    "budget",
    "factors",
    "group",
    "force",
    "layers",
    "slimlm.plan",
    "slimlm.format_version",
    "slimlm.matrices",
    "slimlm.source_bytes",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrunk_tokenizer_numbers_added_tokens_after_the_vocabulary() {
        let t = json!({
            "added_tokens": [{"id": 5, "content": "<x>"}, {"id": 0, "content": "a"}],
            "post_processor": {"special_tokens": {"<x>": {"id": "<x>", "ids": [5], "tokens": ["<x>"]}}},
            "model": {"vocab": {"a": 0, "b": 1, "ab": 2, "abc": 3, "c": 4}, "merges": [["a", "b"], "ab c"]}
        });
        let (s, remap, n) = shrink_tokenizer(&t, 10).unwrap();
        assert_eq!(n, 6);
        assert_eq!(s["added_tokens"][0]["id"], json!(5));
        assert_eq!(
            s["post_processor"]["special_tokens"]["<x>"]["ids"],
            json!([5])
        );
        assert_eq!(remap[&5], 5);
        assert_eq!(s["model"]["merges"].as_array().unwrap().len(), 2);
    }
}
