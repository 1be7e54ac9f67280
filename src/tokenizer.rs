//! The GPT-2 byte-level BPE tokenizer, through the `tokenizers` crate.

use std::path::Path;

use crate::error::{Error, Result};

/// Text ⇄ token ids for a model directory.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab={})", self.vocab_size())
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, or builds the byte-level BPE from `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        let inner = if json.exists() {
            tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", json.display())))?
        } else {
            let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
            if !vocab.exists() || !merges.exists() {
                return Err(Error::Tokenizer(format!(
                    "{}: no tokenizer.json, nor vocab.json + merges.txt",
                    dir.display()
                )));
            }
            from_vocab_merges(&vocab, &merges)?
        };
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with no special tokens added (no BOS), as transformers' GPT-2 tokenizer does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept, as text).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Number of ids the tokenizer knows (special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, e.g. `<|endoftext|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", vocab.display())))?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    t.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    Ok(t)
}
