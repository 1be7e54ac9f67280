//! Parallel loops of the kernels: over a persistent thread [`Team`] when one is installed, otherwise
//! over rayon.
//!
//! One decode step of a GPT-2 124M model runs about fifty products of 30–150 µs each, separated by
//! short serial steps (LayerNorm, quantization, residual adds). With rayon every product wakes a worker
//! that may have gone to sleep during the serial step (a futex wake, tens of µs in a VM); a [`Team`]'s
//! threads instead spin between products (parking only after [`SPIN`] idle), so the fork costs a cache
//! line transfer and the join a spin on a counter. Tasks are claimed from a shared counter, so a member
//! that runs late (preempted) simply takes fewer.
//!
//! On a busy machine a helper may not get a core for milliseconds. The leader therefore never waits for a
//! helper that has not started: a helper *joins* a job before touching it, and once the leader has run
//! out of tasks it *closes* the job and waits only for those that joined. A helper that arrives after the
//! close skips the job. A helper that joined and then lost its core mid-task still holds the leader for
//! up to a scheduler slice; when such stalls outweigh the helpers' help, the team runs its jobs on the
//! leader alone for a while ([`Pace`]), then tries again. So contention costs at most about the speed of
//! one thread, never a scheduler slice per product.

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Most threads a team (or the `--threads` of the CLI) may have: far above any core count this crate
/// targets, low enough that a typo cannot ask for a hundred thousand threads.
pub const MAX_THREADS: usize = 512;

/// How long an idle team thread spins for the next job before it parks.
pub const SPIN: Duration = Duration::from_millis(2);

/// Where the parallel loops of the calling thread run.
#[derive(Clone, Copy)]
enum Ctx {
    /// On the current rayon pool.
    Rayon,
    /// On an installed team (this thread is its leader).
    Team(*const Team),
    /// On the calling thread only (inside a team job).
    Serial,
}

thread_local! {
    static CTX: Cell<Ctx> = const { Cell::new(Ctx::Rayon) };
}

/// A job as the team threads see it: a type-erased `&dyn Fn()` that outlives the job.
type JobRef = *const (dyn Fn() + Sync);

/// Layout of [`Shared::state`]: the job's epoch in the high 32 bits, the helpers that joined it in
/// bits 1..32, and bit 0 set once the leader has closed it.
const EPOCH_SHIFT: u32 = 32;
const CLOSED: u64 = 1;
const JOINED_ONE: u64 = 2;

fn epoch_of(state: u64) -> u64 {
    state >> EPOCH_SHIFT
}

struct Shared {
    /// The current job's epoch, joiners and closed flag (see [`EPOCH_SHIFT`]). A new epoch is
    /// published (SeqCst) once per job; a helper runs the job only if it joins it before it is closed.
    state: AtomicU64,
    /// The current job, written before its epoch is published. A thin pointer to a `JobRef`.
    job: AtomicPtr<JobRef>,
    /// Helpers that joined the current job and are done with it.
    done: AtomicUsize,
    /// Helpers that are parked (or about to park).
    sleepers: AtomicUsize,
    /// Some helper's task panicked during the current job.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Tests hold helpers back here, as a busy machine would, before they try to join a job.
    #[cfg(test)]
    hold: AtomicBool,
}

/// A fixed set of threads that run parallel loops with spin-waiting instead of sleeping: the leader
/// (the thread that calls [`Team::install`]) plus `threads - 1` helpers.
///
/// A team serves one leader at a time (it is `Send` but not `Sync`); make one per concurrent caller.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// When to run jobs on the leader alone (the leader's own bookkeeping; `Team` is not `Sync`).
    pace: Cell<Pace>,
    /// Not `Sync`: two leaders at once would mix up the job protocol.
    _one_leader: PhantomData<Cell<()>>,
}

/// The leader's record of what its helpers cost: the time it spent on its own share of recent jobs and
/// the time it then waited for helpers that had joined. When the waiting exceeds half the own work (and
/// [`STALL_FLOOR`]), the helpers are being descheduled mid-task, and the leader works alone for
/// [`SOLO_MIN`], doubling up to [`SOLO_MAX`] while the stalls persist.
#[derive(Clone, Copy)]
struct Pace {
    own: Duration,
    stalled: Duration,
    jobs: u32,
    solo_until: Option<Instant>,
    solo_for: Duration,
}

/// Jobs after which a clean record is forgotten (and the solo period shrinks back).
const PACE_WINDOW: u32 = 256;
/// Waiting below this, summed over a window, never counts as contention.
const STALL_FLOOR: Duration = Duration::from_micros(500);
const SOLO_MIN: Duration = Duration::from_millis(50);
const SOLO_MAX: Duration = Duration::from_secs(1);

