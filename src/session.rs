//! A session: the KV cache and scratch buffers of one conversation, and the forward pass.
//!
//! Everything that changes per request lives here; the [`Model`] is shared and immutable. The scratch
//! buffers are allocated when the session is made; the KV cache grows with the context actually used
//! (doubling, up to the model's context length), so a decode step allocates nothing except when it
//! crosses a power of two.

use slimlm_kernels::{ops, par, Team};

use crate::arch::{Activation, NormPlacement, Positions, Residual, ScaleAt};
use crate::error::{Error, Result};
use crate::kv_cache::{self, KvCache, KvDtype};
use crate::linear::{Linear, Matrix};
use crate::model::{Block, Model, Norm, Qkv};

/// Tokens processed together in one prefill pass (bounds the scratch memory).
const PREFILL_CHUNK: usize = 128;
/// Rows of logits computed together when every position's logits are wanted.
const LOGIT_ROWS: usize = 32;

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

struct NoObserver;
impl Observer for NoObserver {}

/// Per-request state over a shared [`Model`].
pub struct Session<'m> {
    model: &'m Model,
    pos: usize,
    kv: KvCache,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    ff: Vec<f32>,
    /// Embedding rows before `project_in`, and final rows after `project_out` (`embed_dim` wide; empty
    /// without projections).
    emb: Vec<f32>,
    fin: Vec<f32>,
    /// LayerNorm parameters converted to f32 when stored as F16/BF16 (`2·d`).
    norm_scratch: Vec<f32>,
    /// Rotary inverse frequencies, and per row of the chunk the cosines then the sines (`dims` per row).
    inv_freq: Vec<f32>,
    rope: Vec<f32>,
    /// ALiBi slope of each head (empty without ALiBi).
    slopes: Vec<f32>,
    /// Attention work of every head: `[head][n × head_dim outputs, then cap scores]`.
    heads_work: Vec<f32>,
    logits: Vec<f32>,
    logits_rows: Vec<f32>,
    /// Most rows one forward pass has processed (the activation buffers are touched up to this).
    rows_used: usize,
    threads: usize,
    /// The threads of a forward pass (made on first use when `threads > 1`).
    team: Option<Team>,
}

