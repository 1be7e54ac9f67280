//! slimlm's compact tokenizer against the `tokenizers` crate (the Hugging Face implementation), for every
//! reference tokenizer family: on every corpus in ../shared, on edge cases, on variants of the files that
//! use the options the reference models do not, and on the goldens' token ids.

mod common;

use std::str::FromStr;

use serde_json::{json, Value};
use slimlm::tokenizer::TextStream;
use slimlm::Tokenizer;

/// One reference model of each tokenizer structure (ref-gptneo and ref-opt-postln share theirs with
/// ref-gpt2 and ref-opt; the goldens test covers them).
const MODELS: [&str; 5] = [
    "ref-gpt2",
    "ref-opt",
    "ref-neox",
    "ref-neox-seq",
    "ref-bloom",
];

fn both(model: &str) -> (Tokenizer, tokenizers::Tokenizer) {
    let dir = common::ref_model(model);
    let ours = Tokenizer::from_dir(&dir).unwrap();
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    (ours, hf)
}

fn from_json(v: &Value) -> (Tokenizer, tokenizers::Tokenizer) {
    let text = v.to_string();
    let ours = Tokenizer::from_tokenizer_json(&text).unwrap();
    let hf = tokenizers::Tokenizer::from_str(&text).unwrap();
    (ours, hf)
}

fn hf_ids(hf: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    hf.encode(text, true).unwrap().get_ids().to_vec()
}

/// Asserts that both encode `text` to the same ids and decode them to the same text.
fn check(what: &str, ours: &Tokenizer, hf: &tokenizers::Tokenizer, text: &str) {
    let (a, b) = (ours.encode(text).unwrap(), hf_ids(hf, text));
    if a != b {
        let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let short: String = text.chars().take(80).collect();
        panic!(
            "{what}: {short:?}: first difference at token {at}: {:?} vs {:?}",
            &a[at..(at + 5).min(a.len())],
            &b[at..(at + 5).min(b.len())]
        );
    }
    assert_eq!(
        ours.decode(&a).unwrap(),
        hf.decode(&b, false).unwrap(),
        "{what}: decode of {text:?}"
    );
}

