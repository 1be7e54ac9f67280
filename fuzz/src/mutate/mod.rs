//! Cases: a target, a seed model directory and the files the mutators changed.

pub mod bytes;
pub mod json;
pub mod st;
pub mod text;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::rng::Rng;
use crate::seeds::{ModelSeed, Seeds};

/// What a case mutates (and so which API it drives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Safetensors,
    Config,
    Tokenizer,
    VocabMerges,
    Index,
    Plan,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Safetensors,
        Target::Config,
        Target::Tokenizer,
        Target::VocabMerges,
        Target::Index,
        Target::Plan,
    ];

    /// Share of the cases of `--target all`.
    fn weight(self) -> u32 {
        match self {
            Target::Safetensors => 30,
            Target::Config => 20,
            Target::Tokenizer => 15,
            Target::VocabMerges => 8,
            Target::Index => 10,
            Target::Plan => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::Config => "config",
            Target::Tokenizer => "tokenizer",
            Target::VocabMerges => "vocab-merges",
            Target::Index => "index",
            Target::Plan => "plan",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// One input: the seed's files with `changes` applied (`None`: the file is removed).
#[derive(Clone, Debug)]
pub struct Case {
    pub target: Target,
    /// Index of the seed model (for plans: of the tiny model the plan compresses).
    pub seed: usize,
    pub changes: Vec<(String, Option<Arc<Vec<u8>>>)>,
    /// Plans: the layer count to validate against.
    pub n_layer: usize,
    /// The text to encode (a sample text, or pieces that stress normalizers, pre-tokenizers and
    /// added tokens put together).
    pub text: String,
    /// Ids to decode and stream (in and beyond the vocabulary of the tiny tokenizers).
    pub ids: Vec<u32>,
    /// Sample (rather than greedy) in the bounded generation.
    pub random_sampling: bool,
    /// Plans: also compress a tiny model by the plan and run the result.
    pub deep: bool,
}

impl Case {
    pub fn changed(&self, name: &str) -> Option<&Option<Arc<Vec<u8>>>> {
        self.changes.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// Short texts for the bounded use of a loaded model or tokenizer: ASCII, unicode needing NFC, runs of
/// spaces (GPT-NeoX's added tokens), special tokens written in the text, an empty string.
pub const TEXTS: &[&str] = &[
    "Hello world",
    "  Cafe\u{301}  12345 <|endoftext|>",
    "</s>日本語 ok\n\n\tb",
    "",
    "<s>a</s><unk><pad>",
    "\u{FEFF}🦀 \u{202E}x\u{0}y",
    "                    spaces",
];

/// Pieces of text that exercise normalizers (combining marks, compatibility forms), the GPT-2 pattern
/// (contractions, digits, runs of spaces), byte-level BPE (every UTF-8 length) and added tokens written in
/// the text, whole or cut.
const PIECES: &[&str] = &[
    "<|endoftext|>",
    "</s>",
    "<s>",
    "<unk>",
    "<pad>",
    "<|endoftext",
    "|>",
    "<|padding|>",
    "  ",
    "   ",
    "                         ",
    "\n",
    "\n\n",
    "\t",
    " ",
    "a",
    "the",
    "The",
    "é",
    "e\u{301}",
    "ﬁ",
    "Å",
    "A\u{30A}",
    "日本",
    "🦀",
    "\u{200D}",
    "\u{FEFF}",
    "'s",
    "'ll",
    "'S",
    "123",
    "3.14",
    "!!",
    "...",
    "\u{0}",
    "\r\n",
    "x",
    "ab",
    "Ġ",
    "Ċ",
    "\u{10FFFF}",
    "\u{E000}",
    "ǅ",
    "ß",
    "İ",
    "\u{301}",
    "।",
    "。",
    "Ω",
    "Ω",
    "\u{2028}",
    "\u{85}",
    "\u{A0}",
    "<x>",
    "▁",
];

/// A sample text, or up to 12 pieces put together.
fn random_text(rng: &mut Rng) -> String {
    if rng.chance(1, 3) {
        return rng.pick(TEXTS).to_string();
    }
    (0..rng.range(1, 12)).map(|_| *rng.pick(PIECES)).collect()
}

/// Makes cases; keeps, per (target, seed, file), a few mutated inputs that loaded fine, to mutate further.
pub struct Generator<'s> {
    seeds: &'s Seeds,
    /// Seeds each target draws from: (tiny, real).
    pools: HashMap<Target, (Vec<usize>, Vec<usize>)>,
    config_donors: Vec<Value>,
    tokenizer_donors: Vec<Value>,
    plan_donors: Vec<Value>,
    vocab_tokens: Vec<String>,
    corpus: HashMap<CorpusKey, Vec<Arc<Vec<u8>>>>,
}

const CORPUS_PER_KEY: usize = 16;

/// (target, seed, file name).
type CorpusKey = (Target, usize, String);

impl<'s> Generator<'s> {
    pub fn new(seeds: &'s Seeds) -> Generator<'s> {
        let tiny_real = |f: &dyn Fn(&ModelSeed) -> bool| {
            (
                seeds.select(|m| !m.real && f(m)),
                seeds.select(|m| m.real && f(m)),
            )
        };
        // The real model whose weights are smallest: the only one whose safetensors are rewritten.
        let smallest_real = seeds
            .select(|m| m.real && m.has("model.safetensors"))
            .into_iter()
            .min_by_key(|&i| {
                seeds.models[i]
                    .file("model.safetensors")
                    .map_or(u64::MAX, |f| f.content.len())
            });
        let mut pools = HashMap::new();
        pools.insert(
            Target::Safetensors,
            (
                seeds.select(|m| !m.real),
                smallest_real.into_iter().collect(),
            ),
        );
        pools.insert(Target::Config, tiny_real(&|m| m.has("config.json")));
        pools.insert(Target::Tokenizer, tiny_real(&|m| m.has("tokenizer.json")));
        pools.insert(
            Target::VocabMerges,
            tiny_real(&|m| m.has("vocab.json") && m.has("merges.txt") && !m.has("tokenizer.json")),
        );
        pools.insert(Target::Index, tiny_real(&|m| m.is_sharded()));
        pools.insert(
            Target::Plan,
            (
                seeds.compressible.iter().map(|(i, _)| *i).collect(),
                Vec::new(),
            ),
        );
        let parse_all = |name: &str| -> Vec<Value> {
            seeds
                .models
                .iter()
                .filter(|m| !m.real)
                .filter_map(|m| serde_json::from_slice(&m.file(name)?.content.bytes()).ok())
                .collect()
        };
        let plan_donors = seeds
            .plans
            .iter()
            .filter(|p| p.file.ends_with(".json"))
            .filter_map(|p| serde_json::from_slice(&p.text).ok())
            .collect();
        let vocab_tokens = seeds
            .models
            .iter()
            .filter(|m| !m.real)
            .filter_map(|m| m.file("vocab.json"))
            .filter_map(|f| {
                serde_json::from_slice::<HashMap<String, Value>>(&f.content.bytes()).ok()
            })
            .flat_map(|v| v.into_keys())
            .collect();
        Generator {
            seeds,
            pools,
            config_donors: parse_all("config.json"),
            tokenizer_donors: parse_all("tokenizer.json"),
            plan_donors,
            vocab_tokens,
            corpus: HashMap::new(),
        }
    }

    /// Targets with at least one seed.
    pub fn available(&self, t: Target) -> bool {
        self.pools
            .get(&t)
            .is_some_and(|(tiny, real)| !tiny.is_empty() || !real.is_empty())
    }

    pub fn pick_target(&self, rng: &mut Rng, only: Option<Target>) -> Target {
        if let Some(t) = only {
            return t;
        }
        let weights: Vec<u32> = Target::ALL
            .iter()
            .map(|&t| if self.available(t) { t.weight() } else { 0 })
            .collect();
        Target::ALL[rng.weighted(&weights)]
    }

    /// A seed for `target`: a tiny one, or rarely (`1/real_odds`) a real one.
    fn pick_seed(&self, target: Target, rng: &mut Rng, real_odds: u32) -> usize {
        let (tiny, real) = &self.pools[&target];
        if !real.is_empty() && (tiny.is_empty() || rng.chance(1, real_odds)) {
            *rng.pick(real)
        } else {
            *rng.pick(tiny)
        }
    }

    /// The bytes to mutate: the seed's file, or a kept mutated input that loaded fine.
    fn base(&self, target: Target, seed: usize, file: &str, rng: &mut Rng) -> Arc<Vec<u8>> {
        if let Some(kept) = self.corpus.get(&(target, seed, file.to_string())) {
            if !kept.is_empty() && rng.chance(1, 3) {
                return Arc::clone(rng.pick(kept));
            }
        }
        self.seeds.models[seed]
            .file(file)
            .map(|f| f.content.bytes())
            .unwrap_or_default()
    }

    /// Remembers the mutated files of a case that ended in Ok.
    pub fn keep(&mut self, case: &Case) {
        for (name, content) in &case.changes {
            let Some(c) = content else { continue };
            if c.len() > 1 << 20 || self.seeds.models[case.seed].real {
                continue;
            }
            let list = self
                .corpus
                .entry((case.target, case.seed, name.clone()))
                .or_default();
            if list.len() < CORPUS_PER_KEY {
                list.push(Arc::clone(c));
            } else {
                let i = (c.len() * 31 + list.len()) % CORPUS_PER_KEY;
                list[i] = Arc::clone(c);
            }
        }
    }

    pub fn generate(&self, target: Target, rng: &mut Rng) -> Case {
        let dict = &self.seeds.dict;
        let mut case = Case {
            target,
            seed: 0,
            changes: Vec::new(),
            n_layer: 0,
            text: random_text(rng),
            ids: (0..rng.below(6))
                .map(|_| {
                    *rng.pick(&[
                        0u32, 1, 2, 3, 32, 200, 255, 256, 257, 300, 320, 400, 1000, 65535,
                    ])
                })
                .collect(),
            random_sampling: rng.chance(1, 4),
            deep: rng.chance(1, 3),
        };
        match target {
            Target::Safetensors => {
                let seed = self.pick_seed(target, rng, 2000);
                let files = self.seeds.models[seed].weight_files();
                let name = rng.pick(&files).to_string();
                let base = self.base(target, seed, &name, rng);
                case.seed = seed;
                case.changes
                    .push((name, Some(Arc::new(st::mutate(&base, rng, dict)))));
                if rng.chance(1, 10) {
                    let c = self.mutate_json_file(
                        target,
                        seed,
                        "config.json",
                        rng,
                        &self.config_donors,
                    );
                    case.changes.push(("config.json".into(), Some(c)));
                }
            }
            Target::Config => {
                let seed = self.pick_seed(target, rng, 500);
                case.seed = seed;
                let c =
                    self.mutate_json_file(target, seed, "config.json", rng, &self.config_donors);
                case.changes.push(("config.json".into(), Some(c)));
            }
            Target::Tokenizer => {
                let seed = self.pick_seed(target, rng, 1000);
                case.seed = seed;
                if rng.chance(1, 100) {
                    case.changes.push(("tokenizer.json".into(), None));
                } else {
                    let c = self.mutate_tokenizer(seed, rng);
                    case.changes.push(("tokenizer.json".into(), Some(c)));
                }
            }
            Target::VocabMerges => {
                let seed = self.pick_seed(target, rng, 1000);
                case.seed = seed;
                let which = rng.below(10);
                if which < 5 || which == 9 {
                    let c = self.mutate_json_file(target, seed, "vocab.json", rng, &[]);
                    case.changes.push(("vocab.json".into(), Some(c)));
                }
                if which >= 5 {
                    let base = self.base(target, seed, "merges.txt", rng);
                    let mut m = if rng.chance(4, 5) {
                        text::mutate_merges(&base, rng, &self.vocab_tokens)
                    } else {
                        base.to_vec()
                    };
                    if rng.chance(1, 5) {
                        let k = rng.small_count(4);
                        let max = m.len() * 2 + 4096;
                        bytes::mutate(&mut m, rng, &self.vocab_tokens, None, k, max);
                    }
                    case.changes.push(("merges.txt".into(), Some(Arc::new(m))));
                }
                if rng.chance(1, 100) {
                    let f = if rng.chance(1, 2) {
                        "vocab.json"
                    } else {
                        "merges.txt"
                    };
                    case.changes.retain(|(n, _)| n != f);
                    case.changes.push((f.into(), None));
                }
            }
            Target::Index => {
                let seed = self.pick_seed(target, rng, 1000);
                case.seed = seed;
                let r = rng.below(10);
                if r < 7 {
                    let c = self.mutate_index(seed, rng);
                    case.changes
                        .push(("model.safetensors.index.json".into(), Some(c)));
                }
                if r >= 6 {
                    let shards = self.seeds.models[seed].weight_files();
                    let shard = rng.pick(&shards).to_string();
                    if r == 9 {
                        case.changes.push((shard, None));
                    } else {
                        let base = self.base(target, seed, &shard, rng);
                        case.changes
                            .push((shard, Some(Arc::new(st::mutate(&base, rng, dict)))));
                    }
                }
            }
            Target::Plan => {
                let (tiny, _) = &self.pools[&target];
                case.seed = if tiny.is_empty() { 0 } else { *rng.pick(tiny) };
                let p = rng.pick(&self.seeds.plans);
                let text = self
                    .corpus
                    .get(&(target, usize::MAX, p.file.to_string()))
                    .filter(|k| !k.is_empty() && rng.chance(1, 3))
                    .map(|k| rng.pick(k).to_vec())
                    .unwrap_or_else(|| p.text.clone());
                let donors: Vec<&Value> = self.plan_donors.iter().collect();
                let structured = if p.file.ends_with(".toml") {
                    text::mutate_toml(&text, rng, dict, &donors).filter(|_| rng.chance(3, 4))
                } else {
                    serde_json::from_slice::<Value>(&text)
                        .ok()
                        .filter(|_| rng.chance(4, 5))
                        .map(|mut v| {
                            let k = rng.small_count(4);
                            json::mutate(&mut v, rng, dict, &donors, k);
                            json::to_bytes(&v, rng)
                        })
                };
                let mut out = structured.unwrap_or(text);
                if rng.chance(1, 4) {
                    let k = rng.small_count(3);
                    let max = out.len() * 2 + 1024;
                    bytes::mutate(&mut out, rng, &dict.keys, None, k, max);
                }
                case.changes.push((p.file.to_string(), Some(Arc::new(out))));
                case.n_layer = match rng.below(8) {
                    0 => 0,
                    1 => 1,
                    2 => 6,
                    3 => *rng.pick(&[1024, 1 << 20, usize::MAX]),
                    _ => self.seeds.models.get(case.seed).map_or(2, |m| m.n_layer),
                };
            }
        }
        case
    }

    /// Plans are kept by file name, not by seed.
    pub fn keep_plan(&mut self, case: &Case) {
        for (name, content) in &case.changes {
            if let Some(c) = content {
                let list = self
                    .corpus
                    .entry((Target::Plan, usize::MAX, name.clone()))
                    .or_default();
                if list.len() < CORPUS_PER_KEY {
                    list.push(Arc::clone(c));
                } else {
                    let i = (c.len() * 31 + list.len()) % CORPUS_PER_KEY;
                    list[i] = Arc::clone(c);
                }
            }
        }
    }

    /// A JSON file mutated as JSON (mostly) and/or as bytes.
    fn mutate_json_file(
        &self,
        target: Target,
        seed: usize,
        name: &str,
        rng: &mut Rng,
        donors: &[Value],
    ) -> Arc<Vec<u8>> {
        let base = self.base(target, seed, name, rng);
        let dict = &self.seeds.dict;
        let structured = rng.chance(4, 5);
        let mut out = match serde_json::from_slice::<Value>(&base)
            .ok()
            .filter(|_| structured)
        {
            Some(mut v) => {
                let donors: Vec<&Value> = donors.iter().collect();
                let k = rng.small_count(4);
                json::mutate(&mut v, rng, dict, &donors, k);
                json::to_bytes(&v, rng)
            }
            None => base.to_vec(),
        };
        if !structured || rng.chance(1, 8) {
            let k = rng.small_count(4);
            let max = out.len() * 2 + 4096;
            bytes::mutate(&mut out, rng, &dict.keys, None, k, max);
        }
        Arc::new(out)
    }

    /// `tokenizer.json`: generic JSON mutations plus some that know the format.
    fn mutate_tokenizer(&self, seed: usize, rng: &mut Rng) -> Arc<Vec<u8>> {
        let base = self.base(Target::Tokenizer, seed, "tokenizer.json", rng);
        let Ok(mut v) = serde_json::from_slice::<Value>(&base) else {
            let mut out = base.to_vec();
            let max = out.len() * 2 + 4096;
            bytes::mutate(&mut out, rng, &self.seeds.dict.keys, None, 2, max);
            return Arc::new(out);
        };
        if rng.chance(1, 5) {
            let mut out = base.to_vec();
            let k = rng.small_count(4);
            let max = out.len() * 2 + 4096;
            bytes::mutate(&mut out, rng, &self.seeds.dict.keys, None, k, max);
            return Arc::new(out);
        }
        for _ in 0..rng.small_count(3) {
            if rng.chance(1, 3) {
                tokenizer_op(&mut v, rng);
            } else {
                let donors: Vec<&Value> = self.tokenizer_donors.iter().collect();
                json::mutate(&mut v, rng, &self.seeds.dict, &donors, 1);
            }
        }
        Arc::new(json::to_bytes(&v, rng))
    }

    /// `model.safetensors.index.json`: shard names that escape, repeat, are missing or are other files.
    fn mutate_index(&self, seed: usize, rng: &mut Rng) -> Arc<Vec<u8>> {
        let base = self.base(Target::Index, seed, "model.safetensors.index.json", rng);
        let Ok(mut v) = serde_json::from_slice::<Value>(&base) else {
            return Arc::new(base.to_vec());
        };
        if rng.chance(1, 2) {
            if let Some(map) = v.get_mut("weight_map").and_then(Value::as_object_mut) {
                let n = map.len();
                let shards: Vec<String> = map
                    .values()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect();
                match rng.below(6) {
                    0 if n > 0 => {
                        let k = map.keys().nth(rng.below(n)).cloned().unwrap_or_default();
                        let name = rng
                            .pick(&[
                                "",
                                ".",
                                "..",
                                "../model.safetensors",
                                "/etc/hostname",
                                "config.json",
                                "tokenizer.json",
                                "model.safetensors.index.json",
                                "missing.safetensors",
                                "a\u{0}b",
                                "model-00001-of-00002.safetensors ",
                                "MODEL-00001-OF-00002.SAFETENSORS",
                                "model-00003-of-00002.safetensors",
                                "sub/dir.safetensors",
                                "\\x.safetensors",
                            ])
                            .to_string();
                        map.insert(k, Value::String(name));
                    }
                    1 if n > 0 && !shards.is_empty() => {
                        // Every tensor in one shard (most are then missing from it).
                        let s = rng.pick(&shards).clone();
                        for x in map.values_mut() {
                            *x = Value::String(s.clone());
                        }
                    }
                    2 if n > 0 => {
                        let k = map.keys().nth(rng.below(n)).cloned().unwrap_or_default();
                        map.remove(&k);
                    }
                    3 if !shards.is_empty() => {
                        // A tensor that is in no shard.
                        map.insert(
                            "transformer.h.99.attn.c_attn.weight".into(),
                            Value::String(rng.pick(&shards).clone()),
                        );
                    }
                    4 => {
                        map.clear();
                    }
                    _ if n > 0 => {
                        let k = map.keys().nth(rng.below(n)).cloned().unwrap_or_default();
                        map.insert(k, json::number(rng));
                    }
                    _ => {}
                }
            }
        } else {
            let k = rng.small_count(3);
            json::mutate(&mut v, rng, &self.seeds.dict, &[], k);
        }
        let mut out = json::to_bytes(&v, rng);
        if rng.chance(1, 8) {
            let max = out.len() * 2 + 1024;
            bytes::mutate(&mut out, rng, &self.seeds.dict.keys, None, 1, max);
        }
        Arc::new(out)
    }
}

/// Mutations that know `tokenizer.json`: ids made to collide or leave holes, merges of tokens whose
/// concatenation is missing, added tokens with odd ids or contents, special-token ids out of range,
/// regex patterns that are slow or do not compile.
fn tokenizer_op(v: &mut Value, rng: &mut Rng) {
    if !v.is_object() {
        return;
    }
    match rng.below(7) {
        0 => {
            if let Some(vocab) = v.pointer_mut("/model/vocab").and_then(Value::as_object_mut) {
                let n = vocab.len();
                if n > 0 {
                    let k = vocab.keys().nth(rng.below(n)).cloned().unwrap_or_default();
                    let id: u64 = *rng.pick(&[
                        0,
                        1,
                        n as u64 - 1,
                        n as u64,
                        n as u64 + 1,
                        u64::from(u32::MAX),
                        1 << 32,
                    ]);
                    vocab.insert(k, Value::from(id));
                }
            }
        }
        1 => {
            let toks: Vec<String> = v
                .pointer("/model/vocab")
                .and_then(Value::as_object)
                .map(|o| o.keys().take(400).cloned().collect())
                .unwrap_or_default();
            if let (Some(m), false) = (
                v.pointer_mut("/model/merges").and_then(Value::as_array_mut),
                toks.is_empty(),
            ) {
                let (a, b) = (rng.pick(&toks).clone(), rng.pick(&toks).clone());
                let item = if rng.chance(1, 2) {
                    Value::Array(vec![Value::String(a), Value::String(b)])
                } else {
                    Value::String(format!("{a} {b}"))
                };
                let at = rng.below(m.len() + 1);
                m.insert(at, item);
            }
        }
        2 => {
            if let Some(a) = v.get_mut("added_tokens").and_then(Value::as_array_mut) {
                let content = rng
                    .pick(&[
                        "<|endoftext|>",
                        "</s>",
                        "a",
                        "Ġ",
                        " ",
                        "  ",
                        "\u{0}",
                        "é",
                        "<x>",
                        "<|endoftext|>x",
                        "",
                    ])
                    .to_string();
                let id: u64 = *rng.pick(&[
                    0u64,
                    1,
                    2,
                    50,
                    255,
                    256,
                    300,
                    400,
                    1 << 31,
                    u64::from(u32::MAX),
                ]);
                a.push(serde_json::json!({
                    "id": id, "content": content, "single_word": rng.chance(1, 2),
                    "lstrip": rng.chance(1, 2), "rstrip": rng.chance(1, 2),
                    "normalized": rng.chance(1, 2), "special": rng.chance(1, 2)
                }));
            }
        }
        3 => {
            // A Split with an odd pattern in front of the ByteLevel step.
            let pattern = rng
                .pick(&[
                    "(a+)+$",
                    "",
                    "[",
                    "\\p{Foo}",
                    "(?<x>a)",
                    "x{1000}{1000}",
                    ".*",
                    "\\b",
                    "(?i)é",
                    "\\s+(?!\\S)",
                    "(?:)",
                    "a{0}",
                    "\\",
                    "[^\\s]+",
                    ".",
                    "(a|b|c|d|e|f|g|h)*{1000}",
                ])
                .to_string();
            let kind = if rng.chance(3, 4) { "Regex" } else { "String" };
            let behavior = *rng.pick(&[
                "Isolated",
                "Removed",
                "MergedWithPrevious",
                "MergedWithNext",
                "Contiguous",
                "Bogus",
            ]);
            let split = serde_json::json!({"type": "Split", "pattern": {kind: pattern}, "behavior": behavior, "invert": rng.chance(1, 3)});
            let old = v.get("pre_tokenizer").cloned().unwrap_or(Value::Null);
            v["pre_tokenizer"] =
                serde_json::json!({"type": "Sequence", "pretokenizers": [split, old]});
        }
        4 => {
            if let Some(pp) = v.get_mut("post_processor") {
                let id: u64 = *rng.pick(&[0u64, 299, 300, 1000, u64::from(u32::MAX), 1 << 40]);
                *pp = serde_json::json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [], "special_tokens": {"</s>": {"id": "</s>", "ids": [id], "tokens": ["</s>"]}}});
            }
        }
        5 => {
            let n = rng
                .pick(&[
                    serde_json::json!({"type": "NFC"}),
                    serde_json::json!({"type": "NFKC"}),
                    serde_json::json!({"type": "Lowercase"}),
                    serde_json::json!({"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "NFC"}]}),
                    serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}),
                    serde_json::json!({"type": "Prepend", "prepend": "▁"}),
                    Value::Null,
                ])
                .clone();
            v["normalizer"] = n;
        }
        _ => {
            if let Some(m) = v.get_mut("model").and_then(Value::as_object_mut) {
                let key = *rng.pick(&[
                    "unk_token",
                    "dropout",
                    "fuse_unk",
                    "byte_fallback",
                    "ignore_merges",
                    "continuing_subword_prefix",
                    "end_of_word_suffix",
                    "type",
                ]);
                let val = rng
                    .pick(&[
                        serde_json::json!(true),
                        serde_json::json!(0.5),
                        serde_json::json!(0.0),
                        serde_json::json!("<unk>"),
                        serde_json::json!("a"),
                        serde_json::json!(""),
                        serde_json::json!("WordPiece"),
                        Value::Null,
                    ])
                    .clone();
                m.insert(key.into(), val);
            }
        }
    }
}
