//! `slimlm-fuzz`: a structure-aware fuzz harness over slimlm's loader inputs, on stable Rust.
//!
//! See README.md. In short: seeded, reproducible cases (`--seed`, iteration number) mutate one input
//! kind of a seed model directory (safetensors, config.json, tokenizer.json, vocab.json + merges.txt,
//! the shard index, compression plans), write it to a case directory on /dev/shm, and drive slimlm's
//! public API on it. Every case must end in Ok or a clean Err: a panic, a hang, an allocation above the
//! bound, a broken property ("oracle") or a dead process is a finding, saved (minimized) under
//! `fuzz/findings/`. By default a supervisor process runs the cases in a worker process and restarts it
//! after a fatal signal, so a crash ends one case, not the campaign.

#![deny(unsafe_code)]

mod alloc;
mod exec;
mod minimize;
mod monitor;
mod mutate;
mod rng;
mod seeds;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exec::{CaseDir, Outcome};
use monitor::{CaseLabel, Findings, PanicRecord, Watchdog};
use mutate::{Case, Generator, Target};
use rng::Rng;
use seeds::Seeds;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

const USAGE: &str = "\
usage: slimlm-fuzz [--iters N] [--seed S] [--target all|safetensors|config|tokenizer|vocab-merges|index|plan]
                   [--time SECS] [--findings DIR] [--hang SECS] [--shared DIR] [--models DIR]
                   [--jobs N] [--work DIR] [--in-process] [--quiet] [--errors]
       slimlm-fuzz --replay FINDING_DIR
       slimlm-fuzz --write-seeds DIR

  --iters N       cases to run (default 10000; unlimited when only --time is given)
  --seed S        run seed (default 1): case i is a function of (S, i)
  --target T      input kind to mutate (default all, weighted)
  --time SECS     stop after this many seconds
  --findings DIR  where findings go (default fuzz/findings)
  --hang SECS     a case running longer (then burning as much CPU, or blocked 12× as long) is a hang (default 5)
  --shared DIR    reference models (default ../shared/models beside the workspace)
  --models DIR    the workspace's models/ (default models/)
  --jobs N        worker processes (default 1); worker k runs cases k, k+N, ...
  --work DIR      scratch directory (default /dev/shm/slimlm-fuzz-PID, else the temp dir)
  --in-process    no supervisor process (a fatal signal then ends the run)
  --errors        print the most frequent error messages at the end (what the cases reach)
  --replay DIR    re-run a saved finding and print what happens
  --write-seeds D write the tiny seed models and plans to D and exit";

#[derive(Clone, Debug)]
struct Args {
    iters: u64,
    seed: u64,
    target: Option<Target>,
    time: Option<f64>,
    findings: PathBuf,
    hang: f64,
    shared: PathBuf,
    models: PathBuf,
    work: Option<PathBuf>,
    in_process: bool,
    quiet: bool,
    errors: bool,
    worker: bool,
    start: u64,
    stride: u64,
    jobs: u64,
    replay: Option<PathBuf>,
    write_seeds: Option<PathBuf>,
    /// Inject a fault into case 5 (harness self-test): panic, abort, hang, over-bound, huge.
    selftest: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let root = monitor::workspace_root();
    let mut a = Args {
        iters: 0,
        seed: 1,
        target: None,
        time: None,
        findings: root.join("fuzz").join("findings"),
        hang: 5.0,
        shared: root.join("..").join("shared").join("models"),
        models: root.join("models"),
        work: None,
        in_process: false,
        quiet: false,
        errors: false,
        worker: false,
        start: 0,
        stride: 1,
        jobs: 1,
        replay: None,
        write_seeds: None,
        selftest: None,
    };
    let mut iters = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--iters" => iters = Some(num(val()?)?),
            "--seed" => a.seed = num(val()?)?,
            "--target" => {
                let v = val()?;
                a.target = match v.as_str() {
                    "all" => None,
                    t => Some(Target::parse(t).ok_or_else(|| format!("unknown target {t:?}"))?),
                };
            }
            "--time" => a.time = Some(val()?.parse::<f64>().map_err(|e| format!("--time: {e}"))?),
            "--findings" => a.findings = PathBuf::from(val()?),
            "--hang" => a.hang = val()?.parse::<f64>().map_err(|e| format!("--hang: {e}"))?,
            "--shared" => a.shared = PathBuf::from(val()?),
            "--models" => a.models = PathBuf::from(val()?),
            "--work" => a.work = Some(PathBuf::from(val()?)),
            "--in-process" => a.in_process = true,
            "--quiet" => a.quiet = true,
            "--errors" => a.errors = true,
            "--worker" => a.worker = true,
            "--start" => a.start = num(val()?)?,
            "--stride" => a.stride = num(val()?)?.max(1),
            "--jobs" => a.jobs = num(val()?)?.max(1),
            "--replay" => a.replay = Some(PathBuf::from(val()?)),
            "--write-seeds" => a.write_seeds = Some(PathBuf::from(val()?)),
            "--selftest" => a.selftest = Some(val()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    a.iters = match (iters, a.time) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 10_000,
    };
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("slimlm-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if a.worker {
        return run_worker(&a);
    }
    if a.replay.is_some() || a.write_seeds.is_some() || a.in_process {
        let work = work_dir(&a);
        let code = if let Some(d) = &a.replay {
            replay(&a, &work, d)
        } else if let Some(d) = &a.write_seeds {
            write_seeds(&a, &work, d)
        } else {
            let t0 = Instant::now();
            match worker(&a, &work, None) {
                Ok((stats, saved)) => report(&stats, t0.elapsed(), &saved, &a),
                Err(e) => {
                    eprintln!("slimlm-fuzz: {e}");
                    ExitCode::from(2)
                }
            }
        };
        let _ = std::fs::remove_dir_all(&work);
        return code;
    }
    supervise(&a)
}

