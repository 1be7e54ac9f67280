//! The scheduler: one thread that owns the [`Batch`] and steps every active request together.
//!
//! Requests wait in a bounded queue; while there is room in the batch, the next one joins and its prompt
//! is prefilled a chunk per step, in the same forward pass as a token of every decoding sequence (so a
//! long prompt never stalls them for more than one step); finished, failed or abandoned ones (the client
//! went away) leave. Each sequence's [`Decoder`] turns its row of logits into a token and text, sent to
//! the request's channel as it is made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::batch::{Batch, SeqId};
use crate::decode::{Decoder, Step};
use crate::kv_cache::KvDtype;
use crate::model::Model;

use super::metrics::Metrics;

/// What a request hears from the scheduler: its tokens (the last one carries the finish reason), or
/// the error that ended it.
pub enum Event {
    Step(Step),
    /// The error's message (the request has failed on the server's side).
    Error(String),
}

/// A request ready to run: its prompt (checked against the vocabulary and the context) and decoder.
pub struct Job {
    pub prompt: Vec<u32>,
    pub decoder: Decoder,
    pub events: UnboundedSender<Event>,
    /// When the request arrived (for the latency metrics).
    pub arrived: Instant,
}

/// How the scheduler runs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most sequences stepped together.
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; more are refused.
    pub queue: usize,
    /// Threads of each forward pass.
    pub threads: usize,
    pub kv_dtype: KvDtype,
}

