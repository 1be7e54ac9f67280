//! `slimlm eval`: quality analysis of compressed models (compare, disparity, sweep, sensitivity).

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use slimlm::compress::{Plan, Spec};
use slimlm::eval::{
    self, compare, corpus, disparity, sensitivity, svg, sweep, Calibration, EvalOptions, LangIds,
    LangText, Languages,
};
use slimlm::Model;

use super::CliResult;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Subcommand)]
pub enum Eval {
    /// Per layer: cosine similarity of hidden states and linear outputs; KL and top-1 of the logits.
    Compare(CompareArgs),
    /// Perplexity per language (UDHR), degradation and its disparity across languages.
    Disparity(DisparityArgs),
    /// Size against perplexity per language over ranks, energies or INT8 group sizes (built in memory).
    Sweep(SweepArgs),
    /// Per-unit sensitivity and a protection plan within a size budget (for `slimlm compress --plan`).
    Sensitivity(SensitivityArgs),
}

/// The model to compare with the reference: a directory, or one built in memory.
#[derive(clap::Args)]
pub struct CandidateArgs {
    /// Compressed model directory.
    #[arg(long, conflicts_with_all = ["plan", "method"], required_unless_present_any = ["plan", "method"])]
    candidate: Option<PathBuf>,
    /// Build the candidate in memory from the reference by this plan file (TOML or JSON).
    #[arg(long, conflicts_with = "method")]
    plan: Option<PathBuf>,
    /// Build the candidate in memory by a uniform method: int8, int8:g64, f16, lowrank:r64:int8,
    /// q4:g128:rtn, q4:g128:gptq (calibrated: --calibration), q3:g64:rtn:sym, ...
    #[arg(long)]
    method: Option<String>,
    /// Embeddings with --method.
    #[arg(long, default_value = "int8", requires = "method")]
    embeddings: String,
}

/// Which texts, how they are scored.
#[derive(clap::Args)]
pub struct CorpusArgs {
    /// UDHR corpus directory, `<lang>.txt` one paragraph per line (default: ../shared/corpora/udhr).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// `default` (eng,deu_1996,fra,spa,rus,cmn_hans,jpn,arb,hin), `all`, or a comma-separated list.
    #[arg(long, default_value = "default")]
    languages: String,
    /// Keep the first N lines of each text.
    #[arg(long, value_parser = super::at_least(1))]
    max_lines: Option<usize>,
    /// Keep the first N tokens of each text (a token is scored against the one before it).
    #[arg(long, value_parser = super::at_least(2))]
    max_tokens: Option<usize>,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Distance between window starts.
    #[arg(long, default_value_t = 256)]
    stride: usize,
}

