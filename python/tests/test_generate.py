"""Generation, streaming, sampling, stop strings, log-probabilities and sessions."""

import numpy as np
import pytest

import slimlm
from conftest import model_dir, open_model

PROMPT = "To install a package with APT, the administrator runs"
# ref-gpt2 continues this prompt in Arabic letters, each a 2-byte character split over two byte tokens.
ARABIC = "كل الناس يولدون أحرارا"


def utf8_complete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_generate_equals_the_command_line(gpt2, cli):
    c = gpt2.generate(PROMPT, max_tokens=32)
    j = cli("generate", "--model", model_dir("ref-gpt2"), "--prompt", PROMPT, "--max-tokens", 32)
    assert c.prompt_ids == j["prompt_ids"]
    assert c.ids == j["generated_ids"]
    assert c.text == j["text"]
    assert c.generated_tokens == j["generated_tokens"] == 32
    assert c.finish_reason == "length"
    assert str(c) == c.text
    # Token ids as the prompt give the same.
    assert gpt2.generate(c.prompt_ids, max_tokens=32).ids == c.ids


@pytest.mark.parametrize("name", ["ref-opt", "ref-neox", "ref-bloom"])
def test_generate_other_families_equal_the_command_line(name, cli):
    m = open_model(name)
    c = m.generate("Debian", max_tokens=12)
    j = cli("generate", "--model", model_dir(name), "--prompt", "Debian", "--max-tokens", 12)
    assert (c.prompt_ids, c.ids, c.text) == (j["prompt_ids"], j["generated_ids"], j["text"])


def test_sampling_equals_the_command_line(gpt2, cli):
    kw = dict(temperature=0.8, top_k=40, top_p=0.95, seed=7)
    c = gpt2.generate(PROMPT, max_tokens=24, **kw)
    j = cli(
        "generate", "--model", model_dir("ref-gpt2"), "--prompt", PROMPT, "--max-tokens", 24,
        "--temperature", 0.8, "--top-k", 40, "--top-p", 0.95, "--seed", 7,
    )
    assert c.ids == j["generated_ids"]
    assert gpt2.generate(PROMPT, max_tokens=24, **kw).ids == c.ids
    assert gpt2.generate(PROMPT, max_tokens=24, **{**kw, "seed": 8}).ids != c.ids
    # temperature 0 is greedy
    assert gpt2.generate(PROMPT, max_tokens=8, temperature=0.0).ids == gpt2.generate(PROMPT, max_tokens=8).ids


def test_stream_pieces_are_whole_characters_spanning_tokens(gpt2):
    st = gpt2.stream(ARABIC, max_tokens=24)
    assert st.finish_reason is None
    pieces = list(st)
    c = st.completion()
    tok = gpt2.tokenizer
    # The continuation has characters whose bytes span tokens ...
    split = [i for i in c.ids if not utf8_complete(tok.token_bytes(i))]
    assert len(split) >= 4
    # ... yet every piece is whole characters, and together they are the text.
    assert "\ufffd" not in c.text
    assert all(p and "\ufffd" not in p for p in pieces)
    assert "".join(pieces) == c.text == tok.decode(c.ids) == st.text
    assert len(pieces) < len(c.ids)
    assert st.ids == c.ids and st.finish_reason == "length"
    assert c.ids == gpt2.generate(ARABIC, max_tokens=24).ids
    assert tok.decode_pieces(c.ids) == pieces


def test_eos_is_included_and_ignore_eos_continues(gpt2, cli):
    # ref-gpt2 ends "Hello.\n\n" with <|endoftext|> after 2 tokens.
    eos = gpt2.eos_token_ids
    assert eos == [50256]
    c = gpt2.generate("Hello.\n\n", max_tokens=100)
    assert c.finish_reason == "eos" and c.ids[-1] == 50256 and len(c.ids) == 2
    assert c.text.endswith("<|endoftext|>")
    j = cli("generate", "--model", model_dir("ref-gpt2"), "--prompt", "Hello.\n\n", "--max-tokens", 100)
    assert c.ids == j["generated_ids"] and c.text == j["text"]
    st = gpt2.stream("Hello.\n\n", max_tokens=100)
    assert "".join(st) == c.text and st.finish_reason == "eos"
    more = gpt2.generate("Hello.\n\n", max_tokens=20, ignore_eos=True)
    assert more.ids[:2] == c.ids and len(more.ids) == 20 and more.finish_reason == "length"


def test_stop_strings(gpt2):
    full = gpt2.generate(PROMPT, max_tokens=40)
    assert "\n" in full.text
    c = gpt2.generate(PROMPT, max_tokens=40, stop=["\n"])
    assert c.finish_reason == "stop"
    assert c.text == full.text[: full.text.index("\n")]
    assert full.ids[: len(c.ids)] == c.ids
    assert "\n" in gpt2.tokenizer.decode(c.ids)
    st = gpt2.stream(PROMPT, max_tokens=40, stop=["\n"])
    assert "".join(st) == c.text and st.finish_reason == "stop"
    # A multi-token stop string is never partly streamed.
    word = full.text.split()[3]
    pieces = list(gpt2.stream(PROMPT, max_tokens=40, stop=[word]))
    assert "".join(pieces) == full.text[: full.text.index(word)]
    with pytest.raises(slimlm.InputError):
        gpt2.generate(PROMPT, stop=[""])


