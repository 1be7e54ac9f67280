//! Byte-level mutations: bit flips, interesting bytes and tokens, deletions, duplications, truncation,
//! splices with another seed, and numbers rewritten in place.

use crate::mutate::json::NUMBERS;
use crate::rng::Rng;

/// Bytes and tokens that break parsers: JSON syntax, escapes of lone surrogates, invalid UTF-8, a BOM.
const TOKENS: &[&[u8]] = &[
    b"\\u0000",
    b"\\ud800",
    b"\\udfff",
    b"\\ud83e\\udd80",
    b"1e999",
    b"-0",
    b"NaN",
    b"null",
    b"{}",
    b"[]",
    b"\"\"",
    b",",
    b":",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\xC0\x80",
    b"\xED\xA0\x80",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xFE",
    b"\x00",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"\xE2\x80\xAE",
    b"\xF4\x90\x80\x80",
    b"\xCC\x81",
    b"\\n",
    b"\\\"",
    b"#",
    b"=",
    b"'''",
    b"\"\"\"",
    b"[[",
    b"]]",
];

const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'0', b'9', b'-', b'e', b'.', b' ',
];

/// Applies `n` byte-level mutations; the result stays below `max_len` bytes. `donor` is another seed of the
/// same kind for splices.
pub fn mutate(
    buf: &mut Vec<u8>,
    rng: &mut Rng,
    extra: &[String],
    donor: Option<&[u8]>,
    n: usize,
    max_len: usize,
) {
    // Text stays mostly valid UTF-8: bit flips of ASCII keep it ASCII, random bytes are printable.
    let text = std::str::from_utf8(buf).is_ok();
    for _ in 0..n {
        mutate_once(buf, rng, extra, donor, text);
        if buf.len() > max_len {
            buf.truncate(max_len);
        }
    }
}

fn mutate_once(
    buf: &mut Vec<u8>,
    rng: &mut Rng,
    extra: &[String],
    donor: Option<&[u8]>,
    text: bool,
) {
    let len = buf.len();
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            let bits = if text && buf[i] < 0x80 && !rng.chance(1, 8) {
                7
            } else {
                8
            };
            buf[i] ^= 1 << rng.below(bits);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = *rng.pick(INTERESTING_BYTES);
        }
        2 | 3 => {
            let at = rng.below(len + 1);
            let tok: &[u8] = if !extra.is_empty() && rng.chance(1, 2) {
                rng.pick(extra).as_bytes()
            } else {
                let t = *rng.pick(TOKENS);
                t
            };
            buf.splice(at..at, tok.iter().copied());
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let most = *rng.pick(&[1usize, 4, 16, 256, 4096]);
            let k = rng.range(1, (len - at).min(most));
            buf.drain(at..at + k);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let most = *rng.pick(&[1usize, 8, 64, 1024]);
            let k = rng.range(1, (len - at).min(most));
            let piece = buf[at..at + k].to_vec();
            let to = rng.below(len + 1);
            buf.splice(to..to, piece);
        }
        6 if len > 0 => {
            let at = rng.below(len);
            buf.truncate(at);
        }
        7 if len > 1 => {
            let (i, j) = (rng.below(len), rng.below(len));
            buf.swap(i, j);
        }
        8 if len > 0 => {
            let at = rng.below(len);
            let k = rng.range(1, (len - at).min(16));
            for b in &mut buf[at..at + k] {
                *b = if text && !rng.chance(1, 8) {
                    b' ' + rng.below(95) as u8
                } else {
                    rng.next_u64() as u8
                };
            }
        }
        9 => {
            if let Some(d) = donor.filter(|d| !d.is_empty()) {
                let cut = rng.below(len + 1);
                let from = rng.below(d.len());
                buf.truncate(cut);
                buf.extend_from_slice(&d[from..]);
            } else if len > 1 {
                // A piece of the input written over another place of it.
                let (from, to) = (rng.below(len), rng.below(len));
                let k = rng.range(1, (len - from).min(len - to).min(64));
                let piece = buf[from..from + k].to_vec();
                buf[to..to + k].copy_from_slice(&piece);
            }
        }
        _ => replace_number(buf, rng),
    }
}

/// Rewrites a run of ASCII digits (with its sign and fraction) as an interesting number.
pub fn replace_number(buf: &mut Vec<u8>, rng: &mut Rng) {
    let len = buf.len();
    if len == 0 {
        buf.extend_from_slice(rng.pick(NUMBERS).as_bytes());
        return;
    }
    let start = rng.below(len);
    let Some(d) = (start..len)
        .chain(0..start)
        .find(|&i| buf[i].is_ascii_digit())
    else {
        return;
    };
    let mut a = d;
    while a > 0 && (buf[a - 1].is_ascii_digit() || buf[a - 1] == b'-' || buf[a - 1] == b'.') {
        a -= 1;
    }
    let mut b = d;
    while b < len && (buf[b].is_ascii_digit() || matches!(buf[b], b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        b += 1;
    }
    let new = rng.pick(NUMBERS).as_bytes();
    buf.splice(a..b, new.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_rewritten_whole() {
        for i in 0..50 {
            let mut b = b"{\"n\": 123}".to_vec();
            replace_number(&mut b, &mut Rng::for_case(1, i));
            let s = String::from_utf8(b).unwrap();
            assert!(
                s.starts_with("{\"n\": ") && s.ends_with('}') && !s.contains("123"),
                "{s}"
            );
        }
    }

    #[test]
    fn length_stays_bounded() {
        let mut rng = Rng::new(4);
        let mut b = vec![b'x'; 100];
        for _ in 0..200 {
            mutate(&mut b, &mut rng, &[], Some(b"donor"), 4, 300);
            assert!(b.len() <= 300);
        }
    }
}