fn corpus_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for sub in ["corpora/udhr", "corpora/heldout"] {
        for e in std::fs::read_dir(common::shared().join(sub)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn matches_hugging_face_on_every_corpus() {
    let files = corpus_files();
    assert!(files.len() >= 42, "only {} corpus files", files.len());
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    for model in MODELS {
        let (ours, hf) = both(model);
        for (path, text) in &texts {
            check(&format!("{model} {path}"), &ours, &hf, text);
        }
    }
}

const EDGE_CASES: &[&str] = &[
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "a  b",
    "a \n b",
    "a\n\nb",
    "trailing   ",
    "  leading",
    "tab\t\tx",
    "it's they're we've I'm you'll he'd 'S 'tis",
    "x'''s",
    "\"quoted\"'s",
    "numbers 12345 3.14 1,000,000 ٣٤٥ ½",
    "emoji 🎉🎉 ok",
    "mixed Русский 中文 日本語 العربية हिन्दी",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|> x",
    "<|endoftext",
    "\u{00a0}nbsp \u{2003}em\u{3000}ideographic",
    "cafe\u{0301} e\u{0301}",
    "\r\n windows \r\n",
    "def f(x):\n    return x ** 2\n\n\n",
    "ZWJ 👩\u{200d}💻",
    "\u{0}\u{1}control\u{7f}",
    // OPT's and BLOOM's specials written in the text.
    "</s>",
    "a</s>b </s> </s>",
    "<s>hello</s><pad><unk>",
    "</s ></s>><</s>",
    "<|padding|>x<|endoftext|>",
    // BLOOM's split punctuation.
    "Hello, world! How are you? Fine… thanks.",
    "你好。世界，很好、再见 नमस्ते। दुनिया سلام، خوب۔ ok",
    "(a|b) [x] {y} a.b.c...!!! ?? ,, …… 。。",
    " , . ! ? | ( ) ",
    "x(y)z|w",
    // Combining characters, for NFC.
    "e\u{0301}\u{0323} \u{1E9B}\u{0323} A\u{030A} \u{212B} \u{2126}",
    "\u{1100}\u{1161}\u{11A8} \u{AC00}\u{11A8}",
    "<|endoftext|>\u{0301}x \u{0301}",
    "  \u{0301}  a\u{0300}",
    "\u{0958}\u{0959} \u{FB2A} \u{0F73}",
];

#[test]
fn matches_hugging_face_on_edge_cases() {
    let mut spaces = Vec::new();
    for n in 1..=60 {
        let s = " ".repeat(n);
        spaces.push(s.clone());
        spaces.push(format!("a{s}b"));
        spaces.push(format!("{s}x"));
        spaces.push(format!("x{s}"));
        spaces.push(format!("x\n{s}y\t{s}\n"));
        spaces.push(format!("def f():\n{s}return 1"));
    }
    for model in MODELS {
        let (ours, hf) = both(model);
        for c in EDGE_CASES
            .iter()
            .copied()
            .chain(spaces.iter().map(String::as_str))
        {
            check(model, &ours, &hf, c);
        }
    }
}

#[test]
fn encodes_like_the_goldens() {
    for model in common::REFERENCE_MODELS {
        let tok = Tokenizer::from_dir(&common::ref_model(model)).unwrap();
        let g = common::golden(model);
        assert!(!g.prompts.is_empty());
        for p in &g.prompts {
            assert_eq!(
                tok.encode(&p.text).unwrap(),
                p.input_ids,
                "{model} {}",
                p.name
            );
        }
    }
}

#[test]
fn tokenizer_and_stream_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Tokenizer>();
    shared::<TextStream<'static>>();
}

#[test]
fn opt_adds_its_leading_special_token() {
    let tok = Tokenizer::from_dir(&common::ref_model("ref-opt")).unwrap();
    let plain = tok.encode_plain("Hello</s>").unwrap();
    assert_eq!(plain.last(), Some(&2));
    assert_eq!(
        tok.encode("Hello</s>").unwrap(),
        [&[2], &plain[..]].concat()
    );
    assert_eq!(tok.encode("").unwrap(), [2]);
    assert_eq!(tok.token_id("</s>"), Some(2));
    assert_eq!(tok.token_id("<pad>"), Some(1));
    let gpt2 = Tokenizer::from_dir(&common::ref_model("ref-gpt2")).unwrap();
    let t = "The os module";
    assert_eq!(gpt2.encode(t).unwrap(), gpt2.encode_plain(t).unwrap());
}

#[test]
fn long_words_match_hugging_face() {
    let word: String = "abcdefghij".repeat(4000);
    let cjk: String = "人人生而自由在尊严和权利上一律平等"
        .chars()
        .cycle()
        .take(40_000)
        .collect();
    let spaces = " ".repeat(40_000);
    let digits = "0123456789".repeat(4000);
    for model in MODELS {
        let (ours, hf) = both(model);
        for text in [&word, &cjk, &spaces, &digits] {
            check(model, &ours, &hf, text);
        }
    }
}

/// A small byte-level tokenizer.json: the 256 byte tokens, a few merges and added tokens.
fn tiny() -> Value {
    let mut vocab = serde_json::Map::new();
    let chars: Vec<String> = (0..=255u8)
        .map(|b| {
            // GPT-2's byte-to-character map.
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable {
                char::from(b)
            } else {
                let n = (0..b)
                    .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                    .count();
                char::from_u32(256 + n as u32).unwrap()
            };
            c.to_string()
        })
        .collect();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.clone(), json!(i));
    }
    let merges = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("a", "a"),
        ("aa", "aa"),
        ("Ġ", "Ġ"),
        ("i", "n"),
        ("Ġ", "a"),
    ];
    let mut id = 256;
    for (a, b) in merges {
        vocab.entry(format!("{a}{b}")).or_insert_with(|| {
            id += 1;
            json!(id - 1)
        });
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        }
    })
}

