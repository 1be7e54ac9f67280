"""slimlm.perplexity against `slimlm perplexity --json`, and its per-token NLL."""

import numpy as np
import pytest

import slimlm
from conftest import HELDOUT, assert_same, model_dir, open_model

CLI_KEYS = ["ppl", "mean_nll", "tokens_scored", "tokens", "windows", "context", "stride"]


def short_text(tmp_path, name="en-US.txt", chars=6000):
    text = (HELDOUT / name).read_text()[:chars]
    p = tmp_path / name
    p.write_text(text)
    return text, p


@pytest.mark.parametrize(
    "name,context,stride",
    [("ref-gpt2", 256, 256), ("ref-gpt2", 128, 64), ("ref-opt", 256, 256), ("ref-bloom", 200, 100)],
)
def test_perplexity_equals_the_command_line(tmp_path, cli, name, context, stride):
    text, path = short_text(tmp_path)
    model = open_model(name)
    r = slimlm.perplexity(model, text, context, stride)
    j = cli("perplexity", "--model", model_dir(name), "--text", path, "--context", context, "--stride", stride)
    assert_same({k: r[k] for k in CLI_KEYS}, {k: j[k] for k in CLI_KEYS})
    assert r["model"] == j["model"]
    # Per-token NLL: one per scored token, in order; their mean is mean_nll.
    nll, ids = r["nll"], r["ids"]
    assert nll.dtype == np.float64 and nll.shape == (r["tokens_scored"],)
    assert ids.dtype == np.uint32 and ids.tolist() == model.tokenizer.encode(text)
    assert nll.sum() / len(nll) == pytest.approx(r["mean_nll"], rel=1e-12)
    assert (nll > 0).all()


def test_per_token_nll_is_the_first_windows(gpt2):
    """nll[i] is -log p(ids[i+1] | the window that first predicts it)."""
    text = (HELDOUT / "en-US.txt").read_text()[:1500]
    r = slimlm.perplexity(gpt2, text, 64, 32)
    ids = r["ids"].tolist()
    rows = gpt2.logits(ids[:64]).astype(np.float64)
    lse = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    want = lse[:63] - rows[np.arange(63), ids[1:64]]
    np.testing.assert_allclose(r["nll"][:63], want, rtol=1e-5)


def test_perplexity_takes_paths_ids_threads_and_progress(gpt2):
    text = (HELDOUT / "de-DE.txt").read_text()[:3000]
    a = slimlm.perplexity(gpt2, text)
    b = slimlm.perplexity(model_dir("ref-gpt2"), a["ids"].tolist(), threads=1)
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-9)
    calls = []
    slimlm.perplexity(gpt2, text, 128, 128, progress=lambda d, t, s: calls.append((d, t, s)))
    assert calls and calls[-1][0] == calls[-1][1] and calls[0][2] == "perplexity"
    assert [d for d, _, _ in calls] == list(range(1, len(calls) + 1))


def test_perplexity_errors(gpt2):
    with pytest.raises(slimlm.InputError, match="context"):
        slimlm.perplexity(gpt2, "Hello world, again", 1000, 10)
    with pytest.raises(slimlm.InputError, match="stride"):
        slimlm.perplexity(gpt2, "Hello world, again", 16, 32)
    with pytest.raises(slimlm.InputError, match="fewer than 2 tokens"):
        slimlm.perplexity(gpt2, "Hi")

    def boom(done, total, stage):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        slimlm.perplexity(gpt2, "Hello world, and hello again to all of you.", 4, 4, progress=boom)
