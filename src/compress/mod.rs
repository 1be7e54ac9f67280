//! The compressor: a model directory in, a compressed model directory out (INT8, F16, low-rank factors),
//! in the format [`crate::Model::open`] reads through the same memory-mapped path.
//!
//! ```no_run
//! use slimlm::compress::{compress, Options, Plan, Spec, MethodName, FactorDtype};
//! let spec = Spec { method: Some(MethodName::Lowrank), rank: Some(64), factors: Some(FactorDtype::Int8), ..Spec::default() };
//! let emb = Spec { method: Some(MethodName::Int8), ..Spec::default() };
//! let report = compress("models/ref-gpt2".as_ref(), "/tmp/gpt2-r64".as_ref(),
//!     &Plan::uniform(spec, emb), &Options::default(), &mut |_, _, _| {})?;
//! println!("{} → {} bytes", report.source_bytes, report.file_bytes);
//! # Ok::<(), slimlm::Error>(())
//! ```
//!
//! Names written: `P.weight` (with `P.weight_scale` for INT8, `[out, in]`), or `P.lowrank.{u,vh}` (with
//! `_scale` for INT8, and `P.lowrank.s`), biases and LayerNorms F32, `__pad__.N` alignment fillers, and
//! `__metadata__` with [`META_FORMAT`], [`META_PLAN`], [`META_MATRICES`], [`META_SOURCE_BYTES`].

pub mod awq;
pub mod plan;
pub mod quantize;
pub mod sub8;
pub mod svd;
pub mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use slimlm_kernels::Layout;

pub use plan::{
    Component, FactorDtype, Method, MethodName, Mode, Override, Plan, PlanOptions, Quantizer,
    RankRule, SFold, Spec, SvdKind,
};
use writer::OutTensor;

use crate::arch::Config;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::session::Observer;
use crate::tensor_file::{DType, TensorStore, TensorView};

/// Format version written to [`META_FORMAT`].
pub const FORMAT_VERSION: &str = "1";
/// Metadata key: format version.
pub const META_FORMAT: &str = "slimlm.format_version";
/// Metadata key: the plan, as JSON.
pub const META_PLAN: &str = "slimlm.plan";
/// Metadata key: what was done to each matrix, as JSON (`name → description`).
pub const META_MATRICES: &str = "slimlm.matrices";
/// Metadata key: bytes of the source model's safetensors file(s).
pub const META_SOURCE_BYTES: &str = "slimlm.source_bytes";

/// Options beside the plan.
#[derive(Clone, Debug)]
pub struct Options {
    /// Replace an existing output directory.
    pub overwrite: bool,
    /// Calibration text for activation-aware SVD.
    pub calibration: Vec<String>,
    /// At most this many calibration tokens are run (an equal share from each text).
    pub calibration_tokens: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            overwrite: false,
            calibration: Vec::new(),
            calibration_tokens: 8192,
        }
    }
}

/// What happened to one matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixReport {
    /// Base tensor name (`transformer.h.0.attn.c_attn`, `transformer.wte`).
    pub name: String,
    pub layer: Option<usize>,
    pub component: Component,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// How it is stored (`int8 g64`, `lowrank r=64 int8`, `f32`).
    pub stored: String,
    /// Bytes written for it (weights, scales, factors; not the bias).
    pub bytes: usize,
    /// Bytes it had in the source.
    pub source_bytes: usize,
    /// ‖W − Ŵ‖_F / ‖W‖_F.
    pub rel_error: f64,
    /// Low-rank factors stored in F16/INT8: ‖Ŵ_stored − Ŵ_f32‖_F / ‖Ŵ_f32‖_F, the error of storing the
    /// factors alone (truncation excluded).
    pub factor_error: Option<f64>,
    /// Why the plan was not followed (a global rank that would not save memory).
    pub note: Option<String>,
}

/// The result of [`compress`].
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub matrices: Vec<MatrixReport>,
    /// Size of the written `model.safetensors`.
    pub file_bytes: usize,
    /// Size of the source safetensors file(s).
    pub source_bytes: usize,
}

pub use crate::layers::{classify, linear_sites, resolve_root, LinearSite};

