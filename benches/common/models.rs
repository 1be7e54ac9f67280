//! Models for the end-to-end benchmarks, made on first use and kept in `target/bench-models`
//! (`$SLIMLM_BENCH_MODELS` to put them elsewhere): synthetic models at real sizes (`slimlm synth`) and
//! their compressed variants (`slimlm compress`), both through the `slimlm` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A compressed variant: a name and the `slimlm compress` arguments that make it (none: the original).
pub struct Variant {
    pub name: &'static str,
    pub args: &'static [&'static str],
}

/// The variants compared everywhere: the FP32 original memory-mapped, INT8 dense, rank-128 factors
/// (the prototype's rank) stored F32, F16 or INT8 with the embedding / LM head stored alike, and 4-/3-bit
/// weights.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "f32",
        args: &[],
    },
    Variant {
        name: "int8",
        args: &["--mode", "int8"],
    },
    Variant {
        name: "lowrank-f32-r128",
        args: &[
            "--mode",
            "lowrank",
            "--rank",
            "128",
            "--factors",
            "f32",
            "--embeddings",
            "keep",
        ],
    },
    Variant {
        name: "lowrank-f16-r128",
        args: &[
            "--mode",
            "lowrank",
            "--rank",
            "128",
            "--factors",
            "f16",
            "--embeddings",
            "f16",
        ],
    },
    Variant {
        name: "lowrank-int8-r128",
        args: &[
            "--mode",
            "lowrank",
            "--rank",
            "128",
            "--factors",
            "int8",
            "--embeddings",
            "int8",
        ],
    },
    // 4 and 3 bits, groups of 128 with minimums (RTN: speed and memory do not depend on the quantizer);
    // the embedding / LM head INT8 (the modes' default) or, for `q4-all`, 4-bit too.
    Variant {
        name: "q4",
        args: &["--mode", "q4", "--group", "128"],
    },
    Variant {
        name: "q4-all",
        args: &["--mode", "q4", "--group", "128", "--embeddings", "q4"],
    },
    Variant {
        name: "q3",
        args: &["--mode", "q3", "--group", "128"],
    },
];

/// The variants named in `$SLIMLM_BENCH_VARIANTS` (comma-separated), or all of them.
pub fn selected() -> Vec<&'static Variant> {
    match std::env::var("SLIMLM_BENCH_VARIANTS") {
        Ok(list) => VARIANTS
            .iter()
            .filter(|v| list.split(',').any(|n| n.trim() == v.name))
            .collect(),
        Err(_) => VARIANTS.iter().collect(),
    }
}

/// The `slimlm` binary cargo built for this bench.
pub fn slimlm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slimlm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn models_dir() -> PathBuf {
    std::env::var_os("SLIMLM_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models"))
}

fn run(cmd: &mut Command, what: &str) {
    eprintln!("bench setup: {what}");
    let status = cmd.status().expect("run slimlm");
    assert!(status.success(), "bench setup failed: {what}");
}

/// The base model `name`: `ref-gpt2` / `ref-gptneo` from ../shared, or a synthetic
/// `gpt2-124m`, `gpt2-355m`, `gpt-neo-125m`, `gpt-neo-1.3b` (made if missing).
pub fn base(name: &str) -> PathBuf {
    if let Some(r) = name.strip_prefix("ref-") {
        return PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models")
            .join(format!("ref-{r}"));
    }
    let dir = models_dir().join(name);
    if !dir.join("model.safetensors").exists() {
        let (arch, preset) = name.rsplit_once('-').expect("name like gpt2-124m");
        run(
            slimlm()
                .args([
                    "synth",
                    "--arch",
                    arch,
                    "--preset",
                    preset,
                    "--overwrite",
                    "--out",
                ])
                .arg(&dir),
            &format!("synthesise {name}"),
        );
    }
    dir
}

/// `variant` of the base model `name` (compressed on first use).
pub fn variant(name: &str, v: &Variant) -> PathBuf {
    let src = base(name);
    if v.args.is_empty() {
        return src;
    }
    let dir = models_dir().join(format!("{name}.{}", v.name));
    if !dir.join("model.safetensors").exists() {
        run(
            slimlm()
                .arg("compress")
                .arg("--model")
                .arg(&src)
                .arg("--out")
                .arg(&dir)
                .arg("--overwrite")
                .args(v.args),
            &format!("compress {name} → {}", v.name),
        );
    }
    dir
}

/// Where benchmark reports go: `target/bench-results`.
pub fn results_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&d).expect("create target/bench-results");
    d
}

/// Bytes of the model's safetensors file(s).
pub fn file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
