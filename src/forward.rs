//! The forward pass over rows of tokens, each row a token of some sequence at some position.
//!
//! A prefill is rows of one sequence at consecutive positions; a batched decode step is one row per
//! sequence, each with its own KV cache and position. Everything but attention is per row, so every
//! linear layer multiplies all rows at once (one pass over its weights); attention reads each row's own
//! cache. [`crate::Session`] and [`crate::Batch`] are thin owners of a [`Work`] and their caches.

use slimlm_kernels::{ops, par, Team};

use crate::arch::{Activation, NormPlacement, Positions, Residual, ScaleAt};
use crate::error::{Error, Result};
use crate::kv_cache::{self, KvCache};
use crate::linear::{Linear, Matrix};
use crate::model::{Block, Model, Norm, Qkv};
use crate::session::Observer;

/// Rows processed together in one pass (bounds the scratch memory): a prefill chunk, or the sequences
/// of a batch step.
pub(crate) const CHUNK: usize = 128;
/// Rows of logits computed together when several rows' logits are wanted.
const LOGIT_ROWS: usize = 32;

/// Where one row's token goes: the sequence (index of its KV cache) and the position in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row {
    pub seq: usize,
    pub pos: usize,
}

/// The scratch buffers of a forward pass, its threads, and the logits of the rows last asked for.
pub(crate) struct Work {
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
    /// Attention work of every head: `[head][chunk × head_dim outputs, then cap scores]`.
    heads_work: Vec<f32>,
    /// Positions `heads_work` has room for (the largest capacity of the caches it served).
    heads_cap: usize,
    /// Per row of a block attention pass, the cache rows its query sees.
    ranges: Vec<(usize, usize)>,
    /// Logits of the rows last asked for (`rows × vocab`, up to [`LOGIT_ROWS`] rows at a time).
    pub logits_rows: Vec<f32>,
    /// Final rows gathered for the LM head when only some rows' logits are wanted.
    gathered: Vec<f32>,
    /// The rows of the pass in progress.
    rows: Vec<Row>,
    /// Most rows one pass has processed (the activation buffers are touched up to this).
    pub rows_used: usize,
    threads: usize,
    /// The threads of a forward pass (made on first use when `threads > 1`).
    team: Option<Team>,
}

