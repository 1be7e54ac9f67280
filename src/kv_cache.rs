//! The KV cache of a session: keys and values of every layer and head, in F32 or F16, grown with the
//! context actually used.
//!
//! Layout `[layer][head][cap][head_dim]`, so one head's keys (and values) are one contiguous run for
//! [`ops::attend`]. It starts empty and doubles (at least [`KV_MIN`] positions, at most the context
//! length) as the context grows; growing moves the cached rows to the new layout. An F16 cache halves the
//! bytes; rows are rounded to F16 when stored and widened exactly when read, so outputs differ from an
//! F32 cache by that rounding only (`tests/kv_cache.rs` bounds it against the goldens).

use half::f16;
use half::slice::HalfFloatSliceExt;
use slimlm_kernels::ops;

use crate::error::{Error, Result};

/// Positions the cache holds at first (it doubles from there).
pub const KV_MIN: usize = 64;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Exact: outputs match the goldens.
    #[default]
    F32,
    /// Half the bytes; outputs within the F16 rounding of keys and values.
    F16,
}

impl KvDtype {
    /// Parses `f32` or `f16`.
    pub fn parse(s: &str) -> Result<KvDtype> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            _ => Err(Error::input(format!(
                "KV cache type {s:?}: expected f32 or f16"
            ))),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// One of the two caches. F16 is held as `u16` so a fresh allocation is zeroed lazily by the system
/// (pages never written are never resident), like `f32`.
enum Store {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Store {
    fn rows(&self, a: usize, b: usize) -> Rows<'_> {
        match self {
            Store::F32(v) => Rows::F32(&v[a..b]),
            Store::F16(v) => Rows::F16(bytemuck::cast_slice(&v[a..b])),
        }
    }
}

/// The rows of one head over a range of positions.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Shape of the cache: `blocks = n_layer · n_head` runs of `cap × head_dim`.
#[derive(Clone, Copy)]
struct Shape {
    heads: usize,
    head_dim: usize,
}

/// Keys and values of every layer and head.
pub struct KvCache {
    dtype: KvDtype,
    shape: Shape,
    blocks: usize,
    cap: usize,
    k: Store,
    v: Store,
}

impl KvCache {
    /// An empty cache for `layers × heads` heads of `head_dim`.
    pub fn new(dtype: KvDtype, layers: usize, heads: usize, head_dim: usize) -> KvCache {
        let empty = || match dtype {
            KvDtype::F32 => Store::F32(Vec::new()),
            KvDtype::F16 => Store::F16(Vec::new()),
        };
        KvCache {
            dtype,
            shape: Shape { heads, head_dim },
            blocks: layers * heads,
            cap: 0,
            k: empty(),
            v: empty(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Positions there is room for.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes allocated (keys and values).
    pub fn bytes(&self) -> usize {
        2 * self.blocks * self.cap * self.shape.head_dim * self.dtype.size()
    }

    /// Bytes per position (all layers, keys and values).
    pub fn bytes_per_position(&self) -> usize {
        2 * self.blocks * self.shape.head_dim * self.dtype.size()
    }

    /// The capacity a cache holding `positions` grows to: doubling, at least [`KV_MIN`], at most
    /// `n_ctx`; `None` if it already has room.
    pub fn grown_capacity(&self, positions: usize, n_ctx: usize) -> Option<usize> {
        (positions > self.cap).then(|| positions.max(2 * self.cap).max(KV_MIN).min(n_ctx))
    }

    /// Grows to `cap` positions, keeping the first `pos` of every head. A size the allocator refuses is
    /// an error (probed before the zeroed allocation, which would abort).
    pub fn grow(&mut self, cap: usize, pos: usize) -> Result<()> {
        let hd = self.shape.head_dim;
        let too_big = |bytes: Option<u128>| {
            Error::input(format!(
                "cannot allocate the KV cache for {cap} positions ({} bytes); use a shorter context",
                bytes.map_or("over 2^64".into(), |b| b.to_string())
            ))
        };
        let len = (self.blocks * hd)
            .checked_mul(cap)
            .filter(|&n| n <= isize::MAX as usize / 8)
            .ok_or_else(|| too_big(None))?;
        let bytes = 2 * len as u128 * self.dtype.size() as u128;
        let old = self.cap;
        for store in [&mut self.k, &mut self.v] {
            match store {
                Store::F32(v) => {
                    *v = regrown(v, len, old, cap, pos, hd).ok_or(too_big(Some(bytes)))?
                }
                Store::F16(v) => {
                    *v = regrown(v, len, old, cap, pos, hd).ok_or(too_big(Some(bytes)))?
                }
            }
        }
        self.cap = cap;
        Ok(())
    }

    /// Stores the key and value rows of head `h` of layer `l` at position `p` (F16: rounded).
    pub fn store(&mut self, l: usize, h: usize, p: usize, key: &[f32], value: &[f32]) {
        let hd = self.shape.head_dim;
        let at = ((l * self.shape.heads + h) * self.cap + p) * hd;
        for (store, row) in [(&mut self.k, key), (&mut self.v, value)] {
            match store {
                Store::F32(v) => v[at..at + hd].copy_from_slice(row),
                Store::F16(v) => bytemuck::cast_slice_mut::<u16, f16>(&mut v[at..at + hd])
                    .convert_from_f32_slice(row),
            }
        }
    }

    /// Keys and values of head `h` of layer `l` at positions `lo..hi`.
    pub fn head(&self, l: usize, h: usize, lo: usize, hi: usize) -> (Rows<'_>, Rows<'_>) {
        let hd = self.shape.head_dim;
        let base = (l * self.shape.heads + h) * self.cap * hd;
        let (a, b) = (base + lo * hd, base + hi * hd);
        (self.k.rows(a, b), self.v.rows(a, b))
    }
}

/// A cache of `len` zeroed elements holding the first `pos` rows of each `old_cap`-long block of `v`,
/// re-laid out in blocks of `cap`; `None` if the allocator refuses `len` elements.
fn regrown<T: Copy>(
    v: &[T],
    len: usize,
    old_cap: usize,
    cap: usize,
    pos: usize,
    hd: usize,
) -> Option<Vec<T>>
where
    Vec<T>: Zeroed,
{
    Vec::<T>::new().try_reserve_exact(len).ok()?;
    let mut grown = <Vec<T> as Zeroed>::zeroed(len);
    for (block, dst) in grown.chunks_exact_mut(cap * hd).enumerate() {
        dst[..pos * hd].copy_from_slice(&v[block * old_cap * hd..][..pos * hd]);
    }
    Some(grown)
}

/// A vector of zeros allocated lazily zeroed (`vec![0; n]` of a primitive: calloc).
trait Zeroed {
    fn zeroed(n: usize) -> Self;
}

impl Zeroed for Vec<f32> {
    fn zeroed(n: usize) -> Self {
        vec![0.0; n]
    }
}

impl Zeroed for Vec<u16> {
    fn zeroed(n: usize) -> Self {
        vec![0; n]
    }
}

/// Attention of several queries of one head over rows of its cache, query `i` over rows `ranges[i]`
/// (see [`ops::attend_rows`]); query `i` is `q[i·q_stride..][..d]`, its output `out[i·d..][..d]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    q_stride: usize,
    d: usize,
    keys: Rows,
    values: Rows,
    ranges: &[(usize, usize)],
    scale: f32,
    slope: f32,
    out: &mut [f32],
) {
    match (keys, values) {
        (Rows::F32(k), Rows::F32(v)) => {
            ops::attend_rows(q, q_stride, d, k, v, ranges, scale, slope, out, d)
        }
        (Rows::F16(k), Rows::F16(v)) => {
            ops::attend_rows_f16(q, q_stride, d, k, v, ranges, scale, slope, out, d)
        }
        _ => unreachable!("keys and values share one element type"),
    }
}

/// Attention of one query over `keys`/`values` rows of one head (see [`ops::attend`]); `scores` needs
/// `n` floats.
pub fn attend(
    q: &[f32],
    keys: Rows,
    values: Rows,
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match (keys, values) {
        (Rows::F32(k), Rows::F32(v)) => ops::attend(q, k, v, scale, slope, scores, out),
        (Rows::F16(k), Rows::F16(v)) => ops::attend_f16(q, k, v, scale, slope, scores, out),
        _ => unreachable!("keys and values share one element type"),
    }
}
