//! The server's counters, gauges and histograms, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram over fixed bucket bounds (cumulative counts rendered as `_bucket{le=…}`).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum of observations, in micro-units, so it can be an atomic integer.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Everything `/metrics` reports.
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub queue_depth: AtomicU64,
    pub active: AtomicU64,
    pub kv_cache_bytes: AtomicU64,
    pub batch_size: Histogram,
    pub time_to_first_token: Histogram,
    pub token_latency: Histogram,
    pub request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active: AtomicU64::new(0),
            kv_cache_bytes: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH),
            time_to_first_token: Histogram::new(SECONDS),
            token_latency: Histogram::new(SECONDS),
            request_duration: Histogram::new(SECONDS),
        }
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let scalars: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "slimlm_requests_total",
                "counter",
                "Completion requests received.",
                &self.requests,
            ),
            (
                "slimlm_requests_rejected_total",
                "counter",
                "Requests answered 429 (queue full).",
                &self.rejected,
            ),
            (
                "slimlm_request_errors_total",
                "counter",
                "Requests that failed (4xx other than 429, or 5xx).",
                &self.errors,
            ),
            (
                "slimlm_prompt_tokens_total",
                "counter",
                "Prompt tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "slimlm_generated_tokens_total",
                "counter",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "slimlm_queue_depth",
                "gauge",
                "Requests waiting for a place in the batch.",
                &self.queue_depth,
            ),
            (
                "slimlm_active_sequences",
                "gauge",
                "Sequences in the batch.",
                &self.active,
            ),
            (
                "slimlm_kv_cache_bytes",
                "gauge",
                "Bytes of the KV caches of the sequences in the batch.",
                &self.kv_cache_bytes,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.batch_size
            .render(&mut out, "slimlm_batch_size", "Sequences per decode step.");
        self.time_to_first_token.render(
            &mut out,
            "slimlm_time_to_first_token_seconds",
            "From the request's arrival to its first token.",
        );
        self.token_latency.render(
            &mut out,
            "slimlm_token_latency_seconds",
            "Between consecutive tokens of one sequence.",
        );
        self.request_duration.render(
            &mut out,
            "slimlm_request_duration_seconds",
            "From the request's arrival to its last token.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        for v in [0.0005, 0.003, 0.003, 100.0] {
            m.token_latency.observe(v);
        }
        Metrics::add(&m.requests, 2);
        let text = m.render();
        assert!(text.contains("slimlm_requests_total 2\n"), "{text}");
        assert!(text.contains("slimlm_token_latency_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("slimlm_token_latency_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("slimlm_token_latency_seconds_bucket{le=\"60\"} 3\n"));
        assert!(text.contains("slimlm_token_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("slimlm_token_latency_seconds_count 4\n"));
    }
}
