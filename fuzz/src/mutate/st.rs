//! Safetensors mutations, at two levels:
//! - *semantic*: the file parsed into tensors (name, dtype, shape, bytes) and metadata, changed as a
//!   tensor file (dtype, shape, names, INT8 / low-rank forms, NaN/Inf values, metadata), then written
//!   back valid (offsets consistent, aligned, packed, misaligned or in another order) so the input
//!   reaches slimlm's own checks rather than stopping in the safetensors parser;
//! - *raw*: the 8-byte header length, the JSON header as JSON or as bytes (inconsistent offsets, dtypes,
//!   shapes), the data bytes, truncation and trailing bytes.

use serde_json::{json, Map, Value};

use crate::mutate::{bytes, json as jm};
use crate::rng::Rng;
use crate::seeds::Dict;

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct St {
    pub meta: Option<Value>,
    pub tensors: Vec<Tensor>,
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "f32", "X",
];

/// Bits per element of a dtype name (`None`: unknown).
pub fn dtype_bits(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Bytes of a tensor of `shape` and `dtype` (`None` on overflow or unknown dtype).
fn byte_len(dtype: &str, shape: &[u64]) -> Option<u64> {
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    n.checked_mul(dtype_bits(dtype)?).map(|b| b.div_ceil(8))
}

/// Parses safetensors bytes (tensors in file order).
pub fn parse(b: &[u8]) -> Option<St> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let header: Map<String, Value> =
        serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()?;
    let base = 8 + n;
    let mut st = St::default();
    let mut with_start = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            st.meta = Some(v);
            continue;
        }
        // Alignment fillers are remade by `serialize`.
        if name.starts_with("__pad__.") && v.get("dtype").and_then(Value::as_str) == Some("U8") {
            continue;
        }
        let dtype = v.get("dtype")?.as_str()?.to_string();
        let shape = v
            .get("shape")?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()?;
        let off = v.get("data_offsets")?.as_array()?;
        let (s, e) = (
            off.first()?.as_u64()? as usize,
            off.get(1)?.as_u64()? as usize,
        );
        let data = b.get(base.checked_add(s)?..base.checked_add(e)?)?.to_vec();
        with_start.push((
            s,
            Tensor {
                name,
                dtype,
                shape,
                data,
            },
        ));
    }
    with_start.sort_by_key(|(s, _)| *s);
    st.tensors = with_start.into_iter().map(|(_, t)| t).collect();
    Some(st)
}

/// How the data section is laid out when written back.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// Every tensor at a multiple of 64 bytes, gaps filled by `__pad__.N` U8 tensors (slimlm's writer).
    Aligned,
    /// Tensors back to back.
    Packed,
    /// Packed, with the data section starting `k` bytes past a multiple of 64.
    Misaligned(usize),
    /// Aligned, data in the reverse order of the tensors.
    Reversed,
}

