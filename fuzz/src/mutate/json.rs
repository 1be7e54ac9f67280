//! Structure-aware JSON mutations: a node is chosen by a random walk from the root (so top-level keys are
//! as likely as deep ones, whatever the size of a vocabulary), then its value, type or children change.

use serde_json::{Map, Number, Value};

use crate::rng::Rng;
use crate::seeds::Dict;

/// Numbers that break size arithmetic: 0, -1, powers of two and their neighbours, i64/u64 limits,
/// non-integers, values beyond f32 (1e39) and f64 extremes.
pub const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "4",
    "5",
    "7",
    "8",
    "9",
    "12",
    "15",
    "16",
    "17",
    "24",
    "31",
    "32",
    "33",
    "63",
    "64",
    "65",
    "127",
    "128",
    "255",
    "256",
    "257",
    "511",
    "512",
    "1023",
    "1024",
    "4095",
    "4096",
    "65535",
    "65536",
    "1048576",
    "1048577",
    "4194304",
    "16777216",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "4611686018427387904",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "-2147483648",
    "-9223372036854775808",
    "1e39",
    "-1e39",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "5e-324",
    "-0.0",
    "0.0",
    "0.5",
    "1.5",
    "2.0",
    "16.0",
    "1e-45",
    "1e-7",
    "1e-30",
    "3.4028235e38",
    "3.4028236e38",
    "0.999999",
    "1.0000001",
    "0.25",
    "0.1",
    "100000",
];

/// Strings: empty, long, unicode, path-like, number-like.
const STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "é",
    "e\u{301}",
    "日本語",
    "🦀",
    "\u{FEFF}",
    "\u{202E}",
    "\u{FFFD}",
    "\u{10FFFF}",
    "Ġ",
    "ĠĠ",
    "Ċ",
    "\\",
    "\"",
    "..",
    "/",
    "../x",
    "NaN",
    "Infinity",
    "-inf",
    "1e999",
    "0x10",
    "16",
    "-1",
    "true",
    "null",
    "<|endoftext|>",
    "</s>",
];

/// Applies `n` mutations to `v`; `donors` are other seeds of the same kind (cross-over material).
pub fn mutate(v: &mut Value, rng: &mut Rng, dict: &Dict, donors: &[&Value], n: usize) {
    for _ in 0..n {
        mutate_once(v, rng, dict, donors);
    }
}

fn mutate_once(root: &mut Value, rng: &mut Rng, dict: &Dict, donors: &[&Value]) {
    // Cross-over and copy within the tree need a value from elsewhere first.
    let graft = match rng.below(10) {
        0 if !donors.is_empty() => {
            let d = *rng.pick(donors);
            Some(walk_ref(d, rng).clone())
        }
        1 => Some(walk_ref(root, rng).clone()),
        _ => None,
    };
    let (node, depth) = walk_depth(root, rng);
    // Changes that destroy the whole file are kept rare at the root (they stop every case early).
    let gentle = depth == 0 && !rng.chance(1, 10);
    if let Some(g) = graft {
        if approx_size(&g) < 1 << 20 && !gentle {
            *node = g;
        }
        return;
    }
    match node {
        Value::Null | Value::Bool(_) => *node = scalar(rng, dict),
        Value::Number(n) => *node = mutate_number(n, rng),
        Value::String(s) => mutate_string(s, rng, dict),
        Value::Array(a) => mutate_array(a, rng, dict),
        Value::Object(o) => mutate_object(o, rng, dict, gentle),
    }
    // Sometimes swap the type altogether.
    if !gentle && rng.chance(1, 12) {
        *node = match rng.below(6) {
            0 => Value::Null,
            1 => Value::Array(vec![node.take()]),
            2 => Value::Object(Map::new()),
            3 => Value::String(node.to_string()),
            4 => Value::Bool(rng.chance(1, 2)),
            _ => number(rng),
        };
    }
}

