//! The immutable model: config, tokenizer and every weight as a view of the memory mapping.
//!
//! Every family is resolved here, once, from its architecture spec ([`crate::arch`]) into one block
//! structure; the forward pass in [`crate::session`] never looks at names, layouts or storage again.

use std::path::{Path, PathBuf};

use slimlm_kernels::{Int8Act, Layout};

use crate::arch::{Config, LayerSpec};
use crate::error::{Error, Result};
use crate::kv_cache::KvDtype;
use crate::layers::{block_prefix, linear_sites, resolve_root, LinearSite};
use crate::linear::{Linear, LinearKind, Matrix, Vector};
use crate::session::Session;
use crate::tensor_file::{DType, TensorStore};
use crate::tokenizer::Tokenizer;

/// LayerNorm parameters.
#[derive(Clone, Debug)]
pub struct Norm {
    pub gamma: Vector,
    pub beta: Vector,
}

impl Norm {
    fn bytes(&self) -> usize {
        self.gamma.stored_bytes() + self.beta.stored_bytes()
    }

    fn copied_bytes(&self) -> usize {
        self.gamma.copied_bytes() + self.beta.copied_bytes()
    }
}

/// Query, key and value projections: one fused matrix (its outputs laid out as the spec's
/// [`crate::arch::QkvLayout`] says) or three.
// One per block, never moved on the hot path: the size difference of the variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Qkv {
    Fused(Linear),
    Split([Linear; 3]),
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct Block {
    pub(crate) spec: LayerSpec,
    pub(crate) ln1: Norm,
    pub(crate) qkv: Qkv,
    pub(crate) attn_out: Linear,
    pub(crate) ln2: Norm,
    pub(crate) fc: Linear,
    pub(crate) proj: Linear,
}

impl Block {
    /// Every linear layer of the block with its component name (`attn_qkv`, `attn_q`, ..., `mlp_out`).
    pub fn linears(&self) -> Vec<(&'static str, &Linear)> {
        let mut v = match &self.qkv {
            Qkv::Fused(l) => vec![("attn_qkv", l)],
            Qkv::Split([q, k, v]) => vec![("attn_q", q), ("attn_k", k), ("attn_v", v)],
        };
        v.extend([
            ("attn_out", &self.attn_out),
            ("mlp_in", &self.fc),
            ("mlp_out", &self.proj),
        ]);
        v
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = match &mut self.qkv {
            Qkv::Fused(l) => vec![l],
            Qkv::Split(ls) => ls.iter_mut().collect(),
        };
        v.extend([&mut self.attn_out, &mut self.fc, &mut self.proj]);
        v
    }
}

/// A model of any supported family whose weights stay in the memory-mapped file(s). `Send + Sync`: one
/// model serves any number of [`Session`]s on any threads.
#[derive(Debug)]
pub struct Model {
    pub(crate) config: Config,
    dir: PathBuf,
    store: TensorStore,
    /// Prefix of the tensor names in the file (`transformer.`, `model.decoder.`, ...).
    root: &'static str,
    tokenizer: Tokenizer,
    /// Token embedding `[vocab, embed_dim]` (dense or INT8 rows).
    pub(crate) embed: Matrix,
    /// Learned position table `[n_ctx + offset, d]`, when the spec has one.
    pub(crate) positions: Option<Matrix>,
    /// LayerNorm after the embedding (BLOOM).
    pub(crate) embed_norm: Option<Norm>,
    /// Embedding width → hidden width, and back before the head (OPT-350m).
    pub(crate) project_in: Option<Linear>,
    pub(crate) project_out: Option<Linear>,
    pub(crate) blocks: Vec<Block>,
    /// LayerNorm after the last block.
    pub(crate) final_norm: Option<Norm>,
    /// The LM head (the token embedding itself when tied).
    pub(crate) lm_head: Linear,
    /// KV cache element type of new sessions.
    kv_dtype: KvDtype,
}

