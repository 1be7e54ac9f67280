//! Many sequences stepped together: one pass over the weights per step for all of them.
//!
//! Decode is bound by the bytes of weights read per token. `B` sessions stepped one after another read
//! every weight `B` times; a [`Batch`] steps them as `B` rows of one forward pass, so each linear layer is
//! a small matrix–matrix product that reads its weights once. Each sequence keeps its own KV cache and
//! position; sequences join ([`Batch::add`] then [`Batch::prefill`]) and leave ([`Batch::remove`])
//! between steps (continuous batching).
//!
//! Results are those of each sequence run alone in a [`crate::Session`]: bit for bit while a step holds
//! fewer than 32 sequences (the few-token products run the one-token kernels over blocks of rows, each
//! block serving every sequence while it is in cache), and within the golden tolerances from 32 on,
//! where the GEMMs take over and sum in another order (`tests/batch.rs` checks both).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::forward::{self, Row, Work};
use crate::kv_cache::{KvCache, KvDtype};
use crate::model::Model;
use crate::session::{check_tokens, ModelRef, NoObserver};

/// A sequence of a [`Batch`]; ids are never reused within a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u64);

impl SeqId {
    /// The id as a number (unique within its batch).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Sequences over one shared [`Model`], each with its own KV cache and position, stepped together.
pub struct Batch<'m> {
    model: ModelRef<'m>,
    ids: Vec<SeqId>,
    pos: Vec<usize>,
    kvs: Vec<KvCache>,
    kv_dtype: KvDtype,
    work: Work,
    /// Logits of the rows of the last step (`rows × vocab`), or of the last prefill (one row).
    logits: Vec<f32>,
    /// Sequence index and position of each row of the step in progress, its tokens, and the row whose
    /// logits each entry wants (reused, so a step allocates nothing).
    rows: Vec<Row>,
    tokens: Vec<u32>,
    picks: Vec<usize>,
    next_id: u64,
}