impl<'m> Session<'m> {
    /// A fresh session (position 0) with its scratch buffers allocated; the KV cache is allocated as
    /// the context grows.
    pub fn new(model: &'m Model) -> Session<'m> {
        let c = &model.config;
        let chunk = PREFILL_CHUNK.min(c.n_ctx);
        let proj = if c.projects() { chunk * c.embed_dim } else { 0 };
        let inv_freq = c.rotary_inv_freq();
        Session {
            model,
            pos: 0,
            kv: KvCache::new(model.kv_dtype(), c.n_layer(), c.n_head, c.head_dim()),
            x: vec![0.0; chunk * c.d_model],
            h: vec![0.0; chunk * c.d_model],
            qkv: vec![0.0; chunk * 3 * c.d_model],
            att: vec![0.0; chunk * c.d_model],
            tmp: vec![0.0; chunk * c.d_model],
            ff: vec![0.0; chunk * c.d_ff],
            emb: vec![0.0; proj],
            fin: vec![0.0; proj],
            norm_scratch: vec![0.0; 2 * c.d_model],
            rope: vec![0.0; chunk * 2 * inv_freq.len()],
            inv_freq,
            slopes: c.alibi_slopes(),
            heads_work: Vec::new(),
            logits: vec![0.0; c.vocab_size],
            logits_rows: Vec::new(),
            rows_used: 0,
            threads: rayon::current_num_threads(),
            team: None,
        }
    }

    /// Threads a forward pass runs on (the caller's included). Defaults to the size of the current
    /// rayon pool (`--threads` in the CLI); set 1 when running many sessions in parallel yourself.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets the threads of the forward pass (clamped to 1..=[`par::MAX_THREADS`]). The session keeps
    /// `threads - 1` helper threads, which spin briefly between the products of a pass and park when idle
    /// (and work alone for a while when the machine is too busy to give them cores).
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.clamp(1, par::MAX_THREADS);
        if threads != self.threads {
            self.threads = threads;
            self.team = None;
        }
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model {
        self.model
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
            self.heads_work = Vec::new();
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
        let c = &self.model.config;
        let rows = self.rows_used;
        // x, h, att, tmp, ff, the 3 d of qkv, the projections' rows and the rotary angles.
        let proj = if c.projects() { 2 * c.embed_dim } else { 0 };
        let per_row = 7 * c.d_model + c.d_ff + proj + 2 * self.inv_freq.len();
        let heads = if rows == 0 {
            0
        } else {
            c.n_head * (head_work_len(rows, c.head_dim(), self.kv.capacity()))
        };
        4 * (rows * per_row + heads + self.logits.len() + self.logits_rows.capacity())
    }

    /// Bytes of all buffers the session owns (KV cache, activations, logits).
    pub fn state_bytes(&self) -> usize {
        4 * [
            &self.x,
            &self.h,
            &self.qkv,
            &self.att,
            &self.tmp,
            &self.ff,
            &self.emb,
            &self.fin,
            &self.norm_scratch,
            &self.rope,
            &self.inv_freq,
            &self.slopes,
            &self.heads_work,
            &self.logits,
            &self.logits_rows,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum::<usize>()
            + self.kv_cache_bytes()
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
        let c = &self.model.config;
        if tokens.is_empty() {
            return Err(Error::input("no tokens to process (empty prompt?)"));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::input(format!(
                "token id {bad} is out of range (vocabulary of {})",
                c.vocab_size
            )));
        }
        if self.pos + tokens.len() > c.n_ctx {
            return Err(Error::input(format!(
                "context overflow: {} tokens in the cache + {} new > context length {}",
                self.pos,
                tokens.len(),
                c.n_ctx
            )));
        }
        Ok(())
    }

    /// Runs the forward pass with the session's team serving the kernels' parallel loops: one team per
    /// session, so a decode step's ~50 products fork and join by spinning, not by waking sleepers.
    fn run(
        &mut self,
        tokens: &[u32],
        obs: &mut dyn Observer,
        sink: Option<LogitSink>,
    ) -> Result<()> {
        self.check_tokens(tokens)?;
        self.model.check_files()?;
        self.reserve(self.pos + tokens.len())?;
        if self.threads <= 1 {
            return par::serial(|| self.run_chunks(tokens, obs, sink));
        }
        let team = match self.team.take() {
            Some(t) => t,
            None => Team::new(self.threads),
        };
        let r = team.install(|| self.run_chunks(tokens, obs, sink));
        self.team = Some(team);
        r
    }

    /// Grows the KV cache (and the attention scores) to hold `positions` tokens (see [`KvCache`]).
    fn reserve(&mut self, positions: usize) -> Result<()> {
        let c = &self.model.config;
        let Some(cap) = self.kv.grown_capacity(positions, c.n_ctx) else {
            return Ok(());
        };
        let chunk = PREFILL_CHUNK.min(c.n_ctx);
        let work = c.n_head * (head_work_len(chunk, c.head_dim(), cap));
        Vec::<f32>::new().try_reserve_exact(work).map_err(|_| {
            Error::input(format!(
                "cannot allocate attention scores for {cap} positions; use a shorter context"
            ))
        })?;
        self.kv.grow(cap, self.pos)?;
        self.heads_work = vec![0.0; work];
        Ok(())
    }

    fn run_chunks(
        &mut self,
        tokens: &[u32],
        obs: &mut dyn Observer,
        mut sink: Option<LogitSink>,
    ) -> Result<()> {
        let chunk = PREFILL_CHUNK.min(self.model.config.n_ctx);
        let mut done = 0;
        for part in tokens.chunks(chunk) {
            self.forward_chunk(part, obs)?;
            let n = part.len();
            match sink.as_deref_mut() {
                Some(f) => self.all_logits(n, &mut |i, l| f(done + i, l))?,
                None if done + n == tokens.len() => self.last_logits(n)?,
                None => {}
            }
            done += n;
        }
        Ok(())
    }

    /// Runs the blocks over `tokens` at the current position; leaves the final hidden states of each row
    /// where [`Session::final_rows`] finds them.
    fn forward_chunk(&mut self, tokens: &[u32], obs: &mut dyn Observer) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let (n, d, e, p0) = (tokens.len(), c.d_model, c.embed_dim, self.pos);
        self.rows_used = self.rows_used.max(n);
        let rows = if m.project_in.is_some() {
            &mut self.emb[..n * e]
        } else {
            &mut self.x[..n * d]
        };
        for (t, &tok) in tokens.iter().enumerate() {
            embed_row(&m.embed, tok as usize, &mut rows[t * e..(t + 1) * e]);
        }
        if let Some(pi) = &m.project_in {
            apply(pi, &self.emb[..n * e], &mut self.x[..n * d], n);
        }
        if let (Some(table), Positions::Learned { offset }) = (&m.positions, c.positions) {
            for t in 0..n {
                add_row(table, p0 + t + offset, &mut self.x[t * d..(t + 1) * d]);
            }
        }
        if let Some(norm) = &m.embed_norm {
            self.norm_x_in_place(norm, n);
        }
        self.rotary_angles(n);
        obs.hidden(0, p0, &self.x[..n * d]);
        for (l, block) in m.blocks.iter().enumerate() {
            self.block(l, block, n, obs);
            if l + 1 < m.blocks.len() {
                obs.hidden(l + 1, p0, &self.x[..n * d]);
            }
        }
        match &m.final_norm {
            Some(norm) => self.norm_x_into_h(norm, n),
            None => self.h[..n * d].copy_from_slice(&self.x[..n * d]),
        }
        if let Some(po) = &m.project_out {
            apply(po, &self.h[..n * d], &mut self.fin[..n * e], n);
        }
        obs.hidden(m.blocks.len(), p0, self.final_rows(n));
        self.pos += n;
        Ok(())
    }