/// The values of a float tensor as f32; an error naming the tensor if one is NaN or infinite (the
/// compressor never quantizes, factors or converts garbage).
fn finite_values(t: &TensorView) -> Result<Vec<f32>> {
    let v = t.to_f32_vec()?;
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(v),
        Some(i) => Err(t.error(format!(
            "element {i} is {}: the compressor refuses non-finite weights",
            v[i]
        ))),
    }
}

/// A weight as a row-major `[out, in]` f32 matrix, transposing `[in, out]` storage.
fn weight_out_in(
    t: &TensorView,
    layout: Layout,
    out_dim: usize,
    in_dim: usize,
) -> Result<Vec<f32>> {
    let v = finite_values(t)?;
    Ok(match layout {
        Layout::OutIn => {
            t.expect_shape(&[out_dim, in_dim])?;
            v
        }
        Layout::InOut => {
            t.expect_shape(&[in_dim, out_dim])?;
            let mut w = vec![0f32; v.len()];
            for i in 0..in_dim {
                for o in 0..out_dim {
                    w[o * in_dim + i] = v[i * out_dim + o];
                }
            }
            w
        }
    })
}

fn rel_error(w: &[f32], approx: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in w.iter().zip(approx) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// The calibration statistics of one block's linear layers, by component: the per-channel mean `|x|` of
/// each input (activation-aware SVD) and, where the plan needs them, the Gram matrices `Σ x·xᵀ` (f32,
/// `in × in` row-major, symmetric; whitened SVD, GPTQ).
struct Calibration {
    stats: HashMap<Component, Vec<f64>>,
    grams: HashMap<Component, Vec<f32>>,
}

/// Collects [`Calibration`] while one block runs.
struct Collector<'c> {
    config: &'c Config,
    /// The components whose Gram matrices are wanted.
    want_gram: HashSet<Component>,
    sums: HashMap<Component, (Vec<f64>, usize)>,
    /// Lower triangles (and diagonal) of the Gram matrices, column-major, until [`Collector::finish`].
    grams: HashMap<Component, Vec<f32>>,
}

impl Observer for Collector<'_> {
    fn linear_input(&mut self, _layer: usize, component: &'static str, xs: &[f32]) {
        let Ok(c) = Component::parse(component) else {
            return;
        };
        let width = if c == Component::MlpOut {
            self.config.d_ff
        } else {
            self.config.d_model
        };
        let e = self.sums.entry(c).or_insert_with(|| (vec![0.0; width], 0));
        for row in xs.chunks_exact(width) {
            for (s, x) in e.0.iter_mut().zip(row) {
                *s += x.abs() as f64;
            }
            e.1 += 1;
        }
        if self.want_gram.contains(&c) {
            use faer::linalg::matmul::triangular::{matmul, BlockStructure};
            let rows = xs.len() / width;
            let x = faer::mat::from_row_major_slice(&xs[..rows * width], rows, width);
            let g = self
                .grams
                .entry(c)
                .or_insert_with(|| vec![0.0; width * width]);
            // G += XᵀX, lower triangle only (half the work), accumulated in place.
            matmul(
                faer::mat::from_column_major_slice_mut(g, width, width),
                BlockStructure::TriangularLower,
                x.transpose(),
                BlockStructure::Rectangular,
                x,
                BlockStructure::Rectangular,
                Some(1.0),
                1.0,
                faer::Parallelism::Rayon(0),
            );
        }
    }
}

impl Collector<'_> {
    /// The statistics, each Gram matrix completed from its lower triangle.
    fn finish(self) -> Calibration {
        let mut grams = self.grams;
        for g in grams.values_mut() {
            let n = (g.len() as f64).sqrt() as usize;
            // Column-major lower (i ≥ j) at j·n + i; mirror it to i·n + j.
            for j in 0..n {
                for i in j + 1..n {
                    g[i * n + j] = g[j * n + i];
                }
            }
        }
        Calibration {
            stats: self
                .sums
                .into_iter()
                .map(|(k, (s, n))| (k, s.into_iter().map(|v| v / n.max(1) as f64).collect()))
                .collect(),
            grams,
        }
    }
}

