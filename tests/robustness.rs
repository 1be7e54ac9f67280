//! Bad input gets a clear error, never a panic: damaged files, inconsistent configs, bad token ids,
//! prompts that do not fit.

mod common;

use common::{scratch_dir, TinyModel};
use slimlm::{Error, GenerateOptions, Model};

fn open_err(dir: &std::path::Path) -> String {
    match Model::open(dir) {
        Ok(_) => panic!("{} opened although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tiny_models_open_and_run() {
    for neo in [false, true] {
        let dir = scratch_dir(if neo { "tiny-neo" } else { "tiny-gpt2" });
        TinyModel::new(neo).write(&dir);
        let model = Model::open(&dir).unwrap();
        let mut s = model.session();
        let logits = s.prefill(&[1, 2, 3]).unwrap().to_vec();
        assert!(logits.iter().all(|v| v.is_finite()));
        assert_eq!(model.copied_bytes(), 0);
    }
}

#[test]
fn missing_directory_and_files() {
    let msg = open_err(std::path::Path::new("/nonexistent/model"));
    assert!(msg.contains("/nonexistent/model"), "{msg}");

    let dir = scratch_dir("no-weights");
    TinyModel::new(false).write(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(open_err(&dir).contains("model.safetensors"));

    let dir = scratch_dir("no-config");
    TinyModel::new(false).write(&dir);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(open_err(&dir).contains("config.json"));

    let dir = scratch_dir("no-tokenizer");
    TinyModel::new(false).write(&dir);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(open_err(&dir).contains("tokenizer"));
}

#[test]
fn damaged_safetensors() {
    let dir = scratch_dir("damaged");
    TinyModel::new(false).write(&dir);
    let path = dir.join("model.safetensors");
    let good = std::fs::read(&path).unwrap();

    // Truncated: half the data is gone.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let msg = open_err(&dir);
    assert!(
        msg.contains("truncated") && msg.contains("model.safetensors"),
        "{msg}"
    );

    // Garbage: random bytes.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    assert!(open_err(&dir).contains("not a valid safetensors file"));

    // Header length pointing past the end of the file.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let msg = open_err(&dir);
    assert!(
        msg.contains("header length") || msg.contains("header"),
        "{msg}"
    );

    // Too short for even the length prefix, and empty.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    assert!(open_err(&dir).contains("too short"));
    std::fs::write(&path, []).unwrap();
    assert!(open_err(&dir).contains("model.safetensors"));

    // Corrupt JSON header.
    let mut bad = good.clone();
    bad[8] = b'#';
    std::fs::write(&path, &bad).unwrap();
    assert!(open_err(&dir).contains("not a valid safetensors file"));
}

#[test]
fn wrong_shape_dtype_and_missing_tensors() {
    let dir = scratch_dir("wrong-shape");
    let mut m = TinyModel::new(false);
    let i = m.find("transformer.h.1.attn.c_attn.weight");
    m.tensors[i].2 = vec![48, 16]; // transposed: [out, in] where Conv1D wants [in, out]
    m.write(&dir);
    let msg = open_err(&dir);
    assert!(
        msg.contains("transformer.h.1.attn.c_attn.weight")
            && msg.contains("expected shape [16, 48]"),
        "{msg}"
    );

    let dir = scratch_dir("wrong-dtype");
    let mut m = TinyModel::new(false);
    let i = m.find("transformer.ln_f.weight");
    m.tensors[i].1 = safetensors::Dtype::I32;
    m.write(&dir);
    let msg = open_err(&dir);
    assert!(
        msg.contains("transformer.ln_f.weight") && msg.contains("dtype"),
        "{msg}"
    );

    let dir = scratch_dir("missing-tensor");
    let mut m = TinyModel::new(true);
    let i = m.find("transformer.h.0.attn.attention.v_proj.weight");
    m.tensors.remove(i);
    m.write(&dir);
    let msg = open_err(&dir);
    assert!(
        msg.contains("missing tensor `transformer.h.0.attn.attention.v_proj.weight`"),
        "{msg}"
    );
}

#[test]
fn inconsistent_configs() {
    type Mutate = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, bool, Mutate, &str)> = vec![
        (
            "cfg-no-embd",
            false,
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("n_embd");
            }),
            "n_embd",
        ),
        (
            "cfg-wide",
            false,
            Box::new(|c| c["n_embd"] = 32.into()),
            "expected shape",
        ),
        (
            "cfg-heads",
            false,
            Box::new(|c| c["n_head"] = 3.into()),
            "divisible",
        ),
        (
            "cfg-layers",
            false,
            Box::new(|c| c["n_layer"] = 3.into()),
            "missing tensor",
        ),
        (
            "cfg-type",
            false,
            Box::new(|c| c["model_type"] = "llama".into()),
            "not supported",
        ),
        (
            "cfg-act",
            false,
            Box::new(|c| c["activation_function"] = "swish".into()),
            "activation",
        ),
        (
            "cfg-vocab",
            false,
            Box::new(|c| c["vocab_size"] = 1000.into()),
            "vocab_size",
        ),
        (
            "cfg-neg",
            false,
            Box::new(|c| c["n_positions"] = (-1).into()),
            "n_positions",
        ),
        (
            "cfg-neo-types",
            true,
            Box::new(|c| c["attention_types"] = serde_json::json!([[["global"], 5]])),
            "attention types",
        ),
        (
            "cfg-neo-kind",
            true,
            Box::new(|c| c["attention_types"] = serde_json::json!([[["sparse", "local"], 1]])),
            "sparse",
        ),
        (
            "cfg-neo-window",
            true,
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("window_size");
            }),
            "window_size",
        ),
    ];
    for (name, neo, mutate, needle) in cases {
        let dir = scratch_dir(name);
        let mut m = TinyModel::new(neo);
        mutate(&mut m.config);
        m.write(&dir);
        let msg = open_err(&dir);
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let dir = scratch_dir("cfg-json");
    TinyModel::new(false).write(&dir);
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(open_err(&dir).contains("not valid JSON"));
}