impl Work {
    /// Scratch buffers for [`CHUNK`] rows (at most the context length) of `model`.
    pub fn new(model: &Model) -> Work {
        let c = &model.config;
        let chunk = chunk_rows(model);
        let proj = if c.projects() { chunk * c.embed_dim } else { 0 };
        let inv_freq = c.rotary_inv_freq();
        Work {
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
            heads_cap: 0,
            ranges: Vec::with_capacity(chunk),
            logits_rows: Vec::new(),
            gathered: Vec::new(),
            rows: Vec::with_capacity(chunk),
            rows_used: 0,
            threads: rayon::current_num_threads(),
            team: None,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets the threads of the forward pass (clamped to 1..=[`par::MAX_THREADS`]).
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.clamp(1, par::MAX_THREADS);
        if threads != self.threads {
            self.threads = threads;
            self.team = None;
        }
    }

    /// Runs `f` with the work's team serving the kernels' parallel loops: one team per owner, so a
    /// decode step's ~50 products fork and join by spinning, not by waking sleepers.
    pub fn run<R>(&mut self, f: impl FnOnce(&mut Work) -> R) -> R {
        if self.threads <= 1 {
            return par::serial(|| f(self));
        }
        let team = match self.team.take() {
            Some(t) => t,
            None => Team::new(self.threads),
        };
        let r = team.install(|| f(self));
        self.team = Some(team);
        r
    }

    /// Grows `kv` (keeping its first `kept` positions) and the attention scores to hold `positions`
    /// tokens (see [`KvCache`]).
    pub fn reserve(
        &mut self,
        model: &Model,
        kv: &mut KvCache,
        positions: usize,
        kept: usize,
    ) -> Result<()> {
        let c = &model.config;
        if let Some(cap) = kv.grown_capacity(positions, c.n_ctx) {
            self.reserve_scores(model, cap)?;
            kv.grow(cap, kept)?;
        }
        self.reserve_scores(model, kv.capacity())
    }

    /// Room in `heads_work` for the scores of `cap` positions.
    fn reserve_scores(&mut self, model: &Model, cap: usize) -> Result<()> {
        if cap <= self.heads_cap {
            return Ok(());
        }
        let c = &model.config;
        let work = c.n_head * head_work_len(chunk_rows(model), c.head_dim(), cap);
        let mut v = Vec::<f32>::new();
        v.try_reserve_exact(work).map_err(|_| {
            Error::input(format!(
                "cannot allocate attention scores for {cap} positions; use a shorter context"
            ))
        })?;
        v.resize(work, 0.0);
        self.heads_work = v;
        self.heads_cap = cap;
        Ok(())
    }

    /// Bytes of the activation buffers written so far, an upper bound of their resident memory (they are
    /// allocated for a full chunk, but pages never written are never resident).
    pub fn activation_bytes_used(&self, model: &Model) -> usize {
        let c = &model.config;
        let rows = self.rows_used;
        // x, h, att, tmp, ff, the 3 d of qkv, the projections' rows and the rotary angles.
        let proj = if c.projects() { 2 * c.embed_dim } else { 0 };
        let per_row = 7 * c.d_model + c.d_ff + proj + 2 * self.inv_freq.len();
        let heads = if rows == 0 {
            0
        } else {
            c.n_head * head_work_len(rows, c.head_dim(), self.heads_cap)
        };
        4 * (rows * per_row + heads + self.logits_rows.capacity())
    }

    /// Bytes of all buffers the work owns.
    pub fn bytes(&self) -> usize {
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
            &self.logits_rows,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum::<usize>()
    }

    /// Runs the blocks over `tokens`, row `t` going to `rows[t]` (at most [`CHUNK`] rows, their caches
    /// reserved); leaves the final hidden states of each row where [`Work::final_rows`] finds them.
    pub fn forward(
        &mut self,
        model: &Model,
        caches: &mut [KvCache],
        tokens: &[u32],
        rows: &[Row],
        obs: &mut dyn Observer,
    ) {
        let c = &model.config;
        let (n, d, e) = (tokens.len(), c.d_model, c.embed_dim);
        self.begin(model, rows);
        self.embed(model, tokens);
        let p0 = rows[0].pos;
        obs.hidden(0, p0, &self.x[..n * d]);
        for (l, block) in model.blocks.iter().enumerate() {
            self.block(model, caches, l, l, block, obs);
            if l + 1 < model.blocks.len() {
                obs.hidden(l + 1, p0, &self.x[..n * d]);
            }
        }
        match &model.final_norm {
            Some(norm) => self.norm_x_into_h(model, norm, n),
            None => self.h[..n * d].copy_from_slice(&self.x[..n * d]),
        }
        if let Some(po) = &model.project_out {
            apply(po, &self.h[..n * d], &mut self.fin[..n * e], n);
        }
        obs.hidden(model.blocks.len(), p0, self.final_rows(model, n));
    }

    /// The hidden states entering block 0 for `tokens` at `rows` (at most [`CHUNK`]), into `out`
    /// (`tokens × d_model`): the first step of [`Work::forward`], for running the blocks one at a time.
    #[cfg(feature = "compress")]
    pub fn embed_rows(&mut self, model: &Model, tokens: &[u32], rows: &[Row], out: &mut [f32]) {
        let nd = tokens.len() * model.config.d_model;
        self.begin(model, rows);
        self.embed(model, tokens);
        out[..nd].copy_from_slice(&self.x[..nd]);
    }

    /// Runs block `l` alone over the hidden states `xs` entering it (`rows.len() × d_model`, at most
    /// [`CHUNK`] rows of sequence 0), in place: on return `xs` holds what enters block `l + 1`. Keys and
    /// values go to layer 0 of `cache` (a one-layer cache is enough; reserved for the rows' positions);
    /// `obs` sees block `l`'s linear layers as in [`Work::forward`], with the same arithmetic and bits.
    #[cfg(feature = "compress")]
    pub fn block_rows(
        &mut self,
        model: &Model,
        cache: &mut KvCache,
        l: usize,
        rows: &[Row],
        xs: &mut [f32],
        obs: &mut dyn Observer,
    ) {
        let nd = rows.len() * model.config.d_model;
        debug_assert!(xs.len() == nd && rows.iter().all(|r| r.seq == 0));
        self.begin(model, rows);
        self.x[..nd].copy_from_slice(xs);
        let caches = std::slice::from_mut(cache);
        self.block(model, caches, l, 0, &model.blocks[l], obs);
        xs.copy_from_slice(&self.x[..nd]);
    }

    /// Starts a pass over `rows` (at most [`CHUNK`]): remembers them and computes their rotary angles.
    fn begin(&mut self, model: &Model, rows: &[Row]) {
        debug_assert!(!rows.is_empty() && rows.len() <= chunk_rows(model));
        self.rows.clear();
        self.rows.extend_from_slice(rows);
        self.rows_used = self.rows_used.max(rows.len());
        self.rotary_angles();
    }

    /// The embeddings of `tokens` (one per row of the pass begun), with positions, projection and
    /// embedding norm as the model has them, into `x`.
    fn embed(&mut self, model: &Model, tokens: &[u32]) {
        let c = &model.config;
        let (n, d, e) = (tokens.len(), c.d_model, c.embed_dim);
        debug_assert!(n == self.rows.len());
        let xs = if model.project_in.is_some() {
            &mut self.emb[..n * e]
        } else {
            &mut self.x[..n * d]
        };
        for (t, &tok) in tokens.iter().enumerate() {
            embed_row(&model.embed, tok as usize, &mut xs[t * e..(t + 1) * e]);
        }
        if let Some(pi) = &model.project_in {
            apply(pi, &self.emb[..n * e], &mut self.x[..n * d], n);
        }
        if let (Some(table), Positions::Learned { offset }) = (&model.positions, c.positions) {
            for (t, r) in self.rows.iter().enumerate() {
                add_row(table, r.pos + offset, &mut self.x[t * d..(t + 1) * d]);
            }
        }
        if let Some(norm) = &model.embed_norm {
            self.norm_x_in_place(model, norm, n);
        }
    }

    /// The final hidden states of the first `n` rows of the last pass (the LM head's input).
    pub fn final_rows(&self, model: &Model, n: usize) -> &[f32] {
        let c = &model.config;
        if model.project_out.is_some() {
            &self.fin[..n * c.embed_dim]
        } else {
            &self.h[..n * c.d_model]
        }
    }

    /// Logits of row `r` of the last pass into `out`, checked finite.
    pub fn logits_of_row(&self, model: &Model, r: usize, out: &mut [f32]) -> Result<()> {
        let e = model.config.embed_dim;
        let x = &self.final_rows(model, r + 1)[r * e..(r + 1) * e];
        model.lm_head.forward(x, out);
        check_finite(model, out, self.rows[r].pos)
    }

    /// Logits of the first `n` rows of the last pass, [`LOGIT_ROWS`] rows at a time, each checked finite
    /// and handed to `sink(row, logits)` in order.
    pub fn logits_of_rows(
        &mut self,
        model: &Model,
        n: usize,
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let all: Vec<usize> = (0..n).collect();
        self.logits_of(model, &all, sink)
    }

    /// Logits of the rows `picks` (increasing) of the last pass, [`LOGIT_ROWS`] at a time, each checked
    /// finite and handed to `sink(k, logits)` for the `k`-th pick, in order.
    pub fn logits_of(
        &mut self,
        model: &Model,
        picks: &[usize],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        if picks.is_empty() {
            return Ok(());
        }
        let (e, v) = (model.config.embed_dim, model.config.vocab_size);
        let rows = LOGIT_ROWS.min(picks.len());
        if self.logits_rows.len() < rows * v {
            self.logits_rows.resize(rows * v, 0.0);
        }
        let n = picks[picks.len() - 1] + 1;
        // Consecutive picks from row 0 are read in place; others are gathered first.
        let in_place = picks.iter().enumerate().all(|(k, &p)| k == p);
        let mut gathered = std::mem::take(&mut self.gathered);
        if !in_place {
            let fin = self.final_rows(model, n);
            gathered.clear();
            for &p in picks {
                gathered.extend_from_slice(&fin[p * e..(p + 1) * e]);
            }
        }
        let mut out_rows = std::mem::take(&mut self.logits_rows);
        let r = (0..picks.len()).step_by(LOGIT_ROWS).try_for_each(|k0| {
            let k = LOGIT_ROWS.min(picks.len() - k0);
            let out = &mut out_rows[..k * v];
            let xs = if in_place {
                &self.final_rows(model, n)[k0 * e..(k0 + k) * e]
            } else {
                &gathered[k0 * e..(k0 + k) * e]
            };
            apply(&model.lm_head, xs, out, k);
            for (j, row) in out.chunks_exact(v).enumerate() {
                check_finite(model, row, self.rows[picks[k0 + j]].pos)?;
            }
            for (j, row) in out.chunks_exact(v).enumerate() {
                sink(k0 + j, row);
            }
            Ok(())
        });
        self.logits_rows = out_rows;
        self.gathered = gathered;
        r
    }

    /// `x = LayerNorm(x)` for the first `n` rows.
    fn norm_x_in_place(&mut self, model: &Model, norm: &Norm, n: usize) {
        self.norm_x_into_h(model, norm, n);
        let nd = n * model.config.d_model;
        self.x[..nd].copy_from_slice(&self.h[..nd]);
    }

    /// Cosines and sines of the rotary angles of the rows' positions (nothing without rotary).
    /// As transformers: the angle `position · inv_freq` in f32, its cosine and sine accurate.
    fn rotary_angles(&mut self) {
        let half = self.inv_freq.len();
        if half == 0 {
            return;
        }
        for (t, r) in self.rows.iter().enumerate() {
            let p = r.pos as f32;
            let row = &mut self.rope[t * 2 * half..(t + 1) * 2 * half];
            let (cos, sin) = row.split_at_mut(half);
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let a = (p * f) as f64;
                cos[j] = a.cos() as f32;
                sin[j] = a.sin() as f32;
            }
        }
    }