    /// The final hidden states of the last `n` rows processed (the LM head's input, `embed_dim` wide).
    fn final_rows(&self, n: usize) -> &[f32] {
        let c = &self.model.config;
        if self.model.project_out.is_some() {
            &self.fin[..n * c.embed_dim]
        } else {
            &self.h[..n * c.d_model]
        }
    }

    /// `x = LayerNorm(x)` for the first `n` rows.
    fn norm_x_in_place(&mut self, norm: &Norm, n: usize) {
        self.norm_x_into_h(norm, n);
        let nd = n * self.model.config.d_model;
        self.x[..nd].copy_from_slice(&self.h[..nd]);
    }

    /// Cosines and sines of the rotary angles of the `n` new positions (nothing without rotary).
    /// As transformers: the angle `position · inv_freq` in f32, its cosine and sine accurate.
    fn rotary_angles(&mut self, n: usize) {
        let half = self.inv_freq.len();
        for t in 0..n {
            let p = (self.pos + t) as f32;
            let row = &mut self.rope[t * 2 * half..(t + 1) * 2 * half];
            let (cos, sin) = row.split_at_mut(half);
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let a = (p * f) as f64;
                cos[j] = a.cos() as f32;
                sin[j] = a.sin() as f32;
            }
        }
    }

    fn block(&mut self, l: usize, b: &Block, n: usize, obs: &mut dyn Observer) {
        let c = &self.model.config;
        // The attention's input: LayerNorm(x) before (pre-LN), x itself (post-LN).
        match c.norm {
            NormPlacement::Pre => self.norm_x_into_h(&b.ln1, n),
            NormPlacement::Post => {
                let nd = n * c.d_model;
                self.h[..nd].copy_from_slice(&self.x[..nd]);
            }
        }
        self.attention_half(l, b, n, obs);
        match (c.norm, c.residual) {
            (NormPlacement::Pre, Residual::Sequential) => {
                self.add_tmp_to_x(n);
                self.norm_x_into_h(&b.ln2, n);
                self.mlp_half(l, b, n, obs);
                self.add_tmp_to_x(n);
            }
            (NormPlacement::Pre, Residual::Parallel) => {
                // Both halves read the block's input x: normalise it before adding the attention.
                self.norm_x_into_h(&b.ln2, n);
                self.add_tmp_to_x(n);
                self.mlp_half(l, b, n, obs);
                self.add_tmp_to_x(n);
            }
            (NormPlacement::Post, _) => {
                self.add_tmp_to_x(n);
                self.norm_x_in_place(&b.ln1, n);
                self.mlp_half(l, b, n, obs);
                self.add_tmp_to_x(n);
                self.norm_x_in_place(&b.ln2, n);
            }
        }
    }

    /// `h = LayerNorm(x)` for the first `n` rows.
    fn norm_x_into_h(&mut self, norm: &Norm, n: usize) {
        let (d, eps) = (self.model.config.d_model, self.model.config.layer_norm_eps);
        layer_norm_rows(
            norm,
            eps,
            &self.x[..n * d],
            &mut self.h[..n * d],
            &mut self.norm_scratch,
        );
    }

    /// `x += tmp` (a half-block's output joins the residual stream) for the first `n` rows.
    fn add_tmp_to_x(&mut self, n: usize) {
        let nd = n * self.model.config.d_model;
        add_assign(&mut self.x[..nd], &self.tmp[..nd]);
    }

    /// Attention over `self.h` (the block's normalised input): the result, after the output
    /// projection, in `self.tmp`.
    fn attention_half(&mut self, l: usize, b: &Block, n: usize, obs: &mut dyn Observer) {
        let c = &self.model.config;
        let d = c.d_model;
        let h = &self.h[..n * d];
        obs.linear_input(l, "attn_qkv", h);
        match &b.qkv {
            Qkv::Fused(lin) => {
                apply(lin, h, &mut self.qkv[..n * 3 * d], n);
                obs.linear(l, "attn_qkv", &self.qkv[..n * 3 * d]);
            }
            Qkv::Split(lins) => {
                for (j, (lin, name)) in lins.iter().zip(["attn_q", "attn_k", "attn_v"]).enumerate()
                {
                    apply(lin, h, &mut self.tmp[..n * d], n);
                    obs.linear(l, name, &self.tmp[..n * d]);
                    for t in 0..n {
                        self.qkv[t * 3 * d + j * d..t * 3 * d + (j + 1) * d]
                            .copy_from_slice(&self.tmp[t * d..(t + 1) * d]);
                    }
                }
            }
        }
        self.position_and_scale_qk(b, n);
        self.store_kv(l, n);
        self.attention(l, b, n);
        obs.linear_input(l, "attn_out", &self.att[..n * d]);
        apply(&b.attn_out, &self.att[..n * d], &mut self.tmp[..n * d], n);
        obs.linear(l, "attn_out", &self.tmp[..n * d]);
    }

    /// Rotates the new queries and keys (rotary positions) and scales the queries (`ScaleAt::Query`).
    fn position_and_scale_qk(&mut self, b: &Block, n: usize) {
        let c = &self.model.config;
        let (d, hd) = (c.d_model, c.head_dim());
        let half = self.inv_freq.len();
        let scale_q = (c.scale_at == ScaleAt::Query).then_some(b.spec.attn_scale);
        if half == 0 && scale_q.is_none() {
            return;
        }
        for t in 0..n {
            let row = &mut self.qkv[t * 3 * d..(t + 1) * 3 * d];
            let (cos, sin) = self.rope[t * 2 * half..(t + 1) * 2 * half].split_at(half);
            for h in 0..c.n_head {
                let (q, k, _) = c.qkv.offsets(h, hd, d);
                if half > 0 {
                    ops::rotate_half(&mut row[q..q + hd], cos, sin);
                    ops::rotate_half(&mut row[k..k + hd], cos, sin);
                }
                if let Some(s) = scale_q {
                    row[q..q + hd].iter_mut().for_each(|v| *v *= s);
                }
            }
        }
    }

    /// The MLP over `self.h`: the result in `self.tmp`.
    fn mlp_half(&mut self, l: usize, b: &Block, n: usize, obs: &mut dyn Observer) {
        let c = &self.model.config;
        let (d, ff) = (c.d_model, c.d_ff);
        obs.linear_input(l, "mlp_in", &self.h[..n * d]);
        apply(&b.fc, &self.h[..n * d], &mut self.ff[..n * ff], n);
        obs.linear(l, "mlp_in", &self.ff[..n * ff]);
        let act = &mut self.ff[..n * ff];
        match c.activation {
            Activation::GeluNew => ops::gelu_new(act),
            Activation::GeluErf => ops::gelu_erf(act),
            Activation::Relu => ops::relu(act),
        }
        obs.linear_input(l, "mlp_out", &self.ff[..n * ff]);
        apply(&b.proj, &self.ff[..n * ff], &mut self.tmp[..n * d], n);
        obs.linear(l, "mlp_out", &self.tmp[..n * d]);
    }

    /// Copies the keys and values of the `n` new tokens into the cache of layer `l`.
    fn store_kv(&mut self, l: usize, n: usize) {
        let c = &self.model.config;
        let (d, hd) = (c.d_model, c.head_dim());
        for t in 0..n {
            let row = &self.qkv[t * 3 * d..(t + 1) * 3 * d];
            for h in 0..c.n_head {
                let (_, k, v) = c.qkv.offsets(h, hd, d);
                self.kv
                    .store(l, h, self.pos + t, &row[k..k + hd], &row[v..v + hd]);
            }
        }
    }

    /// Causal (and for local layers, windowed) attention of the `n` new queries; result in `self.att`.
    /// One task per head; each writes its outputs and scores into its own piece of `heads_work`.
    fn attention(&mut self, l: usize, b: &Block, n: usize) {
        let c = &self.model.config;
        let (d, hd, heads) = (c.d_model, c.head_dim(), c.n_head);
        let kv = &self.kv;
        let (qkv, p0, spec, layout) = (&self.qkv, self.pos, &b.spec, c.qkv);
        let scale = match c.scale_at {
            ScaleAt::Scores => spec.attn_scale,
            ScaleAt::Query => 1.0,
        };
        let slopes = &self.slopes;
        let stride = head_work_len(n, hd, kv.capacity());
        par::for_each_chunk_mut(&mut self.heads_work[..heads * stride], stride, |h, work| {
            let (outs, scores) = work.split_at_mut(n * hd);
            let (q_at, _, _) = layout.offsets(h, hd, d);
            let slope = slopes.get(h).copied().unwrap_or(0.0);
            for (t, out) in outs.chunks_exact_mut(hd).enumerate() {
                let p = p0 + t;
                let lo = spec.window.map_or(0, |w| (p + 1).saturating_sub(w));
                let q = &qkv[t * 3 * d + q_at..t * 3 * d + q_at + hd];
                let (keys, vals) = kv.head(l, h, lo, p + 1);
                kv_cache::attend(q, keys, vals, scale, slope, scores, out);
            }
        });
        for h in 0..heads {
            let outs = &self.heads_work[h * stride..h * stride + n * hd];
            for (t, o) in outs.chunks_exact(hd).enumerate() {
                self.att[t * d + h * hd..t * d + (h + 1) * hd].copy_from_slice(o);
            }
        }
    }

    /// Logits of the last of the `n` final rows into `self.logits`.
    fn last_logits(&mut self, n: usize) -> Result<()> {
        let e = self.model.config.embed_dim;
        let rows = if self.model.project_out.is_some() {
            &self.fin
        } else {
            &self.h
        };
        self.model
            .lm_head
            .forward(&rows[(n - 1) * e..n * e], &mut self.logits);
        self.check_finite(&self.logits, self.pos - 1)
    }

    /// An error if `logits` (those after the token at `position`) hold NaN or infinity, naming the
    /// first weight tensor with non-finite values if there is one: garbage is never handed on.
    fn check_finite(&self, logits: &[f32], position: usize) -> Result<()> {
        if all_finite(logits) {
            return Ok(());
        }
        let cause = match self.model.find_non_finite() {
            Some(t) => format!("tensor `{t}` holds NaN or infinite values"),
            None => "the activations overflowed (the weights are finite)".into(),
        };
        Err(Error::NonFinite(format!(
            "the logits after position {position} hold NaN or infinity: {cause}"
        )))
    }

    /// Logits of every one of the `n` final rows, `LOGIT_ROWS` at a time.
    fn all_logits(&mut self, n: usize, sink: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let model = self.model;
        let (e, v) = (model.config.embed_dim, model.config.vocab_size);
        if self.logits_rows.len() < LOGIT_ROWS * v {
            self.logits_rows.resize(LOGIT_ROWS * v, 0.0);
        }
        let mut logits_rows = std::mem::take(&mut self.logits_rows);
        for t0 in (0..n).step_by(LOGIT_ROWS) {
            let rows = LOGIT_ROWS.min(n - t0);
            let out = &mut logits_rows[..rows * v];
            let xs = &self.final_rows(n)[t0 * e..(t0 + rows) * e];
            apply(&model.lm_head, xs, out, rows);
            let first = self.pos - n + t0;
            let checked = out
                .chunks_exact(v)
                .enumerate()
                .try_for_each(|(r, row)| self.check_finite(row, first + r));
            if let Err(e) = checked {
                self.logits_rows = logits_rows;
                return Err(e);
            }
            for (r, row) in out.chunks_exact(v).enumerate() {
                sink(t0 + r, row);
            }
            if t0 + rows == n {
                self.logits.copy_from_slice(&out[(rows - 1) * v..]);
            }
        }
        self.logits_rows = logits_rows;
        Ok(())
    }
}