#[derive(clap::Args)]
pub struct Common {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Calibration text of methods built in memory that need it (GPTQ, AWQ).
#[derive(clap::Args)]
pub struct CalibrationArgs {
    /// Calibration text for GPTQ (repeat for several languages; the first --calibration-tokens / N
    /// tokens of each). Default: every file of ../shared/corpora/heldout (the held-out Debian handbook
    /// chapters, 11 languages), or the UDHR's default languages when the held-out chapters are being
    /// scored. Never the text being scored: shared lines are refused.
    #[arg(long)]
    calibration: Vec<PathBuf>,
    /// At most this many calibration tokens, an equal share from each text.
    #[arg(long, default_value_t = 8192, value_parser = super::at_least(2))]
    calibration_tokens: usize,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The dense reference model directory.
    #[arg(long)]
    reference: PathBuf,
    #[command(flatten)]
    candidate: CandidateArgs,
    /// UTF-8 text to run.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window (windows do not overlap; each is seen alone).
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Keep the first N tokens of the text.
    #[arg(long, value_parser = super::at_least(1))]
    max_tokens: Option<usize>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct DisparityArgs {
    /// The dense reference model directory.
    #[arg(long)]
    reference: PathBuf,
    #[command(flatten)]
    candidate: CandidateArgs,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Write a bar chart of the degradation per language (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    /// The dense model to compress. Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Methods, comma-separated (int8, int8:g64, f16, lowrank:r64:int8, lowrank:e0.9:f16, q4:g128:rtn,
    /// q4:g128:gptq, q3:g64:rtn:sym, ...).
    #[arg(long)]
    points: Option<String>,
    /// Low-rank ranks, comma-separated (factors: --factors).
    #[arg(long)]
    ranks: Option<String>,
    /// Low-rank energy thresholds in (0, 1], comma-separated.
    #[arg(long)]
    energies: Option<String>,
    /// INT8 group sizes, comma-separated (`row`: one scale per row).
    #[arg(long)]
    int8_groups: Option<String>,
    /// Factor storage of --ranks/--energies points: f32, f16 or int8.
    #[arg(long, default_value = "int8")]
    factors: String,
    /// Embeddings at every point.
    #[arg(long, default_value = "int8")]
    embeddings: String,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Write the quality–size chart (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct SensitivityArgs {
    /// The dense model to analyse. Default: the bundled models/ref-gpt2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The compression whose sensitivity is measured.
    #[arg(long, default_value = "lowrank:r32:int8")]
    base: String,
    /// The higher precision of protected units (keep, f16, int8, int8:gN).
    #[arg(long, default_value = "int8")]
    protect: String,
    /// Embeddings in the plan.
    #[arg(long, default_value = "int8")]
    embeddings: String,
    /// Unit compressed at a time: layer, component or layer-component.
    #[arg(long, default_value = "layer")]
    unit: String,
    /// Largest model.safetensors of the plan, in MB (default: base size + 1/4 of protecting everything).
    #[arg(long)]
    budget_mb: Option<f64>,
    /// Write the protection plan (TOML; JSON if the name ends in .json).
    #[arg(long)]
    plan_out: Option<PathBuf>,
    /// Write a bar chart of the units' sensitivity (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write a bar chart of base, plan and uniform degradation per language (SVG).
    #[arg(long)]
    comparison_svg: Option<PathBuf>,
    #[command(flatten)]
    corpus: CorpusArgs,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    common: Common,
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn update(bar: &ProgressBar) -> impl FnMut(usize, usize, &str) + '_ {
    |done, total, stage| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(stage.to_string());
    }
}

/// The model directory's last component (`ref-gpt2`), for chart titles.
fn model_name(model: &Model) -> String {
    dir_name(model.dir())
}

/// A directory's last component (of its canonical path: `.` names the directory too).
fn dir_name(dir: &Path) -> String {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    canon.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A plan in a few words: the method of a uniform plan (`q4:g128:gptq, embeddings int8`), else
/// `mixed plan`.
fn describe_plan(plan: &Plan) -> String {
    let emb = plan.components.get("embeddings");
    let uniform = plan.overrides.is_empty() && plan.components.keys().all(|k| k == "embeddings");
    match (uniform, emb) {
        (true, Some(e)) => format!(
            "{}, embeddings {}",
            eval::describe_spec(&plan.default),
            eval::describe_spec(e)
        ),
        (true, None) => eval::describe_spec(&plan.default),
        _ => "mixed plan".into(),
    }
}

fn open(dir: &Path, what: &str) -> Res<Model> {
    Model::open(dir).map_err(|e| format!("{what}: {e}").into())
}

impl CandidateArgs {
    /// The plan of a candidate built in memory (`None` for a directory).
    fn plan(&self) -> Res<Option<Plan>> {
        Ok(match (&self.candidate, &self.plan, &self.method) {
            (Some(_), _, _) => None,
            (_, Some(p), _) => Some(Plan::from_file(p)?),
            (_, _, Some(m)) => Some(eval::parse_spec_plan(m, &self.embeddings)?),
            _ => return Err("give --candidate DIR, --plan FILE or --method M".into()),
        })
    }
}

/// What the candidate is, for chart titles: its method, never a (temporary) path.
fn describe_candidate(a: &CandidateArgs, plan: Option<&Plan>, cand: &Model) -> String {
    match (plan, &a.plan) {
        (Some(p), Some(file)) => format!("plan {} ({})", dir_name(file), describe_plan(p)),
        (Some(p), None) => describe_plan(p),
        (None, _) => {
            let stored = cand
                .store()
                .metadata()
                .get(slimlm::compress::META_PLAN)
                .and_then(|j| Plan::from_json(j).ok());
            let name = dir_name(cand.dir());
            match stored {
                Some(p) => format!("{name} ({})", describe_plan(&p)),
                None => name,
            }
        }
    }
}

/// The calibration text for `plans`, if one of them needs it: `--calibration` files, or the default
/// slice that is not being scored (`scored`: the directories or files of the scored text), checked
/// against the scored texts. Says on stderr which text it is.
fn calibration(
    reference: &Model,
    plans: &[&Plan],
    a: &CalibrationArgs,
    scored: &[PathBuf],
    scored_texts: &[LangText],
) -> Res<Calibration> {
    let mut needed = false;
    for p in plans {
        needed |= eval::needs_calibration(reference, p)?;
    }
    if !needed {
        if !a.calibration.is_empty() {
            eprintln!("note: no method needs calibration; --calibration is not used");
        }
        return Ok(Calibration::default());
    }
    let cal = if a.calibration.is_empty() {
        corpus::default_calibration(scored, a.calibration_tokens)?
    } else {
        corpus::calibration_from_files(&a.calibration, a.calibration_tokens)?
    };
    corpus::check_disjoint(&cal, scored_texts)?;
    eprintln!("calibration: {}", cal.source);
    Ok(cal)
}

/// The candidate: a directory, or built in memory from the reference (calibrated if it needs it).
fn candidate(
    reference: &Model,
    a: &CandidateArgs,
    plan: Option<&Plan>,
    cal: &Calibration,
    bar: &ProgressBar,
) -> Res<Model> {
    match (plan, &a.candidate) {
        (None, Some(dir)) => open(dir, "candidate"),
        (Some(plan), _) => {
            let (model, _) =
                eval::build_compressed_calibrated(reference, plan, cal, &mut update(bar))?;
            Ok(model)
        }
        (None, None) => Err("give --candidate DIR, --plan FILE or --method M".into()),
    }
}

fn eval_options(c: &CorpusArgs) -> EvalOptions {
    EvalOptions {
        context: c.context,
        stride: c.stride,
    }
}

/// The corpus: its directory, the texts, and their tokens in full (`max_tokens` is applied by the
/// caller).
struct Corpus {
    dir: PathBuf,
    texts: Vec<LangText>,
    ids: Vec<LangIds>,
}

fn texts(model: &Model, c: &CorpusArgs) -> Res<Corpus> {
    let dir = match &c.corpus {
        Some(d) => d.clone(),
        None => corpus::default_corpus_dir().ok_or_else(|| {
            format!(
                "no UDHR corpus at {}; {}",
                corpus::DEFAULT_CORPUS,
                corpus::HOW_TO_GET
            )
        })?,
    };
    let langs = Languages::parse(&c.languages)?;
    let texts = corpus::load(&dir, &langs, c.max_lines)?;
    let ids = corpus::tokenize(model, &texts, None)?;
    Ok(Corpus { dir, texts, ids })
}

fn write_svg(path: &Path, svg: &str) -> Res<()> {
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:+.2}%", 100.0 * v)
}

pub fn run(e: Eval) -> CliResult {
    match e {
        Eval::Compare(a) => run_compare(a),
        Eval::Disparity(a) => run_disparity(a),
        Eval::Sweep(a) => run_sweep(a),
        Eval::Sensitivity(a) => run_sensitivity(a),
    }
}

fn run_compare(a: CompareArgs) -> CliResult {
    super::set_threads(a.common.threads)?;
    let reference = open(&a.reference, "reference")?;
    let text =
        std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
    let plan = a.candidate.plan()?;
    let scored = [LangText {
        lang: a.text.display().to_string(),
        text: text.clone(),
    }];
    let cal = calibration(
        &reference,
        &plan.iter().collect::<Vec<_>>(),
        &a.calibration,
        std::slice::from_ref(&a.text),
        &scored,
    )?;
    let bar = bar();
    let cand = candidate(&reference, &a.candidate, plan.as_ref(), &cal, &bar)?;
    let mut ids = reference.tokenizer().encode(&text)?;
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let r = compare::compare(&reference, &cand, &ids, a.context, &mut update(&bar));
    bar.finish_and_clear();
    let r = r?;
    if a.common.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let mut comps: Vec<&str> = Vec::new();
    for s in &r.linears {
        if !comps.contains(&s.component.as_str()) {
            comps.push(&s.component);
        }
    }
    out!("{:<6} {:>10}", "layer", "hidden")?;
    for c in &comps {
        out!(" {c:>10}")?;
    }
    outln!("   (mean cosine similarity over {} tokens)", r.tokens)?;
    for h in &r.hidden {
        out!("{:<6} {:>10.6}", h.layer, h.cosine)?;
        for c in &comps {
            match r
                .linears
                .iter()
                .find(|s| s.layer == h.layer && s.component == *c)
            {
                Some(s) => out!(" {:>10.6}", s.cosine)?,
                None => out!(" {:>10}", "")?,
            }
        }
        outln!()?;
    }
    outln!(
        "logits: KL(reference ‖ candidate) mean {:.6} nats, max {:.6}; top-1 agreement {:.2}% over {} positions",
        r.logits.kl_mean,
        r.logits.kl_max,
        100.0 * r.logits.top1_agreement,
        r.logits.positions
    )?;
    Ok(())
}

/// Bits per byte, or `n/a`.
fn bpb(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |b| format!("{b:.4}"))
}

fn print_languages(langs: &[disparity::LangResult]) -> std::io::Result<()> {
    outln!(
        "{:<10} {:>8} {:>8} {:>14} {:>14} {:>12} {:>8} {:>8} {:>10}",
        "lang",
        "tokens",
        "bytes",
        "reference ppl",
        "candidate ppl",
        "degradation",
        "ref bpb",
        "cand bpb",
        "bpb change"
    )?;
    for l in langs {
        outln!(
            "{:<10} {:>8} {:>8} {:>14.3} {:>14.3} {:>12} {:>8} {:>8} {:>10}",
            l.lang,
            l.tokens,
            l.bytes,
            l.reference_ppl,
            l.candidate_ppl,
            pct(l.degradation),
            bpb(l.reference_bpb),
            bpb(l.candidate_bpb),
            l.bpb_change.map_or("n/a".into(), pct)
        )?;
    }
    Ok(())
}

fn print_disparity(d: &disparity::Disparity) -> std::io::Result<()> {
    outln!(
        "disparity: worst {} {}, best {} {}; ratio {}, ppl ratio {:.4}, spread {:.2} pts; mean degradation {}; mean bpb change {}",
        d.worst_lang,
        pct(d.worst),
        d.best_lang,
        pct(d.best),
        d.ratio.map_or("n/a (best ≤ 0)".to_string(), |r| format!("{r:.2}")),
        d.ppl_ratio,
        100.0 * d.spread,
        pct(d.mean_degradation),
        d.mean_bpb_change.map_or("n/a".into(), pct)
    )
}

fn run_disparity(a: DisparityArgs) -> CliResult {
    super::set_threads(a.common.threads)?;
    let reference = open(&a.reference, "reference")?;
    let plan = a.candidate.plan()?;
    if plan.is_none() && !a.calibration.calibration.is_empty() {
        return Err(
            "--calibration applies to candidates built in memory (--method, --plan)".into(),
        );
    }
    let c = texts(&reference, &a.corpus)?;
    let ids = corpus::slice(&c.ids, 0, a.corpus.max_tokens)?;
    let cal = calibration(
        &reference,
        &plan.iter().collect::<Vec<_>>(),
        &a.calibration,
        std::slice::from_ref(&c.dir),
        &c.texts,
    )?;
    let bar = bar();
    let cand = candidate(&reference, &a.candidate, plan.as_ref(), &cal, &bar);
    let r = cand.and_then(|cand| {
        let r = disparity::disparity(
            &reference,
            &cand,
            &ids,
            &eval_options(&a.corpus),
            &mut update(&bar),
        )?;
        Ok((r, describe_candidate(&a.candidate, plan.as_ref(), &cand)))
    });
    bar.finish_and_clear();
    let (mut r, what) = r?;
    if !cal.texts.is_empty() {
        r.calibration = Some(cal);
    }
    if let Some(p) = &a.svg {
        let cats: Vec<String> = r.languages.iter().map(|l| l.lang.clone()).collect();
        let vals: Vec<f64> = r.languages.iter().map(|l| 100.0 * l.degradation).collect();
        let title = format!(
            "{}: degradation per language, {what}",
            model_name(&reference)
        );
        write_svg(
            p,
            &svg::bar_chart(
                &title,
                "perplexity degradation (%)",
                &cats,
                &[("degradation".into(), vals)],
            ),
        )?;
    }
    if a.common.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    print_languages(&r.languages)?;
    print_disparity(&r.disparity)?;
    Ok(())
}

fn split_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn sweep_specs(a: &SweepArgs) -> Res<Vec<Spec>> {
    let mut specs = Vec::new();
    if let Some(p) = &a.points {
        for s in split_list(p) {
            specs.push(eval::parse_spec(s)?);
        }
    }
    if let Some(r) = &a.ranks {
        for s in split_list(r) {
            specs.push(eval::parse_spec(&format!("lowrank:r{s}:{}", a.factors))?);
        }
    }
    if let Some(e) = &a.energies {
        for s in split_list(e) {
            specs.push(eval::parse_spec(&format!("lowrank:e{s}:{}", a.factors))?);
        }
    }
    if let Some(g) = &a.int8_groups {
        for s in split_list(g) {
            let spec = if s == "row" {
                "int8".to_string()
            } else {
                format!("int8:g{s}")
            };
            specs.push(eval::parse_spec(&spec)?);
        }
    }
    if specs.is_empty() {
        return Err(
            "give the sweep points: --points, --ranks, --energies and/or --int8-groups".into(),
        );
    }
    Ok(specs)
}

fn run_sweep(a: SweepArgs) -> CliResult {
    super::set_threads(a.common.threads)?;
    let specs = sweep_specs(&a)?;
    let embeddings = eval::parse_spec(&a.embeddings)?;
    let reference = open(&super::model_dir(a.model.clone()), "model")?;
    let c = texts(&reference, &a.corpus)?;
    let ids = corpus::slice(&c.ids, 0, a.corpus.max_tokens)?;
    let points = sweep::uniform_points(&specs, &embeddings);
    let cal = calibration(
        &reference,
        &points.iter().map(|p| &p.plan).collect::<Vec<_>>(),
        &a.calibration,
        std::slice::from_ref(&c.dir),
        &c.texts,
    )?;
    let bar = bar();
    let r = sweep::sweep_calibrated(
        &reference,
        &points,
        &cal,
        &ids,
        &eval_options(&a.corpus),
        &mut update(&bar),
    );
    bar.finish_and_clear();
    let r = r?;
    if let Some(p) = &a.svg {
        let title = format!(
            "{}: degradation per language against size (embeddings {})",
            model_name(&reference),
            a.embeddings
        );
        write_svg(p, &sweep::chart(&r, &title))?;
    }
    if a.common.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    out!("{:<22} {:>8} {:>6} {:>9}", "point", "MB", "ratio", "mean")?;
    if let Some(p) = r.points.first() {
        for l in &p.languages {
            out!(" {:>9}", l.lang)?;
        }
    }
    outln!(" {:>9}", "ppl ratio")?;
    for p in &r.points {
        out!(
            "{:<22} {:>8.2} {:>6.3} {:>9}",
            p.label,
            p.file_bytes as f64 / 1e6,
            p.size_ratio,
            pct(p.disparity.mean_degradation)
        )?;
        for l in &p.languages {
            out!(" {:>9}", pct(l.degradation))?;
        }
        outln!(" {:>9.4}", p.disparity.ppl_ratio)?;
    }
    outln!(
        "reference: {:.2} MB; degradation = candidate ppl / reference ppl − 1",
        r.reference_bytes as f64 / 1e6
    )?;
    // Bits per byte: comparable across scripts, unlike per-token perplexity.
    outln!()?;
    out!(
        "{:<22} {:>8} {:>6} {:>9}",
        "bits per byte",
        "MB",
        "ratio",
        "mean Δ"
    )?;
    if let Some(p) = r.points.first() {
        for l in &p.languages {
            out!(" {:>9}", l.lang)?;
        }
        outln!()?;
        out!(
            "{:<22} {:>8.2} {:>6.3} {:>9}",
            "reference",
            r.reference_bytes as f64 / 1e6,
            1.0,
            ""
        )?;
        for l in &p.languages {
            out!(" {:>9}", bpb(l.reference_bpb))?;
        }
        outln!()?;
    }
    for p in &r.points {
        let changes: Vec<f64> = p.languages.iter().filter_map(|l| l.bpb_change).collect();
        let mean = changes.iter().sum::<f64>() / changes.len().max(1) as f64;
        out!(
            "{:<22} {:>8.2} {:>6.3} {:>9}",
            p.label,
            p.file_bytes as f64 / 1e6,
            p.size_ratio,
            pct(mean)
        )?;
        for l in &p.languages {
            out!(" {:>9}", bpb(l.candidate_bpb))?;
        }
        outln!()?;
    }
    outln!("bits per byte = NLL in bits / UTF-8 bytes of the scored tokens; mean Δ = mean relative change")?;
    if let Some(c) = &r.calibration {
        outln!("GPTQ calibration: {}", c.source)?;
    }
    Ok(())
}

fn run_sensitivity(a: SensitivityArgs) -> CliResult {
    super::set_threads(a.common.threads)?;
    let sopts = sensitivity::SensitivityOptions {
        base: eval::parse_spec(&a.base)?,
        protect: eval::parse_spec(&a.protect)?,
        embeddings: eval::parse_spec(&a.embeddings)?,
        granularity: sensitivity::Granularity::parse(&a.unit)?,
        budget_bytes: match a.budget_mb {
            Some(mb) if !(mb > 0.0 && mb.is_finite()) => {
                return Err(format!("--budget-mb must be a positive size, got {mb}").into())
            }
            mb => mb.map(|mb| (mb * 1e6) as usize),
        },
    };
    let reference = open(&super::model_dir(a.model.clone()), "model")?;
    let c = texts(&reference, &a.corpus)?;
    let full = c.ids;
    let plans: Vec<Plan> = [&sopts.base, &sopts.protect]
        .into_iter()
        .map(|s| Plan::uniform(s.clone(), sopts.embeddings.clone()))
        .collect();
    let cal = calibration(
        &reference,
        &plans.iter().collect::<Vec<_>>(),
        &a.calibration,
        std::slice::from_ref(&c.dir),
        &c.texts,
    )?;
    let ranking = corpus::slice(&full, 0, a.corpus.max_tokens)?;
    // With --max-tokens N the plan is judged on the next N tokens of each text, held out from the ranking.
    let holdout = match a.corpus.max_tokens {
        None => None,
        Some(n) => match corpus::slice(&full, n, Some(n)) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("note: no held-out text ({e}); the plan is judged on the ranking text");
                None
            }
        },
    };
    let bar = bar();
    let r = sensitivity::sensitivity_calibrated(
        &reference,
        &ranking,
        holdout.as_deref(),
        &eval_options(&a.corpus),
        &sopts,
        &cal,
        &mut update(&bar),
    );
    bar.finish_and_clear();
    let r = r?;
    if let Some(p) = &a.plan_out {
        let is_json = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let text = if is_json {
            serde_json::to_string_pretty(&r.plan)?
        } else {
            toml::to_string(&r.plan)?
        };
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    let name = model_name(&reference);
    if let Some(p) = &a.svg {
        let title = format!(
            "Sensitivity to {} per {} ({name}; * protected)",
            r.base, a.unit
        );
        write_svg(p, &sensitivity::units_chart(&r, &title))?;
    }
    if let Some(p) = &a.comparison_svg {
        let title = format!("Protection plan vs uniform ({name})");
        write_svg(p, &sensitivity::comparison_chart(&r, &title))?;
    }
    if a.common.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    outln!(
        "{:<4} {:<22} {:>10} {:>10} {:>10} {:>11} {:>9}",
        "rank",
        "unit",
        "mean",
        "worst",
        "worst lang",
        "extra KB",
        "protected"
    )?;
    for (i, u) in r.units.iter().enumerate() {
        let worst = u
            .languages
            .iter()
            .max_by(|a, b| a.degradation.total_cmp(&b.degradation));
        outln!(
            "{:<4} {:<22} {:>10} {:>10} {:>10} {:>11.1} {:>9}",
            i + 1,
            u.unit,
            pct(u.mean_degradation),
            pct(u.max_degradation),
            worst.map_or("", |w| w.lang.as_str()),
            u.extra_bytes as f64 / 1e3,
            if u.protected { "yes" } else { "" }
        )?;
    }
    outln!(
        "sizes: uniform {} {:.3} MB, all protected {:.3} MB, budget {:.3} MB",
        r.base,
        r.base_bytes as f64 / 1e6,
        r.protect_all_bytes as f64 / 1e6,
        r.budget_bytes as f64 / 1e6
    )?;
    let c = &r.comparison;
    outln!(
        "judged on {} text:",
        if c.held_out {
            "held-out"
        } else {
            "the ranking"
        }
    )?;
    let mut evals = vec![&c.base, &c.plan];
    evals.extend(c.uniform.as_ref());
    for e in evals {
        outln!(
            "  {:<34} {:>8.3} MB  mean degradation {:>9}  worst {} {}",
            e.label,
            e.file_bytes as f64 / 1e6,
            pct(e.disparity.mean_degradation),
            e.disparity.worst_lang,
            pct(e.disparity.worst)
        )?;
    }
    Ok(())
}