fn work_dir(a: &Args) -> PathBuf {
    let base = a.work.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("slimlm-fuzz-{}", std::process::id()))
    });
    let _ = std::fs::create_dir_all(&base);
    base
}

/// Counters of a run (summed over worker restarts).
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    execs: u64,
    per_target: [u64; 6],
    ok: u64,
    err: u64,
    /// Errors after a model or tokenizer had loaded.
    err_opened: u64,
    panics: u64,
    oracle: u64,
    hangs: u64,
    over_bound: u64,
    refused: u64,
    signals: u64,
    max_single: u64,
    max_growth: u64,
}

const STATS_WORDS: usize = 18;

impl Stats {
    fn words(&self) -> [u64; STATS_WORDS] {
        let mut w = [0u64; STATS_WORDS];
        w[0] = self.execs;
        w[1..7].copy_from_slice(&self.per_target);
        let rest = [
            self.ok,
            self.err,
            self.err_opened,
            self.panics,
            self.oracle,
            self.hangs,
            self.over_bound,
            self.refused,
            self.signals,
            self.max_single,
            self.max_growth,
        ];
        w[7..].copy_from_slice(&rest);
        w
    }

    fn from_words(w: &[u64]) -> Stats {
        let mut s = Stats {
            execs: w[0],
            ..Stats::default()
        };
        s.per_target.copy_from_slice(&w[1..7]);
        [
            s.ok,
            s.err,
            s.err_opened,
            s.panics,
            s.oracle,
            s.hangs,
            s.over_bound,
            s.refused,
            s.signals,
            s.max_single,
            s.max_growth,
        ] = w[7..18].try_into().unwrap_or([0; 11]);
        s
    }

    fn add(&mut self, o: &Stats) {
        let (a, b) = (self.words(), o.words());
        let mut w = [0u64; STATS_WORDS];
        for i in 0..STATS_WORDS {
            w[i] = if i >= 16 { a[i].max(b[i]) } else { a[i] + b[i] };
        }
        *self = Stats::from_words(&w);
    }

    fn failures(&self) -> u64 {
        self.panics + self.oracle + self.hangs + self.over_bound + self.refused + self.signals
    }
}

/// The worker's status file, rewritten before every case: which case runs, and the counters so far.
struct Status(File);

const STATUS_MAGIC: u64 = 0x5a5a_f022_0000_0001;
const HEAD_WORDS: usize = 8;
const STATUS_LEN: usize = 8 * (HEAD_WORDS + STATS_WORDS) + 64;

