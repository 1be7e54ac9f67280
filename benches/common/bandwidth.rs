//! The machine's streaming read bandwidth, measured the way the parallel kernels read weights: a buffer far
//! larger than the last-level cache, summed in 1 MiB chunks by every thread of the current pool.

use rayon::prelude::*;

/// 512 MiB of data (beyond any LLC).
pub fn buffer() -> Vec<u64> {
    (0..(512usize << 20) / 8).map(|i| i as u64).collect()
}

/// One pass over `buf`; returns a checksum so the reads cannot be elided.
pub fn read(buf: &[u64]) -> u64 {
    buf.par_chunks(1 << 17)
        .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
        .reduce(|| 0, u64::wrapping_add)
}

/// Median bytes/s of `passes` timed passes over `buf`: a quick probe taken right before a measurement,
/// because this machine's bandwidth drifts by tens of percent from one minute to the next.
#[allow(dead_code)] // used by the decode bench only
pub fn probe(buf: &[u64], passes: usize) -> f64 {
    let mut secs: Vec<f64> = (0..passes.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(read(buf));
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    (buf.len() * 8) as f64 / secs[secs.len() / 2]
}
