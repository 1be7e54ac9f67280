//! The immutable model: config, tokenizer and every weight as a view of the memory mapping.
//!
//! GPT-2 and GPT-Neo are resolved here, once, into one block structure; the forward pass in
//! [`crate::session`] never looks at names, layouts or storage again.

use std::path::{Path, PathBuf};

use slimlm_kernels::{Int8Act, Layout};

use crate::config::{Config, LayerSpec};
use crate::error::{Error, Result};
use crate::layers::{linear_sites, LinearSite};
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

/// Query, key and value projections: one fused matrix (GPT-2) or three (GPT-Neo).
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
    pub spec: LayerSpec,
    pub ln1: Norm,
    pub qkv: Qkv,
    pub attn_out: Linear,
    pub ln2: Norm,
    pub fc: Linear,
    pub proj: Linear,
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

/// A GPT-2 or GPT-Neo model whose weights stay in the memory-mapped file(s). `Send + Sync`: one model
/// serves any number of [`Session`]s on any threads.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    dir: PathBuf,
    store: TensorStore,
    tokenizer: Tokenizer,
    /// Token embedding `[vocab, d]` (dense or INT8 rows).
    pub wte: Matrix,
    /// Position embedding `[n_ctx, d]`.
    pub wpe: Matrix,
    pub blocks: Vec<Block>,
    pub ln_f: Norm,
    /// The LM head (the token embedding itself when tied).
    pub lm_head: Linear,
}

impl Model {
    /// Opens a Hugging Face model directory (`config.json`, `model.safetensors` or shards, tokenizer).
    /// Maps the weights; copies none of them.
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
        Model::from_store(dir, config, store)
    }

    /// A model over tensors already opened (mapped, or held in memory by [`TensorStore::from_file`]);
    /// `dir` supplies the tokenizer and names the model.
    pub fn from_store(dir: &Path, config: Config, store: TensorStore) -> Result<Model> {
        let tokenizer = Tokenizer::from_dir(dir)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::Config {
                path: dir.join("config.json"),
                msg: format!(
                    "vocab_size {} is smaller than the tokenizer's {} tokens",
                    config.vocab_size,
                    tokenizer.vocab_size()
                ),
            });
        }
        let w = Loader {
            store: &store,
            config: &config,
            prefix: if store.contains("transformer.wte.weight") {
                "transformer."
            } else {
                ""
            },
        };
        let (d, v) = (config.d_model, config.vocab_size);
        let wte = w.matrix(&format!("{}wte.weight", w.prefix), Layout::OutIn, v, d)?;
        let wpe = w.matrix(
            &format!("{}wpe.weight", w.prefix),
            Layout::OutIn,
            config.n_ctx,
            d,
        )?;
        if matches!(wpe, Matrix::Int8 { .. }) {
            return Err(Error::Config {
                path: dir.join("model.safetensors"),
                msg: "INT8 position embeddings are not supported".into(),
            });
        }
        let sites = linear_sites(&config, w.prefix);
        let blocks = (0..config.n_layer())
            .map(|i| w.block(i, &sites))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = w.norm(&format!("{}ln_f", w.prefix))?;
        let lm_head = if !config.tie_word_embeddings && store.contains("lm_head.weight") {
            Linear::new(
                LinearKind::Full(w.matrix("lm_head.weight", Layout::OutIn, v, d)?),
                None,
            )
        } else {
            Linear::new(LinearKind::Full(wte.clone()), None)
        };
        Ok(Model {
            config,
            dir: dir.to_path_buf(),
            store,
            tokenizer,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
        })
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

    /// A new session (KV cache and scratch buffers) over this model.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    /// The token id that ends generation, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.config
            .eos_token_id
            .or_else(|| self.tokenizer.token_id("<|endoftext|>"))
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

    /// Bytes of weights a forward pass reads (the tied LM head counted once, with the embedding).
    pub fn weight_bytes(&self) -> usize {
        let tied = matches!(&self.lm_head.kind, LinearKind::Full(m) if std::ptr::eq(
            m.data_ptrs()[0], self.wte.data_ptrs()[0]));
        let norms = |n: &Norm| 4 * (n.gamma.as_slice().len() + n.beta.as_slice().len());
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.linears()
                    .iter()
                    .map(|(_, l)| l.weight_bytes())
                    .sum::<usize>()
                    + norms(&b.ln1)
                    + norms(&b.ln2)
            })
            .sum();
        let head = if tied { 0 } else { self.lm_head.weight_bytes() };
        self.wte.weight_bytes() + self.wpe.weight_bytes() + blocks + norms(&self.ln_f) + head
    }

    /// Bytes of weights copied into process memory at load (unaligned or converted tensors); ideally 0.
    pub fn copied_bytes(&self) -> usize {
        let norms = |n: &Norm| n.gamma.copied_bytes() + n.beta.copied_bytes();
        self.wte.copied_bytes()
            + self.wpe.copied_bytes()
            + norms(&self.ln_f)
            + self
                .blocks
                .iter()
                .map(|b| {
                    b.linears()
                        .iter()
                        .map(|(_, l)| l.copied_bytes())
                        .sum::<usize>()
                        + norms(&b.ln1)
                        + norms(&b.ln2)
                })
                .sum::<usize>()
    }
}

/// Resolves tensor names of one architecture into matrices and linears.
struct Loader<'a> {
    store: &'a TensorStore,
    config: &'a Config,
    prefix: &'static str,
}

impl Loader<'_> {
    /// A matrix stored under `name`: dense in `layout`, or INT8 (`name` of dtype I8 plus `name_scale`).
    fn matrix(&self, name: &str, layout: Layout, out_dim: usize, in_dim: usize) -> Result<Matrix> {
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
                Some(t) => Some(Vector::new(&t, rank)?),
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
        Ok(Linear::new(kind, bias))
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
        let h = format!("{}h.{i}", self.prefix);
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
            ln1: self.norm(&format!("{h}.ln_1"))?,
            qkv,
            attn_out,
            ln2: self.norm(&format!("{h}.ln_2"))?,
            fc,
            proj,
        })
    }
}
