//! `slimlm compress`.

use std::path::PathBuf;

use slimlm::compress::{
    self, Component, FactorDtype, MethodName, Override, Plan, SFold, Spec, SvdKind,
};

use super::CliResult;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    /// Every matrix and the embeddings INT8 (per-row or per-group scales).
    Int8,
    /// Every matrix and embedding F16, vectors F32.
    F16,
    /// Every linear layer as low-rank factors (`--rank`, `--energy` or `--budget`).
    Lowrank,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EmbeddingsArg {
    Keep,
    F16,
    Int8,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FoldArg {
    Vh,
    Sqrt,
    Separate,
}

#[derive(clap::Args)]
pub struct Args {
    /// Source model directory. Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output model directory (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// A simple plan for every matrix.
    #[arg(long, value_enum, conflicts_with = "plan")]
    mode: Option<Mode>,
    /// A plan file (TOML, or JSON by extension) for mixed plans.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// INT8 group size (values per scale); default one scale per row.
    #[arg(long)]
    group: Option<usize>,
    /// Low rank: rank of every matrix (matrices where it would not save memory are left dense and reported).
    #[arg(long, conflicts_with_all = ["energy", "budget"])]
    rank: Option<usize>,
    /// Low rank: keep this fraction of each matrix's squared singular values.
    #[arg(long, conflicts_with = "budget")]
    energy: Option<f64>,
    /// Low rank: factors hold at most this fraction of each matrix's parameters.
    #[arg(long)]
    budget: Option<f64>,
    /// Low rank: factor storage (default int8, as in `eval`).
    #[arg(long, value_parser = ["f32", "f16", "int8"])]
    factors: Option<String>,
    /// Storage of the token embedding / tied LM head (default: as the mode; int8 for lowrank).
    #[arg(long, value_enum)]
    embeddings: Option<EmbeddingsArg>,
    /// Leave a component as it is (attn_qkv, attn_out, mlp_in, mlp_out, embeddings); repeatable.
    #[arg(long)]
    skip: Vec<String>,
    /// Leave every matrix of this layer as it is; repeatable.
    #[arg(long)]
    skip_layer: Vec<usize>,
    /// Calibration text for activation-aware SVD (ASVD); repeatable.
    #[arg(long)]
    calibration: Vec<PathBuf>,
    /// With --calibration: `activation` (ASVD scaling, default) or `whiten` (Cholesky whitening).
    #[arg(long, value_parser = ["activation", "whiten"])]
    svd: Option<String>,
    /// At most this many calibration tokens.
    #[arg(long, default_value_t = 8192)]
    calibration_tokens: usize,
    /// ASVD exponent on mean |x|.
    #[arg(long)]
    alpha: Option<f64>,
    /// Where singular values go.
    #[arg(long, value_enum)]
    s_fold: Option<FoldArg>,
    /// Replace an existing output directory.
    #[arg(long)]
    overwrite: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn spec(method: MethodName) -> Spec {
    Spec {
        method: Some(method),
        ..Spec::default()
    }
}

fn build_plan(a: &Args) -> Result<Plan, Box<dyn std::error::Error>> {
    let lowrank_opts =
        a.rank.is_some() || a.energy.is_some() || a.budget.is_some() || a.factors.is_some();
    let mut plan = match (&a.plan, a.mode) {
        (Some(p), _) => {
            if lowrank_opts || a.group.is_some() {
                return Err("--rank/--energy/--budget/--factors/--group go with --mode; put them in the plan file".into());
            }
            Plan::from_file(p)?
        }
        (None, None) => return Err("give --mode int8|f16|lowrank or --plan FILE".into()),
        (None, Some(Mode::Int8)) => {
            if lowrank_opts {
                return Err("--rank/--energy/--budget/--factors apply to --mode lowrank".into());
            }
            let s = Spec {
                group: a.group,
                ..spec(MethodName::Int8)
            };
            Plan::uniform(s.clone(), s)
        }
        (None, Some(Mode::F16)) => {
            if lowrank_opts || a.group.is_some() {
                return Err("--mode f16 takes no rank, factors or group".into());
            }
            Plan::uniform(spec(MethodName::F16), spec(MethodName::F16))
        }
        (None, Some(Mode::Lowrank)) => {
            if a.rank.is_none() && a.energy.is_none() && a.budget.is_none() {
                return Err("--mode lowrank needs --rank R, --energy E or --budget B".into());
            }
            let factors = a.factors.as_deref().map(FactorDtype::parse).transpose()?;
            let s = Spec {
                method: Some(MethodName::Lowrank),
                rank: a.rank,
                energy: a.energy,
                budget: a.budget,
                factors: Some(factors.unwrap_or(FactorDtype::Int8)),
                group: a.group,
                force: None,
            };
            // The same defaults as `eval` (factors and embeddings INT8): what serves users best.
            Plan::uniform(s, spec(MethodName::Int8))
        }
    };
    if let Some(e) = a.embeddings {
        let m = match e {
            EmbeddingsArg::Keep => MethodName::Keep,
            EmbeddingsArg::F16 => MethodName::F16,
            EmbeddingsArg::Int8 => MethodName::Int8,
        };
        let group = if m == MethodName::Int8 && matches!(a.mode, Some(Mode::Int8)) {
            a.group
        } else {
            None
        };
        plan.components
            .insert("embeddings".into(), Spec { group, ..spec(m) });
    }
    for c in &a.skip {
        let c = Component::parse(c)?;
        plan.components
            .insert(c.name().into(), spec(MethodName::Keep));
        // A skip wins over per-layer overrides of the plan file too.
        if c != Component::Embeddings {
            plan.overrides.push(Override {
                components: Some(vec![c.name().into()]),
                method: Some(MethodName::Keep),
                ..Override::default()
            });
        }
    }
    if !a.skip_layer.is_empty() {
        plan.overrides.push(Override {
            layers: Some(a.skip_layer.clone()),
            method: Some(MethodName::Keep),
            ..Override::default()
        });
    }
    if a.svd.as_deref() == Some("whiten") {
        plan.svd = SvdKind::Whiten;
    } else if a.svd.is_some() || (!a.calibration.is_empty() && plan.svd == SvdKind::Plain) {
        plan.svd = SvdKind::Activation;
    }
    if a.alpha.is_some() {
        plan.alpha = a.alpha;
    }
    if let Some(f) = a.s_fold {
        plan.s_fold = Some(match f {
            FoldArg::Vh => SFold::Vh,
            FoldArg::Sqrt => SFold::Sqrt,
            FoldArg::Separate => SFold::Separate,
        });
    }
    Ok(plan)
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let plan = build_plan(&a)?;
    if plan.svd != SvdKind::Plain && a.calibration.is_empty() {
        return Err("the plan asks for activation-aware SVD: give --calibration FILE".into());
    }
    let mut calibration = Vec::new();
    for p in &a.calibration {
        calibration.push(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let opts = compress::Options {
        overwrite: a.overwrite,
        calibration,
        calibration_tokens: a.calibration_tokens,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let src = super::model_dir(a.model.clone());
    let report = compress::compress(&src, &a.out, &plan, &opts, &mut |done, total, stage| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(stage.to_string());
    });
    bar.finish_and_clear();
    let report = report?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    outln!(
        "{:<44} {:>12} {:<22} {:>10} {:>9}",
        "matrix",
        "shape",
        "stored",
        "bytes",
        "rel.err"
    )?;
    for m in &report.matrices {
        outln!(
            "{:<44} {:>12} {:<22} {:>10} {:>9.5}",
            m.name,
            format!("{}x{}", m.shape[0], m.shape[1]),
            m.stored,
            m.bytes,
            m.rel_error
        )?;
        if let Some(n) = &m.note {
            outln!("    note: {n}")?;
        }
    }
    let left = report.matrices.iter().filter(|m| m.note.is_some()).count();
    if left > 0 {
        outln!(
            "{left} matrices left dense where the global rank would not save memory (see notes)"
        )?;
    }
    outln!(
        "{} → {}: {} → {} bytes (ratio {:.3})",
        src.display(),
        a.out.display(),
        report.source_bytes,
        report.file_bytes,
        report.file_bytes as f64 / report.source_bytes as f64
    )?;
    Ok(())
}
