//! Parallel loops of the kernels: over a persistent thread [`Team`] when one is installed, otherwise
//! over rayon.
//!
//! One decode step of a GPT-2 124M model runs about fifty products of 30–150 µs each, separated by
//! short serial steps (LayerNorm, quantization, residual adds). With rayon every product wakes a worker
//! that may have gone to sleep during the serial step (a futex wake, tens of µs in a VM); a [`Team`]'s
//! threads instead spin between products (parking only after [`SPIN`] idle), so the fork costs a cache
//! line transfer and the join a spin on a counter. Tasks are claimed from a shared counter, so a member
//! that runs late (preempted) simply takes fewer.

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rayon::prelude::*;

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

struct Shared {
    /// Bumped (SeqCst) once per job; a member runs the job when it sees a new value.
    epoch: AtomicUsize,
    /// The current job, written before `epoch` is bumped. A thin pointer to a `JobRef`.
    job: AtomicPtr<JobRef>,
    /// Helpers done with the current job.
    done: AtomicUsize,
    /// Helpers that are parked (or about to park).
    sleepers: AtomicUsize,
    /// Some helper's task panicked during the current job.
    panicked: AtomicBool,
    stop: AtomicBool,
}

/// A fixed set of threads that run parallel loops with spin-waiting instead of sleeping: the leader
/// (the thread that calls [`Team::install`]) plus `threads - 1` helpers.
///
/// A team serves one leader at a time (it is `Send` but not `Sync`); make one per concurrent caller.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Not `Sync`: two leaders at once would mix up the job protocol.
    _one_leader: PhantomData<Cell<()>>,
}

impl Team {
    /// A team of `threads` (the caller included; at least 1).
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..threads.max(1))
            .map(|i| {
                let s = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("slimlm-team-{i}"))
                    .spawn(move || helper(&s))
                    .expect("spawning a team thread")
            })
            .collect();
        Team {
            shared,
            helpers,
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

    /// Runs `job` on every member (the leader included) and returns when all are done.
    fn run(&self, job: &(dyn Fn() + Sync)) {
        let s = &*self.shared;
        // SAFETY: erases the lifetime of `job` so helpers can see it. They only call it between observing
        // the epoch bump below and incrementing `done`, and this function does not return (nor unwind)
        // before `done` counts every helper, so the borrow outlives every use.
        let job_ref: JobRef =
            unsafe { std::mem::transmute::<*const (dyn Fn() + Sync + '_), JobRef>(job) };
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.job
            .store(&job_ref as *const JobRef as *mut JobRef, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            for h in &self.helpers {
                h.thread().unpark();
            }
        }
        let mine = {
            let _ctx = CtxGuard::set(Ctx::Serial);
            panic::catch_unwind(AssertUnwindSafe(job))
        };
        let helpers = self.helpers.len();
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < helpers {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                // A helper is descheduled (more runnable threads than cores): let it run.
                thread::yield_now();
            }
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
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for h in &self.helpers {
            h.thread().unpark();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A helper's life: wait for a new epoch (spin, then park), run the job, report, repeat.
fn helper(s: &Shared) {
    CTX.with(|c| c.set(Ctx::Serial));
    // The epoch the team was made with (not a fresh load: a job may already be published).
    let mut seen = 0;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
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
            // Park. Announcing first (SeqCst) pairs with the leader's bump-then-check: either we see
            // the new epoch here or the leader sees us and unparks (a token `park` keeps if early).
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let job = s.job.load(Ordering::Relaxed);
        // SAFETY: the leader stored a pointer to a live `JobRef` before bumping the epoch (which we
        // observed with Acquire ordering), and keeps it and the job alive until `done` counts us.
        let r = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (**job)() }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
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