/// A node reached by a random walk from `v`: at each container, stop with probability 1/4, else descend
/// into a uniformly chosen child. Returns it with its depth (0: the root).
fn walk_depth<'a>(v: &'a mut Value, rng: &mut Rng) -> (&'a mut Value, usize) {
    let mut cur = v;
    let mut depth = 0;
    loop {
        let n = match &*cur {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if n == 0 || rng.chance(1, 4) {
            return (cur, depth);
        }
        depth += 1;
        let i = rng.below(n);
        cur = match cur {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => match o.values_mut().nth(i) {
                Some(x) => x,
                None => unreachable!("index below the length"),
            },
            other => return (other, depth),
        };
    }
}

fn walk_ref<'a>(v: &'a Value, rng: &mut Rng) -> &'a Value {
    let mut cur = v;
    loop {
        let n = match cur {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if n == 0 || rng.chance(1, 3) {
            return cur;
        }
        let i = rng.below(n);
        cur = match cur {
            Value::Array(a) => &a[i],
            Value::Object(o) => o.values().nth(i).unwrap_or(cur),
            _ => return cur,
        };
    }
}

/// Rough serialized size (bounds cross-over and duplication).
pub fn approx_size(v: &Value) -> usize {
    match v {
        Value::Array(a) => 2 + a.iter().map(approx_size).sum::<usize>(),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, x)| k.len() + 4 + approx_size(x))
                .sum::<usize>()
        }
        Value::String(s) => s.len() + 2,
        _ => 8,
    }
}

pub fn number(rng: &mut Rng) -> Value {
    let n = *rng.pick(NUMBERS);
    serde_json::from_str(n).unwrap_or(Value::Null)
}

fn scalar(rng: &mut Rng, dict: &Dict) -> Value {
    match rng.below(5) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => number(rng),
        3 => Value::String(any_string(rng, dict)),
        _ => Value::Array(Vec::new()),
    }
}

fn any_string(rng: &mut Rng, dict: &Dict) -> String {
    if !dict.strings.is_empty() && rng.chance(1, 2) {
        rng.pick(&dict.strings).clone()
    } else {
        rng.pick(STRINGS).to_string()
    }
}

fn mutate_number(n: &Number, rng: &mut Rng) -> Value {
    let f = n.as_f64().unwrap_or(0.0);
    let i = n.as_i64();
    match rng.below(10) {
        0..=3 => number(rng),
        4 => match i {
            Some(i) => Value::from(i.wrapping_add(1)),
            None => Value::from(f + 1.0),
        },
        5 => match i {
            Some(i) => Value::from(i.wrapping_sub(1)),
            None => Value::from(f - 1.0),
        },
        6 => match i {
            Some(i) => Value::from(i.wrapping_mul(2)),
            None => Value::from(f * 2.0),
        },
        7 => match i {
            Some(i) => Value::from(i / 2),
            None => Value::from(f / 2.0),
        },
        // The same value as another type: a float for an integer, text for a number, a negative.
        8 => match rng.below(3) {
            0 => Number::from_f64(f + 0.5).map_or(Value::Null, Value::Number),
            1 => Value::String(n.to_string()),
            _ => Number::from_f64(-f).map_or(Value::Null, Value::Number),
        },
        _ => Value::from(rng.next_u64() >> rng.below(64)),
    }
}

