//! A session: the KV cache and scratch buffers of one conversation, and the forward pass.
//!
//! Everything that changes per request lives here; the [`Model`] is shared and immutable. The scratch
//! buffers are allocated when the session is made; the KV cache grows with the context actually used
//! (doubling, up to the model's context length), so a decode step allocates nothing except when it
//! crosses a power of two.

use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::forward::{self, Row, Work};
use crate::kv_cache::{KvCache, KvDtype};
use crate::model::Model;

/// Sees intermediate results of a forward pass (for analysis; the default methods do nothing).
pub trait Observer {
    /// Hidden states `tokens × d` entering block `layer` (`layer = n_layer`: the final hidden states, after
    /// the final LayerNorm and the output projection where the model has them), following transformers'
    /// `output_hidden_states`; `pos0` is the position of the first row.
    fn hidden(&mut self, _layer: usize, _pos0: usize, _xs: &[f32]) {}
    /// Output `tokens × out` of the linear layer `component` of block `layer`.
    fn linear(&mut self, _layer: usize, _component: &'static str, _ys: &[f32]) {}
    /// Input `tokens × in` of the linear layer `component` of block `layer` (`attn_qkv` also for
    /// separate q/k/v projections, which share their input).
    fn linear_input(&mut self, _layer: usize, _component: &'static str, _xs: &[f32]) {}
}

/// Receives `(index, logits)` for every position of a prefill.
type LogitSink<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// An observer that sees nothing.
pub(crate) struct NoObserver;
impl Observer for NoObserver {}

/// The model a session or batch runs: borrowed, or shared through an [`Arc`] (so the owner can be
/// `'static`, e.g. moved to another thread or a task).
#[derive(Clone)]
pub(crate) enum ModelRef<'m> {
    Borrowed(&'m Model),
    Shared(Arc<Model>),
}

impl Deref for ModelRef<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

/// Per-request state over a shared [`Model`]: the KV cache of one sequence and the scratch buffers of
/// its forward passes.
pub struct Session<'m> {
    model: ModelRef<'m>,
    pos: usize,
    kv: KvCache,
    work: Work,
    /// The logits after the last token processed.
    logits: Vec<f32>,
}

impl<'m> Session<'m> {
    /// A fresh session (position 0) with its scratch buffers allocated; the KV cache is allocated as
    /// the context grows.
    pub fn new(model: &'m Model) -> Session<'m> {
        Session::with(ModelRef::Borrowed(model))
    }

    fn with(model: ModelRef<'m>) -> Session<'m> {
        let c = &model.config;
        Session {
            pos: 0,
            kv: KvCache::new(model.kv_dtype(), c.n_layer(), c.n_head, c.head_dim()),
            work: Work::new(&model),
            logits: vec![0.0; c.vocab_size],
            model,
        }
    }

    /// Threads a forward pass runs on (the caller's included). Defaults to the size of the current
    /// rayon pool (`--threads` in the CLI); set 1 when running many sessions in parallel yourself.
    pub fn threads(&self) -> usize {
        self.work.threads()
    }

    /// Sets the threads of the forward pass (clamped to 1..=[`crate::kernels::par::MAX_THREADS`]). The session keeps
    /// `threads - 1` helper threads, which spin briefly between the products of a pass and park when idle
    /// (and work alone for a while when the machine is too busy to give them cores).
    pub fn set_threads(&mut self, threads: usize) {
        self.work.set_threads(threads)
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Tokens already in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the context (the buffers are kept).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Forgets every token after the first `position` (e.g. to retry from a prefix).
    pub fn rewind(&mut self, position: usize) {
        self.pos = self.pos.min(position);
    }

    /// Bytes of the KV cache allocated so far (room for [`Session::kv_capacity`] positions).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// The element type of the KV cache.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv.dtype()
    }

    /// Sets the element type of the KV cache: [`KvDtype::F16`] halves its bytes, at the cost of rounding
    /// keys and values to F16. Changing it empties the cache (the session restarts at position 0).
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        if dtype != self.kv.dtype() {
            let c = &self.model.config;
            self.kv = KvCache::new(dtype, c.n_layer(), c.n_head, c.head_dim());
            self.pos = 0;
        }
    }

    /// Positions the KV cache has room for before it grows.
    pub fn kv_capacity(&self) -> usize {
        self.kv.capacity()
    }

    /// Bytes of the KV cache that hold the tokens so far (the rest is allocated but never touched).
    pub fn kv_cache_used_bytes(&self) -> usize {
        self.kv.bytes_per_position() * self.pos
    }

    /// Bytes of the activation buffers written so far, an upper bound of their resident memory (they are
    /// allocated for a full prefill chunk, but pages never written are never resident).
    pub fn activation_bytes_used(&self) -> usize {
        self.work.activation_bytes_used(&self.model) + 4 * self.logits.len()
    }

    /// Bytes of all buffers the session owns (KV cache, activations, logits).
    pub fn state_bytes(&self) -> usize {
        self.work.bytes() + 4 * self.logits.capacity() + self.kv_cache_bytes()
    }

    /// Appends `tokens` to the context; returns the logits that follow the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.run(tokens, &mut NoObserver, None)?;
        Ok(&self.logits)
    }