impl Status {
    fn write(&self, iter: u64, case: Option<&Case>, seed: &str, done: bool, s: &Stats) {
        let mut b = Vec::with_capacity(STATUS_LEN + 256);
        let (t, params) = case.map_or((0, String::new()), |c| {
            (
                Target::ALL.iter().position(|&x| x == c.target).unwrap_or(0) as u64,
                case_params(c),
            )
        });
        for w in [
            STATUS_MAGIC,
            iter,
            t,
            u64::from(done),
            params.len() as u64,
            0,
            0,
            0,
        ]
        .into_iter()
        .chain(s.words())
        {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let mut name = [0u8; 64];
        let n = seed.len().min(64);
        name[..n].copy_from_slice(&seed.as_bytes()[..n]);
        b.extend_from_slice(&name);
        b.extend_from_slice(params.as_bytes());
        let _ = self.0.write_all_at(&b, 0);
    }

    fn read(path: &Path) -> Option<StatusRecord> {
        let b = std::fs::read(path).ok()?;
        if b.len() < STATUS_LEN {
            return None;
        }
        let w: Vec<u64> = b[..8 * (HEAD_WORDS + STATS_WORDS)]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if w[0] != STATUS_MAGIC {
            return None;
        }
        let name = &b[8 * (HEAD_WORDS + STATS_WORDS)..STATUS_LEN];
        let end = name.iter().position(|&c| c == 0).unwrap_or(64);
        let params = b
            .get(STATUS_LEN..STATUS_LEN + w[4] as usize)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        Some(StatusRecord {
            iter: w[1],
            target: Target::ALL[(w[2] as usize).min(5)],
            done: w[3] == 1,
            params,
            seed: String::from_utf8_lossy(&name[..end]).into_owned(),
            stats: Stats::from_words(&w[HEAD_WORDS..]),
        })
    }
}

/// The parameters of a case besides its files, as `replay.txt` lines.
fn case_params(c: &Case) -> String {
    format!(
        "n_layer={}\ntext={}\nids={}\nrandom_sampling={}\ndeep={}\n",
        c.n_layer,
        serde_json::to_string(&c.text).unwrap_or_default(),
        c.ids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        c.random_sampling,
        c.deep
    )
}

/// What the status file says.
struct StatusRecord {
    iter: u64,
    target: Target,
    done: bool,
    /// The case's parameters, as `replay.txt` lines.
    params: String,
    seed: String,
    stats: Stats,
}

fn load_seeds(a: &Args, work: &Path) -> Result<Seeds, String> {
    let src = seeds::Sources {
        shared: a.shared.clone(),
        bundled: a.models.join("ref-gpt2"),
        scratch: work.to_path_buf(),
    };
    let quiet = a.quiet;
    seeds::load(&src, &mut |m| {
        if !quiet || m.starts_with("warning") {
            eprintln!("slimlm-fuzz: {m}");
        }
    })
}

/// One executed case.
struct Exec {
    result: Result<Outcome, PanicRecord>,
    alloc: alloc::CaseAlloc,
}

/// Runs cases: lays out the files, watches, catches, counts allocations.
struct Runner<'s> {
    seeds: &'s Seeds,
    dir: CaseDir,
    watchdog: Watchdog,
    /// A fault injected into case [`SELFTEST_CASE`] (see `--selftest`).
    selftest: Option<String>,
}

/// The case `--selftest` breaks.
const SELFTEST_CASE: u64 = 5;

/// Faults of the harness self-test, each of which the harness must report (and survive, supervised).
fn inject(kind: &str) -> Outcome {
    match kind {
        "panic" => panic!("self-test panic"),
        "abort" => std::process::abort(),
        "hang" => loop {
            std::hint::spin_loop();
        },
        "over-bound" => {
            let v = vec![1u8; 200 << 20];
            Outcome::Err {
                opened: false,
                msg: format!("self-test: {} bytes", v.len()),
            }
        }
        "huge" => {
            let v: Vec<u8> = Vec::with_capacity(3 << 30);
            Outcome::Err {
                opened: false,
                msg: format!("self-test: capacity {}", v.capacity()),
            }
        }
        _ => Outcome::Ok,
    }
}

impl Runner<'_> {
    fn execute(&mut self, case: &Case, iter: u64) -> std::io::Result<Exec> {
        let input = self.dir.sync(self.seeds, case)?;
        let bound = alloc::bound_for(input);
        self.watchdog.begin(CaseLabel {
            iter,
            target: case.target.name(),
            seed: self.seeds.models[case.seed].name.clone(),
        });
        let _ = monitor::take_panic();
        monitor::set_in_case(true);
        let base = alloc::begin_case(bound);
        let fault = self.selftest.as_deref().filter(|_| iter == SELFTEST_CASE);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| match fault {
            Some(kind) => inject(kind),
            None => exec::run(case, &self.dir.path, self.seeds),
        }));
        let a = alloc::end_case(base);
        monitor::set_in_case(false);
        self.watchdog.end();
        let result = r.map_err(|_| {
            monitor::take_panic().unwrap_or(PanicRecord {
                msg: "(panic without a record)".into(),
                location: String::new(),
                backtrace: None,
            })
        });
        Ok(Exec { result, alloc: a })
    }
}

/// A failed case: what kind, the key that identifies it, and the details.
struct Failure {
    kind: &'static str,
    /// Identifies the failure for de-duplication and for minimization (same kind and key = same failure).
    key: String,
    msg: String,
    location: String,
    backtrace: Option<String>,
}