impl Pace {
    const START: Pace = Pace {
        own: Duration::ZERO,
        stalled: Duration::ZERO,
        jobs: 0,
        solo_until: None,
        solo_for: SOLO_MIN,
    };

    /// True while the leader should work alone.
    fn solo(&mut self, now: Instant) -> bool {
        match self.solo_until {
            Some(t) if now < t => true,
            Some(_) => {
                self.solo_until = None;
                false
            }
            None => false,
        }
    }

    /// Records one shared job: `own` on the leader's share, `stalled` waiting for helpers after it.
    fn record(&mut self, own: Duration, stalled: Duration, now: Instant) {
        self.own += own;
        self.stalled += stalled;
        self.jobs += 1;
        if self.stalled > STALL_FLOOR && self.stalled > self.own / 2 {
            self.solo_until = Some(now + self.solo_for);
            self.solo_for = (self.solo_for * 2).min(SOLO_MAX);
            (self.own, self.stalled, self.jobs) = (Duration::ZERO, Duration::ZERO, 0);
        } else if self.jobs >= PACE_WINDOW {
            self.solo_for = (self.solo_for / 2).max(SOLO_MIN);
            (self.own, self.stalled, self.jobs) = (Duration::ZERO, Duration::ZERO, 0);
        }
    }
}

impl Team {
    /// A team of `threads` (the caller included; clamped to `1..=`[`MAX_THREADS`]). If the system refuses
    /// a thread, the team has the helpers it could start: fewer threads, never an error.
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            #[cfg(test)]
            hold: AtomicBool::new(false),
        });
        let helpers = (1..threads.clamp(1, MAX_THREADS))
            .map_while(|i| {
                let s = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("slimlm-team-{i}"))
                    .spawn(move || helper(&s))
                    .ok()
            })
            .collect();
        Team {
            shared,
            helpers,
            pace: Cell::new(Pace::START),
            _one_leader: PhantomData,
        }
    }

    /// Threads in the team, the leader included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f` with this team serving the parallel loops of the kernels it calls on this thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        let _ctx = CtxGuard::set(Ctx::Team(self));
        f()
    }

    /// Runs `job` on the leader and on every helper that joins before the leader's own run returns;
    /// returns when all who ran it are done.
    fn run(&self, job: &(dyn Fn() + Sync)) {
        let mut pace = self.pace.get();
        let start = Instant::now();
        if self.helpers.is_empty() || pace.solo(start) {
            self.pace.set(pace);
            let _ctx = CtxGuard::set(Ctx::Serial);
            return job();
        }
        let s = &*self.shared;
        // SAFETY: erases the lifetime of `job` so helpers can see it. A helper only calls it after joining
        // the job (which the leader's close below stops), and this function does not return (nor unwind)
        // before `done` counts every helper that joined, so the borrow outlives every use.
        let job_ref: JobRef =
            unsafe { std::mem::transmute::<*const (dyn Fn() + Sync + '_), JobRef>(job) };
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.job
            .store(&job_ref as *const JobRef as *mut JobRef, Ordering::Relaxed);
        let epoch = (epoch_of(s.state.load(Ordering::Relaxed)) + 1) & u64::from(u32::MAX);
        s.state.store(epoch << EPOCH_SHIFT, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            for h in &self.helpers {
                h.thread().unpark();
            }
        }
        let mine = {
            let _ctx = CtxGuard::set(Ctx::Serial);
            panic::catch_unwind(AssertUnwindSafe(job))
        };
        let mine_done = Instant::now();
        // Close the job: helpers that have not joined yet will skip it.
        let joined = (s.state.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED) as u32 as usize
            / JOINED_ONE as usize;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < joined {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                // A helper that joined is descheduled mid-task: let it run.
                thread::yield_now();
            }
        }
        if joined > 0 {
            let now = Instant::now();
            pace.record(mine_done - start, now - mine_done, now);
            self.pace.set(pace);
        }
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        assert!(
            !s.panicked.load(Ordering::Relaxed),
            "a task panicked on a team thread"
        );
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared
            .state
            .fetch_add(1 << EPOCH_SHIFT, Ordering::SeqCst);
        for h in &self.helpers {
            h.thread().unpark();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A helper's life: wait for a new epoch (spin, then park), join the job unless it is closed, run it,
/// report, repeat.
fn helper(s: &Shared) {
    CTX.with(|c| c.set(Ctx::Serial));
    // The epoch the team was made with (not a fresh load: a job may already be published).
    let mut seen = 0;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let e = epoch_of(s.state.load(Ordering::Acquire));
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Park. Announcing first (SeqCst) pairs with the leader's publish-then-check: either we see
            // the new epoch here or the leader sees us and unparks (a token `park` keeps if early).
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if epoch_of(s.state.load(Ordering::SeqCst)) == seen {
                thread::park();
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        #[cfg(test)]
        while s.hold.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        if !join(s, seen) {
            continue;
        }
        let job = s.job.load(Ordering::Relaxed);
        // SAFETY: the leader stored a pointer to a live `JobRef` before publishing the epoch we joined
        // (our successful join read the state with Acquire ordering), and keeps it and the job alive until
        // `done` counts every helper that joined.
        let r = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (**job)() }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Joins the job of `epoch` unless it is closed or already replaced; true if joined.
fn join(s: &Shared, epoch: u64) -> bool {
    let mut state = s.state.load(Ordering::Acquire);
    loop {
        if epoch_of(state) != epoch || state & CLOSED != 0 {
            return false;
        }
        match s.state.compare_exchange_weak(
            state,
            state + JOINED_ONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => state = now,
        }
    }
}

/// Runs `f` with the parallel loops of the kernels it calls kept on the calling thread.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let _ctx = CtxGuard::set(Ctx::Serial);
    f()
}

/// Restores the calling thread's context when dropped (also on unwind).
struct CtxGuard(Ctx);

impl CtxGuard {
    fn set(ctx: Ctx) -> CtxGuard {
        CtxGuard(CTX.with(|c| c.replace(ctx)))
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        CTX.with(|c| c.set(self.0));
    }
}

/// Threads the parallel loops of the calling thread use: the installed team's, 1 inside a team job,
/// otherwise the current rayon pool's.
pub fn threads() -> usize {
    match CTX.with(Cell::get) {
        // SAFETY: a `Ctx::Team` pointer is only set by `Team::install`, whose borrow of the team lasts
        // until the guard restores the previous context.
        Ctx::Team(t) => unsafe { (*t).threads() },
        Ctx::Serial => 1,
        Ctx::Rayon => rayon::current_num_threads(),
    }
}

/// Runs `f(i)` for every `i < tasks`, in parallel where the context allows; returns when all are done.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    if tasks == 0 {
        return;
    }
    if tasks == 1 {
        return f(0);
    }
    match CTX.with(Cell::get) {
        Ctx::Team(t) => {
            let next = AtomicUsize::new(0);
            let job = || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                f(i);
            };
            // SAFETY: as in `threads`.
            unsafe { (*t).run(&job) }
        }
        Ctx::Serial => (0..tasks).for_each(f),
        Ctx::Rayon => (0..tasks).into_par_iter().for_each(&f),
    }
}

