//! Detection around each case: a quiet panic hook that records the message, location and (once per
//! location) a backtrace; a watchdog thread for hangs and refused allocations; the findings directory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::alloc;

/// Exit status of a worker stopped by the watchdog on a hang.
pub const EXIT_HANG: i32 = 3;

/// A panic caught in a case.
#[derive(Clone, Debug)]
pub struct PanicRecord {
    pub msg: String,
    pub location: String,
    /// Captured on the first panic at each location only (symbolizing costs milliseconds).
    pub backtrace: Option<String>,
}

static LAST_PANIC: Mutex<Option<PanicRecord>> = Mutex::new(None);
/// Whether a case is running (a panic outside one is the harness's own: printed, not recorded).
static IN_CASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_in_case(on: bool) {
    IN_CASE.store(on, Ordering::SeqCst);
}
static SEEN_LOCATIONS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces the default hook (which prints) by one that records the panic for the harness.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        if !IN_CASE.load(Ordering::SeqCst) {
            eprintln!(
                "slimlm-fuzz: the harness itself panicked at {location}: {msg}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            return;
        }
        let first = lock(&SEEN_LOCATIONS)
            .get_or_insert_with(HashSet::new)
            .insert(location.clone());
        let backtrace = first.then(|| std::backtrace::Backtrace::force_capture().to_string());
        *lock(&LAST_PANIC) = Some(PanicRecord {
            msg,
            location,
            backtrace,
        });
    }));
}

/// The panic recorded since the last call, if any.
pub fn take_panic() -> Option<PanicRecord> {
    lock(&LAST_PANIC).take()
}

/// The first frame of a backtrace in the project's own code (slimlm or its kernels, not std, not a
/// dependency, not this harness): `file:line`.
pub fn top_frame(bt: &str) -> Option<String> {
    bt.lines()
        .filter_map(|l| l.trim().strip_prefix("at "))
        .find(|p| is_project(p))
        .map(|p| short_path(strip_column(p)))
}

/// Whether a backtrace path is the project's own code: the workspace's crates are compiled with paths
/// relative to the workspace root (`./src/model.rs`), dependencies and std with absolute ones.
fn is_project(p: &str) -> bool {
    let root = workspace_root();
    let root = root.to_string_lossy();
    let rel = !p.starts_with('/') || p.starts_with(&*root);
    rel && !short_path(p).starts_with("fuzz/")
}

fn strip_column(p: &str) -> &str {
    match p.rsplit_once(':') {
        Some((a, col))
            if col.chars().all(|c| c.is_ascii_digit()) && a.rsplit_once(':').is_some() =>
        {
            a
        }
        _ => p,
    }
}

/// `p` relative to the workspace root when under it.
pub fn short_path(p: &str) -> String {
    let root = workspace_root();
    let root = format!("{}/", root.to_string_lossy());
    let p = p.strip_prefix(&root).unwrap_or(p);
    p.strip_prefix("./").unwrap_or(p).to_string()
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// FNV-1a of `parts`, as 8 hex digits: the signature that names a finding.
pub fn signature(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:08x}", h as u32)
}

/// Copies a case directory: regular files copied, symlinks to big real files kept as symlinks.
pub fn copy_case(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let p = e.path();
        let to = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&p)?;
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&p)?;
            let big = std::fs::metadata(&p).map_or(true, |m| m.len() > 8 << 20);
            if big {
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(&target, &to)?;
                continue;
            }
        }
        std::fs::copy(&p, &to)?;
    }
    Ok(())
}

/// The findings directory: one subdirectory per distinct failure, `<kind>-<target>-<signature>`.
pub struct Findings {
    pub dir: PathBuf,
    /// Signatures already saved (in this run or an earlier one) → occurrences in this run.
    seen: HashMap<String, u64>,
    /// Saved in this run: (signature, directory).
    pub saved: Vec<(String, PathBuf)>,
}

impl Findings {
    pub fn open(dir: PathBuf) -> Findings {
        let mut seen = HashMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((_, sig)) = name.rsplit_once('-') {
                    seen.insert(sig.to_string(), 0);
                }
            }
        }
        Findings {
            dir,
            seen,
            saved: Vec::new(),
        }
    }

    /// Counts an occurrence; true the first time `sig` is seen (in this run or a saved earlier one).
    pub fn record(&mut self, sig: &str) -> bool {
        let c = self.seen.entry(sig.to_string()).or_insert(0);
        *c += 1;
        *c == 1 && !self.saved.iter().any(|(s, _)| s == sig) && !self.exists(sig)
    }

    fn exists(&self, sig: &str) -> bool {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("-{sig}"))
                })
            })
            .unwrap_or(false)
    }

    /// Saves the files of `case_dir` and `note` as `<name>-<sig>`.
    pub fn save(
        &mut self,
        name: &str,
        sig: &str,
        case_dir: &Path,
        note: &str,
    ) -> std::io::Result<PathBuf> {
        let d = self.dir.join(format!("{name}-{sig}"));
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        copy_case(case_dir, &d)?;
        std::fs::write(d.join("finding.txt"), note)?;
        self.saved.push((sig.to_string(), d.clone()));
        Ok(d)
    }
}

/// What the watchdog knows of the running case.
#[derive(Clone, Default)]
pub struct CaseLabel {
    pub iter: u64,
    pub target: &'static str,
    pub seed: String,
}

struct Shared {
    t0: Instant,
    /// Start of the running case in ns since `t0`, plus 1 (0: no case running).
    start: AtomicU64,
    label: Mutex<CaseLabel>,
    hang: Duration,
    case_dir: PathBuf,
    findings: PathBuf,
    work: PathBuf,
}

