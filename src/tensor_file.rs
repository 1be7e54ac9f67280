//! Memory-mapped safetensors files: the header parsed once, tensors served as borrowed byte ranges.
//!
//! Nothing here copies weight data. A [`TensorStore`] resolves names across one file or a sharded set
//! (`model.safetensors.index.json`); a [`TensorView`] holds the mapping (`Arc`) and a byte range.
//!
//! **The mmap contract.** A mapping is shared and read-only: the weights *are* the file's pages. A model
//! file in use must therefore never change in place; replace it by writing a new file and renaming it
//! over the old one (what `slimlm compress` does), and the running process keeps the old contents. If a
//! mapped file is changed anyway, slimlm reports it instead of computing on garbage: every forward pass
//! first checks that the file's size and modification time are those it had when mapped
//! ([`TensorStore::check_unchanged`]), and on Linux a read of pages cut off by a truncation (SIGBUS)
//! prints which file changed and exits with status 1.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sigbus;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Prefix of the names of padding tensors that align the next tensor (ignored by the loader and by
/// `inspect`).
pub const PAD_PREFIX: &str = "__pad__.";

/// Element type of a stored tensor (the subset slimlm reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    U8,
    I64,
    Other(&'static str),
}

impl DType {
    fn from_st(d: Dtype) -> DType {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::I64 => DType::I64,
            Dtype::F64 => DType::Other("F64"),
            Dtype::I32 => DType::Other("I32"),
            Dtype::I16 => DType::Other("I16"),
            Dtype::BOOL => DType::Other("BOOL"),
            _ => DType::Other("unsupported"),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
            DType::I64 => 8,
            DType::Other(_) => 0,
        }
    }

    /// The safetensors name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::I64 => "I64",
            DType::Other(s) => s,
        }
    }
}

/// The bytes of a safetensors file: a read-only mapping, or (for models built in memory, e.g. by a
/// compression sweep) an owned, 64-byte-aligned buffer.
#[derive(Debug)]
pub enum Backing {
    Mapped(Mapping),
    Owned(Vec<Align64>, usize),
}

/// A read-only shared mapping of a file, registered for the SIGBUS report while it lives.
#[derive(Debug)]
pub struct Mapping {
    // Declared first: unregisters before the mapping goes.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    _registration: sigbus::Registration,
    map: Mmap,
}

/// 64 bytes, 64-byte aligned: the unit of owned backing buffers, so tensors aligned in the file are
/// aligned in memory too.
#[derive(Clone, Copy, Debug, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
pub struct Align64([u8; 64]);

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => &m.map,
            Backing::Owned(v, n) => &bytemuck::cast_slice::<Align64, u8>(v)[..*n],
        }
    }
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    map: Arc<Backing>,
    tensors: HashMap<String, (DType, Vec<usize>, usize, usize)>,
    metadata: HashMap<String, String>,
    /// The open file and what it was when mapped (`None` for files held in memory).
    source: Option<(File, Identity)>,
}

/// What a mapped file must still be for its mapping to hold what was read: size and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<SystemTime>,
}