fn mutate_string(s: &mut String, rng: &mut Rng, dict: &Dict) {
    match rng.below(10) {
        0 => s.clear(),
        1 => *s = any_string(rng, dict),
        2 => *s = any_string(rng, dict),
        3 => {
            let unit = if s.is_empty() {
                "A".to_string()
            } else {
                s.clone()
            };
            let times = *rng.pick(&[2usize, 16, 256, 4096]);
            *s = unit.repeat(times).chars().take(1 << 16).collect();
        }
        4 => {
            let at = char_boundary(s, rng);
            let t = *rng.pick(STRINGS);
            s.insert_str(at, t);
        }
        5 => {
            let at = char_boundary(s, rng);
            s.truncate(at);
        }
        6 => *s = s.to_uppercase(),
        7 => {
            let at = char_boundary(s, rng);
            let c = *rng.pick(&['\u{0}', ' ', '.', '/', 'Ġ', '\u{301}', '\n', '0', '9', '_']);
            s.insert(at, c);
        }
        8 => {
            let k = rng.pick(&dict.keys).clone();
            *s = k;
        }
        _ => {
            // Change the digits of a number written in the string (`model-00001-of-00002`, "1").
            let digits: Vec<usize> = s
                .char_indices()
                .filter(|(_, c)| c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            if let Some(&at) = digits.get(rng.below(digits.len().max(1))) {
                let d = char::from(b'0' + rng.below(10) as u8);
                s.replace_range(at..at + 1, &d.to_string());
            } else {
                s.push('1');
            }
        }
    }
}

fn char_boundary(s: &str, rng: &mut Rng) -> usize {
    let mut at = rng.below(s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate_array(a: &mut Vec<Value>, rng: &mut Rng, dict: &Dict) {
    let n = a.len();
    match rng.below(9) {
        0 if n > 0 => {
            a.remove(rng.below(n));
        }
        1 if n > 0 => {
            let x = a[rng.below(n)].clone();
            if approx_size(&x) < 1 << 16 {
                a.insert(rng.below(n + 1), x);
            }
        }
        2 if n > 1 => a.swap(rng.below(n), rng.below(n)),
        3 => a.clear(),
        4 => a.reverse(),
        5 => a.push(scalar(rng, dict)),
        6 if n > 0 => a.truncate(rng.below(n)),
        7 if n > 0 && n < 64 => {
            // Many copies of one element (long lists: layers, shapes, merges).
            let x = a[rng.below(n)].clone();
            if approx_size(&x) < 256 {
                let k = *rng.pick(&[8usize, 100, 1000]);
                a.extend(std::iter::repeat(x).take(k));
            }
        }
        _ if n > 0 => {
            let i = rng.below(n);
            a[i] = scalar(rng, dict);
        }
        _ => a.push(number(rng)),
    }
}

/// `gentle`: never empty the object.
fn mutate_object(o: &mut Map<String, Value>, rng: &mut Rng, dict: &Dict, gentle: bool) {
    let n = o.len();
    let key_at = |o: &Map<String, Value>, i: usize| o.keys().nth(i).cloned();
    match rng.below(7) {
        0 | 1 if n > 0 => {
            if let Some(k) = key_at(o, rng.below(n)) {
                o.remove(&k);
            }
        }
        2 if n > 0 => {
            // Rename a key (to a known one, or a variant of itself).
            if let Some(k) = key_at(o, rng.below(n)) {
                if let Some(v) = o.remove(&k) {
                    let new = if rng.chance(1, 2) {
                        rng.pick(&dict.keys).clone()
                    } else {
                        let mut k = k;
                        mutate_string(&mut k, rng, dict);
                        k
                    };
                    o.insert(new, v);
                }
            }
        }
        3 => {
            let k = rng.pick(&dict.keys).clone();
            o.insert(k, scalar(rng, dict));
        }
        4 if n > 0 => {
            // A copy of a member under another (known) key.
            if let Some(k) = key_at(o, rng.below(n)) {
                let v = o[&k].clone();
                if approx_size(&v) < 1 << 16 {
                    o.insert(rng.pick(&dict.keys).clone(), v);
                }
            }
        }
        5 if !gentle => o.clear(),
        _ if n > 0 => {
            if let Some(k) = key_at(o, rng.below(n)) {
                o.insert(k, scalar(rng, dict));
            }
        }
        _ => {
            o.insert(rng.pick(&dict.keys).clone(), number(rng));
        }
    }
}

/// Serializes `v` compactly or pretty.
pub fn to_bytes(v: &Value, rng: &mut Rng) -> Vec<u8> {
    let r = if rng.chance(1, 2) {
        serde_json::to_vec(v)
    } else {
        serde_json::to_vec_pretty(v)
    };
    r.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_keep_json_valid_and_change_things() {
        let dict = Dict {
            keys: vec!["k".into()],
            strings: vec!["s".into()],
        };
        let seed = serde_json::json!({"a": 1, "b": [1, 2, {"c": "x"}], "d": {"e": null}});
        let mut changed = 0;
        for i in 0..500 {
            let mut rng = Rng::for_case(9, i);
            let mut v = seed.clone();
            mutate(&mut v, &mut rng, &dict, &[&seed], 2);
            let text = to_bytes(&v, &mut rng);
            let back: Value = serde_json::from_slice(&text).unwrap();
            changed += usize::from(back != seed);
        }
        assert!(changed > 350, "{changed}");
    }
}