pub fn serialize(st: &St, layout: Layout) -> Vec<u8> {
    let mut header = Map::new();
    if let Some(m) = &st.meta {
        header.insert("__metadata__".into(), m.clone());
    }
    let order: Vec<&Tensor> = match layout {
        Layout::Reversed => st.tensors.iter().rev().collect(),
        _ => st.tensors.iter().collect(),
    };
    let align = matches!(layout, Layout::Aligned | Layout::Reversed);
    let mut data: Vec<u8> = Vec::new();
    let mut pads = 0;
    for t in order {
        if align && data.len() % 64 != 0 {
            let k = 64 - data.len() % 64;
            while header.contains_key(&format!("__pad__.{pads}"))
                || st
                    .tensors
                    .iter()
                    .any(|t| t.name == format!("__pad__.{pads}"))
            {
                pads += 1;
            }
            header.insert(
                format!("__pad__.{pads}"),
                json!({"dtype": "U8", "shape": [k], "data_offsets": [data.len(), data.len() + k]}),
            );
            pads += 1;
            data.resize(data.len() + k, 0);
        }
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [data.len(), data.len() + t.data.len()]}),
        );
        data.extend_from_slice(&t.data);
    }
    let mut h = serde_json::to_vec(&header).unwrap_or_default();
    let target = match layout {
        Layout::Misaligned(k) => k % 64,
        _ => 0,
    };
    while (8 + h.len()) % 64 != target {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// A mutated safetensors file from `seed` (bytes of a seed file).
pub fn mutate(seed: &[u8], rng: &mut Rng, dict: &Dict) -> Vec<u8> {
    let semantic = rng.chance(2, 3);
    let mut out = match parse(seed).filter(|_| semantic) {
        Some(mut st) => {
            for _ in 0..rng.small_count(4) {
                mutate_semantic(&mut st, rng, dict);
            }
            let layout = match rng.below(20) {
                0..=13 => Layout::Aligned,
                14..=16 => Layout::Packed,
                17 | 18 => Layout::Misaligned(rng.range(1, 63)),
                _ => Layout::Reversed,
            };
            serialize(&st, layout)
        }
        None => seed.to_vec(),
    };
    if !semantic || rng.chance(1, 6) {
        for _ in 0..rng.small_count(3) {
            mutate_raw(&mut out, rng, dict);
        }
    }
    out
}

fn is_float(d: &str) -> bool {
    matches!(d, "F32" | "F16" | "BF16")
}

/// Values that break float arithmetic, per dtype (little-endian bytes of one element).
fn poison(dtype: &str, rng: &mut Rng) -> Vec<u8> {
    match dtype {
        "F32" => {
            let v: [u32; 9] = [
                0x7FC0_0000,
                0x7F80_0001,
                0x7F80_0000,
                0xFF80_0000,
                0x7F7F_FFFF,
                0x8000_0000,
                1,
                0xFF7F_FFFF,
                0x4B80_0000,
            ];
            rng.pick(&v).to_le_bytes().to_vec()
        }
        "F16" => {
            let v: [u16; 7] = [0x7E00, 0x7C01, 0x7C00, 0xFC00, 0x7BFF, 0x8000, 0x0001];
            rng.pick(&v).to_le_bytes().to_vec()
        }
        "BF16" => {
            let v: [u16; 6] = [0x7FC0, 0x7F81, 0x7F80, 0xFF80, 0x7F7F, 0x0001];
            rng.pick(&v).to_le_bytes().to_vec()
        }
        _ => vec![*rng.pick(&[0x80u8, 0x7F, 0xFF, 0x00, 0x01])],
    }
}

fn resize(t: &mut Tensor, rng: &mut Rng) {
    // Only sizes that can be held (the shape may still claim more: then the length mismatches).
    if let Some(n) = byte_len(&t.dtype, &t.shape).filter(|&n| n <= 1 << 22) {
        let n = n as usize;
        let old = t.data.len();
        t.data.resize(n, 0);
        for b in t.data.iter_mut().skip(old) {
            *b = rng.next_u64() as u8 & 0x3F;
        }
    }
}

fn mutate_semantic(st: &mut St, rng: &mut Rng, dict: &Dict) {
    let n = st.tensors.len();
    if n == 0 {
        st.tensors.push(Tensor {
            name: rng.pick(&dict.strings).clone(),
            dtype: "F32".into(),
            shape: vec![4],
            data: vec![0; 16],
        });
        return;
    }
    let i = rng.below(n);
    match rng.below(15) {
        0 => {
            let t = &mut st.tensors[i];
            t.dtype = rng.pick(DTYPES).to_string();
            if rng.chance(3, 4) {
                resize(t, rng);
            }
        }
        1 | 2 => {
            let t = &mut st.tensors[i];
            let r = t.shape.len();
            match rng.below(9) {
                0 if r > 0 => {
                    t.shape.remove(rng.below(r));
                }
                1 => t.shape.insert(rng.below(r + 1), 1),
                2 if r > 0 => {
                    let k = rng.below(r);
                    t.shape[k] = t.shape[k].saturating_mul(2);
                }
                3 if r > 0 => {
                    let k = rng.below(r);
                    t.shape[k] = 0;
                }
                4 if r > 1 => t.shape.swap(0, r - 1),
                5 => t.shape = vec![t.shape.iter().product()],
                6 if r > 0 => {
                    let k = rng.below(r);
                    t.shape[k] = t.shape[k].saturating_sub(1).max(1);
                }
                7 => {
                    // A huge dimension with no elements: [2^32, 0], [0, 2^62].
                    let big = *rng.pick(&[1u64 << 32, 1 << 62, u64::MAX, 1 << 31]);
                    t.shape = if rng.chance(1, 2) {
                        vec![big, 0]
                    } else {
                        vec![0, big]
                    };
                }
                _ => t.shape = Vec::new(),
            }
            if rng.chance(4, 5) {
                resize(t, rng);
            }
        }
        3 => {
            st.tensors.remove(i);
        }
        4 => {
            let mut t = st.tensors[i].clone();
            t.name = variant_name(&t.name, st, rng, dict);
            st.tensors.push(t);
        }
        5 => {
            let new = variant_name(&st.tensors[i].name, st, rng, dict);
            st.tensors[i].name = new;
        }
        6 if n > 1 => {
            let j = rng.below(n);
            let a = st.tensors[i].name.clone();
            st.tensors[i].name = std::mem::replace(&mut st.tensors[j].name, a);
        }
        7 | 8 => {
            let t = &mut st.tensors[i];
            let esize = (dtype_bits(&t.dtype).unwrap_or(8) / 8).max(1) as usize;
            let count = t.data.len() / esize;
            if count > 0 {
                let all = rng.chance(1, 5);
                let p = poison(&t.dtype, rng);
                let k = if all { count } else { rng.small_count(8) };
                for j in 0..k {
                    let e = if all { j } else { rng.below(count) };
                    let at = e * esize;
                    let end = (at + p.len()).min(t.data.len());
                    t.data[at..end].copy_from_slice(&p[..end - at]);
                }
            }
        }
        9 => int8_form(st, i, rng),
        10 => lowrank_form(st, i, rng),
        11 => {
            let meta = st.meta.get_or_insert_with(|| json!({}));
            mutate_meta(meta, rng, dict);
        }
        12 => {
            // Scales: zero, negative, NaN, infinite.
            if let Some(t) = st
                .tensors
                .iter_mut()
                .filter(|t| t.name.ends_with("_scale") && t.dtype == "F32")
                .nth(rng.below(4))
            {
                let v: f32 = *rng.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 1e38, 1e-45]);
                let count = t.data.len() / 4;
                for _ in 0..rng.small_count(count.max(1)) {
                    if count > 0 {
                        let at = rng.below(count) * 4;
                        t.data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        13 => {
            // Shapes exchanged between two tensors (with their bytes: the file stays valid).
            let j = rng.below(n);
            let (s, d, b) = (
                st.tensors[j].shape.clone(),
                st.tensors[j].dtype.clone(),
                st.tensors[j].data.clone(),
            );
            let t = &mut st.tensors[i];
            t.shape = s;
            t.dtype = d;
            t.data = b;
        }
        _ => {
            let t = &mut st.tensors[i];
            let max = t.data.len() + 64;
            bytes::mutate(&mut t.data, rng, &[], None, 1, max);
        }
    }
}

/// Another tensor name: a sibling's, a layer renumbered, a suffix for another storage form, a root
/// dropped or changed, or a dictionary string.
fn variant_name(name: &str, st: &St, rng: &mut Rng, dict: &Dict) -> String {
    match rng.below(8) {
        0 => st.tensors[rng.below(st.tensors.len())].name.clone(),
        1 => {
            let digits: String = [
                "0",
                "1",
                "2",
                "3",
                "7",
                "99",
                "1023",
                "1024",
                "18446744073709551616",
                "-1",
                "01",
            ][rng.below(11)]
            .to_string();
            let parts: Vec<&str> = name.split('.').collect();
            let idx: Vec<usize> = (0..parts.len())
                .filter(|&k| parts[k].chars().all(|c| c.is_ascii_digit()) && !parts[k].is_empty())
                .collect();
            match idx.first() {
                Some(&k) => {
                    let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
                    p[k] = digits;
                    p.join(".")
                }
                None => format!("{name}.{digits}"),
            }
        }
        2 => {
            let base = name.trim_end_matches(".weight");
            format!(
                "{base}{}",
                rng.pick(&[
                    ".lowrank.vh",
                    ".lowrank.u",
                    ".lowrank.s",
                    ".weight_scale",
                    ".lowrank.vh_scale",
                    ".lowrank.u_scale",
                    ".bias",
                    ".weight"
                ])
            )
        }
        3 => name
            .split_once('.')
            .map_or(String::new(), |(_, r)| r.to_string()),
        4 => format!(
            "{}{name}",
            rng.pick(&[
                "transformer.",
                "model.",
                "model.decoder.",
                "decoder.",
                "gpt_neox.",
                "h.",
                ""
            ])
        ),
        5 => format!("__pad__.{}", rng.below(3)),
        6 => format!("{name}{}", rng.pick(&["\u{0}", "é", " ", ".", "_scale"])),
        _ => rng.pick(&dict.strings).clone(),
    }
}

/// Replaces a float matrix by INT8 values and a `_scale` tensor (groups dividing the input or not).
fn int8_form(st: &mut St, i: usize, rng: &mut Rng) {
    let t = &st.tensors[i];
    if t.shape.len() != 2 || !is_float(&t.dtype) {
        return;
    }
    let (mut out, mut inp) = (t.shape[0], t.shape[1]);
    if rng.chance(1, 3) {
        std::mem::swap(&mut out, &mut inp);
    }
    if out == 0 || inp == 0 || out > 1 << 16 || inp > 1 << 16 || out * inp > 1 << 20 {
        return;
    }
    let groups = *rng.pick(&[1, 2, 3, inp, inp + 1, 0, inp / 2]);
    let name = t.name.clone();
    let values: Vec<u8> = (0..out * inp).map(|_| rng.next_u64() as u8).collect();
    let scales: Vec<u8> = (0..out * groups.min(1 << 16))
        .flat_map(|_| (0.01f32).to_le_bytes())
        .collect();
    st.tensors[i] = Tensor {
        name: name.clone(),
        dtype: "I8".into(),
        shape: vec![out, inp],
        data: values,
    };
    let scale_shape = match rng.below(6) {
        0 => vec![out],
        1 => vec![groups, out],
        _ => vec![out, groups],
    };
    let mut s = Tensor {
        name: format!("{name}_scale"),
        dtype: if rng.chance(7, 8) { "F32" } else { "F16" }.into(),
        shape: scale_shape,
        data: scales,
    };
    resize(&mut s, rng);
    st.tensors.retain(|t| t.name != s.name);
    st.tensors.push(s);
}

/// Replaces `X.weight` by low-rank factors `X.lowrank.{vh,u[,s]}` of a chosen rank.
fn lowrank_form(st: &mut St, i: usize, rng: &mut Rng) {
    let t = &st.tensors[i];
    if t.shape.len() != 2 || !t.name.ends_with(".weight") {
        return;
    }
    let base = t.name.trim_end_matches(".weight").to_string();
    let (mut out, mut inp) = (t.shape[0], t.shape[1]);
    if rng.chance(1, 2) {
        std::mem::swap(&mut out, &mut inp);
    }
    let r = *rng.pick(&[1u64, 2, 3, 0, inp, out, inp + 1]);
    let dtype = rng.pick(&["F32", "F16", "BF16", "I8"]).to_string();
    st.tensors.remove(i);
    let mut add = |name: String, dtype: &str, shape: Vec<u64>, rng: &mut Rng| {
        let mut t = Tensor {
            name,
            dtype: dtype.to_string(),
            shape,
            data: Vec::new(),
        };
        resize(&mut t, rng);
        st.tensors.retain(|x| x.name != t.name);
        st.tensors.push(t);
    };
    let (vh_shape, u_shape) = if rng.chance(5, 6) {
        (vec![r, inp], vec![out, r])
    } else {
        (vec![inp, r], vec![r, out])
    };
    add(format!("{base}.lowrank.vh"), &dtype, vh_shape, rng);
    add(format!("{base}.lowrank.u"), &dtype, u_shape, rng);
    if dtype == "I8" {
        add(format!("{base}.lowrank.vh_scale"), "F32", vec![r, 1], rng);
        add(format!("{base}.lowrank.u_scale"), "F32", vec![out, 1], rng);
    }
    if rng.chance(1, 2) {
        let s_dtype = if rng.chance(3, 4) { "F32" } else { "F16" };
        add(format!("{base}.lowrank.s"), s_dtype, vec![r], rng);
    }
}

/// Mutates `__metadata__`: its JSON values (`slimlm.plan`, `slimlm.matrices`) as JSON, or the map.
fn mutate_meta(meta: &mut Value, rng: &mut Rng, dict: &Dict) {
    let Some(o) = meta.as_object_mut() else {
        jm::mutate(meta, rng, dict, &[], 1);
        return;
    };
    let keys: Vec<String> = o.keys().cloned().collect();
    let inner = keys
        .iter()
        .filter(|k| {
            o[k.as_str()]
                .as_str()
                .is_some_and(|s| s.starts_with('{') || s.starts_with('['))
        })
        .nth(rng.below(3))
        .cloned();
    match inner {
        Some(k) if rng.chance(2, 3) => {
            let text = o[&k].as_str().unwrap_or_default().to_string();
            if let Ok(mut v) = serde_json::from_str::<Value>(&text) {
                let n = rng.small_count(3);
                jm::mutate(&mut v, rng, dict, &[], n);
                o.insert(k, Value::String(v.to_string()));
            }
        }
        _ => {
            let n = rng.small_count(2);
            jm::mutate(meta, rng, dict, &[], n);
        }
    }
}

fn mutate_raw(b: &mut Vec<u8>, rng: &mut Rng, dict: &Dict) {
    let len = b.len();
    let n = b
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let hdr_end = 8usize.saturating_add(n as usize).min(len);
    match rng.below(8) {
        0 => {
            // The header length.
            let v = *rng.pick(&[
                0,
                1,
                7,
                8,
                n.wrapping_sub(1),
                n.wrapping_add(1),
                n.wrapping_add(8),
                (len as u64).wrapping_sub(8),
                (len as u64).wrapping_sub(7),
                len as u64,
                u64::from(u32::MAX),
                1 << 32,
                u64::MAX,
                1 << 63,
                100_000_000,
                100_000_001,
            ]);
            if len < 8 {
                b.resize(8, 0);
            }
            b[..8].copy_from_slice(&v.to_le_bytes());
        }
        1 | 2 => {
            // The header as JSON (offsets, dtypes and shapes no longer consistent with the data).
            if let Some(mut h) = b
                .get(8..hdr_end)
                .and_then(|h| serde_json::from_slice::<Value>(h).ok())
            {
                let k = rng.small_count(3);
                jm::mutate(&mut h, rng, dict, &[], k);
                let text = serde_json::to_vec(&h).unwrap_or_default();
                let data = b[hdr_end..].to_vec();
                b.clear();
                let declared = if rng.chance(7, 8) {
                    text.len() as u64
                } else {
                    n
                };
                b.extend_from_slice(&declared.to_le_bytes());
                b.extend_from_slice(&text);
                b.extend_from_slice(&data);
            }
        }
        3 => {
            // The header's bytes.
            if hdr_end > 8 {
                let mut h = b[8..hdr_end].to_vec();
                let k = rng.small_count(3);
                bytes::mutate(&mut h, rng, &dict.keys, None, k, (n as usize) + 256);
                let data = b[hdr_end..].to_vec();
                b.clear();
                let declared = if rng.chance(3, 4) { h.len() as u64 } else { n };
                b.extend_from_slice(&declared.to_le_bytes());
                b.extend_from_slice(&h);
                b.extend_from_slice(&data);
            }
        }
        4 => {
            // Data bytes.
            if len > hdr_end {
                for _ in 0..rng.small_count(8) {
                    let i = rng.range(hdr_end, len - 1);
                    b[i] = rng.next_u64() as u8;
                }
            }
        }
        5 | 6 => {
            let cut = match rng.below(6) {
                0 => rng.below(9),
                1 => hdr_end.saturating_sub(1),
                2 => hdr_end,
                3 => len.saturating_sub(1),
                _ => rng.below(len + 1),
            };
            b.truncate(cut);
        }
        _ => {
            let k = *rng.pick(&[1usize, 7, 64, 4096]);
            b.extend((0..k).map(|_| rng.next_u64() as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        let st = St {
            meta: Some(json!({"format": "pt"})),
            tensors: vec![
                Tensor {
                    name: "a.weight".into(),
                    dtype: "F32".into(),
                    shape: vec![2, 3],
                    data: vec![1; 24],
                },
                Tensor {
                    name: "a.bias".into(),
                    dtype: "F16".into(),
                    shape: vec![3],
                    data: vec![2; 6],
                },
            ],
        };
        serialize(&st, Layout::Aligned)
    }

    #[test]
    fn round_trip_in_every_layout() {
        let b = file();
        let st = parse(&b).unwrap();
        assert_eq!(st.tensors.len(), 2);
        for layout in [
            Layout::Aligned,
            Layout::Packed,
            Layout::Misaligned(3),
            Layout::Reversed,
        ] {
            let again = parse(&serialize(&st, layout)).unwrap();
            let mut names: Vec<_> = again
                .tensors
                .iter()
                .filter(|t| !t.name.starts_with("__pad__"))
                .map(|t| (t.name.clone(), t.data.clone()))
                .collect();
            names.sort();
            assert_eq!(names.len(), 2);
            assert_eq!(names[0].1, vec![2; 6]);
        }
        let mis = serialize(&st, Layout::Misaligned(3));
        let n = u64::from_le_bytes(mis[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 64, 3);
    }

    #[test]
    fn mutations_stay_bounded() {
        let b = file();
        let dict = Dict {
            keys: vec!["k".into()],
            strings: vec!["s".into()],
        };
        for i in 0..2000 {
            let m = mutate(&b, &mut Rng::for_case(5, i), &dict);
            assert!(m.len() < 1 << 23);
        }
    }
}