def test_logprobs_are_the_models(gpt2):
    c = gpt2.generate(PROMPT, max_tokens=10, logprobs=True)
    assert c.logprobs.dtype == np.float32 and c.logprobs.shape == (10,)
    s = gpt2.session()
    rows = s.prefill(c.prompt_ids + c.ids[:-1], all_logits=True)[len(c.prompt_ids) - 1 :]
    x = rows.astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    want = x[np.arange(10), c.ids] - lse
    np.testing.assert_allclose(c.logprobs, want, atol=1e-4)
    assert gpt2.generate(PROMPT, max_tokens=3).logprobs is None
    st = gpt2.stream(PROMPT, max_tokens=10, logprobs=True)
    np.testing.assert_array_equal(st.completion().logprobs, c.logprobs)


def test_generation_limits(gpt2):
    c = gpt2.generate(PROMPT, max_tokens=0)
    assert c.ids == [] and c.text == "" and c.finish_reason == "length"
    n_ctx = gpt2.config["n_ctx"]
    ids = gpt2.tokenizer.encode(PROMPT)
    with pytest.raises(slimlm.InputError, match="exceeds the context length"):
        gpt2.generate(ids, max_tokens=n_ctx)
    assert len(gpt2.generate(ids, max_tokens=n_ctx - len(ids) + 1, ignore_eos=True).ids) == n_ctx - len(ids) + 1
    with pytest.raises(ValueError):  # InputError is a ValueError
        gpt2.generate("")
    with pytest.raises(slimlm.InputError, match="top-p"):
        gpt2.generate(PROMPT, temperature=1.0, top_p=0.0)
    with pytest.raises(slimlm.InputError, match="temperature"):
        gpt2.generate(PROMPT, temperature=-1.0)


def test_session_prefill_step_rewind_reset(gpt2):
    ids = gpt2.tokenizer.encode(PROMPT)
    a, b = ids[:5], ids[5:]
    s = gpt2.session(threads=1)
    assert s.threads == 1 and s.position == 0 and s.n_ctx == 512
    full = s.prefill(ids)
    assert full.shape == (50257,) and full.dtype == np.float32 and full.flags.writeable
    assert s.position == len(ids)
    np.testing.assert_array_equal(s.last_logits(), full)
    s.reset()
    assert s.position == 0
    s.prefill(a)
    part = s.prefill(b)
    np.testing.assert_allclose(part, full, atol=1e-4)
    # Rewind to the prefix and continue differently, then back.
    s.rewind(5)
    assert s.position == 5
    again = s.prefill(b)
    np.testing.assert_array_equal(again, part)
    s.rewind(len(ids) - 1)
    last = s.step(ids[-1])
    np.testing.assert_allclose(last, full, atol=1e-4)
    s.threads = 2
    assert s.threads == 2
    assert s.kv_cache_bytes > 0
    # Arrays returned are the caller's: the next step does not change them.
    before = last.copy()
    s.step(ids[0])
    np.testing.assert_array_equal(last, before)
    # numpy int arrays are accepted as ids
    s.reset()
    np.testing.assert_array_equal(s.prefill(np.array(ids, dtype=np.int64)), s.last_logits())


def test_model_logits_and_linear_outputs(gpt2):
    ids = gpt2.tokenizer.encode(PROMPT)
    rows = gpt2.logits(ids)
    assert rows.shape == (len(ids), 50257)
    outs = gpt2.linear_outputs(ids)
    assert set(c for _, c in outs) == {"attn_qkv", "attn_out", "mlp_in", "mlp_out"}
    assert outs[(0, "attn_qkv")].shape == (len(ids), 3 * 256)
    assert outs[(5, "mlp_in")].shape == (len(ids), 1024)
    hs = gpt2.hidden_states(PROMPT)
    assert len(hs) == 7 and all(h.shape == (len(ids), 256) for h in hs)


def test_tokenizer(gpt2):
    t = gpt2.tokenizer
    ids = t.encode("Hello world")
    assert ids == [15496, 995]
    assert t.decode(ids) == "Hello world"
    assert t.vocab_size == len(t) == 50257
    assert t.token_id("<|endoftext|>") == 50256
    assert t.token_bytes(995) == b" world"
    opt = open_model("ref-opt").tokenizer
    assert opt.encode("Hi")[0] == 2 and opt.encode_plain("Hi")[0] != 2
    with pytest.raises(slimlm.InputError, match="out of range"):
        t.decode([10**6])


def test_config_and_inspect(gpt2, cli):
    c = gpt2.config
    assert (c["arch"], c["n_layer"], c["d_model"], c["n_head"], c["n_ctx"]) == ("gpt2", 6, 256, 8, 512)
    assert c["eos_token_ids"] == [50256] and c["positions"]["kind"] == "learned"
    assert gpt2.hf_config["n_embd"] == 256
    assert open_model("ref-bloom").config["positions"] == {"kind": "alibi"}
    assert open_model("ref-neox").config["positions"]["kind"] == "rotary"
    assert gpt2.copied_bytes == 0 and gpt2.weight_bytes > 0
    d = model_dir("ref-gpt2")
    m = slimlm.Model.open(d)
    assert m.inspect() == cli("inspect", d)