    /// Block `l` (`b`) over the rows of `x`, its keys and values in layer `kv_layer` of the caches.
    fn block(
        &mut self,
        model: &Model,
        caches: &mut [KvCache],
        l: usize,
        kv_layer: usize,
        b: &Block,
        obs: &mut dyn Observer,
    ) {
        let c = &model.config;
        let n = self.rows.len();
        // The attention's input: LayerNorm(x) before (pre-LN), x itself (post-LN).
        match c.norm {
            NormPlacement::Pre => self.norm_x_into_h(model, &b.ln1, n),
            NormPlacement::Post => {
                let nd = n * c.d_model;
                self.h[..nd].copy_from_slice(&self.x[..nd]);
            }
        }
        self.attention_half(model, caches, l, kv_layer, b, obs);
        match (c.norm, c.residual) {
            (NormPlacement::Pre, Residual::Sequential) => {
                self.add_tmp_to_x(model, n);
                self.norm_x_into_h(model, &b.ln2, n);
                self.mlp_half(model, l, b, obs);
                self.add_tmp_to_x(model, n);
            }
            (NormPlacement::Pre, Residual::Parallel) => {
                // Both halves read the block's input x: normalise it before adding the attention.
                self.norm_x_into_h(model, &b.ln2, n);
                self.add_tmp_to_x(model, n);
                self.mlp_half(model, l, b, obs);
                self.add_tmp_to_x(model, n);
            }
            (NormPlacement::Post, _) => {
                self.add_tmp_to_x(model, n);
                self.norm_x_in_place(model, &b.ln1, n);
                self.mlp_half(model, l, b, obs);
                self.add_tmp_to_x(model, n);
                self.norm_x_in_place(model, &b.ln2, n);
            }
        }
    }

