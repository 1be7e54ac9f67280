//! Writes safetensors files whose every tensor starts 64 bytes from the file start (aligned in a page-
//! aligned mapping), and model directories atomically.
//!
//! Alignment: the header is right-padded with spaces so the data section starts on 64 bytes, and an
//! `__pad__.N` tensor (U8) fills any gap before a tensor: the safetensors format wants tensors contiguous.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensor_file::DType;

/// Every tensor starts at a multiple of this many bytes from the start of the file.
pub const ALIGN: usize = 64;

pub use crate::tensor_file::PAD_PREFIX;

/// A tensor to write.
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OutTensor {
    /// F32 values.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }

    /// F32 values converted to F16; an error if a value is not finite or beyond F16's range (±65504),
    /// which F16 would silently turn into infinity.
    pub fn f16(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Result<OutTensor> {
        let name = name.into();
        if let Some((i, &x)) = v
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || x.abs() > half::f16::MAX.to_f32())
        {
            return Err(Error::Plan(format!(
                "tensor `{name}`: element {i} is {x}, which F16 cannot hold (finite values up to                  ±65504); keep this tensor in F32 or INT8"
            )));
        }
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        Ok(OutTensor {
            name,
            dtype: DType::F16,
            shape,
            data: bytemuck::cast_slice(&h).to_vec(),
        })
    }

    /// INT8 values.
    pub fn i8(name: impl Into<String>, shape: Vec<usize>, v: &[i8]) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: DType::I8,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
}

/// Where the compressor puts tensors as it makes them: kept in memory (`Vec<OutTensor>`) or spilled to
/// a file as they come ([`SpillSink`]), so that writing a model to disk never holds all of it in memory.
pub trait Sink {
    /// Takes one tensor.
    fn put(&mut self, t: OutTensor) -> Result<()>;
}

impl Sink for Vec<OutTensor> {
    fn put(&mut self, t: OutTensor) -> Result<()> {
        self.push(t);
        Ok(())
    }
}

/// A tensor's entry in the header: name, dtype, shape and bytes of data.
struct Entry<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [usize],
    len: usize,
}

/// One piece of the data section: alignment padding of this many zero bytes, or entry `i`'s data.
enum Piece {
    Pad(usize),
    Tensor(usize),
}

/// The file's first bytes (length, JSON header padded with spaces) and its data section as pieces, for
/// `entries` in the given order; checks their sizes and names.
fn layout(
    entries: &[Entry],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<Piece>, usize)> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    let mut pieces = Vec::new();
    let mut pos = 0usize;
    let mut pads = 0usize;
    for (i, t) in entries.iter().enumerate() {
        let numel: usize = t.shape.iter().product();
        if numel * t.dtype.size() != t.len {
            return Err(Error::input(format!(
                "tensor `{}`: {} bytes for shape {:?} of {}",
                t.name,
                t.len,
                t.shape,
                t.dtype.name()
            )));
        }
        if header.contains_key(t.name) {
            return Err(Error::input(format!("tensor `{}` written twice", t.name)));
        }
        if t.name.starts_with(PAD_PREFIX) {
            return Err(Error::input(format!(
                "tensor `{}`: names starting with `{PAD_PREFIX}` are reserved for alignment padding",
                t.name
            )));
        }
        if pos % ALIGN != 0 {
            let k = ALIGN - pos % ALIGN;
            header.insert(
                format!("{PAD_PREFIX}{pads}"),
                serde_json::json!({"dtype": "U8", "shape": [k], "data_offsets": [pos, pos + k]}),
            );
            pieces.push(Piece::Pad(k));
            pads += 1;
            pos += k;
        }
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [pos, pos + t.len]}),
        );
        pieces.push(Piece::Tensor(i));
        pos += t.len;
    }
    let mut json = serde_json::to_string(&header)
        .map_err(|e| Error::input(e.to_string()))?
        .into_bytes();
    while (8 + json.len()) % ALIGN != 0 {
        json.push(b' ');
    }
    let mut head = Vec::with_capacity(8 + json.len());
    head.extend_from_slice(&(json.len() as u64).to_le_bytes());
    head.extend_from_slice(&json);
    Ok((head, pieces, pos))
}

const ZEROS: [u8; ALIGN] = [0; ALIGN];

/// Serialises `tensors` (in the given order) with `metadata` into safetensors bytes, 64-byte aligned.
pub fn serialize(tensors: &[OutTensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|t| Entry {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            len: t.data.len(),
        })
        .collect();
    let (head, pieces, data) = layout(&entries, metadata)?;
    let mut out = Vec::with_capacity(head.len() + data);
    out.extend_from_slice(&head);
    for p in pieces {
        match p {
            Piece::Pad(k) => out.extend_from_slice(&ZEROS[..k]),
            Piece::Tensor(i) => out.extend_from_slice(&tensors[i].data),
        }
    }
    Ok(out)
}

