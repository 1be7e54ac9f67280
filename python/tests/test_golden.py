"""Logits, log-probabilities, hidden states and greedy continuations against transformers' goldens, for
every prompt of every reference model (../shared/models/*/golden), through the Python API."""

import numpy as np
import pytest

from conftest import REFERENCE_MODELS, golden, model_dir, open_model

BOUND = 1e-3


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def prompts(name):
    meta, tensors = golden(name)
    for p in meta["prompts"]:
        yield p, meta["prompts"][p], {
            k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == p
        }


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_logits_and_logprobs_match_transformers(name):
    model = open_model(name)
    n = 0
    for pname, meta, t in prompts(name):
        ids = t["input_ids"].astype(np.int64).tolist()
        assert model.tokenizer.encode(meta["text"]) == ids, pname
        s = model.session()
        last = s.prefill(ids)
        assert last.dtype == np.float32 and last.shape == t["last_logits"].shape
        assert np.abs(last - t["last_logits"]).max() <= BOUND, pname
        # Every position in one prefill, then teacher-forced one token at a time through the KV cache.
        s.reset()
        rows = s.prefill(ids, all_logits=True)
        assert rows.shape == (len(ids), model.config["vocab_size"])
        assert np.abs(rows[-1] - last).max() <= BOUND  # batched head: same up to rounding
        s.reset()
        steps = [s.step(i) for i in ids]
        assert np.abs(steps[-1] - t["last_logits"]).max() <= BOUND, pname
        if len(ids) > 1:
            lp = log_softmax(rows[:-1])[np.arange(len(ids) - 1), ids[1:]]
            assert np.abs(lp - t["next_token_logprobs"]).max() <= BOUND, pname
            lp_steps = log_softmax(np.stack(steps[:-1]))[np.arange(len(ids) - 1), ids[1:]]
            assert np.abs(lp_steps - t["next_token_logprobs"]).max() <= BOUND, pname
        assert s.position == len(ids)
        n += 1
    assert n == len(golden(name)[0]["prompts"]) >= 11


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_hidden_states_match_transformers(name):
    model = open_model(name)
    for pname, meta, t in prompts(name):
        ids = t["input_ids"].astype(np.int64).tolist()
        hs = model.hidden_states(ids)
        want = list(t["last_hidden_per_layer"])
        if "last_hidden_final" in t:
            want.append(t["last_hidden_final"])
        assert len(hs) == len(want) == model.config["n_layer"] + 1, pname
        for i, (h, w) in enumerate(zip(hs, want)):
            assert h.shape == (len(ids), w.shape[0]), (pname, i)
            rel = np.abs(h[-1] - w).max() / np.abs(w).max()
            assert rel <= BOUND, (pname, i, rel)


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_greedy_continuations_match_transformers(name):
    meta_all, _ = golden(name)
    model = open_model(name)
    for pname, meta, t in prompts(name):
        ids = t["input_ids"].astype(np.int64).tolist()
        want = t["greedy_ids"].astype(np.int64).tolist()
        got = model.generate(ids, max_tokens=meta_all["greedy_new_tokens"]).ids
        # Equal up to the first step where transformers' own top-2 logits were a near tie.
        ties = meta.get("near_tie_positions", [])
        upto = min(ties) if ties else len(want)
        assert got[:upto] == want[:upto], pname
        if not ties:
            assert got == want, pname


@pytest.mark.parametrize("name", ["ref-neox-seq"])
def test_golden_perplexity(name):
    """A held-out perplexity of golden.json, by the same rule, within 1e-3 relative (the Rust tests
    check them all; tests/test_perplexity.py checks the Python values equal the command line's)."""
    import slimlm
    from conftest import HELDOUT

    meta, _ = golden(name)
    model = open_model(name)
    checked = 0
    for key, p in list(meta["perplexity"].items())[:1]:
        text = (HELDOUT / p["file"]).read_text()
        r = slimlm.perplexity(model, text, p["context"], p["stride"])
        assert r["tokens_scored"] == p["tokens_scored"], key
        assert r["ppl"] == pytest.approx(p["ppl"], rel=BOUND), key
        checked += 1
    assert checked == 1
    assert model_dir(name).is_dir()