    /// `h = LayerNorm(x)` for the first `n` rows.
    fn norm_x_into_h(&mut self, model: &Model, norm: &Norm, n: usize) {
        let (d, eps) = (model.config.d_model, model.config.layer_norm_eps);
        layer_norm_rows(
            norm,
            eps,
            &self.x[..n * d],
            &mut self.h[..n * d],
            &mut self.norm_scratch,
        );
    }

    /// `x += tmp` (a half-block's output joins the residual stream) for the first `n` rows.
    fn add_tmp_to_x(&mut self, model: &Model, n: usize) {
        let nd = n * model.config.d_model;
        add_assign(&mut self.x[..nd], &self.tmp[..nd]);
    }

    /// Attention over `self.h` (the block's normalised input): the result, after the output
    /// projection, in `self.tmp`.
    fn attention_half(
        &mut self,
        model: &Model,
        caches: &mut [KvCache],
        l: usize,
        kv_layer: usize,
        b: &Block,
        obs: &mut dyn Observer,
    ) {
        let c = &model.config;
        let (n, d) = (self.rows.len(), c.d_model);
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
        self.position_and_scale_qk(model, b);
        self.store_kv(model, caches, kv_layer);
        self.attention(model, caches, kv_layer, b);
        obs.linear_input(l, "attn_out", &self.att[..n * d]);
        apply(&b.attn_out, &self.att[..n * d], &mut self.tmp[..n * d], n);
        obs.linear(l, "attn_out", &self.tmp[..n * d]);
    }

