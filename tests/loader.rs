//! Checkpoint variants the loader must accept: shards, names without `transformer.`, F16/BF16 weights,
//! the causal-mask buffers of older GPT-2 checkpoints, an untied LM head.

mod common;

use common::{scratch_dir, TinyModel};
use slimlm::Model;

const IDS: [u32; 6] = [464, 3290, 11, 318, 257, 50256];

fn logits(dir: &std::path::Path) -> Vec<f32> {
    Model::open(dir)
        .unwrap()
        .session()
        .prefill(&IDS)
        .unwrap()
        .to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let m = TinyModel::new(true);
    let single = scratch_dir("shard-single");
    m.write(&single);
    let sharded = scratch_dir("shard-split");
    m.write(&sharded);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let (a, b) = m.tensors.split_at(m.tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part
            .iter()
            .map(|(n, dt, s, bytes)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &sharded.join(&name)).unwrap();
        for (n, ..) in part.iter() {
            map.insert(n.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert!(logits(&single) == logits(&sharded));

    // A shard named in the index but missing is a clear error.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = Model::open(&sharded).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn names_without_transformer_prefix() {
    let mut m = TinyModel::new(false);
    let a = scratch_dir("prefix-yes");
    m.write(&a);
    for t in &mut m.tensors {
        t.0 = t.0.trim_start_matches("transformer.").to_string();
    }
    let b = scratch_dir("prefix-no");
    m.write(&b);
    assert!(logits(&a) == logits(&b));
}

#[test]
fn half_precision_weights_track_f32() {
    let m = TinyModel::new(false);
    let a = scratch_dir("dtype-f32");
    m.write(&a);
    let reference = logits(&a);
    for (dtype, name, tol) in [
        (safetensors::Dtype::F16, "dtype-f16", 2e-3f32),
        (safetensors::Dtype::BF16, "dtype-bf16", 2e-2),
    ] {
        let mut h = TinyModel::new(false);
        for t in &mut h.tensors {
            let f: Vec<f32> =
                t.3.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
            t.3 = match dtype {
                safetensors::Dtype::F16 => f
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
                _ => f
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
            };
            t.1 = dtype;
        }
        let dir = scratch_dir(name);
        h.write(&dir);
        let model = Model::open(&dir).unwrap();
        // Vectors stored in half precision are read in place too (converted as they are used).
        assert_eq!(model.copied_bytes(), 0);
        let got = model.session().prefill(&IDS).unwrap().to_vec();
        let d = max_diff(&got, &reference);
        assert!(d < tol && d > 0.0, "{name}: max |Δlogit| {d}");
    }
}

#[test]
fn causal_mask_buffers_are_ignored() {
    let mut m = TinyModel::new(false);
    let a = scratch_dir("mask-none");
    m.write(&a);
    for i in 0..2 {
        let n = 32 * 32;
        m.tensors.push((
            format!("transformer.h.{i}.attn.bias"),
            safetensors::Dtype::U8,
            vec![1, 1, 32, 32],
            vec![1; n],
        ));
        m.tensors.push((
            format!("transformer.h.{i}.attn.masked_bias"),
            safetensors::Dtype::F32,
            vec![],
            (-1e4f32).to_le_bytes().to_vec(),
        ));
    }
    let b = scratch_dir("mask-buffers");
    m.write(&b);
    assert!(logits(&a) == logits(&b));
}

#[test]
fn untied_lm_head_is_used() {
    let mut m = TinyModel::new(true);
    m.config["tie_word_embeddings"] = false.into();
    let wte = m.tensors[m.find("transformer.wte.weight")].clone();
    // The head is the embedding scaled by 2: logits double (the final LayerNorm output is unchanged).
    let doubled: Vec<u8> = wte
        .3
        .chunks_exact(4)
        .flat_map(|c| (2.0 * f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    let tied = scratch_dir("head-tied");
    TinyModel::new(true).write(&tied);
    m.tensors
        .push(("lm_head.weight".into(), wte.1, wte.2.clone(), doubled));
    let untied = scratch_dir("head-untied");
    m.write(&untied);
    let (a, b) = (logits(&tied), logits(&untied));
    assert!(max_diff(&a.iter().map(|x| 2.0 * x).collect::<Vec<_>>(), &b) < 1e-5);
}