/// Layer-by-layer calibration: the calibration text's hidden states, one sequence per window of at
/// most 256 tokens, are run through one block at a time. Each block's statistics are collected, its
/// matrices compressed and its statistics dropped before the next block runs, so memory holds one
/// block's Gram matrices (not every block's) plus the hidden states (`tokens × d_model` f32).
///
/// Every block runs with the **original** weights: the inputs of block `l` are those of the
/// uncompressed model, as if calibration ran the whole model in one pass (the statistics are exactly
/// those of a full forward pass). GPTQ's reference implementation feeds block `l + 1` the outputs of the
/// already-quantized block `l` instead; that would need a quantized block in memory, and ties each
/// block's result to every earlier block's.
struct LayerCalibration<'m> {
    runner: crate::session::BlockRunner<'m>,
    /// The hidden states entering block `next`, per sequence.
    states: Vec<Vec<f32>>,
    next: usize,
}

impl<'m> LayerCalibration<'m> {
    /// Tokenizes `texts` (an equal share of `max_tokens` each) and embeds them.
    fn new(model: &'m Model, texts: &[String], max_tokens: usize) -> Result<LayerCalibration<'m>> {
        // Every text contributes up to an equal share of the tokens (several languages, one budget).
        let share = max_tokens / texts.len().max(1);
        let mut ids = Vec::new();
        for t in texts {
            let mut t_ids = model.tokenizer().encode(t)?;
            t_ids.truncate(share);
            ids.extend(t_ids);
        }
        if ids.len() < 2 {
            return Err(Error::input(
                "calibration (activation-aware SVD, GPTQ) needs calibration text",
            ));
        }
        let window = model.config.n_ctx.min(256);
        let mut runner = crate::session::BlockRunner::new(model);
        let states = ids
            .chunks(window)
            .map(|w| runner.embed(w))
            .collect::<Result<_>>()?;
        Ok(LayerCalibration {
            runner,
            states,
            next: 0,
        })
    }

    /// Runs the next block over every sequence, collecting its statistics (Gram matrices of the
    /// components in `want_gram`), and moves the hidden states on to the block after it.
    fn next_block(
        &mut self,
        config: &Config,
        want_gram: HashSet<Component>,
    ) -> Result<Calibration> {
        let mut col = Collector {
            config,
            want_gram,
            sums: HashMap::new(),
            grams: HashMap::new(),
        };
        for xs in &mut self.states {
            self.runner.block(self.next, xs, &mut col)?;
        }
        self.next += 1;
        Ok(col.finish())
    }
}

/// Everything produced for one matrix.
struct Produced {
    tensors: Vec<OutTensor>,
    stored: String,
    rel_error: f64,
    factor_error: Option<f64>,
    note: Option<String>,
}

fn int8_tensors(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    group: Option<usize>,
) -> Result<(Vec<OutTensor>, Vec<f32>)> {
    let q = quantize::quantize_rows(w, rows, cols, group)?;
    let g = q.groups();
    let deq = q.dequantize();
    Ok((
        vec![
            OutTensor::i8(name, vec![rows, cols], &q.values),
            OutTensor::f32(format!("{name}_scale"), vec![rows, g], &q.scales),
        ],
        deq,
    ))
}

/// A 4-/3-bit matrix (`name_qB` packed codes, F16 `name_scale` and `name_min`; for AWQ also the layer's
/// F32 `base.in_scale`); returns the tensors, the weights the layer effectively applies (dequantized)
/// and, for GPTQ and AWQ, a note comparing the calibration output error with RTN's. `calib`: the
/// inputs' per-channel mean `|x|` and Gram matrix.
fn sub8_tensors(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    method: Method,
    calib: Option<(&[f64], &[f32])>,
) -> Result<(Vec<OutTensor>, Vec<f32>, Option<String>)> {
    let Method::Sub8 {
        bits,
        group,
        quantizer,
        symmetric,
    } = method
    else {
        unreachable!("sub8_tensors takes sub-8-bit methods")
    };
    if cols % group != 0 && cols > group {
        return Err(Error::Plan(format!(
            "q{bits} group size {group} does not divide the {cols} inputs of a {rows}×{cols} matrix"
        )));
    }
    let q = sub8::Sub8 {
        bits,
        group,
        asym: !symmetric,
    };
    let vs_rtn = |ratio: f64| format!("calibration output error {ratio:.3}× RTN's");
    let mut in_scale = None;
    let (qm, note) = match (quantizer, calib) {
        (Quantizer::Rtn, _) => (sub8::rtn(w, rows, cols, q)?, None),
        (Quantizer::Awq, Some((stats, g))) => {
            let a = awq::awq(w, rows, cols, stats, g, q, &awq::AwqOptions::default())?;
            let note = format!("{}, α {:.2}", vs_rtn(a.error_vs_rtn), a.alpha);
            in_scale = Some((a.in_scale, a.effective));
            (a.quantized, Some(note))
        }
        (Quantizer::Gptq, Some((_, g))) => {
            let qm = sub8::gptq(w, rows, cols, g, q, &sub8::GptqOptions::default())?;
            let e_gptq = sub8::output_error(w, &qm.dequantize(), rows, cols, g);
            let e_rtn =
                sub8::output_error(w, &sub8::rtn(w, rows, cols, q)?.dequantize(), rows, cols, g);
            (qm, Some(vs_rtn(e_gptq / e_rtn.max(f64::MIN_POSITIVE))))
        }
        (Quantizer::Gptq | Quantizer::Awq, None) => {
            return Err(Error::Plan(format!(
                "{name}: {} needs calibration text",
                quantizer.name().to_uppercase()
            )))
        }
    };
    // The packed group size: one group per row when the group covers the whole row.
    let groups = qm.groups();
    let rb = slimlm_kernels::quant::row_bytes(bits, cols);
    let mut packed = vec![0u8; rows * rb];
    for (r, out) in packed.chunks_exact_mut(rb).enumerate() {
        slimlm_kernels::quant::pack_row(bits, &qm.codes[r * cols..(r + 1) * cols], out);
    }
    let mut ts = vec![
        OutTensor {
            name: format!("{name}_q{bits}"),
            dtype: DType::U8,
            shape: vec![rows, rb],
            data: packed,
        },
        OutTensor::f16(format!("{name}_scale"), vec![rows, groups], &qm.scales)?,
    ];
    if let Some(m) = &qm.mins {
        ts.push(OutTensor::f16(
            format!("{name}_min"),
            vec![rows, groups],
            m,
        )?);
    }
    if let Some((m, effective)) = in_scale {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        ts.push(OutTensor::f32(format!("{base}.in_scale"), vec![cols], &m));
        return Ok((ts, effective, note));
    }
    Ok((ts, qm.dequantize(), note))
}

/// A factor in its storage; returns the tensors and the values as stored (dequantized).
fn factor_tensors(
    name: &str,
    v: &[f32],
    rows: usize,
    cols: usize,
    dtype: FactorDtype,
    group: Option<usize>,
) -> Result<(Vec<OutTensor>, Vec<f32>)> {
    Ok(match dtype {
        FactorDtype::F32 => (vec![OutTensor::f32(name, vec![rows, cols], v)], v.to_vec()),
        FactorDtype::F16 => {
            let back = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            (vec![OutTensor::f16(name, vec![rows, cols], v)?], back)
        }
        FactorDtype::Int8 => {
            // The group must divide the row length (the rank for U); fall back to whole rows otherwise.
            let g = group.filter(|g| cols % g == 0);
            int8_tensors(name, v, rows, cols, g)?
        }
    })
}

/// A dense matrix in the source layout, as F16 (or copied as is).
fn dense_tensor(t: &TensorView, f16: bool) -> Result<OutTensor> {
    if f16 {
        OutTensor::f16(t.name.clone(), t.shape.clone(), &finite_values(t)?)
    } else {
        if matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
            finite_values(t)?;
        }
        Ok(OutTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.bytes().to_vec(),
        })
    }
}

