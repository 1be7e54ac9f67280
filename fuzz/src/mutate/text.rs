//! Line-structured mutations (`merges.txt`) and TOML plans mutated as data.

use serde_json::Value;

use crate::mutate::json as jm;
use crate::rng::Rng;
use crate::seeds::Dict;

const MERGE_LINES: &[&str] = &[
    "",
    " ",
    "a",
    "a b c",
    "a  b",
    " a b",
    "a b ",
    "a\tb",
    "#version: 0.2",
    "#version",
    "# comment",
    "Ġ Ġ",
    "Ġ t",
    "ĠĠ ĠĠ",
    "\u{0} \u{0}",
    "é e",
    "e \u{301}",
    "日 本",
    "🦀 🦀",
    "<|endoftext|> a",
    "\r",
    "a b\r",
    "x y",
    "Ġt he",
];

/// Mutates `merges.txt`: lines dropped, repeated, swapped, edited or inserted (tokens of the vocabulary
/// and nonsense).
pub fn mutate_merges(text: &[u8], rng: &mut Rng, vocab_tokens: &[String]) -> Vec<u8> {
    let s = String::from_utf8_lossy(text);
    let mut lines: Vec<String> = s.split('\n').map(String::from).collect();
    for _ in 0..rng.small_count(4) {
        let n = lines.len();
        match rng.below(9) {
            0 if n > 0 => {
                lines.remove(rng.below(n));
            }
            1 if n > 0 => {
                let l = lines[rng.below(n)].clone();
                lines.insert(rng.below(n + 1), l);
            }
            2 if n > 1 => {
                let (i, j) = (rng.below(n), rng.below(n));
                lines.swap(i, j);
            }
            3 => {
                let l = rng.pick(MERGE_LINES).to_string();
                lines.insert(rng.below(n + 1), l);
            }
            4 if !vocab_tokens.is_empty() => {
                // A pair of real tokens (its merge result may be missing from the vocabulary).
                let l = format!("{} {}", rng.pick(vocab_tokens), rng.pick(vocab_tokens));
                lines.insert(rng.below(n + 1), l);
            }
            5 if n > 0 => {
                let i = rng.below(n);
                let with = *rng.pick(&["", "  ", "\t", " x "]);
                lines[i] = lines[i].replacen(' ', with, 1);
            }
            6 if n > 1 => {
                lines.truncate(rng.below(n));
            }
            7 if n > 0 => {
                let i = rng.below(n);
                lines[i] = lines[i].repeat(*rng.pick(&[2usize, 64, 4096]));
            }
            _ => lines.reverse(),
        }
    }
    let sep = if rng.chance(1, 10) { "\r\n" } else { "\n" };
    lines.join(sep).into_bytes()
}

/// Mutates a TOML plan as data (parsed, mutated as JSON, written back as TOML when it still can be);
/// `None` when it does not parse.
pub fn mutate_toml(text: &[u8], rng: &mut Rng, dict: &Dict, donors: &[&Value]) -> Option<Vec<u8>> {
    let t = std::str::from_utf8(text).ok()?;
    let table: toml::Table = toml::from_str(t).ok()?;
    let mut v = serde_json::to_value(table).ok()?;
    let n = rng.small_count(3);
    jm::mutate(&mut v, rng, dict, donors, n);
    strip_nulls(&mut v);
    // TOML's top level must be a table.
    if !v.is_object() {
        return Some(Vec::new());
    }
    toml::to_string(&v).ok().map(String::into_bytes)
}

/// TOML has no null: drop them (as a TOML writer would refuse them).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(strip_nulls);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_plans_survive_mutation_as_toml() {
        let dict = Dict {
            keys: vec!["method".into(), "rank".into()],
            strings: vec!["int8".into()],
        };
        let seed = b"[default]\nmethod = \"lowrank\"\nrank = 4\n";
        let mut ok = 0;
        for i in 0..300 {
            if let Some(out) = mutate_toml(seed, &mut Rng::for_case(2, i), &dict, &[]) {
                ok += usize::from(
                    toml::from_str::<toml::Table>(std::str::from_utf8(&out).unwrap()).is_ok(),
                );
            }
        }
        assert!(ok > 200, "{ok}");
    }
}