/// A [`Sink`] that appends each tensor's bytes to an unnamed temporary file (gone when dropped, or when
/// the process dies) and keeps only names, shapes and offsets; [`SpillSink::finish`] then writes the
/// safetensors file, tensors sorted by name, copying the data across. Memory: one tensor at a time.
pub struct SpillSink {
    spill: BufWriter<File>,
    /// Name, dtype, shape, offset in the spill file and bytes of each tensor, in arrival order.
    entries: Vec<(String, DType, Vec<usize>, u64, usize)>,
    pos: u64,
    dir: PathBuf,
}

impl SpillSink {
    /// A sink spilling into an unnamed file in `dir` (put it beside the output: same file system).
    pub fn new(dir: &Path) -> Result<SpillSink> {
        let f = tempfile::tempfile_in(dir).map_err(io(dir))?;
        Ok(SpillSink {
            spill: BufWriter::with_capacity(1 << 20, f),
            entries: Vec::new(),
            pos: 0,
            dir: dir.to_path_buf(),
        })
    }

    /// Writes the tensors taken so far, sorted by name, with `metadata` as a safetensors file at `path`
    /// (64-byte aligned, fsynced; the bytes [`serialize`] makes of the same tensors sorted by name);
    /// returns its size.
    pub fn finish(self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let SpillSink {
            spill,
            mut entries,
            dir,
            ..
        } = self;
        let mut spill = spill
            .into_inner()
            .map_err(|e| Error::io(&dir, e.into_error()))?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let list: Vec<Entry> = entries
            .iter()
            .map(|(name, dtype, shape, _, len)| Entry {
                name,
                dtype: *dtype,
                shape,
                len: *len,
            })
            .collect();
        let (head, pieces, data) = layout(&list, metadata)?;
        let f = File::create(path).map_err(io(path))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&head).map_err(io(path))?;
        for p in pieces {
            match p {
                Piece::Pad(k) => w.write_all(&ZEROS[..k]).map_err(io(path))?,
                Piece::Tensor(i) => {
                    let (_, _, _, off, len) = &entries[i];
                    spill.seek(SeekFrom::Start(*off)).map_err(io(&dir))?;
                    let copied = std::io::copy(&mut (&mut spill).take(*len as u64), &mut w)
                        .map_err(io(path))?;
                    if copied != *len as u64 {
                        return Err(Error::io(
                            &dir,
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the temporary tensor file is shorter than what was written to it",
                            ),
                        ));
                    }
                }
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        f.sync_all().map_err(io(path))?;
        Ok(head.len() + data)
    }
}

impl Sink for SpillSink {
    fn put(&mut self, t: OutTensor) -> Result<()> {
        self.spill.write_all(&t.data).map_err(io(&self.dir))?;
        let len = t.data.len();
        self.entries.push((t.name, t.dtype, t.shape, self.pos, len));
        self.pos += len as u64;
        Ok(())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = File::create(path).map_err(io(path))?;
    let mut w = BufWriter::new(f);
    w.write_all(bytes).map_err(io(path))?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Builds a model directory atomically: `fill` writes into a temporary directory beside `dest`, which is
/// fsynced and renamed to `dest`. A crash or error leaves no partial `dest`. An existing `dest` is an
/// error unless `overwrite`, and even then only an empty directory or a model directory (a
/// `config.json` beside safetensors files) is replaced (moved aside, then removed after the rename).
///
/// Temporaries are named `.NAME.tmp-PID-…` and `.NAME.old-PID-…`; ones left by a process that no longer
/// runs (killed mid-write) are removed before the next write to the same `dest`, and a model that was
/// moved aside when the crash came is moved back first.
pub fn write_dir_atomically(
    dest: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a directory name", dest.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    recover_stale(&parent, &name, dest)?;
    check_replaceable(dest, overwrite)?;
    let pid = std::process::id();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-{pid}-"))
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    fill(tmp.path())?;
    sync_dir(tmp.path())?;
    let old = if dest.exists() {
        let aside = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-{pid}-"))
            .tempdir_in(&parent)
            .map_err(io(&parent))?
            .keep();
        std::fs::remove_dir(&aside).map_err(io(&aside))?;
        std::fs::rename(dest, &aside).map_err(io(dest))?;
        Some(aside)
    } else {
        None
    };
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, dest) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        if let Some(o) = &old {
            let _ = std::fs::rename(o, dest);
        }
        return Err(Error::io(dest, e));
    }
    sync_dir(&parent)?;
    if let Some(o) = old {
        std::fs::remove_dir_all(&o).map_err(io(&o))?;
    }
    Ok(())
}