/// Runs `f(i, chunk)` for the consecutive `chunk`-long pieces of `data` (the last may be shorter), in
/// parallel where the context allows.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "for_each_chunk_mut: zero chunk");
    let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
    for_each(len.div_ceil(chunk), |i| {
        let lo = i * chunk;
        let n = chunk.min(len - lo);
        // SAFETY: `for_each` runs each index exactly once, so the pieces `lo..lo + n` handed out are
        // disjoint sub-slices of `data`, which stays mutably borrowed until every task has returned.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(lo), n) };
        f(i, piece)
    });
}

/// A raw pointer that tasks of one parallel loop share to reach disjoint pieces of one buffer.
struct SendPtr<T>(*mut T);
// SAFETY: only used by `for_each_chunk_mut`, whose tasks touch disjoint pieces of a `Send` buffer.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of_squares(tasks: usize) -> usize {
        let acc = AtomicUsize::new(0);
        for_each(tasks, |i| {
            acc.fetch_add(i * i, Ordering::Relaxed);
        });
        acc.into_inner()
    }

    #[test]
    fn every_task_runs_once_on_a_team() {
        for n in [1, 2, 3, 5] {
            let team = Team::new(n);
            assert_eq!(team.threads(), n);
            team.install(|| {
                assert_eq!(threads(), n);
                for tasks in [0, 1, 2, 7, 64, 1000] {
                    let want: usize = (0..tasks).map(|i| i * i).sum();
                    assert_eq!(sum_of_squares(tasks), want, "{n} threads, {tasks} tasks");
                }
            });
        }
    }

    #[test]
    fn chunks_cover_the_slice_disjointly() {
        let team = Team::new(3);
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (64, 64), (65, 64), (1000, 7)] {
            let mut v = vec![0usize; len];
            team.install(|| {
                for_each_chunk_mut(&mut v, chunk, |i, c| {
                    for (j, x) in c.iter_mut().enumerate() {
                        *x += i * chunk + j + 1;
                    }
                })
            });
            assert!(
                v.iter().enumerate().all(|(j, &x)| x == j + 1),
                "{len}/{chunk}"
            );
        }
    }

    #[test]
    fn nested_loops_run_serially_inside_a_job() {
        let team = Team::new(2);
        let acc = AtomicUsize::new(0);
        team.install(|| {
            for_each(4, |_| {
                assert_eq!(threads(), 1);
                for_each(3, |j| {
                    acc.fetch_add(j + 1, Ordering::Relaxed);
                });
            })
        });
        assert_eq!(acc.into_inner(), 4 * 6);
    }

    #[test]
    fn a_panicking_task_panics_the_leader_and_the_team_survives() {
        let team = Team::new(2);
        for _ in 0..3 {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                team.install(|| for_each(8, |i| assert!(i != 5, "task 5 fails")))
            }));
            assert!(r.is_err());
        }
        team.install(|| assert_eq!(sum_of_squares(10), 285));
    }

    #[test]
    fn the_leader_does_not_wait_for_a_helper_that_has_not_joined() {
        let team = Team::new(2);
        team.shared.hold.store(true, Ordering::Release);
        let me = thread::current().id();
        for _ in 0..100 {
            // A held helper never joins: every task must run on the leader, and the loop must return.
            team.install(|| for_each(8, |_| assert_eq!(thread::current().id(), me)));
        }
        team.shared.hold.store(false, Ordering::Release);
        let others = AtomicUsize::new(0);
        for _ in 0..200 {
            team.install(|| {
                for_each(64, |_| {
                    if thread::current().id() != me {
                        others.fetch_add(1, Ordering::Relaxed);
                    }
                    (0..20_000u64).for_each(|i| {
                        std::hint::black_box(i);
                    });
                })
            });
        }
        assert!(others.into_inner() > 0, "the released helper never joined");
        team.install(|| assert_eq!(sum_of_squares(10), 285));
    }

    #[test]
    fn the_leader_works_alone_while_helpers_stall_mid_task() {
        let team = Team::new(2);
        let me = thread::current().id();
        // One job of two tasks. `wait`: the leader's task waits (up to 50 ms) for the helper to take the
        // other one, so a busy machine only delays the helper instead of failing the test. `stall`: the
        // helper is descheduled mid-task (50 ms), as on a busy machine.
        let helped = |wait: bool, stall: bool| {
            let others = AtomicUsize::new(0);
            team.install(|| {
                for_each(2, |_| {
                    if thread::current().id() != me {
                        others.fetch_add(1, Ordering::Relaxed);
                        if stall {
                            thread::sleep(Duration::from_millis(50));
                        }
                    } else {
                        let t = Instant::now();
                        while wait
                            && others.load(Ordering::Relaxed) == 0
                            && t.elapsed() < Duration::from_millis(50)
                        {
                            std::hint::spin_loop();
                        }
                    }
                })
            });
            others.into_inner() > 0
        };
        // A helper joins and stalls...
        assert!(
            (0..200).any(|_| helped(true, true)),
            "no helper ever joined"
        );
        // ...so the leader works alone for a while: the next job runs on it only.
        let pace = team.pace.get();
        let until = pace
            .solo_until
            .expect("a stalled helper put the leader in solo mode");
        if Instant::now() + Duration::from_millis(25) < until {
            assert!(!helped(false, false));
        }
        // Once the solo time is over, the helper shares jobs again.
        thread::sleep(until.saturating_duration_since(Instant::now()));
        team.pace.set(Pace::START);
        assert!((0..200).any(|_| helped(true, false)));
    }

    #[test]
    fn parked_helpers_wake_up() {
        let team = Team::new(2);
        team.install(|| assert_eq!(sum_of_squares(4), 14));
        thread::sleep(SPIN * 3);
        team.install(|| assert_eq!(sum_of_squares(4), 14));
    }

    #[test]
    fn serial_keeps_loops_on_the_caller() {
        let me = thread::current().id();
        serial(|| {
            assert_eq!(threads(), 1);
            for_each(16, |_| assert_eq!(thread::current().id(), me));
        });
    }

    #[test]
    fn outside_a_team_loops_run_on_rayon() {
        assert_eq!(threads(), rayon::current_num_threads());
        assert_eq!(sum_of_squares(100), (0..100).map(|i| i * i).sum());
    }
}