/// The handle the HTTP side holds.
pub struct Scheduler {
    jobs: Mutex<Option<Sender<Job>>>,
    waiting: Arc<AtomicU64>,
    queue: u64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts the scheduler thread over `model`.
    pub fn start(model: Arc<Model>, limits: Limits, metrics: Arc<Metrics>) -> Scheduler {
        let (tx, rx) = mpsc::channel();
        let waiting = Arc::new(AtomicU64::new(0));
        let w = waiting.clone();
        let thread = std::thread::Builder::new()
            .name("slimlm-scheduler".into())
            .spawn(move || run(model, limits, rx, w, metrics))
            .expect("spawning the scheduler thread");
        Scheduler {
            jobs: Mutex::new(Some(tx)),
            waiting,
            queue: limits.queue as u64,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues `job`; `false` (the job dropped) if the queue is full or the scheduler has stopped.
    pub fn submit(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = &*jobs else {
            return false;
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if tx.send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Requests waiting for a place in the batch.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets the active and queued requests finish, then stops the thread.
    pub fn shutdown(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A sequence in the batch.
struct Live {
    id: SeqId,
    decoder: Decoder,
    events: UnboundedSender<Event>,
    /// The last token, to be fed at the next step.
    feed: u32,
    arrived: Instant,
    last: Instant,
}

/// The request whose prompt is being prefilled, a chunk per step.
struct Prefill {
    live: Live,
    prompt: Vec<u32>,
    done: usize,
}

/// Rows of a step that decodes and prefills at once: below the 32 rows where the GEMMs take over, so
/// every row is bit for bit what the request would get alone, whatever else is running (see [`Batch`]).
const MIXED_ROWS: usize = 31;
/// Fewest prompt tokens a mixed step prefills.
const MIN_PREFILL: usize = 8;

fn run(
    model: Arc<Model>,
    limits: Limits,
    jobs: Receiver<Job>,
    waiting: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Batch::shared(model.clone());
    batch.set_threads(limits.threads);
    batch.set_kv_dtype(limits.kv_dtype);
    let tokenizer = model.tokenizer();
    let vocab = model.config.vocab_size;
    let mut live: Vec<Live> = Vec::new();
    let mut prefill: Option<Prefill> = None;
    let mut ended: Vec<SeqId> = Vec::new();
    let mut feeds: Vec<u32> = Vec::new();
    let gauge = |live: &[Live], prefill: &Option<Prefill>, batch: &Batch| {
        let n = live.len() + usize::from(prefill.is_some());
        metrics.active.store(n as u64, Ordering::Relaxed);
        metrics
            .kv_cache_bytes
            .store(batch.kv_cache_bytes() as u64, Ordering::Relaxed);
    };
    loop {
        // The next request starts its prefill when there is room (block for one when idle). One prompt
        // at a time is prefilled, a chunk per step beside the decoding sequences, so a long prompt does
        // not stall them.
        while prefill.is_none() && live.len() < limits.max_batch {
            let job = if live.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            metrics
                .queue_depth
                .store(waiting.load(Ordering::SeqCst), Ordering::Relaxed);
            if job.events.is_closed() {
                continue;
            }
            let now = Instant::now();
            prefill = Some(Prefill {
                live: Live {
                    id: batch.add(),
                    decoder: job.decoder,
                    events: job.events,
                    feed: 0,
                    arrived: job.arrived,
                    last: now,
                },
                prompt: job.prompt,
                done: 0,
            });
        }
        // The clients that went away cancel their generation.
        live.retain(|l| {
            let gone = l.events.is_closed();
            if gone {
                batch.remove(l.id);
            }
            !gone
        });
        if let Some(p) = prefill.take_if(|p| p.live.events.is_closed()) {
            batch.remove(p.live.id);
        }
        gauge(&live, &prefill, &batch);
        if live.is_empty() && prefill.is_none() {
            continue;
        }
        // One step: a token for every decoding sequence, and the next chunk of the prompt.
        feeds.clear();
        feeds.extend(live.iter().map(|l| l.feed));
        let mut runs: Vec<(SeqId, &[u32])> = live
            .iter()
            .zip(&feeds)
            .map(|(l, f)| (l.id, std::slice::from_ref(f)))
            .collect();
        let chunk = prefill.as_ref().map(|p| {
            let left = p.prompt.len() - p.done;
            // Also when idle: chunks under 32 rows keep a request's result independent of the load.
            let n = left.min(MIXED_ROWS.saturating_sub(live.len()).max(MIN_PREFILL));
            (p.live.id, &p.prompt[p.done..p.done + n])
        });
        let chunk_len = chunk.map(|(_, c)| c.len());
        if let Some(c) = chunk {
            runs.push(c);
        }
        if !live.is_empty() {
            metrics.batch_size.observe(live.len() as f64);
        }
        let logits = match batch.extend(&runs) {
            Ok(l) => l,
            Err(e) => {
                // A step fails for all its rows (non-finite logits, a model file changed): end them all.
                let msg = e.to_string();
                let all = live.drain(..).chain(prefill.take().map(|p| p.live));
                for l in all {
                    let _ = l.events.send(Event::Error(msg.clone()));
                    ended.push(l.id);
                    Metrics::add(&metrics.errors, 1);
                }
                for id in ended.drain(..) {
                    batch.remove(id);
                }
                gauge(&live, &prefill, &batch);
                continue;
            }
        };
        let now = Instant::now();
        let mut k = 0;
        live.retain_mut(|l| {
            let row = &logits[k * vocab..(k + 1) * vocab];
            k += 1;
            metrics.token_latency.observe((now - l.last).as_secs_f64());
            l.last = now;
            let keep = deliver(l, tokenizer, row, &metrics);
            if !keep {
                ended.push(l.id);
            }
            keep
        });
        if let (Some(p), Some(n)) = (prefill.as_mut(), chunk_len) {
            p.done += n;
            if p.done == p.prompt.len() {
                let mut p = prefill.take().expect("a prefill in progress");
                Metrics::add(&metrics.prompt_tokens, p.prompt.len() as u64);
                metrics
                    .time_to_first_token
                    .observe((now - p.live.arrived).as_secs_f64());
                p.live.last = now;
                let row = &logits[k * vocab..(k + 1) * vocab];
                if deliver(&mut p.live, tokenizer, row, &metrics) {
                    live.push(p.live);
                } else {
                    ended.push(p.live.id);
                }
            }
        }
        for id in ended.drain(..) {
            batch.remove(id);
        }
        gauge(&live, &prefill, &batch);
    }
}

/// Turns a row of logits into the sequence's next token and sends it; whether the sequence goes on.
fn deliver(
    l: &mut Live,
    tokenizer: &crate::tokenizer::Tokenizer,
    logits: &[f32],
    metrics: &Metrics,
) -> bool {
    match l.decoder.next(tokenizer, logits) {
        Ok(step) => {
            Metrics::add(&metrics.generated_tokens, 1);
            let done = step.finish.is_some();
            l.feed = step.token;
            if done {
                metrics
                    .request_duration
                    .observe(l.arrived.elapsed().as_secs_f64());
            }
            l.events.send(Event::Step(step)).is_ok() && !done
        }
        Err(e) => {
            Metrics::add(&metrics.errors, 1);
            let _ = l.events.send(Event::Error(e.to_string()));
            false
        }
    }
}