#[test]
fn bad_tokens_and_prompts() {
    let dir = scratch_dir("tiny-tokens");
    TinyModel::new(false).write(&dir);
    let model = Model::open(&dir).unwrap();
    let mut s = model.session();
    let e = s.prefill(&[1, 50257]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                token: 50257,
                vocab: 50257
            }
        ) && e.to_string().contains("50257"),
        "{e}"
    );
    let e = s.prefill(&[]).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    // Context is 32: a 30-token prompt leaves room for 3 new tokens, not 4.
    let prompt = vec![5u32; 30];
    let opts = |n| GenerateOptions {
        max_tokens: n,
        ..Default::default()
    };
    assert!(s.generate(&prompt, &opts(3)).is_ok());
    s.reset();
    let e = s
        .generate(&prompt, &opts(4))
        .err()
        .expect("overflow must be refused");
    assert!(
        matches!(e, Error::ContextOverflow { n_ctx: 32, .. }) && e.to_string().contains("32"),
        "{e}"
    );
    // Filling the cache exactly, then one more token.
    s.reset();
    s.prefill(&[7u32; 32]).unwrap();
    assert!(s
        .step(1)
        .unwrap_err()
        .to_string()
        .contains("context overflow"));
}

#[test]
fn in_memory_model_matches_the_mapped_one() {
    use slimlm::tensor_file::{TensorFile, TensorStore};
    let dir = common::ref_model("ref-gptneo");
    let mapped = Model::open(&dir).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = TensorFile::from_bytes(&dir.join("model.safetensors"), &bytes).unwrap();
    let config = slimlm::Config::from_dir(&dir).unwrap();
    let owned = Model::from_store(&dir, config, TensorStore::from_file(file)).unwrap();
    let ids = [464u32, 3290, 11, 318, 257];
    let a = mapped.session().prefill(&ids).unwrap().to_vec();
    let b = owned.session().prefill(&ids).unwrap().to_vec();
    assert!(a == b, "logits differ");
    // Damaged bytes are refused the same way as a damaged file.
    let e = TensorFile::from_bytes(&dir.join("x"), &bytes[..bytes.len() - 1]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