struct Ctx<'a> {
    plan: &'a plan::Resolved,
    calib: Option<&'a Calibration>,
}

fn compress_linear(ctx: &Ctx, site: &LinearSite, t: &TensorView) -> Result<Produced> {
    let (m, n) = (site.out_dim, site.in_dim);
    let method = ctx.plan.method(Some(site.layer), site.component);
    let what = || format!("{} (layer {}, {})", site.base, site.layer, site.component);
    let dense = |method: Method, note: Option<String>| -> Result<Produced> {
        match method {
            Method::Keep | Method::F16 => {
                let f16 = method == Method::F16;
                let out = dense_tensor(t, f16)?;
                let rel = if f16 {
                    let w = finite_values(t)?;
                    let back: Vec<f32> =
                        w.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                    rel_error(&w, &back)
                } else {
                    0.0
                };
                Ok(Produced {
                    tensors: vec![out],
                    stored: if f16 {
                        "f16".into()
                    } else {
                        t.dtype.name().to_lowercase()
                    },
                    rel_error: rel,
                    factor_error: None,
                    note,
                })
            }
            Method::Int8 { group } => {
                let w = weight_out_in(t, site.layout, m, n)?;
                let (ts, deq) = int8_tensors(&format!("{}.weight", site.base), &w, m, n, group)
                    .map_err(|e| Error::Plan(format!("{}: {e}", what())))?;
                Ok(Produced {
                    tensors: ts,
                    stored: Method::Int8 { group }.describe(),
                    rel_error: rel_error(&w, &deq),
                    factor_error: None,
                    note,
                })
            }
            Method::Sub8 { .. } => {
                let w = weight_out_in(t, site.layout, m, n)?;
                let calib = ctx.calib.and_then(|c| {
                    let gram = c.grams.get(&site.component)?;
                    Some((&c.stats.get(&site.component)?[..], &gram[..]))
                });
                let (ts, deq, note) =
                    sub8_tensors(&format!("{}.weight", site.base), &w, m, n, method, calib)
                        .map_err(|e| Error::Plan(format!("{}: {e}", what())))?;
                Ok(Produced {
                    tensors: ts,
                    stored: method.describe(),
                    rel_error: rel_error(&w, &deq),
                    factor_error: None,
                    note,
                })
            }
            Method::LowRank { .. } => unreachable!("dense() is called with dense methods only"),
        }
    };
    let Method::LowRank {
        rank,
        factors,
        group,
        explicit,
        force,
    } = method
    else {
        return dense(method, None);
    };
    let w = weight_out_in(t, site.layout, m, n)?;
    if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
        return Err(t.error(format!("cannot factor a matrix holding {bad}")));
    }
    let key = site.component;
    let no_stats = || Error::Plan(format!("{}: no calibration statistics", what()));
    if let RankRule::Fixed(r) = rank {
        // Checked before the SVD: no work for a plan that is wrong.
        if explicit && r > m.min(n) {
            return Err(Error::Plan(format!(
                "{}: rank {r} exceeds min({m}, {n}) = {}",
                what(),
                m.min(n)
            )));
        }
    }
    let mut note = None;
    let d = match ctx.plan.plan.svd {
        SvdKind::Plain => svd::svd(&w, m, n, None),
        SvdKind::Activation => {
            let stats = ctx
                .calib
                .and_then(|c| c.stats.get(&key))
                .ok_or_else(no_stats)?;
            let alpha = ctx.plan.plan.alpha.unwrap_or(0.5);
            svd::svd(&w, m, n, Some(&svd::activation_scales(stats, alpha)))
        }
        SvdKind::Whiten => {
            let gram = ctx
                .calib
                .and_then(|c| c.grams.get(&key))
                .ok_or_else(no_stats)?;
            match svd::svd_whitened(&w, m, n, gram) {
                Some(d) => d,
                // A singular Gram matrix (too little calibration text): plain SVD, said in the report.
                None => {
                    note = Some("calibration Gram matrix not positive definite: plain SVD".into());
                    svd::svd(&w, m, n, None)
                }
            }
        }
    };
    let r = svd::choose_rank(rank, &d.s, m, n);
    if r > m.min(n) || !(force || svd::saves(m, n, r)) {
        let why = if r > m.min(n) {
            format!("rank {r} exceeds min({m}, {n}) = {}", m.min(n))
        } else {
            format!(
                "rank {r} would not save memory: {} factor parameters ≥ {} dense",
                svd::lowrank_params(m, n, r),
                m * n
            )
        };
        if explicit {
            return Err(Error::Plan(format!("{}: {why}", what())));
        }
        let fallback = match factors {
            FactorDtype::F32 => Method::Keep,
            FactorDtype::F16 => Method::F16,
            FactorDtype::Int8 => Method::Int8 {
                group: group.filter(|g| n % g == 0),
            },
        };
        return dense(
            fallback,
            Some(format!("{why}; left dense ({})", fallback.describe())),
        );
    }
    let fold = ctx.plan.s_fold(factors);
    let (u, vh, s) = svd::factors(&d, r, fold);
    let base = &site.base;
    let (mut ts, vh_back) =
        factor_tensors(&format!("{base}.lowrank.vh"), &vh, r, n, factors, group)?;
    let (ut, u_back) = factor_tensors(&format!("{base}.lowrank.u"), &u, m, r, factors, group)?;
    ts.extend(ut);
    if let Some(s) = &s {
        ts.push(OutTensor::f32(format!("{base}.lowrank.s"), vec![r], s));
    }
    let approx = svd::reconstruct(&u_back, &vh_back, s.as_deref(), m, n, r);
    let factor_error = (factors != FactorDtype::F32)
        .then(|| rel_error(&svd::reconstruct(&u, &vh, s.as_deref(), m, n, r), &approx));
    Ok(Produced {
        tensors: ts,
        stored: format!("lowrank r={r} {}", factors.name()),
        rel_error: rel_error(&w, &approx),
        factor_error,
        note,
    })
}