fn added(id: usize, content: &str, normalized: bool, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": normalized, "special": special})
}

fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
    texts.extend(
        [
            "the theater in the inn aaaa aaaaaaa",
            "  the  the   the\tthe",
            "[X] [X]a a[X] a [X] b\u{00a0}[X]\u{00a0}c  [Y]  d",
            "word[W]word [W] [W]x x[W]",
            "ÉCOLE École Straße ΣΑΣ ﬁ ① x²",
            "xxx éx ©x max taxi éé",
        ]
        .map(String::from),
    );
    for f in ["eng.txt", "rus.txt", "cmn_hans.txt", "hin.txt", "arb.txt"] {
        let t = std::fs::read_to_string(common::shared().join("corpora/udhr").join(f)).unwrap();
        texts.push(t.chars().take(1500).collect());
    }
    texts
}

/// Variants of a tokenizer.json that use the options the reference models do not; each is compared with
/// Hugging Face on the same texts.
#[test]
fn variants_match_hugging_face() {
    let gpt2: Value = serde_json::from_str(
        &std::fs::read_to_string(common::ref_model("ref-gpt2").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let split = |pattern: Value, behavior: &str, invert: bool| json!({"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert});
    let byte_level = |prefix: bool, regex: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": regex});
    let mut variants: Vec<(String, Value)> = Vec::new();
    let mut add = |name: &str, f: &dyn Fn(&mut Value)| {
        for (base_name, base) in [("tiny", tiny()), ("gpt2", gpt2.clone())] {
            let mut v = base;
            f(&mut v);
            variants.push((format!("{base_name} {name}"), v));
        }
    };
    add("as is", &|_| {});
    add("add_prefix_space", &|v| {
        v["pre_tokenizer"] = byte_level(true, true)
    });
    add("no regex", &|v| {
        v["pre_tokenizer"] = byte_level(false, false)
    });
    for behavior in [
        "Removed",
        "Isolated",
        "MergedWithPrevious",
        "MergedWithNext",
        "Contiguous",
    ] {
        for invert in [false, true] {
            add(&format!("split {behavior} invert={invert}"), &|v| {
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                    split(json!({"Regex": r"\s+|[.,]"}), behavior, invert),
                    split(json!({"String": "e"}), behavior, invert),
                    byte_level(true, false)]});
            });
        }
    }
    add("bloom split", &|v| {
        v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            split(json!({"Regex": " ?[^(\\s|[.,!?…。，、।۔،])]+"}), "Isolated", false),
            byte_level(true, true)]});
    });
    for n in ["NFC", "NFD", "NFKC", "NFKD", "Lowercase"] {
        add(&format!("normalizer {n}"), &|v| {
            v["normalizer"] = json!({"type": n})
        });
    }
    add("normalizer Sequence", &|v| {
        v["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Lowercase"}, {"type": "NFC"}]});
    });
    add("string merges", &|v| {
        let m: Vec<Value> = v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                json!(format!(
                    "{} {}",
                    p[0].as_str().unwrap(),
                    p[1].as_str().unwrap()
                ))
            })
            .collect();
        v["model"]["merges"] = json!(m);
    });
    add("ignore_merges", &|v| {
        v["model"]["ignore_merges"] = json!(true)
    });
    add("template and sequence", &|v| {
        let n = v["model"]["vocab"].as_object().unwrap().len();
        v["added_tokens"] = json!([
            added(n, "[B]", false, true),
            added(n + 1, "[E]", false, true)
        ]);
        v["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "[B]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "[E]", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"[B]": {"id": "[B]", "ids": [n], "tokens": ["[B]"]},
                                "[E]": {"id": "[E]", "ids": [n + 1, n], "tokens": ["[E]", "[B]"]}}}]});
    });
    add("roberta", &|v| {
        let n = v["model"]["vocab"].as_object().unwrap().len();
        v["added_tokens"] = json!([
            added(n, "<s>", false, true),
            added(n + 1, "</s>", false, true)
        ]);
        v["post_processor"] = json!({"type": "RobertaProcessing", "sep": ["</s>", n + 1], "cls": ["<s>", n],
                                     "trim_offsets": true, "add_prefix_space": false});
    });
    add("added tokens", &|v| {
        let mut x = added(0, "[X]", true, false);
        x["lstrip"] = json!(true);
        let mut y = added(0, "[Y]", false, true);
        y["rstrip"] = json!(true);
        y["lstrip"] = json!(true);
        let mut w = added(0, "[W]", true, false);
        w["single_word"] = json!(true);
        let mut tokens = vec![
            x,
            y,
            w,
            added(0, "the", true, false),
            added(0, "Straße", true, false),
            added(0, "e\u{301}", true, false),
            added(0, "école", false, false),
            added(0, "  ", true, false),
            added(0, "ΣΑΣ", false, true),
            added(0, "!", false, true),
        ];
        // The ids Hugging Face gives them: the vocabulary's, else the next after it.
        let vocab = v["model"]["vocab"].as_object().unwrap();
        let mut next = vocab.len();
        for t in &mut tokens {
            t["id"] = match vocab.get(t["content"].as_str().unwrap()) {
                Some(id) => id.clone(),
                None => {
                    next += 1;
                    json!(next - 1)
                }
            };
        }
        v["added_tokens"] = json!(tokens);
        v["normalizer"] =
            json!({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]});
    });
    add("unknown bytes", &|v| {
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        // Drop the tokens of 'x' and of one byte of 'é'; the ids above them move down by one each.
        let (x, e) = (vocab["x"].as_u64().unwrap(), vocab["©"].as_u64().unwrap());
        vocab.remove("x");
        vocab.remove("©");
        for (_, id) in vocab.iter_mut() {
            let i = id.as_u64().unwrap();
            *id = json!(i - u64::from(i > x) - u64::from(i > e));
        }
        let n = vocab.len();
        vocab.insert("<unk>".into(), json!(n));
        let merges: Vec<Value> = v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                let joined = format!("{}{}", p[0].as_str().unwrap(), p[1].as_str().unwrap());
                !joined.contains('x') && !joined.contains('©')
            })
            .cloned()
            .collect();
        v["model"]["merges"] = json!(merges);
        v["model"]["unk_token"] = json!("<unk>");
        v["model"]["fuse_unk"] = json!(true);
        // Added tokens must agree with the new ids.
        v["added_tokens"] = json!([]);
    });
    let texts = sample_texts();
    for (name, v) in &variants {
        let (ours, hf) = from_json(v);
        for t in &texts {
            check(name, &ours, &hf, t);
        }
    }
}