/// A case blocked (no CPU used) this many times `hang` on the wall clock is a hang.
const BLOCKED_FACTOR: u32 = 12;

/// User plus system CPU time of this process, from `/proc/self/stat` (Linux; `None` elsewhere).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), which ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in clock ticks (100/s).
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A thread that watches the running case: past `hang` it saves the input and ends the process with
/// [`EXIT_HANG`]; on a refused allocation it saves the input and lets the allocating thread go on.
pub struct Watchdog(Arc<Shared>);

impl Watchdog {
    pub fn start(hang: Duration, case_dir: PathBuf, findings: PathBuf, work: PathBuf) -> Watchdog {
        let s = Arc::new(Shared {
            t0: Instant::now(),
            start: AtomicU64::new(0),
            label: Mutex::new(CaseLabel::default()),
            hang,
            case_dir,
            findings,
            work,
        });
        let w = Arc::clone(&s);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&w))
            .expect("spawn the watchdog thread");
        Watchdog(s)
    }

    pub fn begin(&self, label: CaseLabel) {
        *lock(&self.0.label) = label;
        let now = self.0.t0.elapsed().as_nanos() as u64;
        self.0.start.store(now + 1, Ordering::SeqCst);
    }

    pub fn end(&self) {
        self.0.start.store(0, Ordering::SeqCst);
    }
}

fn watch(s: &Shared) {
    alloc::mark_watchdog_thread();
    let mut refused_for = u64::MAX;
    // The case that first ran past `hang` and the process CPU time then.
    let mut slow: Option<(u64, Option<Duration>)> = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let start = s.start.load(Ordering::SeqCst);
        let pending = alloc::refuse_pending();
        if pending > 0 && start != 0 {
            let label = lock(&s.label).clone();
            if label.iter != refused_for {
                refused_for = label.iter;
                let note = format!(
                    "kind: refused allocation\ntarget: {}\nseed: {}\niteration: {}\nrequest: {} bytes, above the hard \
                     limit (max(1 GiB, bound)) or 4 GiB of live heap\nthe harness refused it (null): an infallible \
                     allocation then aborts the process\n",
                    label.target, label.seed, label.iter, pending
                );
                let name = format!("refused-alloc-{}-{}", label.target, label.iter);
                let d = s.findings.join(&name);
                let _ = copy_case(&s.case_dir, &d)
                    .and_then(|()| std::fs::write(d.join("finding.txt"), &note));
                let _ = std::fs::write(
                    s.work.join("refused"),
                    format!("{}\n{}\n", label.iter, d.display()),
                );
                eprintln!(
                    "slimlm-fuzz: case {} ({}) requested {pending} bytes: refused; input saved to {}",
                    label.iter,
                    label.target,
                    d.display()
                );
            }
            alloc::refuse_saved();
        }
        if start == 0 {
            continue;
        }
        let ran =
            s.t0.elapsed()
                .saturating_sub(Duration::from_nanos(start - 1));
        if ran <= s.hang {
            continue;
        }
        // Past `hang` on the wall clock: a hang if the case then burns `hang` more of CPU time (a loop),
        // or stays blocked for BLOCKED_FACTOR × `hang` (a FIFO, a lock). A case merely starved by other
        // work on the cores (a nice'd campaign beside builds) is neither.
        let cpu = process_cpu();
        let base = match slow {
            Some((s0, c0)) if s0 == start => c0,
            _ => {
                slow = Some((start, cpu));
                cpu
            }
        };
        let busy = match (cpu, base) {
            (Some(c), Some(b)) => c.saturating_sub(b) > s.hang,
            _ => true, // no CPU clock: the wall clock decides
        };
        if busy || ran > s.hang * BLOCKED_FACTOR {
            let label = lock(&s.label).clone();
            let name = format!("hang-{}-{}", label.target, label.iter);
            let d = s.findings.join(&name);
            let note = format!(
                "kind: hang\ntarget: {}\nseed: {}\niteration: {}\nthe case ran more than {:.1} s of CPU time past that \
                 on the wall clock, or was blocked {BLOCKED_FACTOR}× as long\n",
                label.target,
                label.seed,
                label.iter,
                s.hang.as_secs_f64()
            );
            let _ = copy_case(&s.case_dir, &d)
                .and_then(|()| std::fs::write(d.join("finding.txt"), &note));
            let _ = std::fs::write(s.work.join("hang"), format!("{}\n", d.display()));
            eprintln!(
                "slimlm-fuzz: HANG: case {} ({}, seed {}) ran over {:.1} s; input saved to {}",
                label.iter,
                label.target,
                label.seed,
                s.hang.as_secs_f64(),
                d.display()
            );
            std::process::exit(EXIT_HANG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_frame_skips_std_and_the_harness() {
        let root = workspace_root();
        let bt = format!(
            "   0: std::panicking::x\n             at /rustc/abc/library/std/src/panicking.rs:1:2\n   1: fuzz\n \
             at {r}/fuzz/src/main.rs:3:4\n   2: slimlm::model::open\n             at {r}/src/model.rs:120:9\n",
            r = root.display()
        );
        assert_eq!(top_frame(&bt).as_deref(), Some("src/model.rs:120"));
        let rel = "   0: a\n             at ./fuzz/src/alloc.rs:1:2\n   1: b\n             at ./src/linear.rs:7:9\n";
        assert_eq!(top_frame(rel).as_deref(), Some("src/linear.rs:7"));
    }
}
