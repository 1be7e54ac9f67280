//! GPT-2's reversible map between bytes and printable characters, used by byte-level BPE vocabularies.

/// The printable character that stands for byte `b`.
pub(super) fn byte_char(b: u8) -> char {
    if printable(b) {
        char::from(b)
    } else {
        // The non-printable bytes take U+0100, U+0101, ... in byte order.
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// The byte that character `c` stands for, if it is one of the 256 byte-level characters.
pub(super) fn char_byte(c: char) -> Option<u8> {
    let u = c as u32;
    match u8::try_from(u) {
        Ok(b) if printable(b) => Some(b),
        Ok(_) => None,
        Err(_) if (256..256 + 68).contains(&u) => {
            let n = (u - 256) as usize;
            (0..=255u8).filter(|&x| !printable(x)).nth(n)
        }
        Err(_) => None,
    }
}

fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes a token's text decodes to, as Hugging Face's `ByteLevel` decoder does it: each character mapped
/// to its byte if every character is a byte-level one, otherwise the text's own UTF-8 (added tokens such as
/// `"  "` or `"<|endoftext|>"`).
pub(super) fn decode_token(text: &str) -> Vec<u8> {
    text.chars()
        .map(char_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

/// The bytes of a token's text if every character is a byte-level one.
pub(super) fn to_bytes(text: &str) -> Option<Vec<u8>> {
    text.chars().map(char_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_a_bijection() {
        for b in 0..=255u8 {
            assert_eq!(char_byte(byte_char(b)), Some(b));
        }
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(char_byte(' '), None);
        assert_eq!(char_byte('\u{144}'), None);
    }
}