    /// Rotates the new queries and keys (rotary positions) and scales the queries (`ScaleAt::Query`).
    fn position_and_scale_qk(&mut self, model: &Model, b: &Block) {
        let c = &model.config;
        let (d, hd) = (c.d_model, c.head_dim());
        let half = self.inv_freq.len();
        let scale_q = (c.scale_at == ScaleAt::Query).then_some(b.spec.attn_scale);
        if half == 0 && scale_q.is_none() {
            return;
        }
        for t in 0..self.rows.len() {
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
    fn mlp_half(&mut self, model: &Model, l: usize, b: &Block, obs: &mut dyn Observer) {
        let c = &model.config;
        let (n, d, ff) = (self.rows.len(), c.d_model, c.d_ff);
        obs.linear_input(l, "mlp_in", &self.h[..n * d]);
        apply(&b.fc, &self.h[..n * d], &mut self.ff[..n * ff], n);
        obs.linear(l, "mlp_in", &self.ff[..n * ff]);
        let f = match c.activation {
            Activation::GeluNew => ops::gelu_new,
            Activation::GeluErf => ops::gelu_erf,
            Activation::Relu => ops::relu,
        };
        // Element-wise, one value at a time: any split gives the same bits.
        let act = &mut self.ff[..n * ff];
        let piece = act.len().div_ceil(2 * par::threads()).div_ceil(64) * 64;
        if act.len() < PAR_MIN_VALUES {
            f(act)
        } else {
            par::for_each_chunk_mut(act, piece, |_, a| f(a))
        }
        obs.linear_input(l, "mlp_out", &self.ff[..n * ff]);
        apply(&b.proj, &self.ff[..n * ff], &mut self.tmp[..n * d], n);
        obs.linear(l, "mlp_out", &self.tmp[..n * d]);
    }

    /// Copies the keys and values of every row into its sequence's cache of layer `l`.
    fn store_kv(&mut self, model: &Model, caches: &mut [KvCache], l: usize) {
        let c = &model.config;
        let (d, hd) = (c.d_model, c.head_dim());
        for (t, r) in self.rows.iter().enumerate() {
            let row = &self.qkv[t * 3 * d..(t + 1) * 3 * d];
            for h in 0..c.n_head {
                let (_, k, v) = c.qkv.offsets(h, hd, d);
                caches[r.seq].store(l, h, r.pos, &row[k..k + hd], &row[v..v + hd]);
            }
        }
    }

    /// Causal (and for local layers, windowed) attention of every row's query over its own sequence's
    /// cache; result in `self.att`. One task per head, writing into its own piece of `heads_work`: the
    /// rows of one sequence (a prefill chunk) as one block of queries over the stretch of cache they
    /// span, rows of several sequences (a batched decode step) one query at a time.
    fn attention(&mut self, model: &Model, caches: &[KvCache], l: usize, b: &Block) {
        let c = &model.config;
        let (n, d, hd, heads) = (self.rows.len(), c.d_model, c.head_dim(), c.n_head);
        let (qkv, rows, spec, layout) = (&self.qkv, &self.rows, &b.spec, c.qkv);
        let scale = match c.scale_at {
            ScaleAt::Scores => spec.attn_scale,
            ScaleAt::Query => 1.0,
        };
        let slopes = &self.slopes;
        let stride = head_work_len(n, hd, self.heads_cap);
        // The cache rows a query at position `p` sees.
        let keys_of = |p: usize| (spec.window.map_or(0, |w| (p + 1).saturating_sub(w)), p + 1);
        let work = &mut self.heads_work[..heads * stride];
        if n >= BLOCK_MIN_QUERIES && rows.iter().all(|r| r.seq == rows[0].seq) {
            let ranges = &mut self.ranges;
            ranges.clear();
            ranges.extend(rows.iter().map(|r| keys_of(r.pos)));
            let base = ranges.iter().map(|r| r.0).min().unwrap_or(0);
            let top = ranges.iter().map(|r| r.1).max().unwrap_or(0);
            ranges
                .iter_mut()
                .for_each(|r| *r = (r.0 - base, r.1 - base));
            let (ranges, cache) = (&*ranges, &caches[rows[0].seq]);
            par::for_each_chunk_mut(work, stride, |h, work| {
                let (q_at, _, _) = layout.offsets(h, hd, d);
                let slope = slopes.get(h).copied().unwrap_or(0.0);
                let (keys, vals) = cache.head(l, h, base, top);
                let (q, out) = (&qkv[q_at..], &mut work[..n * hd]);
                kv_cache::attend_rows(q, 3 * d, hd, keys, vals, ranges, scale, slope, out);
            });
        } else {
            par::for_each_chunk_mut(work, stride, |h, work| {
                let (outs, scores) = work.split_at_mut(n * hd);
                let (q_at, _, _) = layout.offsets(h, hd, d);
                let slope = slopes.get(h).copied().unwrap_or(0.0);
                for (t, out) in outs.chunks_exact_mut(hd).enumerate() {
                    let (lo, hi) = keys_of(rows[t].pos);
                    let q = &qkv[t * 3 * d + q_at..t * 3 * d + q_at + hd];
                    let (keys, vals) = caches[rows[t].seq].head(l, h, lo, hi);
                    kv_cache::attend(q, keys, vals, scale, slope, scores, out);
                }
            });
        }
        for h in 0..heads {
            let outs = &self.heads_work[h * stride..h * stride + n * hd];
            for (t, o) in outs.chunks_exact(hd).enumerate() {
                self.att[t * d + h * hd..t * d + (h + 1) * hd].copy_from_slice(o);
            }
        }
    }
}

/// Rows of one sequence from which a pass's attention runs as one block of queries per head.
const BLOCK_MIN_QUERIES: usize = 2;

/// Rows of one pass: [`CHUNK`], at most the context length.
pub(crate) fn chunk_rows(model: &Model) -> usize {
    CHUNK.min(model.config.n_ctx)
}

/// An error if `logits` (those after the token at `position`) hold NaN or infinity, naming the first
/// weight tensor with non-finite values if there is one: garbage is never handed on.
pub(crate) fn check_finite(model: &Model, logits: &[f32], position: usize) -> Result<()> {
    if all_finite(logits) {
        return Ok(());
    }
    let cause = match model.find_non_finite() {
        Some(t) => format!("tensor `{t}` holds NaN or infinite values"),
        None => "the activations overflowed (the weights are finite)".into(),
    };
    Err(Error::NonFinite(format!(
        "the logits after position {position} hold NaN or infinity: {cause}"
    )))
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

/// `ys = lin(xs)` for `n` rows: the one-row kernel for a single decode, the batched one otherwise.
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
    if xs.len() < PAR_MIN_VALUES {
        for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            ops::layer_norm(x, g, b, eps, o);
        }
        return;
    }
    // Whole rows per task: each row's bits are the same on any thread.
    let rows = out.len() / d;
    let per = rows.div_ceil(2 * par::threads());
    par::for_each_chunk_mut(out, per * d, |i, o| {
        let x = &xs[i * per * d..i * per * d + o.len()];
        for (x, o) in x.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
            ops::layer_norm(x, g, b, eps, o);
        }
    });
}

/// Element-wise work below this many values stays on the calling thread.
const PAR_MIN_VALUES: usize = 16 * 1024;

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
        MatRef::Quant(q) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o += slimlm_kernels::quant::weight(&q, r, i);
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
