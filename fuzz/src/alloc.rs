//! The counting global allocator: every allocation of the process goes through it.
//!
//! It wraps [`System`] and keeps, in atomics (it must never allocate or lock on its own path):
//! live bytes, the peak of live bytes and the largest single request since the last
//! [`begin_case`], and every request above the running case's bound (count and largest).
//!
//! **Design of the bounds** (see README.md):
//! - *Bound* (per case, set by [`begin_case`]): `4 × total size of the case's input files + 64 MiB`. A
//!   request above it is *recorded* and still served; the harness checks the counters after the case
//!   ([`end_case`]) and reports the input as an over-bound finding. Peak live growth above the bound is
//!   reported the same way.
//! - *Hard limit* (`max(1 GiB, bound)` for one request, 4 GiB of live heap): a request above it is never
//!   served, because serving it could push the machine into the OOM killer. Before refusing, the
//!   allocating thread waits (allocation-free sleeps, at most 10 s) while the watchdog thread copies the
//!   case's input files to the findings directory; then it returns null. A fallible caller
//!   (`try_reserve`) sees an error and the case goes on; an infallible one makes std abort the process
//!   ("memory allocation of N bytes failed"). In supervised mode the parent process records that abort,
//!   keeps the saved input and restarts the worker at the next case.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

/// The allocator type installed with `#[global_allocator]` in `main.rs`.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static MAX_SINGLE: AtomicUsize = AtomicUsize::new(0);
static OVER_COUNT: AtomicUsize = AtomicUsize::new(0);
static OVER_MAX: AtomicUsize = AtomicUsize::new(0);
/// Bound of the running case (`usize::MAX` between cases: the harness's own allocations are not judged).
static BOUND: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Requests above this are refused (see the module docs).
static HARD: AtomicUsize = AtomicUsize::new(1 << 30);
static HARD_LIVE: AtomicUsize = AtomicUsize::new(4 << 30);
/// Size of a refused request waiting for the watchdog to save the input (0: none).
static REFUSE_PENDING: AtomicUsize = AtomicUsize::new(0);
static REFUSE_SAVED: AtomicBool = AtomicBool::new(false);
/// Largest refused request since the last [`begin_case`].
static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// Capture a backtrace of the first over-bound request (used when a finding is re-run).
static CAPTURE: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Set while this thread captures a backtrace from inside the allocator (no recursion).
    static IN_CAPTURE: Cell<bool> = const { Cell::new(false) };
    /// Set on the watchdog thread: it must never wait for itself.
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// 1 GiB: the smallest hard limit of one request.
pub const HARD_MIN: usize = 1 << 30;
/// 64 MiB: the constant part of the per-case bound.
pub const BOUND_BASE: usize = 64 << 20;

/// The per-case bound for `input_bytes` of input files: `4 × input + 64 MiB`.
pub fn bound_for(input_bytes: u64) -> usize {
    (input_bytes as usize)
        .saturating_mul(4)
        .saturating_add(BOUND_BASE)
}

/// What one case allocated.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaseAlloc {
    pub bound: usize,
    pub max_single: usize,
    pub over_count: usize,
    pub over_max: usize,
    pub peak_growth: usize,
    pub refused: usize,
}

impl CaseAlloc {
    /// Whether the case broke its bound (a single request, or the live heap's growth).
    pub fn violated(&self) -> bool {
        self.over_count > 0 || self.peak_growth > self.bound || self.refused > 0
    }
}

/// Starts judging allocations against `bound`; returns the live bytes at the start.
pub fn begin_case(bound: usize) -> usize {
    MAX_SINGLE.store(0, Relaxed);
    OVER_COUNT.store(0, Relaxed);
    OVER_MAX.store(0, Relaxed);
    REFUSED.store(0, Relaxed);
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    HARD.store(HARD_MIN.max(bound), Relaxed);
    BOUND.store(bound, SeqCst);
    live
}