/// Whether every value is finite, as a branch-free reduction the compiler vectorizes (`x · 0` is 0 for
/// finite `x` and NaN otherwise): a few µs for a 50k vocabulary, once per decode step.
fn all_finite(xs: &[f32]) -> bool {
    let mut acc = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    acc.iter().chain(rest).all(|x| x.is_finite())
}

/// Floats of one head's attention work for `n` queries: the outputs, then scores for `cap` keys.
fn head_work_len(n: usize, head_dim: usize, cap: usize) -> usize {
    n * head_dim + cap
}

/// `ys = lin(xs)` for `n` tokens: the one-token kernel for decode, the batched one for prefill.
fn apply(lin: &Linear, xs: &[f32], ys: &mut [f32], n: usize) {
    if n == 1 {
        lin.forward(xs, ys)
    } else {
        lin.forward_batch(xs, ys)
    }
}

/// LayerNorm of every row of `xs` into `out`; F16/BF16 parameters are converted into `scratch` (`2·d`)
/// once per call.
fn layer_norm_rows(norm: &Norm, eps: f32, xs: &[f32], out: &mut [f32], scratch: &mut [f32]) {
    let d = norm.gamma.len();
    let (g, b) = match (norm.gamma.as_f32(), norm.beta.as_f32()) {
        (Some(g), Some(b)) => (g, b),
        _ => {
            let (g, b) = scratch[..2 * d].split_at_mut(d);
            norm.gamma.to_f32_into(g);
            norm.beta.to_f32_into(b);
            (&*g, &*b)
        }
    };
    for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        ops::layer_norm(x, g, b, eps, o);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Row `r` of an embedding table, as f32, into `out`.
fn embed_row(table: &Matrix, r: usize, out: &mut [f32]) {
    out.fill(0.0);
    add_row(table, r, out);
}

/// Adds row `r` of an embedding table to `out`.
fn add_row(table: &Matrix, r: usize, out: &mut [f32]) {
    use slimlm_kernels::MatRef;
    let d = out.len();
    match table.mat_ref(Default::default()) {
        MatRef::Dense(m) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o += m.data.get(r * d + i);
            }
        }
        MatRef::Int8(q) => {
            let groups = q.groups_per_row();
            let vals = &q.values[r * d..(r + 1) * d];
            for (i, o) in out.iter_mut().enumerate() {
                *o += vals[i] as f32 * q.scales[r * groups + i / q.group];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_finds_any_nan_or_infinity() {
        let mut v = vec![1.0f32; 53];
        assert!(all_finite(&v));
        for i in [0, 15, 16, 47, 48, 52] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                v[i] = bad;
                assert!(!all_finite(&v), "{bad} at {i}");
                v[i] = 1.0;
            }
        }
    }
}
