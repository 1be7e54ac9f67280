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

/// Prefix of the names of padding tensors (ignored by the loader and by `inspect`).
pub const PAD_PREFIX: &str = "__pad__.";

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

    /// F32 values converted to F16.
    pub fn f16(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> OutTensor {
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        OutTensor {
            name: name.into(),
            dtype: DType::F16,
            shape,
            data: bytemuck::cast_slice(&h).to_vec(),
        }
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

/// Serialises `tensors` (in the given order) with `metadata` into safetensors bytes, 64-byte aligned.
pub fn serialize(tensors: &[OutTensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    // (offset, bytes) of each piece of the data section, padding included.
    let mut pieces: Vec<(usize, &[u8])> = Vec::new();
    let mut pos = 0usize;
    let mut pads = 0usize;
    const ZEROS: [u8; ALIGN] = [0; ALIGN];
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        if numel * t.dtype.size() != t.data.len() {
            return Err(Error::input(format!(
                "tensor `{}`: {} bytes for shape {:?} of {}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype.name()
            )));
        }
        if header.contains_key(&t.name) {
            return Err(Error::input(format!("tensor `{}` written twice", t.name)));
        }
        if pos % ALIGN != 0 {
            let k = ALIGN - pos % ALIGN;
            header.insert(
                format!("{PAD_PREFIX}{pads}"),
                serde_json::json!({"dtype": "U8", "shape": [k], "data_offsets": [pos, pos + k]}),
            );
            pieces.push((pos, &ZEROS[..k]));
            pads += 1;
            pos += k;
        }
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [pos, pos + t.data.len()]}),
        );
        pieces.push((pos, &t.data));
        pos += t.data.len();
    }
    let mut json = serde_json::to_string(&header)
        .map_err(|e| Error::input(e.to_string()))?
        .into_bytes();
    while (8 + json.len()) % ALIGN != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + pos);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, p) in pieces {
        out.extend_from_slice(p);
    }
    Ok(out)
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
/// error unless `overwrite`, in which case it is replaced (moved aside, then removed after the rename).
pub fn write_dir_atomically(
    dest: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a directory name", dest.display())))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dest.exists() && !overwrite {
        return Err(Error::io(
            dest,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "output directory exists (pass --overwrite to replace it)",
            ),
        ));
    }
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    fill(tmp.path())?;
    sync_dir(tmp.path())?;
    let old = if dest.exists() {
        let aside = tempfile::Builder::new()
            .prefix(&format!(".{}.old-", name.to_string_lossy()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_file::TensorFile;

    #[test]
    fn every_tensor_is_aligned_and_readable() {
        let ts = vec![
            OutTensor::f32("a", vec![3], &[1.0, 2.0, 3.0]),
            OutTensor::i8("b", vec![5], &[1, -2, 3, -4, 5]),
            OutTensor::f16("c", vec![2, 2], &[0.5, 1.5, -2.0, 4.0]),
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
}