fn failure(e: &Exec) -> Option<Failure> {
    match &e.result {
        Err(p) => {
            let loc = p
                .location
                .rsplit_once(':')
                .map_or(p.location.as_str(), |(a, _)| a);
            return Some(Failure {
                kind: "panic",
                key: monitor::short_path(loc),
                msg: p.msg.clone(),
                location: monitor::short_path(&p.location),
                backtrace: p.backtrace.clone(),
            });
        }
        Ok(Outcome::Oracle(m)) => {
            let key: String = m
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(60)
                .collect();
            return Some(Failure {
                kind: "oracle",
                key,
                msg: m.clone(),
                location: String::new(),
                backtrace: None,
            });
        }
        Ok(_) => {}
    }
    let a = &e.alloc;
    if a.violated() {
        let (what, msg) = if a.refused > 0 {
            (
                "refused",
                format!("a request of {} bytes was refused (hard limit)", a.refused),
            )
        } else if a.over_count > 0 {
            (
                "single",
                format!(
                    "{} allocation(s) above the bound of {} bytes, the largest {} bytes",
                    a.over_count, a.bound, a.over_max
                ),
            )
        } else {
            (
                "growth",
                format!(
                    "live heap grew by {} bytes, above the bound of {} bytes",
                    a.peak_growth, a.bound
                ),
            )
        };
        return Some(Failure {
            kind: "alloc",
            key: what.to_string(),
            msg,
            location: String::new(),
            backtrace: None,
        });
    }
    None
}

fn same_failure(e: &Exec, f: &Failure) -> bool {
    failure(e).is_some_and(|g| g.kind == f.kind && g.key == f.key)
}

fn run_worker(a: &Args) -> ExitCode {
    let Some(work) = a.work.clone() else {
        eprintln!("slimlm-fuzz: --worker needs --work");
        return ExitCode::from(2);
    };
    let status = match File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(work.join("status"))
    {
        Ok(f) => Status(f),
        Err(e) => {
            eprintln!("slimlm-fuzz: status file: {e}");
            return ExitCode::from(2);
        }
    };
    match worker(a, &work, Some(&status)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slimlm-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs cases `a.start..a.iters` (or until `a.time`); returns the counters and the findings saved.
fn worker(
    a: &Args,
    work: &Path,
    status: Option<&Status>,
) -> Result<(Stats, Vec<(String, PathBuf)>), String> {
    let t0 = Instant::now();
    let seeds = load_seeds(a, work)?;
    let mut gen = Generator::new(&seeds);
    if let Some(t) = a.target {
        if !gen.available(t) {
            return Err(format!("no seed for target {}", t.name()));
        }
    }
    std::fs::create_dir_all(&a.findings).map_err(|e| format!("{}: {e}", a.findings.display()))?;
    let mut findings = Findings::open(a.findings.clone());
    let dir = CaseDir::new(work.join("case")).map_err(|e| e.to_string())?;
    monitor::install_panic_hook();
    let watchdog = Watchdog::start(
        Duration::from_secs_f64(a.hang),
        dir.path.clone(),
        a.findings.clone(),
        work.to_path_buf(),
    );
    let mut runner = Runner {
        seeds: &seeds,
        dir,
        watchdog,
        selftest: a.selftest.clone(),
    };
    let mut stats = Stats::default();
    let mut errors: std::collections::HashMap<String, u64> = Default::default();
    let case_prefix = format!("{}/", runner.dir.path.display());
    let deadline = a.time.map(|t| t0 + Duration::from_secs_f64(t.max(0.0)));
    let mut last_report = Instant::now();
    let started = Instant::now();
    let mut iter = a.start;
    while iter < a.iters {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut rng = Rng::for_case(a.seed, iter);
        let target = gen.pick_target(&mut rng, a.target);
        let case = gen.generate(target, &mut rng);
        if let Some(s) = status {
            s.write(
                iter,
                Some(&case),
                &seeds.models[case.seed].name,
                false,
                &stats,
            );
        }
        let e = runner
            .execute(&case, iter)
            .map_err(|e| format!("case directory: {e}"))?;
        stats.execs += 1;
        stats.per_target[Target::ALL.iter().position(|&t| t == target).unwrap_or(0)] += 1;
        stats.max_single = stats.max_single.max(e.alloc.max_single as u64);
        stats.max_growth = stats.max_growth.max(e.alloc.peak_growth as u64);
        match &e.result {
            Ok(Outcome::Ok) => stats.ok += 1,
            Ok(Outcome::Err { opened, msg }) => {
                stats.err += 1;
                stats.err_opened += u64::from(*opened);
                if a.errors {
                    let key: String = msg
                        .replace(&case_prefix, "")
                        .chars()
                        .map(|c| if c.is_ascii_digit() { '#' } else { c })
                        .take(110)
                        .collect();
                    *errors
                        .entry(format!("{:<12} {key}", target.name()))
                        .or_insert(0) += 1;
                }
            }
            Ok(Outcome::Oracle(_)) => stats.oracle += 1,
            Err(_) => stats.panics += 1,
        }
        if let Some(f) = failure(&e) {
            if f.kind == "alloc" {
                if f.key == "refused" {
                    stats.refused += 1;
                } else {
                    stats.over_bound += 1;
                }
            }
            handle_failure(&mut runner, &mut findings, &case, iter, f, a, work)?;
        } else if matches!(e.result, Ok(Outcome::Ok)) {
            if target == Target::Plan {
                gen.keep_plan(&case);
            } else {
                gen.keep(&case);
            }
        }
        iter += a.stride;
        if !a.quiet && last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "slimlm-fuzz: [{secs:.0} s] {} execs ({:.0}/s), ok {}, err {}, panics {}, oracle {}, over-bound {}, max alloc {}",
                stats.execs,
                stats.execs as f64 / secs,
                stats.ok,
                stats.err,
                stats.panics,
                stats.oracle,
                stats.over_bound + stats.refused,
                human(stats.max_single)
            );
        }
    }
    if let Some(s) = status {
        s.write(iter, None, "", true, &stats);
    }
    if a.errors {
        let mut e: Vec<(String, u64)> = errors.into_iter().collect();
        e.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        eprintln!(
            "slimlm-fuzz: {} distinct error messages; the most frequent:",
            e.len()
        );
        for (m, n) in e.iter().take(60) {
            eprintln!("{n:>9}  {m}");
        }
    }
    Ok((stats, findings.saved.clone()))
}

