//! Turns a SIGBUS on a mapped model file into a clear message and exit status 1.
//!
//! When a mapped file shrinks (truncated, or rewritten in place through a truncating open) the pages past
//! its new end can no longer be read, and touching them raises SIGBUS, which would kill the process
//! without a word. Every live mapping registers its address range and path here; the handler looks the
//! faulting address up, writes `slimlm: <path>: ...` to stderr and exits with status 1. A fault outside
//! every registered range goes to the handler installed before ours (Rust's own, which reports stack
//! overflows, or the default action).
//!
//! The handler only reads atomics and calls `write` and `_exit`, which are async-signal-safe.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Mappings that can be registered at once (later ones go unregistered: their faults keep the default
/// behaviour, a signal).
const SLOTS: usize = 64;
/// Bytes of a path kept for the message (longer paths are cut).
const PATH_BYTES: usize = 240;
/// `start` of a slot that is being filled or emptied.
const BUSY: usize = usize::MAX;

struct Slot {
    /// Start address of the mapping; 0 when the slot is free, [`BUSY`] while it changes.
    start: AtomicUsize,
    len: AtomicUsize,
    path_len: AtomicUsize,
    path: [AtomicU8; PATH_BYTES],
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    path_len: AtomicUsize::new(0),
    path: [const { AtomicU8::new(0) }; PATH_BYTES],
};

static REGISTRY: [Slot; SLOTS] = [FREE; SLOTS];

/// The disposition of SIGBUS before ours, to pass on faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered mapping; unregisters when dropped (drop it before unmapping).
#[derive(Debug)]
pub(crate) struct Registration(Option<usize>);

impl Registration {
    /// Registers the mapping `start..start + len` of `path` (and installs the handler on first use).
    pub(crate) fn new(start: usize, len: usize, path: &Path) -> Registration {
        if len == 0 || start == 0 || start == BUSY {
            return Registration(None);
        }
        install();
        for (i, slot) in REGISTRY.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let bytes = path.as_os_str().as_encoded_bytes();
            let n = bytes.len().min(PATH_BYTES);
            for (dst, &b) in slot.path.iter().zip(&bytes[..n]) {
                dst.store(b, Ordering::Relaxed);
            }
            slot.path_len.store(n, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            slot.start.store(start, Ordering::Release);
            return Registration(Some(i));
        }
        Registration(None)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            REGISTRY[i].start.store(0, Ordering::Release);
        }
    }
}

/// Installs the handler once, keeping the previous disposition.
fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: `sigaction` is plain data for which all-zero bytes are a valid value (no handler, empty
        // mask, no flags); the fields we need are set below.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = on_sigbus as *const () as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above, a zeroed `sigaction` is valid; the kernel overwrites it.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live, properly initialized `sigaction` values; `sa_mask` of `ours`
        // is a valid (empty) set; `on_sigbus` has the SA_SIGINFO signature.
        unsafe {
            libc::sigemptyset(&mut ours.sa_mask);
            libc::sigaction(libc::SIGBUS, &ours, &mut previous);
        }
        previous
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler; for SIGBUS `si_addr` is the
    // faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &REGISTRY {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || start == BUSY {
            continue;
        }
        if addr >= start && addr - start < slot.len.load(Ordering::Relaxed) {
            let mut path = [0u8; PATH_BYTES];
            let n = slot.path_len.load(Ordering::Relaxed).min(PATH_BYTES);
            for (dst, src) in path.iter_mut().zip(&slot.path[..n]) {
                *dst = src.load(Ordering::Relaxed);
            }
            write_stderr(b"slimlm: ");
            write_stderr(&path[..n]);
            write_stderr(
                b": the model file shrank or was rewritten while in use (its mapped pages are gone); \
                  replace model files by renaming a complete new file over them, never by writing \
                  into them\n",
            );
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(1) };
        }
    }
    pass_on(sig, info, ctx);
}

/// Hands a fault that is not ours to the previous handler, or restores the default action (the
/// faulting access then repeats and takes it).
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous disposition was installed with SA_SIGINFO, so `h` is a handler of
                // this signature; we pass the kernel's own arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                return f(sig, info, ctx);
            }
            // SAFETY: without SA_SIGINFO, `h` is a one-argument handler.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            return f(sig);
        }
    }
    // SAFETY: a zeroed `sigaction` with `SIG_DFL` (0) is the default disposition; `sigaction` is
    // async-signal-safe.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &default, std::ptr::null_mut());
    }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: `write` is async-signal-safe; the pointer and length describe a live slice. A short or
    // failed write only loses (part of) the message.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}