impl Identity {
    fn of(file: &File) -> std::io::Result<Identity> {
        let m = file.metadata()?;
        Ok(Identity {
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

impl TensorFile {
    /// Maps `path` and parses its header; the weights themselves are not read.
    ///
    /// Only regular files are accepted (a FIFO or device would block or never end); the open itself
    /// never blocks.
    pub fn open(path: &Path) -> Result<TensorFile> {
        let file = open_regular(path)?;
        let identity = Identity::of(&file).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and shared with the file: its bytes change if the file is
        // written in place, and reading pages past a truncation raises SIGBUS. Memory safety relies on
        // the mmap contract of every mmap-based loader (safetensors, llama.cpp): model files are replaced
        // by rename, never modified in place (see the module docs). slimlm writes models that way, checks
        // size and mtime before each forward pass, and reports a SIGBUS on a mapping instead of dying.
        //
        // `populate` maps every page up front (MAP_POPULATE; reading the file if it is not cached), as
        // llama.cpp does: the pages are the file's, counted as file-backed RSS like any touched page,
        // and the first forward pass then takes no page faults (on GPT-2 124M INT8 they were a fifth of
        // a 128-token prefill's time).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| Error::io(path, e))?;
        let mapping = Mapping {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            _registration: sigbus::Registration::new(map.as_ptr() as usize, map.len(), path),
            map,
        };
        let mut f = TensorFile::from_backing(path, Backing::Mapped(mapping))?;
        f.source = Some((file, identity));
        Ok(f)
    }

    /// Checks that the mapped file still has the size and modification time it had when mapped: an error
    /// naming the file if it was changed in place (files replaced by rename are fine: the mapping keeps
    /// the old contents).
    pub fn check_unchanged(&self) -> Result<()> {
        let Some((file, was)) = &self.source else {
            return Ok(());
        };
        let now = Identity::of(file).map_err(|e| Error::io(&self.path, e))?;
        if now == *was {
            return Ok(());
        }
        Err(Error::Changed {
            path: self.path.clone(),
            msg: if now.len != was.len {
                format!("its size changed from {} to {} bytes", was.len, now.len)
            } else {
                "it was modified in place".into()
            },
        })
    }

    /// A file held in memory (`path` only names it in messages). The bytes are copied once into an
    /// aligned buffer.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
        let mut v = vec![Align64([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Align64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        TensorFile::from_backing(path, Backing::Owned(v, bytes.len()))
    }

    fn from_backing(path: &Path, map: Backing) -> Result<TensorFile> {
        let format = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| format(describe_st_error(&e, map.len())))?;
        let base = 8 + header_len;
        let mut tensors = HashMap::new();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            tensors.insert(
                name,
                (
                    DType::from_st(info.dtype),
                    info.shape.clone(),
                    base + s,
                    base + e,
                ),
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
            source: None,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` entries.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Tensor names in this file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorView> {
        self.tensors
            .get(name)
            .map(|(dtype, shape, s, e)| TensorView {
                name: name.to_string(),
                path: self.path.clone(),
                map: Arc::clone(&self.map),
                dtype: *dtype,
                shape: shape.clone(),
                start: *s,
                end: *e,
            })
    }

    /// Size of the mapped file in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty file (never the case for a file that parsed).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The address range of the mapping, to tell whether a slice points into it.
    pub fn address_range(&self) -> std::ops::Range<usize> {
        let p = self.map.as_ptr() as usize;
        p..p + self.map.len()
    }
}

/// Opens `path` for reading if it is a regular file, without blocking (a FIFO would block an ordinary
/// open until a writer appears).
fn open_regular(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file (a FIFO, socket or device)"
    };
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {what}; expected a safetensors file"),
        ),
    ))
}

fn describe_st_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {file_len} bytes, too short for a header"),
        E::InvalidHeaderLength => {
            format!("header length points past the end of the file ({file_len} bytes)")
        }
        E::MetadataIncompleteBuffer => {
            format!(
                "tensor data does not match the file size ({file_len} bytes): truncated or padded"
            )
        }
        other => other.to_string(),
    }
}

/// A tensor of a mapped file: the mapping, the byte range and what the header says of it.
#[derive(Clone, Debug)]
pub struct TensorView {
    pub name: String,
    pub path: PathBuf,
    map: Arc<Backing>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl TensorView {
    /// The raw bytes, borrowed from the mapping.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }

    /// The mapping and the byte range, for holders that outlive this view.
    pub(crate) fn mapped(&self) -> Mapped {
        Mapped {
            map: Arc::clone(&self.map),
            start: self.start,
            end: self.end,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// An error about this tensor.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Tensor {
            path: self.path.clone(),
            name: self.name.clone(),
            msg: msg.into(),
        }
    }

    /// Checks the shape.
    pub fn expect_shape(&self, shape: &[usize]) -> Result<()> {
        if self.shape == shape {
            Ok(())
        } else {
            Err(self.error(format!("expected shape {shape:?}, found {:?}", self.shape)))
        }
    }

    /// Checks the dtype is one of `allowed`.
    pub fn expect_dtype(&self, allowed: &[DType]) -> Result<()> {
        if allowed.contains(&self.dtype) {
            Ok(())
        } else {
            let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
            Err(self.error(format!(
                "expected dtype {}, found {}",
                names.join(" or "),
                self.dtype.name()
            )))
        }
    }

    /// The values as f32 (a copy: for small vectors and the offline compressor, never for weights on the
    /// inference path). Errors for non-float tensors.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            d => return Err(self.error(format!("expected a float tensor, found {}", d.name()))),
        })
    }

    /// Whether the data starts at an address aligned for `align` bytes.
    pub fn is_aligned(&self, align: usize) -> bool {
        (self.bytes().as_ptr() as usize) % align == 0
    }
}

/// A byte range of a mapping, kept alive by the `Arc`: how weights are held without copying.
#[derive(Clone, Debug)]
pub struct Mapped {
    map: Arc<Backing>,
    start: usize,
    end: usize,
}

impl Mapped {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// All tensors of a model: one file, or the shards named by `model.safetensors.index.json`.
#[derive(Debug)]
pub struct TensorStore {
    files: Vec<TensorFile>,
    index: HashMap<String, usize>,
    primary: PathBuf,
}

impl TensorStore {
    /// Opens the weights of the model directory `dir`.
    pub fn open_dir(dir: &Path) -> Result<TensorStore> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single.clone()]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let bad = |msg: String| Error::Format {
                path: index_path.clone(),
                msg,
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no `weight_map` object".into()))?;
            let mut shards: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f
                    .as_str()
                    .ok_or_else(|| bad("weight_map values must be file names".into()))?;
                if f.contains('/') || f.contains("..") {
                    return Err(bad(format!("shard name {f:?} is not a plain file name")));
                }
                if !shards.iter().any(|s| s == f) {
                    shards.push(f.to_string());
                }
            }
            if shards.is_empty() {
                return Err(bad("`weight_map` names no shard".into()));
            }
            shards.sort();
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors (nor model.safetensors.index.json) in the model directory",
                ),
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in &paths {
            let f = TensorFile::open(p)?;
            for n in f.names() {
                if index.insert(n.to_string(), files.len()).is_some() {
                    return Err(Error::Format {
                        path: p.clone(),
                        msg: format!("tensor `{n}` appears in more than one shard"),
                    });
                }
            }
            files.push(f);
        }
        Ok(TensorStore {
            files,
            index,
            primary: paths[0].clone(),
        })
    }

    /// Checks every mapped file with [`TensorFile::check_unchanged`].
    pub fn check_unchanged(&self) -> Result<()> {
        self.files.iter().try_for_each(TensorFile::check_unchanged)
    }

    /// Maps every page of the mapped files now (reading them if they are not cached) instead of one
    /// page fault at a time during the first forward pass, as llama.cpp does by default. The pages
    /// stay file-backed and reclaimable; nothing is copied. Best effort: a kernel without
    /// `MADV_POPULATE_READ` (before Linux 5.14) gets read-ahead advice instead.
    pub fn prefault(&self) {
        for f in &self.files {
            #[cfg(unix)]
            if let Backing::Mapped(m) = &*f.map {
                #[cfg(target_os = "linux")]
                if m.map.advise(memmap2::Advice::PopulateRead).is_ok() {
                    continue;
                }
                let _ = m.map.advise(memmap2::Advice::WillNeed);
            }
            #[cfg(not(unix))]
            let _ = f;
        }
    }

    /// A store of one file (e.g. one built in memory with [`TensorFile::from_bytes`]).
    pub fn from_file(file: TensorFile) -> TensorStore {
        let index = file.names().map(|n| (n.to_string(), 0)).collect();
        TensorStore {
            primary: file.path().to_path_buf(),
            files: vec![file],
            index,
        }
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorView> {
        self.index.get(name).and_then(|&i| self.files[i].get(name))
    }

    /// The tensor `name`, or a clear error.
    pub fn require(&self, name: &str) -> Result<TensorView> {
        self.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.primary.clone(),
            name: name.to_string(),
        })
    }

    /// Whether any file has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The mapped files.
    pub fn files(&self) -> &[TensorFile] {
        &self.files
    }

    /// Total bytes of the mapped files.
    pub fn file_bytes(&self) -> usize {
        self.files.iter().map(TensorFile::len).sum()
    }

    /// The `__metadata__` of the first file.
    pub fn metadata(&self) -> &HashMap<String, String> {
        self.files[0].metadata()
    }

    /// Whether `ptr` points into one of the mappings.
    pub fn is_mapped(&self, ptr: *const u8) -> bool {
        let p = ptr as usize;
        self.files.iter().any(|f| f.address_range().contains(&p))
    }
}
