//! Shrinks a failing case while it still fails the same way: changed files reverted to the seed where
//! possible, then JSON members and array elements, safetensors tensors, or text lines removed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::mutate::st;
use crate::mutate::Case;

/// Tries candidates with `still` (true: fails the same way) until `budget` runs or `deadline`.
pub struct Shrinker<'a> {
    pub still: &'a mut dyn FnMut(&Case) -> bool,
    pub budget: usize,
    pub deadline: Instant,
    pub runs: usize,
}

impl Shrinker<'_> {
    fn try_case(&mut self, c: &Case) -> bool {
        if self.runs >= self.budget || Instant::now() > self.deadline {
            return false;
        }
        self.runs += 1;
        (self.still)(c)
    }

    fn exhausted(&self) -> bool {
        self.runs >= self.budget || Instant::now() > self.deadline
    }

    pub fn minimize(&mut self, case: &Case) -> Case {
        let mut cur = case.clone();
        // 1. Changes that are not needed.
        let mut i = 0;
        while i < cur.changes.len() && cur.changes.len() > 1 {
            let mut cand = cur.clone();
            cand.changes.remove(i);
            if self.try_case(&cand) {
                cur = cand;
            } else {
                i += 1;
            }
        }
        // 2. Each changed file, by its structure.
        for k in 0..cur.changes.len() {
            let Some(bytes) = cur.changes[k].1.clone() else {
                continue;
            };
            let name = cur.changes[k].0.clone();
            let mut with = |b: Vec<u8>, s: &mut Self| {
                let mut c = cur.clone();
                c.changes[k].1 = Some(Arc::new(b));
                s.try_case(&c).then_some(c)
            };
            let json = serde_json::from_slice::<Value>(&bytes).ok();
            let shrunk = if let Some(v) = json {
                let pretty = name.ends_with(".json");
                self.shrink_json(v, &mut |v, s| {
                    let b = if pretty {
                        serde_json::to_vec_pretty(v)
                    } else {
                        serde_json::to_vec(v)
                    };
                    b.ok().and_then(|b| with(b, s))
                })
            } else if name.ends_with(".safetensors") {
                self.shrink_tensors(&bytes, &mut with)
            } else {
                self.shrink_lines(&bytes, &mut with)
            };
            if let Some(c) = shrunk {
                cur = c;
            }
            if self.exhausted() {
                break;
            }
        }
        cur
    }

    /// Removes object members and array elements (bigger subtrees first) while the case still fails.
    fn shrink_json(
        &mut self,
        mut v: Value,
        with: &mut dyn FnMut(&Value, &mut Self) -> Option<Case>,
    ) -> Option<Case> {
        let mut best = None;
        loop {
            let mut paths = Vec::new();
            child_paths(&v, &mut Vec::new(), &mut paths);
            paths.sort_by_key(|p| p.len());
            let mut progressed = false;
            for p in paths {
                if self.exhausted() {
                    return best;
                }
                let mut cand = v.clone();
                if !delete(&mut cand, &p) {
                    continue;
                }
                if let Some(c) = with(&cand, self) {
                    v = cand;
                    best = Some(c);
                    progressed = true;
                    break;
                }
            }
            if !progressed {
                return best;
            }
        }
    }

    /// Removes tensors while the case still fails (only when the file survives a rewrite unchanged in
    /// effect).
    fn shrink_tensors(
        &mut self,
        bytes: &[u8],
        with: &mut dyn FnMut(Vec<u8>, &mut Self) -> Option<Case>,
    ) -> Option<Case> {
        let mut file = st::parse(bytes)?;
        let mut best = with(st::serialize(&file, st::Layout::Aligned), self)?;
        let mut i = 0;
        while i < file.tensors.len() && !self.exhausted() {
            let mut cand = file.clone();
            cand.tensors.remove(i);
            match with(st::serialize(&cand, st::Layout::Aligned), self) {
                Some(c) => {
                    file = cand;
                    best = c;
                }
                None => i += 1,
            }
        }
        Some(best)
    }

    /// Removes chunks of lines, halving the chunk size.
    fn shrink_lines(
        &mut self,
        bytes: &[u8],
        with: &mut dyn FnMut(Vec<u8>, &mut Self) -> Option<Case>,
    ) -> Option<Case> {
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let mut best = None;
        let mut chunk = lines.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < lines.len() && !self.exhausted() {
                let mut cand = lines.clone();
                cand.drain(i..(i + chunk).min(lines.len()));
                match with(cand.join(&b'\n'), self) {
                    Some(c) => {
                        lines = cand;
                        best = Some(c);
                    }
                    None => i += chunk,
                }
            }
            if chunk == 1 || self.exhausted() {
                return best;
            }
            chunk = chunk.div_ceil(2);
        }
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn child_paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                child_paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                out.push(prefix.clone());
                child_paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn delete(v: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for s in parents {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(o)) => match o.get_mut(k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(o)) => o.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::Target;

    #[test]
    fn json_shrinks_to_the_culprit() {
        let v = serde_json::json!({"a": [1, 2, {"bad": 1}], "b": {"c": 3}, "d": "x"});
        let case = Case {
            target: Target::Config,
            seed: 0,
            changes: vec![(
                "config.json".into(),
                Some(Arc::new(serde_json::to_vec(&v).unwrap())),
            )],
            n_layer: 0,
            text: String::new(),
            ids: Vec::new(),
            random_sampling: false,
            deep: false,
        };
        let mut still = |c: &Case| {
            let b = c.changes[0].1.as_ref().unwrap();
            String::from_utf8_lossy(b).contains("bad")
        };
        let mut s = Shrinker {
            still: &mut still,
            budget: 1000,
            deadline: Instant::now() + std::time::Duration::from_secs(10),
            runs: 0,
        };
        let m = s.minimize(&case);
        let out: Value = serde_json::from_slice(m.changes[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"a": [{"bad": 1}]}));
    }
}