/// Records a failure; the first of its kind is minimized and saved.
fn handle_failure(
    runner: &mut Runner,
    findings: &mut Findings,
    case: &Case,
    iter: u64,
    mut f: Failure,
    a: &Args,
    work: &Path,
) -> Result<(), String> {
    let seed_name = runner.seeds.models[case.seed].name.clone();
    let mut frame = None;
    if f.kind == "alloc" && f.key != "refused" {
        // Re-run with the allocator capturing a backtrace of the first over-bound request.
        alloc::set_capture(true);
        let _ = runner.execute(case, iter);
        alloc::set_capture(false);
        frame = alloc::take_capture().map(|bt| {
            let top = monitor::top_frame(&bt);
            f.backtrace = Some(bt);
            top
        });
    }
    let frame = frame
        .flatten()
        .or_else(|| f.backtrace.as_deref().and_then(monitor::top_frame));
    let sig_key = match (&frame, f.kind) {
        (Some(fr), "alloc") => format!("{}:{fr}", f.key),
        _ => f.key.clone(),
    };
    let sig = monitor::signature(&[f.kind, case.target.name(), &sig_key]);
    if !findings.record(&sig) {
        return Ok(());
    }
    // Minimize (bounded), then save the smallest case still failing the same way.
    let mut still = |c: &Case| {
        runner
            .execute(c, iter)
            .map(|e| same_failure(&e, &f))
            .unwrap_or(false)
    };
    let mut shrinker = minimize::Shrinker {
        still: &mut still,
        budget: 600,
        deadline: Instant::now() + Duration::from_secs(20),
        runs: 0,
    };
    let small = shrinker.minimize(case);
    let runs = shrinker.runs;
    // Lay the minimized case out again (the last run may have been a rejected candidate).
    let last = runner.execute(&small, iter).map_err(|e| e.to_string())?;
    if !same_failure(&last, &f) {
        runner.execute(case, iter).map_err(|e| e.to_string())?;
    } else if let Some(g) = failure(&last) {
        f.msg = g.msg;
        if !g.location.is_empty() {
            f.location = g.location;
        }
    }
    let changed: Vec<&str> = small.changes.iter().map(|(n, _)| n.as_str()).collect();
    let name = format!("{}-{}", f.kind, case.target.name());
    let dir_name = a.findings.join(format!("{name}-{sig}"));
    let note = format!(
        "kind: {kind}\ntarget: {target}\nseed model: {seed_name} (the other files are the seed's, unchanged)\n\
         changed files: {changed}\niteration: {iter} of run seed {run_seed}\nmessage: {msg}\n\
         panic location: {loc}\nslimlm frame: {frame}\nminimized in {runs} runs\n\
         replay: cargo run --release -p slimlm-fuzz -- --replay {dir}\n\
         case parameters:\n{params}\nbacktrace:\n{bt}\n",
        kind = f.kind,
        target = case.target.name(),
        changed = if changed.is_empty() { "(none)".to_string() } else { changed.join(", ") },
        run_seed = a.seed,
        msg = f.msg,
        loc = if f.location.is_empty() { "-" } else { &f.location },
        frame = frame.as_deref().unwrap_or("-"),
        dir = monitor::short_path(&dir_name.to_string_lossy()),
        params = case_params(&small),
        bt = f.backtrace.as_deref().unwrap_or("(not captured)"),
    );
    let d = findings
        .save(&name, &sig, &runner.dir.path, &note)
        .map_err(|e| format!("saving a finding: {e}"))?;
    let meta = format!(
        "target={}\nseed={seed_name}\nchanged={}\nremoved={}\n{}",
        small.target.name(),
        small
            .changes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(","),
        small
            .changes
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(","),
        case_params(&small)
    );
    let _ = std::fs::write(d.join("replay.txt"), meta);
    let line = format!(
        "{}\t{}\t{}\n",
        d.display(),
        f.kind,
        f.msg.lines().next().unwrap_or("")
    );
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("findings.log"))
        .and_then(|mut l| l.write_all(line.as_bytes()));
    eprintln!(
        "slimlm-fuzz: FINDING ({}, {}): {} — saved to {}",
        f.kind,
        case.target.name(),
        f.msg.lines().next().unwrap_or(""),
        d.display()
    );
    Ok(())
}