impl Model {
    /// Opens a Hugging Face model directory (`config.json`, `model.safetensors` or shards, tokenizer).
    /// Maps the weights (every page mapped up front, see [`TensorStore::prefault`]); copies none of them.
    pub fn open(dir: impl AsRef<Path>) -> Result<Model> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = Config::from_dir(dir)?;
        let store = TensorStore::open_dir(dir)?;
        let model = Model::from_store(dir, config, store)?;
        // After validation: a file that fails its checks is not read in full.
        model.store().prefault();
        Ok(model)
    }

    /// A model over tensors already opened (mapped, or held in memory by [`TensorStore::from_file`]);
    /// `dir` supplies the tokenizer and names the model.
    pub fn from_store(dir: &Path, config: Config, store: TensorStore) -> Result<Model> {
        let tokenizer = Tokenizer::from_dir(dir)?;
        let config_err = |msg: String| Error::Config {
            path: dir.join("config.json"),
            msg,
        };
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(config_err(format!(
                "vocab_size {} is smaller than the tokenizer's {} tokens",
                config.vocab_size,
                tokenizer.vocab_size()
            )));
        }
        let root = resolve_root(&config, &store)?;
        check_layer_count(&config, &store, root).map_err(config_err)?;
        let w = Loader {
            store: &store,
            config: &config,
            root,
        };
        let names = &config.family().names;
        let (d, e, v) = (config.d_model, config.embed_dim, config.vocab_size);
        let embed = w.matrix(&w.weight(names.embed), Layout::OutIn, v, e)?;
        let positions = match (config.position_rows(), names.positions) {
            (Some(rows), Some(name)) => {
                let m = w.matrix(&w.weight(name), Layout::OutIn, rows, d)?;
                if !matches!(m, Matrix::Dense { .. }) {
                    return Err(config_err(format!(
                        "{} position embeddings are not supported",
                        m.storage_name()
                    )));
                }
                Some(m)
            }
            (Some(_), None) => {
                return Err(config_err(format!(
                    "{} has no learned position table",
                    config.arch
                )))
            }
            _ => None,
        };
        let optional_norm = |on: bool, name: Option<&str>| -> Result<Option<Norm>> {
            match (on, name) {
                (true, Some(n)) => w.norm(&w.name(n)).map(Some),
                _ => Ok(None),
            }
        };
        let embed_norm = optional_norm(config.embed_norm, names.embed_norm)?;
        let final_norm = optional_norm(config.final_norm, names.final_norm)?;
        let (project_in, project_out) =
            match (config.projects(), names.project_in, names.project_out) {
                (false, ..) => (None, None),
                (true, Some(pi), Some(po)) => (
                    Some(w.linear(&w.name(pi), Layout::OutIn, d, e, false)?),
                    Some(w.linear(&w.name(po), Layout::OutIn, e, d, false)?),
                ),
                _ => {
                    return Err(config_err(format!(
                "embedding width {e} differs from the hidden width {d}, but {} has no projections",
                config.arch
            )))
                }
            };
        let sites = linear_sites(&config, root);
        let blocks = (0..config.n_layer())
            .map(|i| w.block(i, &sites))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if !config.tie_word_embeddings {
            Linear::new(
                LinearKind::Full(w.matrix(
                    &format!("{}.weight", names.lm_head),
                    Layout::OutIn,
                    v,
                    e,
                )?),
                None,
            )
        } else {
            Linear::new(LinearKind::Full(embed.clone()), None)
        };
        Ok(Model {
            config,
            dir: dir.to_path_buf(),
            store,
            root,
            tokenizer,
            embed,
            positions,
            embed_norm,
            project_in,
            project_out,
            blocks,
            final_norm,
            lm_head,
            kv_dtype: KvDtype::F32,
        })
    }

    /// The model's configuration (dimensions, context length, architecture).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The token embedding `[vocab, embed_dim]` (dense or INT8 rows).
    pub fn embed(&self) -> &Matrix {
        &self.embed
    }

    /// The learned position table `[n_ctx + offset, d]`, when the architecture has one.
    pub fn positions(&self) -> Option<&Matrix> {
        self.positions.as_ref()
    }

    /// The directory the model was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The mapped tensors.
    pub fn store(&self) -> &TensorStore {
        &self.store
    }

    /// The prefix of the model's tensor names in the file (`transformer.`, `gpt_neox.`, ...).
    pub fn root(&self) -> &'static str {
        self.root
    }

    /// Checks that the mapped weight files have not changed since they were opened (see the mmap
    /// contract in [`crate::tensor_file`]); every forward pass does this first.
    pub fn check_files(&self) -> Result<()> {
        self.store.check_unchanged()
    }

    /// A new session (KV cache and scratch buffers) over this model.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    /// The KV cache element type of sessions made from now on (see [`Session::set_kv_dtype`]).
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// The KV cache element type new sessions start with.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Sets the context length (see [`Config::set_context`]); sessions made afterwards use it.
    pub fn set_context(&mut self, n_ctx: usize) -> Result<()> {
        self.config.set_context(n_ctx).map_err(Error::Input)
    }

    /// The tokens that end generation: the config's `eos_token_id` (one or a list), else the
    /// tokenizer's `<|endoftext|>`.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        if self.config.eos_token_ids.is_empty() {
            self.tokenizer
                .token_id("<|endoftext|>")
                .into_iter()
                .collect()
        } else {
            self.config.eos_token_ids.clone()
        }
    }

    /// Chooses how INT8 matrices multiply: W8A8 (`Int8Act::Int8`, default) or W8A32 (`Int8Act::F32`).
    pub fn set_int8_act(&mut self, act: Int8Act) {
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                l.int8_act = act;
            }
        }
        self.lm_head.int8_act = act;
    }

    /// Every linear layer: `(layer, component, linear)`; the LM head has layer `None`.
    pub fn linears(&self) -> Vec<(Option<usize>, &'static str, &Linear)> {
        let mut v: Vec<_> = self
            .blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.linears().into_iter().map(move |(n, l)| (Some(i), n, l)))
            .collect();
        v.push((None, "lm_head", &self.lm_head));
        v
    }

    /// Whether the LM head is the token embedding itself.
    fn head_is_tied(&self) -> bool {
        matches!(&self.lm_head.kind, LinearKind::Full(m) if std::ptr::eq(
            m.data_ptrs()[0], self.embed.data_ptrs()[0]))
    }

    /// Every norm of the model.
    fn norms(&self) -> Vec<&Norm> {
        let mut v: Vec<&Norm> = self.blocks.iter().flat_map(|b| [&b.ln1, &b.ln2]).collect();
        v.extend(self.embed_norm.iter().chain(&self.final_norm));
        v
    }

    /// Every linear layer outside the blocks' table: projections and an untied head.
    fn extra_linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.project_in.iter().chain(&self.project_out).collect();
        if !self.head_is_tied() {
            v.push(&self.lm_head);
        }
        v
    }

    /// The first tensor (by name) holding NaN or infinity among the float tensors of the weight files,
    /// if any: what to blame when a forward pass produces non-finite values. Reads every float tensor.
    pub fn find_non_finite(&self) -> Option<String> {
        let mut names: Vec<&str> = self.store.names().collect();
        names.sort_unstable();
        names.into_iter().find_map(|n| {
            let t = self.store.get(n)?;
            let b = t.bytes();
            let finite = match t.dtype {
                DType::F32 => b
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
                DType::F16 => b
                    .chunks_exact(2)
                    .all(|c| half::f16::from_le_bytes([c[0], c[1]]).is_finite()),
                DType::BF16 => b
                    .chunks_exact(2)
                    .all(|c| half::bf16::from_le_bytes([c[0], c[1]]).is_finite()),
                _ => true,
            };
            (!finite).then(|| n.to_string())
        })
    }

    /// Bytes of weights a forward pass reads (the tied LM head counted once, with the embedding).
    pub fn weight_bytes(&self) -> usize {
        self.tally(Matrix::weight_bytes, Linear::weight_bytes, Norm::bytes)
    }

    /// Bytes of weights copied into process memory at load (unaligned or converted tensors); ideally 0.
    pub fn copied_bytes(&self) -> usize {
        self.tally(
            Matrix::copied_bytes,
            Linear::copied_bytes,
            Norm::copied_bytes,
        )
    }

    /// A measure summed over every part of the model: embedding, positions, every linear layer (the tied
    /// head once, with the embedding) and every norm.
    fn tally(
        &self,
        matrix: fn(&Matrix) -> usize,
        linear: fn(&Linear) -> usize,
        norm: fn(&Norm) -> usize,
    ) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .flat_map(|b| b.linears())
            .map(|(_, l)| linear(l))
            .sum();
        matrix(&self.embed)
            + self.positions.as_ref().map_or(0, matrix)
            + blocks
            + self.norms().into_iter().map(norm).sum::<usize>()
            + self.extra_linears().into_iter().map(linear).sum::<usize>()
    }
}