impl<'m> Batch<'m> {
    /// An empty batch over `model`.
    pub fn new(model: &'m Model) -> Batch<'m> {
        Batch::with(ModelRef::Borrowed(model))
    }

    fn with(model: ModelRef<'m>) -> Batch<'m> {
        Batch {
            ids: Vec::new(),
            pos: Vec::new(),
            kvs: Vec::new(),
            kv_dtype: model.kv_dtype(),
            work: Work::new(&model),
            logits: Vec::new(),
            rows: Vec::new(),
            tokens: Vec::new(),
            picks: Vec::new(),
            next_id: 0,
            model,
        }
    }

    /// The model the batch runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Threads of a forward pass (see [`crate::Session::set_threads`]).
    pub fn threads(&self) -> usize {
        self.work.threads()
    }

    /// Sets the threads of a forward pass (clamped to 1..=[`crate::kernels::par::MAX_THREADS`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.work.set_threads(threads)
    }

    /// The KV cache element type of sequences added from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// Adds an empty sequence (position 0); feed it its prompt with [`Batch::prefill`].
    pub fn add(&mut self) -> SeqId {
        let c = &self.model.config;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.ids.push(id);
        self.pos.push(0);
        self.kvs.push(KvCache::new(
            self.kv_dtype,
            c.n_layer(),
            c.n_head,
            c.head_dim(),
        ));
        id
    }

    /// Removes a sequence and frees its KV cache; `false` if there is no such sequence.
    pub fn remove(&mut self, id: SeqId) -> bool {
        match self.index(id) {
            Some(i) => {
                self.ids.swap_remove(i);
                self.pos.swap_remove(i);
                self.kvs.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// The sequences, in no particular order.
    pub fn ids(&self) -> &[SeqId] {
        &self.ids
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no sequence.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens in the KV cache of `id` (`None` if there is no such sequence).
    pub fn position(&self, id: SeqId) -> Option<usize> {
        self.index(id).map(|i| self.pos[i])
    }

    /// Bytes of all the sequences' KV caches.
    pub fn kv_cache_bytes(&self) -> usize {
        self.kvs.iter().map(KvCache::bytes).sum()
    }

    /// Bytes of the buffers the batch owns besides the KV caches (activations, logits).
    pub fn work_bytes(&self) -> usize {
        self.work.bytes() + 4 * self.logits.capacity()
    }

    fn index(&self, id: SeqId) -> Option<usize> {
        self.ids.iter().position(|&s| s == id)
    }

    fn find(&self, id: SeqId) -> Result<usize> {
        self.index(id)
            .ok_or_else(|| Error::input(format!("no sequence {} in the batch", id.0)))
    }

    /// Appends `tokens` to sequence `id` alone; returns the logits that follow the last one.
    pub fn prefill(&mut self, id: SeqId, tokens: &[u32]) -> Result<&[f32]> {
        let i = self.find(id)?;
        let model = &*self.model;
        check_tokens(model, self.pos[i], tokens)?;
        model.check_files()?;
        let p0 = self.pos[i];
        self.work
            .reserve(model, &mut self.kvs[i], p0 + tokens.len(), p0)?;
        let v = model.config.vocab_size;
        self.logits.resize(v, 0.0);
        let (kvs, rows, logits) = (&mut self.kvs, &mut self.rows, &mut self.logits);
        let chunk = forward::chunk_rows(model);
        self.work.run(|work| {
            let mut done = 0;
            for part in tokens.chunks(chunk) {
                rows.clear();
                rows.extend((0..part.len()).map(|t| Row {
                    seq: i,
                    pos: p0 + done + t,
                }));
                work.forward(model, kvs, part, rows, &mut NoObserver);
                done += part.len();
            }
            work.logits_of_row(model, rows.len() - 1, &mut logits[..v])
        })?;
        self.pos[i] += tokens.len();
        Ok(&self.logits[..v])
    }

    /// Appends one token to each listed sequence (each at most once), all in one forward pass; returns
    /// the logits that follow, one row of `vocab` per entry of `tokens`, in their order. Nothing is
    /// appended if any entry is invalid (unknown or repeated sequence, token out of range, full context).
    pub fn step(&mut self, tokens: &[(SeqId, u32)]) -> Result<&[f32]> {
        let runs: Vec<(SeqId, &[u32])> = tokens
            .iter()
            .map(|(id, t)| (*id, std::slice::from_ref(t)))
            .collect();
        self.extend(&runs)
    }

    /// Appends a run of tokens to each listed sequence (each at most once) in one pass over the weights
    /// per [`CHUNK`](crate::forward) rows: e.g. one token for every decoding sequence and a piece of a
    /// new sequence's prompt (chunked prefill). Returns the logits after the last token of each run, one
    /// row of `vocab` per entry, in their order. Nothing is appended if any entry is invalid.
    pub fn extend(&mut self, runs: &[(SeqId, &[u32])]) -> Result<&[f32]> {
        let model = &*self.model;
        self.rows.clear();
        self.tokens.clear();
        self.picks.clear();
        for (k, &(id, run)) in runs.iter().enumerate() {
            let i = self.find(id)?;
            if runs[..k].iter().any(|&(other, _)| other == id) {
                return Err(Error::input(format!(
                    "sequence {} appears twice in one step",
                    id.0
                )));
            }
            check_tokens(model, self.pos[i], run)?;
            let p0 = self.pos[i];
            self.rows.extend((0..run.len()).map(|t| Row {
                seq: i,
                pos: p0 + t,
            }));
            self.tokens.extend_from_slice(run);
            self.picks.push(self.rows.len() - 1);
        }
        if runs.is_empty() {
            return Ok(&[]);
        }
        model.check_files()?;
        for &(id, run) in runs {
            let i = self.find(id)?;
            let p0 = self.pos[i];
            self.work
                .reserve(model, &mut self.kvs[i], p0 + run.len(), p0)?;
        }
        let v = model.config.vocab_size;
        self.logits.resize(runs.len() * v, 0.0);
        let chunk = forward::chunk_rows(model);
        let (kvs, rows, toks, picks, logits) = (
            &mut self.kvs,
            &self.rows,
            &self.tokens,
            &self.picks,
            &mut self.logits,
        );
        self.work.run(|work| {
            let mut done = 0;
            for (c, (rs, ts)) in rows.chunks(chunk).zip(toks.chunks(chunk)).enumerate() {
                work.forward(model, kvs, ts, rs, &mut NoObserver);
                // The runs that end in this chunk: their last rows, local to it.
                let (lo, hi) = (c * chunk, c * chunk + rs.len());
                let first = done;
                let local: Vec<usize> = picks[first..]
                    .iter()
                    .take_while(|&&p| p < hi)
                    .map(|&p| p - lo)
                    .collect();
                done += local.len();
                work.logits_of(model, &local, &mut |k, l| {
                    logits[(first + k) * v..(first + k + 1) * v].copy_from_slice(l)
                })?;
            }
            Ok::<_, Error>(())
        })?;
        for &(id, run) in runs {
            if let Some(i) = self.index(id) {
                self.pos[i] += run.len();
            }
        }
        Ok(&self.logits[..runs.len() * v])
    }
}

impl Batch<'static> {
    /// A batch that holds its model through an [`Arc`]: `'static`, so it can live on its own thread.
    pub fn shared(model: Arc<Model>) -> Batch<'static> {
        Batch::with(ModelRef::Shared(model))
    }
}
