//! Hostile input and faults (issue 12): every case ends in a clear error naming what is wrong, never a
//! panic, a signal, a hang, an unbounded allocation or success on garbage.

#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ref_model, scratch_dir, TinyModel};
use slimlm::compress::{self, MethodName, Options, Plan, Spec};
use slimlm::{perplexity, Error, GenerateOptions, Model};

fn slimlm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slimlm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny GPT-2 whose tensor `name` has `value` as its first element.
fn tiny_with(name: &str, value: f32, dir_name: &str) -> PathBuf {
    let mut m = TinyModel::new(false);
    let i = m.find(name);
    m.tensors[i].3[..4].copy_from_slice(&value.to_le_bytes());
    let dir = scratch_dir(dir_name);
    m.write(&dir);
    dir
}

fn uniform(method: MethodName) -> Plan {
    let s = Spec {
        method: Some(method),
        ..Spec::default()
    };
    Plan::uniform(s.clone(), s)
}

#[test]
fn an_index_without_shards_is_an_error() {
    let dir = scratch_dir("empty-weight-map");
    TinyModel::new(false).write(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {}}"#,
    )
    .unwrap();
    let e = Model::open(&dir).expect_err("an empty weight_map opened");
    assert!(e.to_string().contains("names no shard"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_fifo_or_directory_as_weights_is_an_error_not_a_hang() {
    let dir = scratch_dir("fifo-weights");
    TinyModel::new(false).write(&dir);
    let weights = dir.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let made = Command::new("mkfifo").arg(&weights).status().unwrap();
    assert!(made.success());
    let t = Instant::now();
    let e = Model::open(&dir).expect_err("a FIFO opened as weights");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("not a regular file"), "{e}");

    std::fs::remove_file(&weights).unwrap();
    std::fs::create_dir(&weights).unwrap();
    let e = Model::open(&dir).expect_err("a directory opened as weights");
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn a_weight_file_changed_in_place_is_reported_before_the_next_pass() {
    let dir = scratch_dir("changed-in-place");
    TinyModel::new(false).write(&dir);
    let weights = dir.join("model.safetensors");
    let model = Model::open(&dir).unwrap();
    let mut s = model.session();
    s.prefill(&[1, 2]).unwrap();

    // Same bytes written back in place (with a later mtime): the contract is broken even so.
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&weights).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let e = s.step(3).expect_err("a pass ran on a rewritten file");
    assert!(matches!(e, Error::Changed { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Grown (appended to): the size check names the change.
    let model = Model::open(&dir).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&weights)
        .unwrap()
        .set_len(bytes.len() as u64 + 8)
        .unwrap();
    let e = model.session().prefill(&[1]).err().unwrap();
    assert!(e.to_string().contains("size changed"), "{e}");
}

#[test]
fn a_weight_file_replaced_by_rename_keeps_the_session_running() {
    let dir = scratch_dir("replaced-by-rename");
    TinyModel::new(false).write(&dir);
    let model = Model::open(&dir).unwrap();
    let before = model.session().prefill(&[1, 2]).unwrap().to_vec();
    let other = scratch_dir("replaced-by-rename-new");
    TinyModel::new(true).write(&other);
    std::fs::rename(
        other.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let after = model.session().prefill(&[1, 2]).unwrap().to_vec();
    assert_eq!(before, after, "the mapping keeps the old contents");
}

/// Child half of the SIGBUS test: maps a model, truncates its file, reads the lost pages.
#[test]
fn sigbus_child() {
    let Ok(dir) = std::env::var("SLIMLM_SIGBUS_CHILD") else {
        return;
    };
    let model = Model::open(&dir).unwrap();
    let weights = Path::new(&dir).join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(0)
        .unwrap();
    let t = model.store().get("transformer.wte.weight").unwrap();
    let sum: u64 = t.bytes().iter().map(|&b| b as u64).sum();
    println!("read {sum} without a fault");
}

#[cfg(target_os = "linux")]
#[test]
fn truncating_a_mapped_file_exits_with_a_message_not_a_signal() {
    let dir = scratch_dir("sigbus");
    TinyModel::new(false).write(&dir);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigbus_child", "--nocapture", "--test-threads=1"])
        .env("SLIMLM_SIGBUS_CHILD", &dir)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.safetensors: the model file shrank or was rewritten"),
        "{err}"
    );
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    let bad = "transformer.h.1.mlp.c_fc.weight";
    let dir = tiny_with(bad, f32::NAN, "nan-weights");
    let model = Model::open(&dir).unwrap();
    let e = model.session().prefill(&[1, 2, 3]).err().unwrap();
    assert!(matches!(e, Error::NonFinite(_)), "{e}");
    assert!(e.to_string().contains(bad), "{e}");

    let mut s = model.session();
    let e = s
        .generate(
            &[1, 2],
            &GenerateOptions {
                max_tokens: 8,
                ..GenerateOptions::default()
            },
        )
        .and_then(|g| g.collect::<Result<Vec<u32>, _>>())
        .expect_err("greedy generation over NaN weights succeeded");
    assert!(e.to_string().contains("NaN or infinity"), "{e}");

    let ids: Vec<u32> = (0..20).collect();
    let e = perplexity(&model, &ids, 8, 4, &mut |_, _| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains(bad), "{e}");

    for method in [MethodName::Int8, MethodName::F16, MethodName::Keep] {
        let out = scratch_dir("nan-compressed");
        std::fs::remove_dir(&out).unwrap();
        let r = compress::compress(
            &dir,
            &out,
            &uniform(method),
            &Options::default(),
            &mut |_, _, _| {},
        );
        let e = r.expect_err("compressed NaN weights");
        assert!(e.to_string().contains(bad), "{method:?}: {e}");
        assert!(!out.exists());
    }
}

#[test]
fn f16_refuses_values_beyond_its_range() {
    let bad = "transformer.h.0.attn.c_proj.weight";
    let dir = tiny_with(bad, 3e38, "f16-overflow");
    let out = scratch_dir("f16-overflow-out");
    std::fs::remove_dir(&out).unwrap();
    let e = compress::compress(
        &dir,
        &out,
        &uniform(MethodName::F16),
        &Options::default(),
        &mut |_, _, _| {},
    )
    .expect_err("3e38 was written as F16");
    assert!(
        e.to_string().contains(bad) && e.to_string().contains("65504"),
        "{e}"
    );
    // INT8 holds it (as a scale), so that plan still works.
    compress::compress(
        &dir,
        &out,
        &uniform(MethodName::Int8),
        &Options::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
}

#[test]
fn the_kv_cache_grows_with_the_context_used() {
    let mut model = Model::open(ref_model("ref-bloom")).unwrap();
    model.set_context(1 << 20).unwrap();
    let mut s = model.session();
    s.prefill(&[1, 2, 3]).unwrap();
    let c = model.config();
    let min = slimlm::kv_cache::KV_MIN;
    assert_eq!(s.kv_capacity(), min);
    assert_eq!(s.kv_cache_bytes(), 2 * 4 * c.n_layer() * c.d_model * min);

    // Crossing a capacity moves the cache; the logits are those of one uninterrupted prefill.
    let model = Model::open(ref_model("ref-gpt2")).unwrap();
    let ids: Vec<u32> = (0..300).map(|i| (i * 37 % 5000) as u32).collect();
    let mut grown = model.session();
    grown.prefill(&ids[..200]).unwrap();
    assert_eq!(grown.kv_capacity(), 200);
    for &t in &ids[200..299] {
        grown.step(t).unwrap();
    }
    let a = grown.step(ids[299]).unwrap().to_vec();
    assert_eq!(grown.kv_capacity(), 400);
    let b = model.session().prefill(&ids).unwrap().to_vec();
    let diff = common::max_abs_diff(&a, &b);
    assert!(diff < 1e-3, "max |Δ logit| {diff}");
}

#[test]
fn generation_lengths_that_overflow_are_an_error() {
    let model = Model::open(ref_model("ref-gpt2")).unwrap();
    let mut s = model.session();
    let opts = GenerateOptions {
        max_tokens: usize::MAX,
        ..GenerateOptions::default()
    };
    let e = s.generate(&[1, 2], &opts).err().unwrap();
    assert!(matches!(e, slimlm::Error::ContextOverflow { .. }), "{e}");
}

#[test]
fn stdout_closed_or_full_is_not_a_panic() {
    let model = ref_model("ref-gpt2");
    let bin = env!("CARGO_BIN_EXE_slimlm");
    // The reader is gone before slimlm writes: a quiet exit.
    let script = format!(
        "(sleep 0.3; exec {bin} inspect --json {}) | true; echo ${{PIPESTATUS[0]}}",
        model.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));

    if Path::new("/dev/full").exists() {
        for args in [vec!["inspect"], vec!["inspect", "--json"]] {
            let out = slimlm()
                .args(&args)
                .arg(&model)
                .stdout(std::fs::File::create("/dev/full").unwrap())
                .output()
                .unwrap();
            let err = stderr_of(&out);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains("writing the output"), "{err}");
        }
    }
}

#[test]
fn threads_are_bounded() {
    let out = slimlm()
        .args(["perplexity", "--threads", "100000", "--text", "README.md"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("--threads must be between 1 and 512"), "{err}");
}

#[test]
fn compress_refuses_outputs_it_must_not_replace() {
    let src = scratch_dir("guard-src");
    TinyModel::new(false).write(&src);
    let run = |out: &Path, overwrite: bool| {
        let mut c = slimlm();
        c.args(["compress", "--mode", "int8", "--model"])
            .arg(&src)
            .arg("--out")
            .arg(out);
        if overwrite {
            c.arg("--overwrite");
        }
        c.output().unwrap()
    };

    // The input itself.
    let out = run(&src, true);
    assert!(
        stderr_of(&out).contains("the output is the input model"),
        "{}",
        stderr_of(&out)
    );
    assert!(Model::open(&src).is_ok());

    // A directory that is not a model: kept as it is.
    let unrelated = scratch_dir("guard-unrelated");
    std::fs::write(unrelated.join("notes.txt"), "mine").unwrap();
    let out = run(&unrelated, true);
    assert!(
        stderr_of(&out).contains("does not look like a model directory"),
        "{}",
        stderr_of(&out)
    );
    assert!(unrelated.join("notes.txt").exists());

    // A regular file: refused before any work.
    let file = scratch_dir("guard-file").join("out");
    std::fs::write(&file, "x").unwrap();
    let out = run(&file, true);
    assert!(
        stderr_of(&out).contains("is not a directory"),
        "{}",
        stderr_of(&out)
    );

    // A model directory is replaced with --overwrite.
    let dest = scratch_dir("guard-dest");
    std::fs::remove_dir(&dest).unwrap();
    assert!(run(&dest, false).status.success());
    assert!(run(&dest, true).status.success());
    assert!(!run(&dest, false).status.success());
}

/// Temporaries that `compress` leaves beside `out` (named `.NAME.tmp-…` / `.NAME.old-…`).
fn temporaries(out: &Path) -> Vec<String> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.")))
        .collect()
}

#[cfg(unix)]
#[test]
fn compress_killed_at_any_point_leaves_the_output_absent_or_complete() {
    let src = ref_model("ref-gpt2");
    let base = scratch_dir("crash");
    let complete = base.join("complete");
    let compress = |out: &Path, overwrite: bool| {
        let mut c = slimlm();
        c.args(["compress", "--mode", "int8", "--model"])
            .arg(&src)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if overwrite {
            c.arg("--overwrite");
        }
        c
    };
    let t = Instant::now();
    assert!(compress(&complete, false).status().unwrap().success());
    let full = t.elapsed();
    let expected = std::fs::read(complete.join("model.safetensors")).unwrap();

    let out = base.join("out");
    let kills = 16;
    let (mut left_behind, mut in_write) = (0, 0);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut random = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    for i in 0..kills {
        let overwrite = out.exists();
        let mut child = compress(&out, overwrite).spawn().unwrap();
        if i % 2 == 0 {
            // Anywhere in the run.
            std::thread::sleep(full.mul_f64(random()));
        } else {
            // In the write phase: once the temporary directory appears, within a few milliseconds.
            let t = Instant::now();
            while temporaries(&out).is_empty() && t.elapsed() < 2 * full {
                std::thread::sleep(Duration::from_micros(200));
            }
            in_write += 1;
            std::thread::sleep(Duration::from_secs_f64(0.02 * random()));
        }
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        if out.exists() {
            let got = std::fs::read(out.join("model.safetensors")).unwrap();
            assert!(got == expected, "kill {i}: a partial model at --out");
            assert!(Model::open(&out).is_ok());
        }
        left_behind += temporaries(&out).len();
    }
    // The next complete run cleans up after every killed one (and restores or replaces the output).
    let overwrite = out.exists();
    assert!(compress(&out, overwrite).status().unwrap().success());
    assert_eq!(temporaries(&out), Vec::<String>::new());
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        expected
    );
    eprintln!(
        "{kills} kills ({in_write} aimed at the write phase), {left_behind} temporaries left \
         behind and then removed"
    );
}

#[test]
fn config_and_tokenizer_errors_name_the_file_at_fault() {
    let mut m = TinyModel::new(true);
    m.config["attention_types"] = "global".into();
    let dir = scratch_dir("neo-attention-types-string");
    m.write(&dir);
    let e = Model::open(&dir).expect_err("a string attention_types was accepted");
    assert!(
        e.to_string().contains("`attention_types` must be a list"),
        "{e}"
    );

    let dir = scratch_dir("merge-not-in-vocab");
    let src = ref_model("ref-gpt2");
    std::fs::copy(src.join("vocab.json"), dir.join("vocab.json")).unwrap();
    let mut merges = std::fs::read_to_string(src.join("merges.txt")).unwrap();
    merges.push_str("zzqx zzqy\n");
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
    let e = slimlm::Tokenizer::from_dir(&dir).expect_err("a merge of unknown tokens was accepted");
    assert!(e.to_string().contains("merges.txt"), "{e}");
}

/// Found by the fuzzer (`fuzz/`): the source's alignment padding was copied and then clashed with the
/// writer's own, giving a file slimlm could not read back.
#[test]
fn a_source_with_padding_tensors_compresses_to_a_readable_model() {
    let mut m = TinyModel::new(false);
    m.tensors.push((
        format!("{}0", slimlm::tensor_file::PAD_PREFIX),
        safetensors::Dtype::U8,
        vec![40],
        vec![0; 40],
    ));
    let src = scratch_dir("padded-source");
    m.write(&src);
    for method in [MethodName::Int8, MethodName::F16] {
        let out = scratch_dir("padded-out");
        std::fs::remove_dir(&out).unwrap();
        compress::compress(
            &src,
            &out,
            &uniform(method),
            &Options::default(),
            &mut |_, _, _| {},
        )
        .unwrap();
        let model = Model::open(&out).unwrap();
        model.session().prefill(&[1, 2]).unwrap();
    }
}