/// The embedding method's output for a `[rows, d]` table (`wte`, or an untied `lm_head`).
fn compress_embedding(method: Method, t: &TensorView) -> Result<Produced> {
    let (rows, cols) = match t.shape[..] {
        [r, c] => (r, c),
        _ => {
            return Err(t.error(format!(
                "expected a 2-D embedding, found shape {:?}",
                t.shape
            )))
        }
    };
    match method {
        Method::Keep | Method::F16 => {
            let f16 = method == Method::F16;
            let rel = if f16 {
                let w = finite_values(t)?;
                let back: Vec<f32> = w.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                rel_error(&w, &back)
            } else {
                0.0
            };
            Ok(Produced {
                tensors: vec![dense_tensor(t, f16)?],
                stored: if f16 {
                    "f16".into()
                } else {
                    t.dtype.name().to_lowercase()
                },
                rel_error: rel,
                factor_error: None,
                note: None,
            })
        }
        Method::Int8 { group } => {
            let w = finite_values(t)?;
            let (ts, deq) = int8_tensors(&t.name, &w, rows, cols, group)
                .map_err(|e| Error::Plan(format!("embeddings: {e}")))?;
            Ok(Produced {
                tensors: ts,
                stored: method.describe(),
                rel_error: rel_error(&w, &deq),
                factor_error: None,
                note: None,
            })
        }
        Method::Sub8 {
            quantizer: Quantizer::Gptq,
            ..
        } => Err(Error::Plan(
            "embeddings: GPTQ applies to linear layers (use rtn for the embeddings)".into(),
        )),
        Method::Sub8 { .. } => {
            let w = finite_values(t)?;
            let (ts, deq, _) = sub8_tensors(&t.name, &w, rows, cols, method, None)
                .map_err(|e| Error::Plan(format!("embeddings: {e}")))?;
            Ok(Produced {
                tensors: ts,
                stored: method.describe(),
                rel_error: rel_error(&w, &deq),
                factor_error: None,
                note: None,
            })
        }
        Method::LowRank { .. } => Err(Error::Plan("low-rank embeddings are not supported".into())),
    }
}