    /// The logits after the last token processed.
    pub fn last_logits_slice(&self) -> &[f32] {
        &self.logits
    }

    /// Appends one token; returns the logits that follow it.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.prefill(&[token])
    }

    /// Like [`Session::prefill`], showing intermediate results to `observer`.
    pub fn prefill_observed(
        &mut self,
        tokens: &[u32],
        observer: &mut dyn Observer,
    ) -> Result<&[f32]> {
        self.run(tokens, observer, None)?;
        Ok(&self.logits)
    }

    /// Appends `tokens` and hands the logits after every one of them to `sink(index, logits)`, in order.
    pub fn prefill_all(
        &mut self,
        tokens: &[u32],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run(tokens, &mut NoObserver, Some(sink))
    }

    /// Checks that `tokens` can be appended: non-empty, ids in the vocabulary, room in the context.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        check_tokens(&self.model, self.pos, tokens)
    }

    fn run(
        &mut self,
        tokens: &[u32],
        obs: &mut dyn Observer,
        mut sink: Option<LogitSink>,
    ) -> Result<()> {
        self.check_tokens(tokens)?;
        let model = &*self.model;
        model.check_files()?;
        self.work
            .reserve(model, &mut self.kv, self.pos + tokens.len(), self.pos)?;
        let (kv, pos, logits) = (&mut self.kv, &mut self.pos, &mut self.logits);
        self.work.run(|work| {
            let chunk = forward::chunk_rows(model);
            let mut rows = Vec::with_capacity(chunk.min(tokens.len()));
            let mut done = 0;
            for part in tokens.chunks(chunk) {
                let n = part.len();
                rows.clear();
                rows.extend((0..n).map(|t| Row {
                    seq: 0,
                    pos: *pos + t,
                }));
                work.forward(model, std::slice::from_mut(kv), part, &rows, obs);
                *pos += n;
                match sink.as_deref_mut() {
                    Some(f) => work.logits_of_rows(model, n, &mut |i, l| {
                        f(done + i, l);
                        if done + i + 1 == tokens.len() {
                            logits.copy_from_slice(l);
                        }
                    })?,
                    None if done + n == tokens.len() => work.logits_of_row(model, n - 1, logits)?,
                    None => {}
                }
                done += n;
            }
            Ok(())
        })
    }
}

impl Session<'static> {
    /// A session that holds its model through an [`Arc`]: `'static`, so it can move to another thread
    /// or a task (e.g. tokio's blocking pool) on its own.
    pub fn shared(model: Arc<Model>) -> Session<'static> {
        Session::with(ModelRef::Shared(model))
    }
}

/// Runs a model one block at a time over independent sequences, each from position 0: the embeddings
/// of a sequence, then block 0 over its hidden states, then block 1 over block 0's outputs, and so on.
/// Only one layer's keys and values are kept (a sequence is run through a block in one go), so the
/// caller holds just the hidden states between blocks. The compressor's layer-by-layer calibration.
#[cfg(feature = "compress")]
pub(crate) struct BlockRunner<'m> {
    model: &'m Model,
    /// One layer's keys and values, for the sequence in the block being run.
    kv: KvCache,
    work: Work,
}

#[cfg(feature = "compress")]
impl<'m> BlockRunner<'m> {
    pub(crate) fn new(model: &'m Model) -> BlockRunner<'m> {
        let c = &model.config;
        BlockRunner {
            kv: KvCache::new(model.kv_dtype(), 1, c.n_head, c.head_dim()),
            work: Work::new(model),
            model,
        }
    }

    /// The hidden states entering block 0 for the sequence `tokens` (positions `0..`), `tokens × d_model`.
    pub(crate) fn embed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let model = self.model;
        check_tokens(model, 0, tokens)?;
        model.check_files()?;
        let d = model.config.d_model;
        let mut out = vec![0.0; tokens.len() * d];
        self.work.run(|work| {
            let chunk = forward::chunk_rows(model);
            for (i, part) in tokens.chunks(chunk).enumerate() {
                let rows = rows_from(i * chunk, part.len());
                let o = &mut out[i * chunk * d..(i * chunk + part.len()) * d];
                work.embed_rows(model, part, &rows, o);
            }
        });
        Ok(out)
    }