/// One worker process of the supervisor: its scratch directory and the next case it runs.
struct Slot {
    work: PathBuf,
    next: u64,
    child: Option<std::process::Child>,
    finished: bool,
    runs: usize,
}

/// Runs the cases in `--jobs` worker processes (worker k runs cases k, k + jobs, ...), restarting a worker
/// after a fatal signal or a hang at its next case.
fn supervise(a: &Args) -> ExitCode {
    let root = work_dir(a);
    let t0 = Instant::now();
    let jobs = a.jobs.max(1);
    let mut total = Stats::default();
    let mut signal_saves: std::collections::HashMap<String, usize> = Default::default();
    let mut extra_findings: Vec<(String, PathBuf)> = Vec::new();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("slimlm-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let mut slots: Vec<Slot> = (0..jobs)
        .map(|k| Slot {
            work: root.join(format!("w{k}")),
            next: a.start + k,
            child: None,
            finished: false,
            runs: 0,
        })
        .collect();
    let mut fatal = false;
    while slots.iter().any(|s| !s.finished) {
        for (k, slot) in slots.iter_mut().enumerate() {
            if slot.finished {
                continue;
            }
            if slot.child.is_none() {
                let remaining = a.time.map(|t| t - t0.elapsed().as_secs_f64());
                if remaining.is_some_and(|r| r <= 0.0) || slot.next >= a.iters || slot.runs > 200 {
                    if slot.runs > 200 {
                        eprintln!("slimlm-fuzz: worker {k} restarted too often; stopping it");
                    }
                    slot.finished = true;
                    continue;
                }
                let _ = std::fs::create_dir_all(&slot.work);
                let _ = std::fs::remove_file(slot.work.join("status"));
                let _ = std::fs::remove_file(slot.work.join("refused"));
                let _ = std::fs::remove_file(slot.work.join("hang"));
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("--worker")
                    .args(["--work", &slot.work.to_string_lossy()])
                    .args(["--start", &slot.next.to_string()])
                    .args(["--stride", &jobs.to_string()])
                    .args(["--iters", &a.iters.to_string()])
                    .args(["--seed", &a.seed.to_string()])
                    .args(["--target", a.target.map_or("all", Target::name)])
                    .args(["--findings", &a.findings.to_string_lossy()])
                    .args(["--hang", &a.hang.to_string()])
                    .args(["--shared", &a.shared.to_string_lossy()])
                    .args(["--models", &a.models.to_string_lossy()]);
                if let Some(r) = remaining {
                    cmd.args(["--time", &r.to_string()]);
                }
                if a.quiet || slot.runs > 0 || k > 0 {
                    cmd.arg("--quiet");
                }
                if a.errors {
                    cmd.arg("--errors");
                }
                if let Some(t) = &a.selftest {
                    cmd.args(["--selftest", t]);
                }
                match cmd.spawn() {
                    Ok(c) => slot.child = Some(c),
                    Err(e) => {
                        eprintln!("slimlm-fuzz: starting a worker: {e}");
                        fatal = true;
                        slot.finished = true;
                        continue;
                    }
                }
                slot.runs += 1;
            }
            let status = match slot.child.as_mut().map(std::process::Child::try_wait) {
                Some(Ok(Some(st))) => st,
                Some(Ok(None)) => continue,
                _ => {
                    slot.child = None;
                    slot.finished = true;
                    fatal = true;
                    continue;
                }
            };
            slot.child = None;
            let Some(rec) = Status::read(&slot.work.join("status")) else {
                eprintln!("slimlm-fuzz: a worker ended ({status}) before running a case");
                slot.finished = true;
                fatal = true;
                continue;
            };
            let StatusRecord {
                iter,
                target,
                done,
                params,
                seed,
                stats,
            } = rec;
            total.add(&stats);
            if done && status.success() {
                slot.finished = true;
                continue;
            }
            // The case `iter` ended the worker: count it, and save its input unless the worker did.
            total.execs += 1;
            total.per_target[Target::ALL.iter().position(|&t| t == target).unwrap_or(0)] += 1;
            let refused = std::fs::read_to_string(slot.work.join("refused")).ok();
            if status.code() == Some(monitor::EXIT_HANG) {
                total.hangs += 1;
                if let Ok(d) = std::fs::read_to_string(slot.work.join("hang")) {
                    extra_findings.push(("hang".into(), PathBuf::from(d.trim())));
                }
            } else if let Some(r) = refused {
                total.refused += 1;
                if let Some(d) = r.lines().nth(1) {
                    extra_findings.push(("refused allocation".into(), PathBuf::from(d)));
                }
                eprintln!(
                    "slimlm-fuzz: a worker aborted after a refused allocation in case {iter}; continuing"
                );
            } else {
                total.signals += 1;
                let what = match status.signal() {
                    Some(s) => format!("signal-{s}"),
                    None => format!("exit-{}", status.code().unwrap_or(-1)),
                };
                let key = format!("{what}-{}", target.name());
                let n = signal_saves.entry(key.clone()).or_insert(0);
                *n += 1;
                if *n <= 3 {
                    let d = a.findings.join(format!("{key}-{iter}"));
                    let note = format!(
                        "kind: fatal ({status})\ntarget: {}\nseed model: {seed}\niteration: {iter} of run seed {}\n\
                         the worker process died in this case; every input file is here (big reference files as \
                         symlinks)\nreplay: cargo run --release -p slimlm-fuzz -- --in-process --replay {}\n",
                        target.name(),
                        a.seed,
                        monitor::short_path(&d.to_string_lossy()),
                    );
                    let replay =
                        format!("target={}\nseed={seed}\nfull=true\n{params}", target.name());
                    if monitor::copy_case(&slot.work.join("case"), &d)
                        .and_then(|()| std::fs::write(d.join("finding.txt"), note))
                        .and_then(|()| std::fs::write(d.join("replay.txt"), replay))
                        .is_ok()
                    {
                        extra_findings.push((key.clone(), d.clone()));
                    }
                    eprintln!(
                        "slimlm-fuzz: FATAL: a worker died ({status}) in case {iter} ({}, seed {seed}); input saved to {}",
                        target.name(),
                        d.display()
                    );
                }
            }
            slot.next = iter + jobs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut saved: Vec<(String, PathBuf)> = slots
        .iter()
        .flat_map(|s| {
            std::fs::read_to_string(s.work.join("findings.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut p = l.split('\t');
                    let d = p.next()?;
                    let kind = p.next()?;
                    let msg = p.next().unwrap_or("");
                    Some((format!("{kind}: {msg}"), PathBuf::from(d)))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    saved.extend(extra_findings);
    let code = report(&total, t0.elapsed(), &saved, a);
    let _ = std::fs::remove_dir_all(&root);
    if fatal {
        return ExitCode::from(2);
    }
    code
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Prints the summary line (and the findings); the exit code.
fn report(s: &Stats, elapsed: Duration, saved: &[(String, PathBuf)], a: &Args) -> ExitCode {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let per: Vec<String> = Target::ALL
        .iter()
        .zip(s.per_target)
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{} {n}", t.name()))
        .collect();
    println!(
        "slimlm-fuzz: {} execs in {secs:.1} s ({:.0} execs/s), seed {} | {} | ok {}, err {} ({} after loading) | \
         crashes {} (panics {}, fatal signals {}, oracle {}), hangs {}, over-bound allocations {} (refused {}) | \
         max single allocation {}, max live growth {} (bound: 4 x input + 64 MiB)",
        s.execs,
        s.execs as f64 / secs,
        a.seed,
        per.join(", "),
        s.ok,
        s.err,
        s.err_opened,
        s.panics + s.signals + s.oracle,
        s.panics,
        s.signals,
        s.oracle,
        s.hangs,
        s.over_bound + s.refused,
        s.refused,
        human(s.max_single),
        human(s.max_growth),
    );
    for (what, d) in saved {
        println!("  finding: {what} -> {}", d.display());
    }
    if s.failures() > 0 {
        if saved.is_empty() {
            println!(
                "  (failures matched findings already saved in {})",
                a.findings.display()
            );
        }
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Re-runs a saved finding (its `replay.txt`) and prints the outcome.
fn replay(a: &Args, work: &Path, d: &Path) -> ExitCode {
    let meta = match std::fs::read_to_string(d.join("replay.txt")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("slimlm-fuzz: {}: {e}", d.join("replay.txt").display());
            return ExitCode::from(2);
        }
    };
    let get = |k: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let seeds = match load_seeds(a, work) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slimlm-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(seed) = seeds.models.iter().position(|m| m.name == get("seed")) else {
        eprintln!("slimlm-fuzz: no seed named {:?}", get("seed"));
        return ExitCode::from(2);
    };
    let Some(target) = Target::parse(&get("target")) else {
        eprintln!("slimlm-fuzz: bad target in replay.txt");
        return ExitCode::from(2);
    };
    let mut changes = Vec::new();
    let mut changed = get("changed");
    let mut removed = get("removed");
    if get("full") == "true" {
        // Every file of the directory is the input: the seed's other files are removed.
        let present: Vec<String> = std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "finding.txt" && n != "replay.txt")
                    .collect()
            })
            .unwrap_or_default();
        removed = seeds.models[seed]
            .files
            .iter()
            .filter(|f| !present.contains(&f.name))
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
            .join(",");
        changed = present.join(",");
    }
    for n in changed.split(',').filter(|n| !n.is_empty()) {
        match std::fs::read(d.join(n)) {
            Ok(b) => changes.push((n.to_string(), Some(Arc::new(b)))),
            Err(e) => {
                eprintln!("slimlm-fuzz: {n}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for n in removed.split(',').filter(|n| !n.is_empty()) {
        changes.push((n.to_string(), None));
    }
    let case = Case {
        target,
        seed,
        changes,
        n_layer: get("n_layer").parse().unwrap_or(0),
        text: serde_json::from_str(&get("text")).unwrap_or_default(),
        ids: get("ids")
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect(),
        random_sampling: get("random_sampling") == "true",
        deep: get("deep") == "true",
    };
    monitor::install_panic_hook();
    let dir = match CaseDir::new(work.join("case")) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("slimlm-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let watchdog = Watchdog::start(
        Duration::from_secs_f64(a.hang),
        dir.path.clone(),
        work.join("replay-findings"),
        work.to_path_buf(),
    );
    let mut runner = Runner {
        seeds: &seeds,
        dir,
        watchdog,
        selftest: None,
    };
    alloc::set_capture(true);
    let e = match runner.execute(&case, 0) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("slimlm-fuzz: {err}");
            return ExitCode::from(2);
        }
    };
    alloc::set_capture(false);
    let al = e.alloc;
    println!(
        "allocation: max single {} bytes, bound {} bytes, over-bound {}, live growth {} bytes",
        al.max_single, al.bound, al.over_count, al.peak_growth
    );
    if let Some(bt) = alloc::take_capture() {
        println!("first over-bound request at:\n{bt}");
    }
    match &e.result {
        Ok(o) => println!("outcome: {o:?}"),
        Err(p) => println!(
            "outcome: PANIC {:?} at {}\n{}",
            p.msg,
            p.location,
            p.backtrace.as_deref().unwrap_or("")
        ),
    }
    if failure(&e).is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes the tiny seeds and the plan seeds to `out`.
fn write_seeds(a: &Args, work: &Path, out: &Path) -> ExitCode {
    let seeds = match load_seeds(a, work) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slimlm-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    for m in seeds.models.iter().filter(|m| !m.real) {
        if let Err(e) = seeds::write_seed(&out.join(&m.name), m) {
            eprintln!("slimlm-fuzz: {e}");
            return ExitCode::from(2);
        }
    }
    for (i, p) in seeds.plans.iter().enumerate() {
        let name = format!("plan-{i}.{}", p.file.rsplit('.').next().unwrap_or("toml"));
        let _ = std::fs::create_dir_all(out.join("plans"));
        let _ = std::fs::write(out.join("plans").join(name), &p.text);
    }
    println!(
        "wrote {} tiny seed models and {} plans to {}",
        seeds.models.iter().filter(|m| !m.real).count(),
        seeds.plans.len(),
        out.display()
    );
    ExitCode::SUCCESS
}