/// Checks up front that [`write_dir_atomically`] may write `dest`: an error if `dest` is the input
/// model `src`, a file, or a directory it may not replace (see there).
pub fn check_output(src: Option<&Path>, dest: &Path, overwrite: bool) -> Result<()> {
    if let (Some(src), Ok(d)) = (src, dest.canonicalize()) {
        if src.canonicalize().is_ok_and(|s| s == d) {
            return Err(Error::input(format!(
                "{}: the output is the input model; write the compressed model to another directory",
                dest.display()
            )));
        }
    }
    check_replaceable(dest, overwrite)
}

/// Errors unless `dest` is absent, or (with `overwrite`) a directory that is empty or holds a model.
fn check_replaceable(dest: &Path, overwrite: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(dest) else {
        return Ok(());
    };
    let refuse = |msg: &str| {
        Err(Error::io(
            dest,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, msg.to_string()),
        ))
    };
    if !meta.is_dir() {
        return refuse("exists and is not a directory; choose another output path");
    }
    if !overwrite {
        return refuse("output directory exists (allow overwriting to replace it)");
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(io(dest))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let has_weights = entries
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "safetensors"));
    if entries.is_empty() || (dest.join("config.json").is_file() && has_weights) {
        return Ok(());
    }
    refuse(
        "exists and does not look like a model directory (no config.json beside safetensors \
         files); --overwrite only replaces model directories: remove it yourself or choose another \
         output path",
    )
}

/// Removes the temporaries of earlier writes to `dest` whose process is gone, first moving back a
/// model that was moved aside (the crash came between the two renames, so `dest` is missing).
fn recover_stale(parent: &Path, name: &str, dest: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let (is_old, rest) = if let Some(r) = file_name.strip_prefix(&old) {
            (true, r)
        } else if let Some(r) = file_name.strip_prefix(&tmp) {
            (false, r)
        } else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        if is_old && !dest.exists() {
            std::fs::rename(&path, dest).map_err(io(&path))?;
        } else {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Whether process `pid` still runs (this one always does). Where that cannot be known, assumed alive,
/// so nothing of a running write is ever removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() || !cfg!(target_os = "linux") {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_file::TensorFile;

    #[test]
    fn every_tensor_is_aligned_and_readable() {
        let ts = vec![
            OutTensor::f32("a", vec![3], &[1.0, 2.0, 3.0]),
            OutTensor::i8("b", vec![5], &[1, -2, 3, -4, 5]),
            OutTensor::f16("c", vec![2, 2], &[0.5, 1.5, -2.0, 4.0]).unwrap(),
        ];
        let mut md = BTreeMap::new();
        md.insert("k".into(), "v".into());
        let bytes = serialize(&ts, &md).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write_synced(&p, &bytes).unwrap();
        let f = TensorFile::open(&p).unwrap();
        for n in ["a", "b", "c"] {
            let t = f.get(n).unwrap();
            assert!(t.is_aligned(ALIGN), "{n}");
        }
        assert_eq!(f.get("b").unwrap().bytes(), &[1u8, 254, 3, 252, 5]);
        assert_eq!(f.metadata()["k"], "v");
    }

    /// The spilled file is byte for byte what `serialize` makes of the tensors sorted by name, and a
    /// bad tensor is an error.
    #[test]
    fn spill_sink_writes_what_serialize_makes() {
        let ts = vec![
            OutTensor::i8("b", vec![5], &[1, -2, 3, -4, 5]),
            OutTensor::f32("a", vec![3], &[1.0, 2.0, 3.0]),
            OutTensor::f16("c", vec![2, 2], &[0.5, 1.5, -2.0, 4.0]).unwrap(),
            OutTensor::i8("a0", vec![1], &[7]),
        ];
        let mut md = BTreeMap::new();
        md.insert("k".into(), "v".into());
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SpillSink::new(dir.path()).unwrap();
        for t in &ts {
            sink.put(t.clone()).unwrap();
        }
        let p = dir.path().join("x.safetensors");
        let n = sink.finish(&p, &md).unwrap();
        let mut sorted = ts.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let want = serialize(&sorted, &md).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        assert_eq!(n, want.len());
        // Only the output is left in the directory (the spill file has no name).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut sink = SpillSink::new(dir.path()).unwrap();
        let mut bad = ts[0].clone();
        bad.shape = vec![6];
        sink.put(bad).unwrap();
        let e = sink.finish(&dir.path().join("y"), &md).unwrap_err();
        assert!(e.to_string().contains("5 bytes for shape [6]"), "{e}");
    }

    #[test]
    fn f16_refuses_what_it_cannot_hold() {
        assert!(OutTensor::f16("ok", vec![2], &[65504.0, -65504.0]).is_ok());
        for bad in [65536.0, -1e5, f32::NAN, f32::INFINITY] {
            let e = OutTensor::f16("w", vec![2], &[1.0, bad]).unwrap_err();
            assert!(e.to_string().contains("element 1"), "{e}");
        }
    }
}
