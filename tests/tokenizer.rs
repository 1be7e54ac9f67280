//! slimlm's compact tokenizer against the `tokenizers` crate (the Hugging Face implementation), on every
//! corpus in ../shared and on edge cases of GPT-2's pre-tokenization.

mod common;

use slimlm::Tokenizer;

fn both() -> (Tokenizer, tokenizers::Tokenizer) {
    let dir = common::ref_model("ref-gpt2");
    let ours = Tokenizer::from_dir(&dir).unwrap();
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    (ours, hf)
}

fn hf_ids(hf: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    hf.encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn matches_hugging_face_on_every_corpus() {
    let (ours, hf) = both();
    let mut files = 0;
    for sub in ["corpora/udhr", "corpora/heldout"] {
        for e in std::fs::read_dir(common::shared().join(sub)).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let (a, b) = (ours.encode(&text).unwrap(), hf_ids(&hf, &text));
            if a != b {
                let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                panic!(
                    "{}: first difference at token {at}: {:?} vs {:?}",
                    path.display(),
                    &a[at..(at + 5).min(a.len())],
                    &b[at..(at + 5).min(b.len())]
                );
            }
            assert_eq!(
                ours.decode(&a).unwrap(),
                hf.decode(&b, false).unwrap(),
                "{}",
                path.display()
            );
            files += 1;
        }
    }
    assert!(files >= 42, "only {files} corpus files");
}

#[test]
fn matches_hugging_face_on_edge_cases() {
    let (ours, hf) = both();
    let cases = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "a  b",
        "a \n b",
        "a\n\nb",
        "trailing   ",
        "  leading",
        "tab\t\tx",
        "it's they're we've I'm you'll he'd 'S 'tis",
        "x'''s",
        "\"quoted\"'s",
        "numbers 12345 3.14 1,000,000 ٣٤٥ ½",
        "emoji 🎉🎉 ok",
        "mixed Русский 中文 日本語 العربية हिन्दी",
        "<|endoftext|>",
        "a<|endoftext|>b",
        "<|endoftext|><|endoftext|> x",
        "<|endoftext",
        "\u{00a0}nbsp \u{2003}em\u{3000}ideographic",
        "cafe\u{0301} e\u{0301}",
        "\r\n windows \r\n",
        "def f(x):\n    return x ** 2\n\n\n",
        "ZWJ 👩\u{200d}💻",
        "\u{0}\u{1}control\u{7f}",
    ];
    for c in cases {
        assert_eq!(ours.encode(c).unwrap(), hf_ids(&hf, c), "{c:?}");
    }
}

#[test]
fn vocab_merges_files_give_the_same_tokenizer() {
    let dir = common::ref_model("ref-gpt2");
    let tmp = common::scratch_dir("tok-vocab-merges");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let (a, b) = (
        Tokenizer::from_dir(&dir).unwrap(),
        Tokenizer::from_dir(&tmp).unwrap(),
    );
    let text = std::fs::read_to_string(common::shared().join("corpora/heldout/de-DE.txt")).unwrap();
    assert_eq!(a.encode(&text).unwrap(), b.encode(&text).unwrap());
    assert_eq!(b.token_id("<|endoftext|>"), Some(50256));
    assert_eq!(b.vocab_size(), 50257);
}

#[test]
fn bad_tokenizer_files_are_errors() {
    let tmp = common::scratch_dir("tok-bad");
    std::fs::write(tmp.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = Tokenizer::from_dir(&tmp).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_file(tmp.join("tokenizer.json")).unwrap();
    assert!(Tokenizer::from_dir(&tmp)
        .unwrap_err()
        .to_string()
        .contains("vocab.json"));
    let (ours, _) = both();
    assert!(ours.decode(&[50257]).is_err());
}