    /// Runs block `layer` over the hidden states `xs` entering it (`tokens × d_model`, one sequence at
    /// positions `0..`), in place: on return `xs` holds what enters block `layer + 1`. `obs` sees the
    /// block's linear layers (`hidden` is not called).
    pub(crate) fn block(
        &mut self,
        layer: usize,
        xs: &mut [f32],
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let model = self.model;
        let c = &model.config;
        let d = c.d_model;
        if layer >= model.blocks.len() || xs.is_empty() || xs.len() % d != 0 {
            return Err(Error::input(format!(
                "block {layer} of {} over {} values ({d} per token)",
                model.blocks.len(),
                xs.len()
            )));
        }
        let n = xs.len() / d;
        if n > c.n_ctx {
            return Err(Error::ContextOverflow {
                cached: 0,
                new: n,
                n_ctx: c.n_ctx,
            });
        }
        self.work.reserve(model, &mut self.kv, n, 0)?;
        let kv = &mut self.kv;
        self.work.run(|work| {
            let chunk = forward::chunk_rows(model);
            for (i, part) in xs.chunks_mut(chunk * d).enumerate() {
                let rows = rows_from(i * chunk, part.len() / d);
                work.block_rows(model, kv, layer, &rows, part, obs);
            }
        });
        Ok(())
    }
}

/// Rows of sequence 0 at positions `pos0..pos0 + n`.
#[cfg(feature = "compress")]
fn rows_from(pos0: usize, n: usize) -> Vec<Row> {
    (0..n)
        .map(|t| Row {
            seq: 0,
            pos: pos0 + t,
        })
        .collect()
}

/// Checks that `tokens` can follow `pos` tokens: non-empty, ids in the vocabulary, room in the context.
pub(crate) fn check_tokens(model: &Model, pos: usize, tokens: &[u32]) -> Result<()> {
    let c = &model.config;
    if tokens.is_empty() {
        return Err(Error::input("no tokens to process (empty prompt?)"));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
        return Err(Error::TokenOutOfRange {
            token: bad,
            vocab: c.vocab_size,
        });
    }
    if pos + tokens.len() > c.n_ctx {
        return Err(Error::ContextOverflow {
            cached: pos,
            new: tokens.len(),
            n_ctx: c.n_ctx,
        });
    }
    Ok(())
}

#[cfg(all(test, feature = "compress"))]
mod tests {
    use super::*;

    /// Records the hidden states entering every block.
    struct Hidden(Vec<Vec<f32>>);
    impl Observer for Hidden {
        fn hidden(&mut self, layer: usize, _pos0: usize, xs: &[f32]) {
            if self.0.len() <= layer {
                self.0.resize(layer + 1, Vec::new());
            }
            self.0[layer].extend_from_slice(xs);
        }
    }

    /// Block by block (the compressor's layer-by-layer calibration) gives the hidden states of a whole
    /// forward pass, bit for bit: over two passes of rows (300 tokens), with GPT-Neo's local attention.
    #[test]
    fn blocks_one_at_a_time_match_the_forward_pass() {
        let shared = std::env::var_os("SLIMLM_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
        for name in ["ref-gpt2", "ref-gptneo"] {
            let model = Model::open(shared.join("models").join(name)).unwrap();
            let n = 300.min(model.config.n_ctx);
            let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % 5000).collect();
            let mut whole = Hidden(Vec::new());
            model
                .session()
                .prefill_observed(&tokens, &mut whole)
                .unwrap();
            let mut runner = BlockRunner::new(&model);
            let mut xs = runner.embed(&tokens).unwrap();
            assert_eq!(xs, whole.0[0], "{name}: embeddings");
            for l in 0..model.blocks.len() - 1 {
                runner.block(l, &mut xs, &mut NoObserver).unwrap();
                assert_eq!(xs, whole.0[l + 1], "{name}: after block {l}");
            }
            // Bad input is an error, not a panic.
            let nb = model.blocks.len();
            assert!(runner.block(nb, &mut xs, &mut NoObserver).is_err());
            assert!(runner.block(0, &mut xs[..5], &mut NoObserver).is_err());
            assert!(runner.embed(&[]).is_err());
        }
    }
}
