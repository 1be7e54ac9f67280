//! `slimlm compress`.

use std::path::PathBuf;

use slimlm::compress::{
    self, Component, FactorDtype, MethodName, Plan, PlanOptions, Quantizer, SFold, SvdKind,
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
    /// Every linear layer 4-bit in groups (`--group`, default 128; `--quantizer`), embeddings INT8.
    Q4,
    /// Every linear layer 3-bit in groups, embeddings INT8.
    Q3,
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
    /// Group size (values per scale): INT8 default one scale per row; q4/q3 default 128 (a multiple of 32).
    #[arg(long)]
    group: Option<usize>,
    /// q4/q3: how codes are chosen: `rtn` (round to nearest, default), `gptq` or `awq` (both need
    /// --calibration).
    #[arg(long, value_parser = ["rtn", "gptq", "awq"])]
    quantizer: Option<String>,
    /// q4/q3: one scale per group, no minimum (default: a scale and a minimum per group).
    #[arg(long)]
    symmetric: bool,
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
    #[arg(long, value_parser = ["keep", "f16", "int8", "q4", "q3"])]
    embeddings: Option<String>,
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
    #[arg(long, value_parser = ["vh", "sqrt", "separate"])]
    s_fold: Option<String>,
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

/// The options as the library's [`PlanOptions`] (which checks them and builds the plan).
fn plan_options(a: &Args) -> slimlm::Result<PlanOptions> {
    Ok(PlanOptions {
        mode: a.mode.map(|m| match m {
            Mode::Int8 => compress::Mode::Int8,
            Mode::F16 => compress::Mode::F16,
            Mode::Lowrank => compress::Mode::Lowrank,
            Mode::Q4 => compress::Mode::Q4,
            Mode::Q3 => compress::Mode::Q3,
        }),
        plan: a.plan.as_deref().map(Plan::from_file).transpose()?,
        group: a.group,
        rank: a.rank,
        energy: a.energy,
        budget: a.budget,
        factors: a.factors.as_deref().map(FactorDtype::parse).transpose()?,
        embeddings: a.embeddings.as_deref().map(MethodName::parse).transpose()?,
        skip: a
            .skip
            .iter()
            .map(|c| Component::parse(c))
            .collect::<slimlm::Result<_>>()?,
        skip_layers: a.skip_layer.clone(),
        svd: a.svd.as_deref().map(SvdKind::parse).transpose()?,
        calibration: !a.calibration.is_empty(),
        alpha: a.alpha,
        s_fold: a.s_fold.as_deref().map(SFold::parse).transpose()?,
        quantizer: a.quantizer.as_deref().map(Quantizer::parse).transpose()?,
        symmetric: a.symmetric,
    })
}

pub fn run(a: Args) -> CliResult {
    super::set_threads(a.threads)?;
    let plan = plan_options(&a)?.into_plan()?;
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
    let left = report
        .matrices
        .iter()
        .filter(|m| m.note.as_deref().is_some_and(|n| n.contains("left dense")))
        .count();
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
