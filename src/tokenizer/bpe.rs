//! The token table and byte-pair encoding with a priority queue: O(n log n) in the length of a piece.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// No token / no neighbour.
const NONE: u32 = u32::MAX;

/// The bytes of every token, in one buffer.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// Bytes of token `i`: `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
}

impl Table {
    /// A table of `tokens` in id order.
    pub(super) fn new<T: AsRef<[u8]>>(
        tokens: impl ExactSizeIterator<Item = T>,
    ) -> Result<Table, String> {
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        let mut bytes = Vec::new();
        offsets.push(0);
        for t in tokens {
            bytes.extend_from_slice(t.as_ref());
            let end = u32::try_from(bytes.len())
                .map_err(|_| "the tokens' bytes add up to more than 4 GiB".to_string())?;
            offsets.push(end);
        }
        bytes.shrink_to_fit();
        Ok(Table { bytes, offsets })
    }

    /// The bytes of token `id`.
    pub(super) fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.bytes.get(start as usize..end as usize)
    }

    /// Number of tokens.
    pub(super) fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// Hashes a pair of token ids packed in a `u64` with one multiply (the keys are not attacker-chosen in a
/// way that matters: they come from the tokenizer file).
#[derive(Default, Clone, Copy)]
pub(super) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// `(left, right)` packed as `left << 32 | right` → `(rank, merged id)`.
pub(super) type Merges = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

/// The key of a pair in [`Merges`].
pub(super) fn pair(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A byte-level BPE model.
#[derive(Debug)]
pub(super) struct Bpe {
    /// The token of each byte (`NONE` when the vocabulary lacks it).
    pub byte_token: [u32; 256],
    pub merges: Merges,
    /// The unknown token, for bytes the vocabulary lacks (else they are dropped, as Hugging Face does).
    pub unk: Option<u32>,
    /// Consecutive unknown bytes make one unknown token.
    pub fuse_unk: bool,
    /// With `ignore_merges`: the ids of the vocabulary's byte-level tokens sorted by their bytes, to look a
    /// whole piece up before merging.
    pub whole: Option<Vec<u32>>,
}

impl Bpe {
    /// The token of each byte: `NONE` where there is none.
    pub(super) fn no_bytes() -> [u32; 256] {
        [NONE; 256]
    }

    /// Appends the tokens of one piece to `out`.
    pub(super) fn encode(&self, table: &Table, piece: &[u8], out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        if let Some(whole) = &self.whole {
            if let Ok(i) =
                whole.binary_search_by(|&id| table.get(id).unwrap_or_default().cmp(piece))
            {
                out.push(whole[i]);
                return;
            }
        }
        let mut ids: Vec<u32> = Vec::with_capacity(piece.len());
        let mut after_unknown = false;
        for &b in piece {
            match self.byte_token[b as usize] {
                NONE => {
                    if let Some(unk) = self.unk {
                        if !(self.fuse_unk && after_unknown) {
                            ids.push(unk);
                        }
                    }
                    after_unknown = true;
                }
                t => {
                    ids.push(t);
                    after_unknown = false;
                }
            }
        }
        if ids.len() < 2 {
            out.extend_from_slice(&ids);
            return;
        }
        self.merge(&mut ids);
        out.extend(ids.iter().copied().filter(|&t| t != NONE));
    }

    /// The merge of `ids[left]` with its right neighbour, if in the table.
    fn lookup(&self, ids: &[u32], left: u32, right: u32) -> Option<(u32, u32)> {
        if left == NONE || right == NONE {
            return None;
        }
        self.merges
            .get(&pair(ids[left as usize], ids[right as usize]))
            .copied()
    }

    /// Merges the lowest-ranked adjacent pair (leftmost on ties) until none is in the table. `ids` is left
    /// with the final tokens in order and `NONE` where symbols were merged away.
    fn merge(&self, ids: &mut [u32]) {
        let n = ids.len() as u32;
        // The linked list of live symbols, by index.
        let mut next: Vec<u32> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<u32> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        // Candidate merges: (rank, left index); checked when popped, as merges make some stale.
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = (0..n - 1)
            .filter_map(|i| {
                self.lookup(ids, i, i + 1)
                    .map(|(rank, _)| Reverse((rank, i)))
            })
            .collect();
        while let Some(Reverse((rank, left))) = heap.pop() {
            let right = next[left as usize];
            // Stale: `left` was merged away or the pair changed (ranks are unique to a pair).
            if ids[left as usize] == NONE {
                continue;
            }
            let Some((r, merged)) = self.lookup(ids, left, right) else {
                continue;
            };
            if r != rank {
                continue;
            }
            ids[left as usize] = merged;
            ids[right as usize] = NONE;
            let after = next[right as usize];
            next[left as usize] = after;
            if after != NONE {
                prev[after as usize] = left;
            }
            let before = prev[left as usize];
            if let Some((r, _)) = self.lookup(ids, before, left) {
                heap.push(Reverse((r, before)));
            }
            if let Some((r, _)) = self.lookup(ids, left, after) {
                heap.push(Reverse((r, left)));
            }
        }
    }
}
