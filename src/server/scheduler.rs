//! The scheduler: one thread that owns the [`Batch`] and steps every active request together.
//!
//! Requests wait in a bounded queue; between steps, waiting requests join the batch (their prompt is
//! prefilled) while there is room, and finished, failed or abandoned ones (the client went away) leave.
//! Every step is one forward pass for all active sequences; each sequence's [`Decoder`] turns its row of
//! logits into a token and text, sent to the request's channel as it is made.

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
    let mut feed: Vec<(SeqId, u32)> = Vec::new();
    let mut ended: Vec<SeqId> = Vec::new();
    let gauge = |live: &[Live], batch: &Batch| {
        metrics.active.store(live.len() as u64, Ordering::Relaxed);
        metrics
            .kv_cache_bytes
            .store(batch.kv_cache_bytes() as u64, Ordering::Relaxed);
    };
    loop {
        // Admit waiting requests while there is room (block for one when idle).
        while live.len() < limits.max_batch {
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
            if let Some(l) = admit(&mut batch, job, tokenizer, &metrics) {
                live.push(l);
            }
            gauge(&live, &batch);
        }
        // The clients that went away cancel their generation.
        live.retain(|l| {
            let gone = l.events.is_closed();
            if gone {
                batch.remove(l.id);
            }
            !gone
        });
        if live.is_empty() {
            gauge(&live, &batch);
            continue;
        }
        feed.clear();
        feed.extend(live.iter().map(|l| (l.id, l.feed)));
        metrics.batch_size.observe(feed.len() as f64);
        match batch.step(&feed) {
            Ok(logits) => {
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
                for id in ended.drain(..) {
                    batch.remove(id);
                }
            }
            Err(e) => {
                // A step fails for all its rows (non-finite logits, a model file changed): end them all.
                let msg = e.to_string();
                for l in live.drain(..) {
                    let _ = l.events.send(Event::Error(msg.clone()));
                    batch.remove(l.id);
                    Metrics::add(&metrics.errors, 1);
                }
            }
        }
        gauge(&live, &batch);
    }
}

/// Prefills a request's prompt and sends its first token; `None` if it ended there.
fn admit(
    batch: &mut Batch,
    job: Job,
    tokenizer: &crate::tokenizer::Tokenizer,
    metrics: &Metrics,
) -> Option<Live> {
    let id = batch.add();
    let logits = match batch.prefill(id, &job.prompt) {
        Ok(l) => l,
        Err(e) => {
            batch.remove(id);
            Metrics::add(&metrics.errors, 1);
            let _ = job.events.send(Event::Error(e.to_string()));
            return None;
        }
    };
    Metrics::add(&metrics.prompt_tokens, job.prompt.len() as u64);
    let now = Instant::now();
    metrics
        .time_to_first_token
        .observe((now - job.arrived).as_secs_f64());
    let mut l = Live {
        id,
        decoder: job.decoder,
        events: job.events,
        feed: 0,
        arrived: job.arrived,
        last: now,
    };
    let logits = logits.to_vec();
    if deliver(&mut l, tokenizer, &logits, metrics) {
        Some(l)
    } else {
        batch.remove(id);
        None
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