/// A file with more blocks than the config says would silently lose some: an error instead.
fn check_layer_count(
    config: &Config,
    store: &TensorStore,
    root: &str,
) -> std::result::Result<(), String> {
    let prefix = format!("{root}{}.", config.family().names.layers);
    let most = store
        .names()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max();
    match most {
        Some(m) if m >= config.n_layer() => Err(format!(
            "the weights hold layer {m} but the config has {} layers",
            config.n_layer()
        )),
        _ => Ok(()),
    }
}

/// Resolves tensor names of one architecture into matrices and linears.
struct Loader<'a> {
    store: &'a TensorStore,
    config: &'a Config,
    root: &'static str,
}

impl Loader<'_> {
    /// `{root}{name}`.
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }

    /// `{root}{name}.weight`.
    fn weight(&self, name: &str) -> String {
        format!("{}{name}.weight", self.root)
    }

    /// A matrix stored under `name`: dense in `layout`, INT8 (`name` of dtype I8 plus `name_scale`), or
    /// 4-/3-bit (`name_q4` / `name_q3` plus F16 `name_scale` and optional `name_min`).
    fn matrix(&self, name: &str, layout: Layout, out_dim: usize, in_dim: usize) -> Result<Matrix> {
        for bits in [4u8, 3] {
            if let Some(packed) = self.store.get(&format!("{name}_q{bits}")) {
                let scales = self.store.require(&format!("{name}_scale"))?;
                let mins = self.store.get(&format!("{name}_min"));
                return Matrix::quant(bits, &packed, &scales, mins.as_ref(), out_dim, in_dim);
            }
        }
        let t = self.store.require(name)?;
        if t.dtype == DType::I8 {
            let scales = self.store.require(&format!("{name}_scale"))?;
            Matrix::int8(&t, &scales, out_dim, in_dim)
        } else {
            Matrix::dense(&t, layout, out_dim, in_dim)
        }
    }

    /// The linear layer `base` (`base.weight`, or `base.lowrank.{vh,s,u}`), with `base.bias` if `bias`.
    fn linear(
        &self,
        base: &str,
        layout: Layout,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Linear> {
        let vh_name = format!("{base}.lowrank.vh");
        let kind = if let Some(vh) = self.store.get(&vh_name) {
            let rank = vh.shape.first().copied().unwrap_or(0);
            if vh.shape.len() != 2 || rank == 0 {
                return Err(vh.error(format!(
                    "expected shape [rank, {in_dim}], found {:?}",
                    vh.shape
                )));
            }
            let vh = self.matrix(&vh_name, Layout::OutIn, rank, in_dim)?;
            let u = self.matrix(&format!("{base}.lowrank.u"), Layout::OutIn, out_dim, rank)?;
            let s = match self.store.get(&format!("{base}.lowrank.s")) {
                Some(t) => Some(Vector::new_f32(&t, rank)?),
                None => None,
            };
            LinearKind::LowRank { vh, s, u }
        } else {
            LinearKind::Full(self.matrix(&format!("{base}.weight"), layout, out_dim, in_dim)?)
        };
        let bias = if bias {
            Some(Vector::new(
                &self.store.require(&format!("{base}.bias"))?,
                out_dim,
            )?)
        } else {
            None
        };
        let mut lin = Linear::new(kind, bias);
        // AWQ's per-input multiplier: f32, finite (it scales every input of the layer).
        if let Some(t) = self.store.get(&format!("{base}.in_scale")) {
            let m = Vector::new_f32(&t, in_dim)?;
            if let Some(i) = m
                .as_f32()
                .and_then(|v| v.iter().position(|x| !x.is_finite()))
            {
                return Err(t.error(format!("value {i} is not finite")));
            }
            lin.in_scale = Some(m);
        }
        Ok(lin)
    }

    fn norm(&self, base: &str) -> Result<Norm> {
        let d = self.config.d_model;
        Ok(Norm {
            gamma: Vector::new(&self.store.require(&format!("{base}.weight"))?, d)?,
            beta: Vector::new(&self.store.require(&format!("{base}.bias"))?, d)?,
        })
    }

    /// Block `i`, from the architecture's table of linear layers (`layers::linear_sites`, in model
    /// order: q/k/v (one fused or three), attention output, MLP in, MLP out).
    fn block(&self, i: usize, sites: &[LinearSite]) -> Result<Block> {
        let h = block_prefix(self.config, self.root, i);
        let names = &self.config.family().names;
        let mut lin = sites
            .iter()
            .filter(|s| s.layer == i)
            .map(|s| self.linear(&s.base, s.layout, s.out_dim, s.in_dim, s.bias))
            .collect::<Result<Vec<_>>>()?;
        let take = |v: &mut Vec<Linear>| v.pop().expect("linear_sites lists four kinds per layer");
        let (proj, fc, attn_out) = (take(&mut lin), take(&mut lin), take(&mut lin));
        let qkv = match <[Linear; 3]>::try_from(lin) {
            Ok(split) => Qkv::Split(split),
            Err(mut fused) => Qkv::Fused(take(&mut fused)),
        };
        Ok(Block {
            spec: self.config.layers[i].clone(),
            ln1: self.norm(&format!("{h}.{}", names.ln1))?,
            qkv,
            attn_out,
            ln2: self.norm(&format!("{h}.{}", names.ln2))?,
            fc,
            proj,
        })
    }
}