/// Whether the tensors of `store` were written by the compressor (or hold compressed weights).
pub fn is_compressed(store: &TensorStore) -> bool {
    store.metadata().contains_key(META_FORMAT)
        || store
            .names()
            .any(|n| n.contains(".lowrank.") || n.ends_with("_scale"))
}

/// Compresses the model directory `src` into `dst` by `plan`; `progress(done, total, stage)` is called as
/// work completes. The output is written atomically; nothing is left at `dst` on error.
///
/// Memory: tensors go to a temporary file as they are made (see [`writer::SpillSink`]) and calibration
/// runs block by block (one block's statistics at a time), so the compressor holds one matrix's work
/// beside the memory-mapped source, never the whole output.
pub fn compress(
    src: &Path,
    dst: &Path,
    plan: &Plan,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report> {
    writer::check_output(Some(src), dst, opts.overwrite)?;
    let model = Model::open(src)?;
    let mut report = None;
    writer::write_dir_atomically(dst, opts.overwrite, |tmp| {
        let mut sink = writer::SpillSink::new(tmp)?;
        let (mut r, md) = compress_into(&model, plan, opts, progress, &mut sink)?;
        r.file_bytes = sink.finish(&tmp.join("model.safetensors"), &md)?;
        copy_side_files(src, tmp)?;
        report = Some(r);
        Ok(())
    })?;
    let total = report.as_ref().map_or(1, |r| r.matrices.len() + 1);
    progress(total, total, "written");
    report.ok_or_else(|| Error::input("the compressor wrote nothing"))
}

/// Compresses `model` by `plan` in memory: the bytes of the `model.safetensors` that [`compress`] writes,
/// and the report. Open them with [`crate::tensor_file::TensorFile::from_bytes`] to evaluate a compressed
/// model without writing it to disk. Holds the whole output (twice, while serialising): for small models.
pub fn compress_model(
    model: &Model,
    plan: &Plan,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Vec<u8>, Report)> {
    let mut out: Vec<OutTensor> = Vec::new();
    let (mut report, md) = compress_into(model, plan, opts, progress, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = writer::serialize(&out, &md)?;
    drop(out);
    report.file_bytes = bytes.len();
    Ok((bytes, report))
}

/// Which of block `layer`'s components need Gram matrices under `plan` (GPTQ; low-rank with whitened
/// SVD).
fn grams_wanted(plan: &plan::Resolved, layer: usize) -> HashSet<Component> {
    [
        Component::AttnQkv,
        Component::AttnOut,
        Component::MlpIn,
        Component::MlpOut,
    ]
    .into_iter()
    .filter(|&c| match plan.method(Some(layer), c) {
        Method::Sub8 { quantizer, .. } => quantizer.calibrated(),
        Method::LowRank { .. } => plan.plan.svd == SvdKind::Whiten,
        _ => false,
    })
    .collect()
}

/// The compressor: puts every output tensor into `sink` (in no particular order) and returns the report
/// (its `file_bytes` left 0 for the caller) and the file's metadata.
fn compress_into(
    model: &Model,
    plan: &Plan,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
    sink: &mut dyn writer::Sink,
) -> Result<(Report, BTreeMap<String, String>)> {
    let src = model.dir();
    let config = &model.config;
    let store = model.store();
    if is_compressed(store) {
        return Err(Error::input(format!(
            "{}: the model is already compressed; compress from the original weights",
            src.display()
        )));
    }
    let n_layer = config.n_layer();
    let resolved = plan.validate(n_layer)?;
    let mut calib = if resolved.needs_calibration(n_layer) {
        Some(LayerCalibration::new(
            model,
            &opts.calibration,
            opts.calibration_tokens,
        )?)
    } else {
        None
    };
    let root = resolve_root(config, store)?;
    let names = &config.family().names;
    let sites = linear_sites(config, root);
    let mut consumed: HashSet<String> = HashSet::new();
    let mut reports = Vec::new();
    let total = sites.len() + 1;

    // Embeddings (and an untied LM head): the embeddings method; a learned position table: at most F16.
    let emb_method = resolved.method(None, Component::Embeddings);
    let mut tables = vec![format!("{root}{}.weight", names.embed)];
    if !config.tie_word_embeddings {
        tables.push(format!("{}.weight", names.lm_head));
    }
    for name in &tables {
        let t = store.require(name)?;
        let p = compress_embedding(emb_method, &t)?;
        reports.push(MatrixReport {
            name: name.trim_end_matches(".weight").to_string(),
            layer: None,
            component: Component::Embeddings,
            shape: [t.shape[0], t.shape[1]],
            stored: p.stored,
            bytes: p.tensors.iter().map(|t| t.data.len()).sum(),
            source_bytes: t.bytes().len(),
            rel_error: p.rel_error,
            factor_error: None,
            note: None,
        });
        consumed.insert(name.clone());
        for t in p.tensors {
            sink.put(t)?;
        }
    }
    if let (Some(_), Some(pos)) = (config.position_rows(), names.positions) {
        let table = store.require(&format!("{root}{pos}.weight"))?;
        sink.put(dense_tensor(&table, emb_method != Method::Keep)?)?;
        consumed.insert(table.name.clone());
    }
    progress(1, total, "embeddings");

    // Block by block: calibrate it (if the plan needs it), compress its matrices, drop its statistics.
    let mut done = 1;
    for layer in 0..n_layer {
        let stats = match &mut calib {
            Some(c) => {
                progress(done, total, "calibration");
                Some(c.next_block(config, grams_wanted(&resolved, layer))?)
            }
            None => None,
        };
        let ctx = Ctx {
            plan: &resolved,
            calib: stats.as_ref(),
        };
        for site in sites.iter().filter(|s| s.layer == layer) {
            let t = store.require(&format!("{}.weight", site.base))?;
            let p = compress_linear(&ctx, site, &t)?;
            reports.push(MatrixReport {
                name: site.base.clone(),
                layer: Some(site.layer),
                component: site.component,
                shape: [site.out_dim, site.in_dim],
                stored: p.stored,
                bytes: p.tensors.iter().map(|t| t.data.len()).sum(),
                source_bytes: t.bytes().len(),
                rel_error: p.rel_error,
                factor_error: p.factor_error,
                note: p.note,
            });
            consumed.insert(t.name.clone());
            for t in p.tensors {
                sink.put(t)?;
            }
            done += 1;
            progress(done, total, "matrices");
        }
    }
    drop(calib);

    // Everything else: 1-D vectors as F32; buffers the spec ignores (causal masks, rotary
    // frequencies) dropped; the rest (e.g. OPT's projections) copied.
    let mut rest: Vec<&str> = store.names().filter(|n| !consumed.contains(*n)).collect();
    rest.sort_unstable();
    for name in rest {
        // Ignored buffers, and the source's own alignment padding (the writer pads anew).
        if names.ignored.iter().any(|suffix| name.ends_with(suffix))
            || name.starts_with(crate::tensor_file::PAD_PREFIX)
        {
            continue;
        }
        let t = store.require(name)?;
        if t.shape.len() == 1 && matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
            sink.put(OutTensor::f32(name, t.shape.clone(), &finite_values(&t)?))?;
        } else {
            sink.put(dense_tensor(&t, false)?)?;
        }
    }

    let source_bytes = store.file_bytes();
    let matrices: BTreeMap<&str, &str> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.stored.as_str()))
        .collect();
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    md.insert(META_FORMAT.to_string(), FORMAT_VERSION.to_string());
    md.insert(META_PLAN.to_string(), plan.to_json());
    md.insert(
        META_MATRICES.to_string(),
        serde_json::to_string(&matrices).unwrap_or_default(),
    );
    md.insert(META_SOURCE_BYTES.to_string(), source_bytes.to_string());
    progress(total, total, "writing");
    let report = Report {
        matrices: reports,
        file_bytes: 0,
        source_bytes,
    };
    Ok((report, md))
}

/// Copies config, tokenizer and other plain files of `src` (not weights, not subdirectories) into `dst`.
fn copy_side_files(src: &Path, dst: &Path) -> Result<()> {
    let rd = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let p = entry.path();
        let name = entry.file_name();
        let n = name.to_string_lossy();
        if !p.is_file()
            || n.ends_with(".safetensors")
            || n == "model.safetensors.index.json"
            || n.starts_with('.')
        {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        writer::write_synced(&dst.join(&name), &bytes)?;
    }
    Ok(())
}