/// Stops judging; what the case allocated since [`begin_case`] (which returned `base_live`).
pub fn end_case(base_live: usize) -> CaseAlloc {
    let bound = BOUND.swap(usize::MAX, SeqCst);
    CaseAlloc {
        bound,
        max_single: MAX_SINGLE.load(Relaxed),
        over_count: OVER_COUNT.load(Relaxed),
        over_max: OVER_MAX.load(Relaxed),
        peak_growth: PEAK.load(Relaxed).saturating_sub(base_live),
        refused: REFUSED.load(Relaxed),
    }
}

/// Marks the calling thread as the watchdog (never made to wait by a refused request).
pub fn mark_watchdog_thread() {
    NO_WAIT.with(|c| c.set(true));
}

/// A refused request waiting for its input to be saved: its size.
pub fn refuse_pending() -> usize {
    REFUSE_PENDING.load(SeqCst)
}

/// Called by the watchdog once the input of the pending refused request is saved.
pub fn refuse_saved() {
    REFUSE_SAVED.store(true, SeqCst);
}

/// Turns on backtrace capture of the first over-bound request; [`take_capture`] returns it.
pub fn set_capture(on: bool) {
    if on {
        if let Ok(mut g) = CAPTURED.lock() {
            *g = None;
        }
    }
    CAPTURE.store(on, SeqCst);
}

pub fn take_capture() -> Option<String> {
    CAPTURED.lock().ok().and_then(|mut g| g.take())
}

/// Accounts a request of `size` bytes before it is served; false: refuse it.
#[inline]
fn admit(size: usize) -> bool {
    // A load first: the read-modify-write only when the maximum moves (rarely), as allocation is hot.
    if size > MAX_SINGLE.load(Relaxed) {
        MAX_SINGLE.fetch_max(size, Relaxed);
    }
    if size > BOUND.load(Relaxed) {
        OVER_COUNT.fetch_add(1, Relaxed);
        OVER_MAX.fetch_max(size, Relaxed);
        if CAPTURE.load(Relaxed) {
            capture();
        }
    }
    if size > HARD.load(Relaxed)
        || LIVE.load(Relaxed).saturating_add(size) > HARD_LIVE.load(Relaxed)
    {
        refuse(size);
        return false;
    }
    true
}

#[cold]
fn capture() {
    let busy = IN_CAPTURE.try_with(|c| c.replace(true)).unwrap_or(true);
    if busy {
        return;
    }
    // Allocates (re-entering this allocator, which skips this path while IN_CAPTURE is set).
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    if let Ok(mut g) = CAPTURED.lock() {
        if g.is_none() {
            *g = Some(bt);
        }
    }
    CAPTURE.store(false, Relaxed);
    let _ = IN_CAPTURE.try_with(|c| c.set(false));
}

/// Records a refused request; outside the watchdog, waits (without allocating) up to 10 s for the watchdog
/// to save the case's input.
#[cold]
fn refuse(size: usize) {
    REFUSED.fetch_max(size, Relaxed);
    if NO_WAIT.try_with(Cell::get).unwrap_or(true) || BOUND.load(Relaxed) == usize::MAX {
        return;
    }
    REFUSE_SAVED.store(false, SeqCst);
    REFUSE_PENDING.store(size, SeqCst);
    for _ in 0..200 {
        if REFUSE_SAVED.load(SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    REFUSE_PENDING.store(0, SeqCst);
}

#[inline]
fn added(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    if live > PEAK.load(Relaxed) {
        PEAK.fetch_max(live, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged, so `System`'s
// guarantees hold; the only other work is atomic counting, which neither allocates nor unwinds. A refused
// request returns null, which `GlobalAlloc` allows (it signals allocation failure).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: `layout` is the caller's, valid for `GlobalAlloc::alloc` by its contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (hence by `System`) for `layout`, per the caller's
        // contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` was returned by `System` for `layout` and `new_size` is valid, per the caller's
        // contract; on failure the old block is left untouched, as `System` guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                added(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}