fn error_of(v: &Value) -> String {
    Tokenizer::from_tokenizer_json(&v.to_string()).unwrap_err()
}

#[test]
fn bad_tokenizer_files_are_errors() {
    let tmp = common::scratch_dir("tok-bad");
    std::fs::write(tmp.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = Tokenizer::from_dir(&tmp).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_file(tmp.join("tokenizer.json")).unwrap();
    assert!(Tokenizer::from_dir(&tmp)
        .unwrap_err()
        .to_string()
        .contains("vocab.json"));
    let ours = Tokenizer::from_dir(&common::ref_model("ref-gpt2")).unwrap();
    assert!(ours.decode(&[50257]).is_err());
    assert!(ours.token_bytes(u32::MAX).is_err());

    assert!(Tokenizer::from_tokenizer_json(&tiny().to_string()).is_ok());
    let expect = |f: &dyn Fn(&mut Value), words: &[&str]| {
        let mut v = tiny();
        f(&mut v);
        let e = error_of(&v);
        for w in words {
            assert!(e.contains(w), "{e:?} does not name {w:?}");
        }
    };
    // Ids far beyond the number of tokens: an error before any allocation by id.
    expect(
        &|v| v["model"]["vocab"]["he"] = json!(u32::MAX),
        &["4294967295", "\"he\"", "beyond"],
    );
    expect(
        &|v| v["added_tokens"] = json!([added(u32::MAX as usize, "<x>", false, true)]),
        &["added_tokens", "4294967295"],
    );
    // Two tokens for one id.
    expect(
        &|v| v["model"]["vocab"]["he"] = json!(0),
        &["id 0", "\"he\""],
    );
    // A hole: no token has id 257.
    expect(
        &|v| {
            let n = v["model"]["vocab"].as_object().unwrap().len();
            v["model"]["vocab"]["Ġt"] = json!(n);
            v["added_tokens"] = json!([added(n, "Ġt", false, true)]);
        },
        &["no token has id 256"],
    );
    // An added token whose id is not the one Hugging Face gives it.
    expect(
        &|v| v["added_tokens"] = json!([added(300, "<x>", false, true)]),
        &["\"<x>\"", "300", "gives it 264"],
    );
    expect(
        &|v| v["added_tokens"] = json!([added(5, "!", false, true)]),
        &["\"!\"", "gives it 33"],
    );
    expect(
        &|v| v["normalizer"] = json!({"type": "BertNormalizer"}),
        &["normalizer", "BertNormalizer"],
    );
    expect(
        &|v| {
            v["normalizer"] =
                json!({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Strip"}]})
        },
        &["normalizer", "Strip"],
    );
    expect(
        &|v| v["pre_tokenizer"] = json!({"type": "Whitespace"}),
        &["pre_tokenizer", "Whitespace"],
    );
    expect(
        &|v| v["pre_tokenizer"] = Value::Null,
        &["pre_tokenizer", "null"],
    );
    expect(
        &|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "ByteLevel"}, {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": false}]})
        },
        &["pre_tokenizer", "last"],
    );
    expect(
        &|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "a(?=b)"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel"}]})
        },
        &["Split", "a(?=b)"],
    );
    expect(
        &|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways", "invert": false},
                {"type": "ByteLevel"}]})
        },
        &["behavior", "Sideways"],
    );
    expect(
        &|v| v["model"]["type"] = json!("WordPiece"),
        &["model", "WordPiece"],
    );
    expect(&|v| v["model"]["dropout"] = json!(0.1), &["dropout"]);
    expect(
        &|v| v["model"]["byte_fallback"] = json!(true),
        &["byte_fallback"],
    );
    expect(
        &|v| v["model"]["continuing_subword_prefix"] = json!("##"),
        &["continuing_subword_prefix"],
    );
    expect(
        &|v| v["model"]["merges"] = json!([["q", "zz"]]),
        &["merges[0]", "\"zz\""],
    );
    expect(
        &|v| v["model"]["merges"] = json!(["qz"]),
        &["merges", "\"qz\""],
    );
    expect(
        &|v| v["post_processor"] = json!({"type": "Foo"}),
        &["post_processor", "Foo"],
    );
    expect(
        &|v| {
            v["post_processor"] = json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
                                         "pair": [], "special_tokens": {}})
        },
        &["TemplateProcessing", "<s>"],
    );
    expect(
        &|v| {
            v["post_processor"] = json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
                                         "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [99999], "tokens": ["<s>"]}}})
        },
        &["post_processor", "99999"],
    );
    // Found by the fuzzer: a template repeating the text multiplied every encoding's size.
    expect(
        &|v| {
            v["post_processor"] = json!({"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {}})
        },
        &["TemplateProcessing", "sequence A more than once"],
    );
    expect(
        &|v| v["decoder"] = json!({"type": "Metaspace"}),
        &["decoder", "Metaspace"],
    );
}

#[test]
fn vocab_merges_files_give_the_same_tokenizer() {
    let dir = common::ref_model("ref-gpt2");
    let tmp = common::scratch_dir("tok-vocab-merges");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let (a, b) = (
        Tokenizer::from_dir(&dir).unwrap(),
        Tokenizer::from_dir(&tmp).unwrap(),
    );
    let text = std::fs::read_to_string(common::shared().join("corpora/heldout/de-DE.txt")).unwrap();
    assert_eq!(a.encode(&text).unwrap(), b.encode(&text).unwrap());
    let eot = "a<|endoftext|>b";
    assert_eq!(a.encode(eot).unwrap(), b.encode(eot).unwrap());
    assert_eq!(b.token_id("<|endoftext|>"), Some(50256));
    assert_eq!(b.vocab_size(), 50257);
}

/// Puts the pieces of a stream together, checking that none has U+FFFD unless `decode` has one.
fn streamed(tok: &Tokenizer, ids: &[u32]) -> String {
    let whole = tok.decode(ids).unwrap();
    let mut stream = tok.stream();
    let mut out = String::new();
    let mut check = |piece: String| {
        assert!(!piece.is_empty());
        if !whole.contains('\u{FFFD}') {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        }
        out.push_str(&piece);
    };
    for &id in ids {
        if let Some(piece) = stream.push(id).unwrap() {
            check(piece);
        }
    }
    if let Some(piece) = stream.finish() {
        check(piece);
    }
    assert_eq!(out, whole);
    out
}

#[test]
fn stream_gives_whole_characters() {
    for model in MODELS {
        let tok = Tokenizer::from_dir(&common::ref_model(model)).unwrap();
        for f in [
            "arb",
            "cmn_hans",
            "hin",
            "jpn",
            "kor",
            "tha",
            "tam",
            "rus",
            "ell_monotonic",
        ] {
            let path = common::shared().join(format!("corpora/udhr/{f}.txt"));
            let text = std::fs::read_to_string(path).unwrap();
            let ids = tok.encode(&text).unwrap();
            let out = streamed(&tok, &ids);
            assert!(!out.contains('\u{FFFD}'), "{model} {f}");
        }
    }
    // One character across three byte tokens: nothing until its last byte.
    let tok = Tokenizer::from_dir(&common::ref_model("ref-gpt2")).unwrap();
    let byte = |b: u8| -> u32 {
        (0..tok.vocab_size() as u32)
            .find(|&id| tok.token_bytes(id).unwrap() == [b])
            .unwrap()
    };
    let euro = [byte(0xE2), byte(0x82), byte(0xAC)];
    let mut s = TextStream::new(&tok);
    assert_eq!(s.push(euro[0]).unwrap(), None);
    assert_eq!(s.push(euro[1]).unwrap(), None);
    assert_eq!(s.push(euro[2]).unwrap().as_deref(), Some("€"));
    assert_eq!(s.finish(), None);
    // Bytes that can no longer complete become U+FFFD as soon as that is known, as `decode` has them.
    let a = tok.encode("a").unwrap()[0];
    assert_eq!(s.push(euro[0]).unwrap(), None);
    assert_eq!(s.push(a).unwrap().as_deref(), Some("\u{FFFD}a"));
    assert_eq!(s.push(byte(0xFF)).unwrap().as_deref(), Some("\u{FFFD}"));
    assert_eq!(s.push(euro[0]).unwrap(), None);
    assert_eq!(s.push(euro[1]).unwrap(), None);
    assert_eq!(s.finish().as_deref(), Some("\u{FFFD}"));
    for ids in [
        vec![euro[0], a, byte(0xFF), euro[1], euro[2], euro[0], euro[1]],
        vec![byte(0xF0), byte(0x9F), byte(0x8E), a, euro[2]],
    ] {
        streamed(&tok, &ids);
    }
    assert!(s.push(u32::MAX).is_err());
}
