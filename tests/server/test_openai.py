"""Black-box tests of `slimlm serve` with the official `openai` client (and raw HTTP where the client
would hide what is tested: status codes, headers, the SSE framing, disconnects).

The model is ref-gpt2 (GPT-2 tokenizer, context 512, <|endoftext|> = 50256)."""

import concurrent.futures as cf
import http.client as httpclient
import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import openai
import pytest

from conftest import (
    MODEL_ID,
    Server,
    cli_generate,
    heldout_prompts,
    http,
    metrics,
    stop_and_check,
    wait_metric,
)

TIMEOUT = 60  # seconds, for every client call
EOS = 50256
VOCAB = 50257
CONTEXT = 512

# Prompts whose greedy continuations are known to run without <|endoftext|> (long, repetitive text).
LONG_PROMPT = "The apt-cache command can display much of the information"
# A prompt whose greedy continuation is ".<|endoftext|>" under the reference model.
EOS_PROMPT = "import os"
# Prompts with varied greedy output (for stop strings and logprobs).
VARIED_PROMPT = "In Python, a list is"
DEBIAN_IDS = [464, 26062, 5301, 4706]  # "The Debian package manager"


def client(url, timeout=TIMEOUT):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout)


def complete(url, **kw):
    kw.setdefault("model", MODEL_ID)
    return client(url).completions.create(**kw)


def greedy(url, prompt, max_tokens, **kw):
    return complete(url, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def post(url, body, timeout=TIMEOUT, headers=None):
    """POST /v1/completions with raw bytes or a JSON value: (status, headers, parsed JSON or bytes)."""
    if not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    status, hdrs, raw = http(url + "/v1/completions", "POST", body,
                             {"Content-Type": "application/json", **(headers or {})}, timeout)
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


def assert_error_body(body, status):
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
        f"status {status}: the body is not an OpenAI error object: {body!r}"
    )
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], f"error without a message: {body!r}"
    for key in ("type", "param", "code"):
        assert key in err, f"error without {key!r}: {body!r}"
    return err


def sse_events(resp, limit=None):
    """Yields the `data:` payloads of a text/event-stream response, read line by line."""
    n = 0
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        yield line[5:].strip()
        n += 1
        if limit is not None and n >= limit:
            return


def open_stream(url, body, timeout=TIMEOUT):
    """Starts a streaming completion on a raw connection: (connection, response)."""
    u = urlsplit(url)
    conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


# ---- plain completions ---------------------------------------------------------------------------


def test_greedy_completion_shape_and_usage(base_url):
    r = complete(base_url, model="gpt-3.5-turbo-instruct", prompt=LONG_PROMPT, max_tokens=8,
                 temperature=0)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert isinstance(r.created, int) and r.created > 1_600_000_000
    assert r.model == MODEL_ID, "the response names the served model, whatever the request said"
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.text, "empty completion"
    assert c.logprobs is None
    assert c.finish_reason == "length"
    u = r.usage
    assert u.prompt_tokens > 0
    assert u.completion_tokens == 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_default_max_tokens_is_16(base_url):
    r = complete(base_url, prompt=LONG_PROMPT, temperature=0)
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("prompt", [LONG_PROMPT, VARIED_PROMPT, "The Debian package manager",
                                    "def main():"])
def test_greedy_equals_cli(base_url, prompt):
    n = 24
    cli = cli_generate(prompt=prompt, max_tokens=n)
    ids = cli["generated_ids"]
    assert EOS not in ids, "choose prompts whose greedy continuation has no end-of-text"
    r = greedy(base_url, prompt, n)
    assert r.choices[0].text == cli["text"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == cli["prompt_tokens"]
    assert r.usage.completion_tokens == n
    # The same prompt given as token ids.
    r2 = greedy(base_url, cli["prompt_ids"], n)
    assert r2.choices[0].text == cli["text"]
    assert r2.usage.prompt_tokens == len(cli["prompt_ids"])


def test_end_of_text_stops_generation(base_url):
    cli = cli_generate(prompt=EOS_PROMPT, max_tokens=16)
    ids = cli["generated_ids"]
    assert EOS in ids, f"{EOS_PROMPT!r} no longer ends with <|endoftext|> under greedy: {cli['text']!r}"
    before = ids[: ids.index(EOS)]
    expected = cli["text"].split("<|endoftext|>")[0]
    r = greedy(base_url, EOS_PROMPT, 16)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert c.text == expected, "the end-of-text token is not part of the text"
    assert "<|endoftext|>" not in c.text
    assert r.usage.completion_tokens in (len(before), len(before) + 1)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


# ---- prompt forms and echo -----------------------------------------------------------------------


def test_prompt_forms_agree(base_url):
    text = greedy(base_url, "The Debian package manager", 12).choices[0].text
    for prompt in (["The Debian package manager"], DEBIAN_IDS, [DEBIAN_IDS]):
        r = greedy(base_url, prompt, 12)
        assert r.choices[0].text == text, f"prompt {prompt!r}"
        assert r.usage.prompt_tokens == len(DEBIAN_IDS)


def test_token_id_prompt_equals_cli(base_url):
    ids = [198, 464, 2393, 318]  # arbitrary valid ids, including a newline
    cli = cli_generate(prompt_ids=ids, max_tokens=12)
    r = greedy(base_url, ids, 12)
    cut = cli["generated_ids"]
    if EOS in cut:
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].text == cli["text"].split("<|endoftext|>")[0]
    else:
        assert r.choices[0].text == cli["text"]
        assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(ids)


def test_echo(base_url):
    prompt = "The Debian package manager"
    plain = greedy(base_url, prompt, 10)
    echoed = greedy(base_url, prompt, 10, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens
    assert echoed.usage.prompt_tokens == plain.usage.prompt_tokens
    # Token-id prompts echo their decoded text.
    by_ids = greedy(base_url, DEBIAN_IDS, 10, echo=True)
    assert by_ids.choices[0].text == prompt + plain.choices[0].text


# ---- streaming -----------------------------------------------------------------------------------


def collect_stream(url, **kw):
    kw.setdefault("model", MODEL_ID)
    texts, finishes = [], []
    for chunk in client(url).completions.create(stream=True, **kw):
        assert chunk.object == "text_completion"
        assert chunk.model == MODEL_ID
        assert chunk.id.startswith("cmpl-")
        assert len(chunk.choices) == 1 and chunk.choices[0].index == 0
        texts.append(chunk.choices[0].text or "")
        finishes.append(chunk.choices[0].finish_reason)
    return texts, finishes


def assert_one_final_finish(finishes, expected):
    assert finishes, "no chunk"
    assert finishes[-1] == expected, f"finish reasons: {finishes}"
    assert all(f is None for f in finishes[:-1]), f"finish_reason before the last chunk: {finishes}"


@pytest.mark.parametrize("prompt,max_tokens", [(LONG_PROMPT, 20), (VARIED_PROMPT, 32),
                                               (EOS_PROMPT, 16)])
def test_stream_equals_non_streamed(base_url, prompt, max_tokens):
    full = greedy(base_url, prompt, max_tokens)
    texts, finishes = collect_stream(base_url, prompt=prompt, max_tokens=max_tokens, temperature=0)
    assert "".join(texts) == full.choices[0].text
    assert_one_final_finish(finishes, full.choices[0].finish_reason)
    if full.choices[0].finish_reason == "length":
        assert sum(1 for t in texts if t) >= 2, "the text came in one piece: not streamed"


def test_stream_sse_framing(base_url):
    conn, resp = open_stream(base_url, {"prompt": LONG_PROMPT, "max_tokens": 6, "temperature": 0})
    try:
        assert resp.status == 200
        assert resp.getheader("Content-Type", "").startswith("text/event-stream")
        events = list(sse_events(resp))
    finally:
        conn.close()
    assert events and events[-1] == "[DONE]", f"the stream does not end with [DONE]: {events[-3:]}"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == greedy(base_url, LONG_PROMPT, 6).choices[0].text


def test_stream_echo(base_url):
    prompt = "The Debian package manager"
    plain = greedy(base_url, prompt, 8).choices[0].text
    texts, finishes = collect_stream(base_url, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert "".join(texts) == prompt + plain
    assert_one_final_finish(finishes, "length")


# ---- stop strings --------------------------------------------------------------------------------


def pick_stop(text, min_at=8):
    """A stop string taken from the middle of `text`: a word start at or after `min_at` whose first
    occurrence is there, 6 to 10 characters long (so that it spans several tokens)."""
    for i in range(min_at, len(text) - 6):
        if text[i - 1] not in " \n" or text[i] in " \n":
            continue
        stop = text[i:i + 10].rstrip()
        if len(stop) >= 6 and text.find(stop) == i:
            return stop, text[:i]
    raise AssertionError(f"no usable stop string in {text!r}")


def varied_greedy(url, n=32):
    text = greedy(url, VARIED_PROMPT, n).choices[0].text
    assert len(text) > 30, f"greedy output too short for stop tests: {text!r}"
    return text


def test_stop_string(base_url):
    text = varied_greedy(base_url)
    stop, prefix = pick_stop(text)
    r = greedy(base_url, VARIED_PROMPT, 32, stop=stop)
    assert r.choices[0].text == prefix, f"stop {stop!r}"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 32
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stop_list_first_match_wins(base_url):
    text = varied_greedy(base_url)
    stop, prefix = pick_stop(text)
    later, _ = pick_stop(text, min_at=len(prefix) + len(stop))
    r = greedy(base_url, VARIED_PROMPT, 32, stop=["qqqzzz never", later, stop])
    assert r.choices[0].text == prefix
    assert r.choices[0].finish_reason == "stop"


def test_stop_string_not_reached(base_url):
    text = varied_greedy(base_url)
    r = greedy(base_url, VARIED_PROMPT, 32, stop=["qqqzzz never", "@@@@"])
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == "length"


def test_stop_string_streaming_does_not_leak(base_url):
    text = varied_greedy(base_url)
    stop, prefix = pick_stop(text)
    texts, finishes = collect_stream(base_url, prompt=VARIED_PROMPT, max_tokens=32, temperature=0,
                                     stop=[stop])
    got = "".join(texts)
    assert got == prefix, f"stop {stop!r}: chunks {texts!r}"
    assert stop[0] not in "".join(texts)[len(prefix):]
    assert_one_final_finish(finishes, "stop")


def test_stop_with_echo_applies_to_completion_only(base_url):
    prompt = "The Debian package manager"
    plain = greedy(base_url, prompt, 12).choices[0].text
    # "Debian" is in the prompt; the stop string only looks at generated text.
    r = greedy(base_url, prompt, 12, echo=True, stop=["package manager"])
    if "package manager" in plain:
        i = plain.find("package manager")
        assert r.choices[0].text == prompt + plain[:i]
    else:
        assert r.choices[0].text == prompt + plain


# ---- logprobs ------------------------------------------------------------------------------------


def test_logprobs_greedy(base_url):
    r = greedy(base_url, VARIED_PROMPT, 16, logprobs=3)
    c = r.choices[0]
    lp = c.logprobs
    assert lp is not None
    n = r.usage.completion_tokens
    assert n == 16
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    for i, (tok, lpv, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        assert lpv <= 1e-6, f"token {i}: logprob {lpv} > 0"
        assert len(top) == 3, f"token {i}: top_logprobs {top}"
        assert all(v <= 1e-6 for v in top.values())
        assert abs(lpv - max(top.values())) <= 1e-5, f"token {i}: greedy pick {lpv} is not the max of {top}"
        assert tok in top and abs(top[tok] - lpv) <= 1e-5
    for i in range(n - 1):
        assert lp.text_offset[i + 1] - lp.text_offset[i] == len(lp.tokens[i])
    # The same text as without logprobs.
    assert c.text == greedy(base_url, VARIED_PROMPT, 16).choices[0].text


def test_logprobs_zero_and_sampled(base_url):
    r = greedy(base_url, LONG_PROMPT, 8, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == 8
    assert all(v <= 1e-6 for v in lp.token_logprobs)
    # Sampled tokens: the logprob is that of the chosen token under the model, ≤ the best alternative.
    r = complete(base_url, prompt=VARIED_PROMPT, max_tokens=12, temperature=1.0, seed=7, logprobs=5)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text
    for lpv, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 5
        assert lpv <= max(top.values()) + 1e-5


def test_logprobs_streaming(base_url):
    full = greedy(base_url, VARIED_PROMPT, 8, logprobs=2)
    toks, lps = [], []
    for chunk in client(base_url).completions.create(model=MODEL_ID, prompt=VARIED_PROMPT, max_tokens=8,
                                                     temperature=0, logprobs=2, stream=True):
        lp = chunk.choices[0].logprobs
        if lp is not None:
            toks += lp.tokens
            lps += lp.token_logprobs
    assert toks == full.choices[0].logprobs.tokens
    assert lps == pytest.approx(full.choices[0].logprobs.token_logprobs, abs=1e-5)


# ---- sampling ------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible(base_url):
    kw = dict(prompt=VARIED_PROMPT, max_tokens=32, temperature=0.9)
    a = complete(base_url, seed=123, **kw).choices[0].text
    b = complete(base_url, seed=123, **kw).choices[0].text
    c = complete(base_url, seed=124, **kw).choices[0].text
    assert a == b
    assert a != c, "two seeds gave the same 32 sampled tokens"


def test_seeded_streaming_equals_non_streamed(base_url):
    kw = dict(prompt=VARIED_PROMPT, max_tokens=24, temperature=0.9, seed=99, top_p=0.95,
              extra_body={"top_k": 40})
    a = complete(base_url, **kw).choices[0].text
    texts, _ = collect_stream(base_url, **kw)
    assert "".join(texts) == a


def test_top_k_1_and_tiny_top_p_are_greedy(base_url):
    g = greedy(base_url, VARIED_PROMPT, 20).choices[0].text
    k1 = complete(base_url, prompt=VARIED_PROMPT, max_tokens=20, temperature=1.0, seed=5,
                  extra_body={"top_k": 1})
    assert k1.choices[0].text == g
    p0 = complete(base_url, prompt=VARIED_PROMPT, max_tokens=20, temperature=1.0, top_p=1e-6, seed=5)
    assert p0.choices[0].text == g


# ---- errors --------------------------------------------------------------------------------------

OK = {"prompt": "Hello", "max_tokens": 2}

BAD_REQUESTS = [
    ("not json", b"{not json"),
    ("truncated json", b'{"prompt": "Hello", "max_tokens": '),
    ("array body", [1, 2, 3]),
    ("no prompt", {"max_tokens": 2}),
    ("prompt number", {**OK, "prompt": 42}),
    ("prompt object", {**OK, "prompt": {"text": "Hello"}}),
    ("prompt mixed list", {**OK, "prompt": [464, "a"]}),
    ("prompt two strings", {**OK, "prompt": ["Hello", "world"]}),
    ("empty prompt", {**OK, "prompt": ""}),
    ("empty prompt list", {**OK, "prompt": []}),
    ("empty id list", {**OK, "prompt": [[]]}),
    ("list of empty string", {**OK, "prompt": [""]}),
    ("token id = vocab", {**OK, "prompt": [464, VOCAB]}),
    ("token id huge", {**OK, "prompt": [2**40]}),
    ("negative token id", {**OK, "prompt": [-1]}),
    ("float token id", {**OK, "prompt": [464.5]}),
    ("max_tokens string", {**OK, "max_tokens": "2"}),
    ("max_tokens negative", {**OK, "max_tokens": -1}),
    ("temperature negative", {**OK, "temperature": -0.5}),
    ("temperature string", {**OK, "temperature": "hot"}),
    ("top_p above 1", {**OK, "top_p": 1.5}),
    ("top_p negative", {**OK, "top_p": -0.1}),
    ("top_k negative", {**OK, "top_k": -3}),
    ("logprobs 6", {**OK, "logprobs": 6}),
    ("logprobs negative", {**OK, "logprobs": -1}),
    ("logprobs string", {**OK, "logprobs": "3"}),
    ("n 2", {**OK, "n": 2}),
    ("n 0", {**OK, "n": 0}),
    ("empty stop", {**OK, "stop": ""}),
    ("empty stop in list", {**OK, "stop": ["a", ""]}),
    ("five stops", {**OK, "stop": ["a", "b", "c", "d", "e"]}),
    ("stop number", {**OK, "stop": 3}),
    ("echo with logprobs", {**OK, "echo": True, "logprobs": 1}),
    ("echo string", {**OK, "echo": "yes"}),
    ("stream string", {**OK, "stream": "yes"}),
    ("seed string", {**OK, "seed": "abc"}),
]


@pytest.mark.parametrize("name,body", BAD_REQUESTS, ids=[n for n, _ in BAD_REQUESTS])
def test_bad_request_400(base_url, name, body):
    status, _, resp = post(base_url, body)
    assert status == 400, f"{name}: got {status} {resp!r}"
    err = assert_error_body(resp, status)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("kw,param", [
    (dict(n=2), "n"),
    (dict(logprobs=6), "logprobs"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(stop=""), "stop"),
    (dict(echo=True, logprobs=2), None),
    (dict(prompt=""), "prompt"),
    (dict(prompt=[VOCAB]), "prompt"),
])
def test_bad_request_openai_client(base_url, kw, param):
    args = {"prompt": "Hello", "max_tokens": 2, **kw}
    with pytest.raises(openai.BadRequestError) as ei:
        complete(base_url, **args)
    e = ei.value
    assert e.status_code == 400
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    assert err.get("message"), f"no error message: {e.body!r}"
    if param is not None and err.get("param") is not None:
        assert err["param"] == param


# (CONTEXT, 1) is left out on purpose: a full-context prompt needs no more position to yield one token.
@pytest.mark.parametrize("prompt_len,max_tokens", [(500, 100), (CONTEXT - 1, 3), (CONTEXT, 2),
                                                   (CONTEXT + 88, 1)])
def test_context_length_exceeded(base_url, prompt_len, max_tokens):
    ids = [464] * prompt_len
    with pytest.raises(openai.BadRequestError) as ei:
        complete(base_url, prompt=ids, max_tokens=max_tokens, temperature=0)
    e = ei.value
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    assert err.get("message")
    assert err.get("code") == "context_length_exceeded" or e.code == "context_length_exceeded", e.body


def test_context_exactly_full_is_accepted(base_url):
    r = complete(base_url, prompt=[464] * (CONTEXT - 4), max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == CONTEXT - 4
    assert r.usage.completion_tokens <= 4


def test_body_over_1mib_is_413(base_url):
    body = json.dumps({"prompt": "a" * (1024 * 1024 + 100), "max_tokens": 1}).encode()
    u = urlsplit(base_url)
    conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer before reading the whole body
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 413
    assert_error_body(json.loads(raw), status)
    # Still alive.
    assert http(base_url + "/health")[0] == 200


def test_body_just_under_1mib_is_accepted_or_context_error(base_url):
    # ~0.9 MiB of JSON whitespace around a small request: the size limit must not reject it.
    body = (b" " * (900 * 1024)) + json.dumps({"prompt": "Hello", "max_tokens": 1}).encode()
    status, _, resp = post(base_url, body)
    assert status == 200, resp


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("GET", "/v1/unknown"),
                                         ("POST", "/v1/nothing"), ("GET", "/v2/models")])
def test_unknown_path_404(base_url, method, path):
    status, _, raw = http(base_url + path, method, b"{}" if method == "POST" else None)
    assert status == 404
    assert_error_body(json.loads(raw), status)


def test_openai_client_not_found(base_url):
    with pytest.raises(openai.NotFoundError):
        client(base_url).embeddings.create(model=MODEL_ID, input="hello")


# ---- health, models, metrics ---------------------------------------------------------------------


def test_health(base_url):
    status, headers, raw = http(base_url + "/health")
    assert status == 200
    assert json.loads(raw) == {"status": "ok"}


def test_models(base_url):
    status, _, raw = http(base_url + "/v1/models")
    assert status == 200
    body = json.loads(raw)
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    models = client(base_url).models.list()
    m = models.data[0]
    assert m.id == MODEL_ID
    assert m.object == "model"
    assert m.owned_by == "slimlm"
    assert isinstance(m.created, int)


REQUIRED_METRICS = [
    "slimlm_requests_total", "slimlm_requests_rejected_total", "slimlm_prompt_tokens_total",
    "slimlm_generated_tokens_total", "slimlm_queue_depth", "slimlm_active_sequences",
    "slimlm_kv_cache_bytes",
]
HISTOGRAMS = ["slimlm_batch_size", "slimlm_time_to_first_token_seconds", "slimlm_token_latency_seconds",
              "slimlm_request_duration_seconds"]


def hist(m, name):
    buckets = {k: v for k, v in m.items() if k.startswith(name + "_bucket{")}
    return buckets, m.get(name + "_sum"), m.get(name + "_count")


def test_metrics_exposition(base_url):
    greedy(base_url, LONG_PROMPT, 4)
    status, headers, raw = http(base_url + "/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain")
    m = metrics(base_url)
    for name in REQUIRED_METRICS:
        assert name in m, f"{name} missing from /metrics"
    for name in HISTOGRAMS:
        buckets, s, c = hist(m, name)
        assert buckets, f"{name}_bucket missing"
        assert any('le="+Inf"' in k for k in buckets), f"{name} has no +Inf bucket"
        assert s is not None and c is not None, f"{name}_sum/_count missing"
        inf = [v for k, v in buckets.items() if 'le="+Inf"' in k][0]
        assert inf == c
        values = [v for _, v in sorted(buckets.items(), key=lambda kv: _le(kv[0]))]
        assert values == sorted(values), f"{name} buckets are not cumulative"
    # The gauges may lag the response by a scheduler step (a few ms).
    wait_metric(base_url, "slimlm_active_sequences", lambda v: v == 0, timeout=5)
    wait_metric(base_url, "slimlm_queue_depth", lambda v: v == 0, timeout=5)


def _le(key):
    v = key.split('le="')[1].split('"')[0]
    return float("inf") if v == "+Inf" else float(v)


def test_metrics_counters_increase(base_url):
    before = metrics(base_url)
    r = greedy(base_url, LONG_PROMPT, 10)
    after = metrics(base_url)
    assert after["slimlm_requests_total"] >= before["slimlm_requests_total"] + 1
    assert after["slimlm_prompt_tokens_total"] >= before["slimlm_prompt_tokens_total"] + r.usage.prompt_tokens
    assert (after["slimlm_generated_tokens_total"]
            >= before["slimlm_generated_tokens_total"] + r.usage.completion_tokens)
    for name in ("slimlm_time_to_first_token_seconds", "slimlm_request_duration_seconds",
                 "slimlm_batch_size", "slimlm_token_latency_seconds"):
        assert after[name + "_count"] > before[name + "_count"], name
        assert after[name + "_sum"] >= before[name + "_sum"], name


# ---- concurrency ---------------------------------------------------------------------------------


def test_concurrent_greedy_equals_alone(base_url):
    prompts = heldout_prompts(16)
    alone = [greedy(base_url, p, 24) for p in prompts]
    before = metrics(base_url)
    barrier = threading.Barrier(len(prompts))

    def one(p):
        c = client(base_url, timeout=120)
        barrier.wait(30)
        return c.completions.create(model=MODEL_ID, prompt=p, max_tokens=24, temperature=0)

    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        together = list(ex.map(one, prompts, timeout=300))
    after = metrics(base_url)
    for p, a, t in zip(prompts, alone, together):
        assert t.choices[0].text == a.choices[0].text, f"prompt {p[:40]!r}…"
        assert t.choices[0].finish_reason == a.choices[0].finish_reason
        assert t.usage.model_dump() == a.usage.model_dump()
    # They were decoded together: the mean batch size over this phase is above 1.
    steps = after["slimlm_batch_size_count"] - before["slimlm_batch_size_count"]
    seqs = after["slimlm_batch_size_sum"] - before["slimlm_batch_size_sum"]
    assert steps > 0 and seqs / steps > 1.5, f"mean batch size {seqs / max(steps, 1):.2f}: no batching"


def test_concurrent_streams_equal_alone(base_url):
    prompts = heldout_prompts(6)[2:6]
    alone = [greedy(base_url, p, 16).choices[0].text for p in prompts]

    def one(p):
        texts, finishes = collect_stream(base_url, prompt=p, max_tokens=16, temperature=0)
        assert_one_final_finish(finishes, finishes[-1])
        return "".join(texts)

    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        together = list(ex.map(one, prompts, timeout=300))
    assert together == alone


# ---- overload, disconnects, shutdown -------------------------------------------------------------


def _raw_completion(url, body, timeout=120):
    """(status, headers, parsed body or the exception) of one request on its own connection."""
    u = urlsplit(url)
    conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed
    except Exception as e:  # noqa: BLE001 - reported by the test
        return None, {}, e
    finally:
        conn.close()


@pytest.fixture(scope="module")
def small_server():
    s = Server("--max-batch", 1, "--queue", 1)
    yield s
    stop_and_check(s)


def test_overload_429(small_server):
    url = small_server.url
    before = metrics(url)
    n = 8
    barrier = threading.Barrier(n)
    body = {"prompt": LONG_PROMPT, "max_tokens": 64, "temperature": 0}

    def one(_):
        barrier.wait(30)
        return _raw_completion(url, body)

    with cf.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n), timeout=300))
    statuses = [r[0] for r in results]
    for status, headers, resp in results:
        assert status in (200, 429), f"got {status}: {resp!r}"
        if status == 200:
            c = resp["choices"][0]
            assert c["finish_reason"] in ("length", "stop")
            assert resp["usage"]["completion_tokens"] == 64 or c["finish_reason"] == "stop"
            assert c["text"]
        else:
            assert "retry-after" in headers, f"429 without Retry-After: {headers}"
            assert int(headers["retry-after"]) >= 0
            assert_error_body(resp, status)
    assert statuses.count(429) >= 1, statuses
    assert statuses.count(200) >= 1, statuses
    # All the accepted results are the same greedy text.
    texts = {r[2]["choices"][0]["text"] for r in results if r[0] == 200}
    assert len(texts) == 1
    after = metrics(url)
    assert (after["slimlm_requests_rejected_total"] - before["slimlm_requests_rejected_total"]
            >= statuses.count(429))
    # Still answering, and idle again.
    assert http(url + "/health")[0] == 200
    r = greedy(url, LONG_PROMPT, 4)
    assert r.choices[0].text
    wait_metric(url, "slimlm_active_sequences", lambda v: v == 0, timeout=10)
    wait_metric(url, "slimlm_queue_depth", lambda v: v == 0, timeout=10)


def test_overload_openai_rate_limit_error(small_server):
    """One streaming request running, one waiting: the next is refused with 429 → RateLimitError."""
    url = small_server.url
    body = {"prompt": LONG_PROMPT, "max_tokens": 400, "temperature": 0}
    conn1, resp1 = open_stream(url, body)
    u = urlsplit(url)
    conn2 = httpclient.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    try:
        assert resp1.status == 200
        next(sse_events(resp1))  # the first is decoding
        conn2.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                      headers={"Content-Type": "application/json"})
        wait_metric(url, "slimlm_queue_depth", lambda v: v >= 1, timeout=10)
        with pytest.raises(openai.RateLimitError) as ei:
            complete(url, prompt="Hello", max_tokens=2)
        assert ei.value.status_code == 429
        assert ei.value.response.headers.get("retry-after") is not None
    finally:
        conn1.close()
        conn2.close()
    # Both closed: the running one is cancelled, the waiting one dropped (or cancelled at once).
    wait_metric(url, "slimlm_active_sequences", lambda v: v == 0, timeout=10)
    wait_metric(url, "slimlm_queue_depth", lambda v: v == 0, timeout=10)
    assert greedy(url, LONG_PROMPT, 2).choices[0].text


def test_disconnect_cancels_generation(base_url):
    cli = cli_generate(prompt=LONG_PROMPT, max_tokens=400)
    assert EOS not in cli["generated_ids"], "the test needs a prompt that generates 400 tokens"
    wait_metric(base_url, "slimlm_active_sequences", lambda v: v == 0, timeout=5)
    before = metrics(base_url)
    conn, resp = open_stream(base_url, {"prompt": LONG_PROMPT, "max_tokens": 400, "temperature": 0})
    try:
        assert resp.status == 200
        got = list(sse_events(resp, limit=2))
        assert len(got) == 2 and got[0] != "[DONE]"
        assert metrics(base_url)["slimlm_active_sequences"] == 1
    finally:
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()
    t0 = time.monotonic()
    wait_metric(base_url, "slimlm_active_sequences", lambda v: v == 0, timeout=5)
    took = time.monotonic() - t0
    after = metrics(base_url)
    generated = after["slimlm_generated_tokens_total"] - before["slimlm_generated_tokens_total"]
    assert generated < 100, f"{generated} tokens generated after the client left ({took:.2f} s)"


def test_sigterm_drains_in_flight_request(start_server):
    s = start_server()
    box = {}

    def run():
        box["result"] = _raw_completion(s.url, {"prompt": LONG_PROMPT, "max_tokens": 100, "temperature": 0})

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_metric(s.url, "slimlm_active_sequences", lambda v: v >= 1, timeout=10, interval=0.01)
    s.signal(signal.SIGTERM)
    t.join(60)
    assert not t.is_alive(), "the in-flight request did not finish after SIGTERM"
    status, _, resp = box["result"]
    assert status == 200, f"in-flight request after SIGTERM: {status} {resp!r}"
    assert resp["usage"]["completion_tokens"] == 100
    assert resp["choices"][0]["finish_reason"] == "length"
    rc = s.wait(30)
    assert rc == 0, f"exit code {rc} after SIGTERM; stderr:\n{s.stderr}"


def test_sigterm_stops_accepting(start_server):
    s = start_server()
    box = {}

    def run():
        box["result"] = _raw_completion(s.url, {"prompt": LONG_PROMPT, "max_tokens": 300, "temperature": 0})

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_metric(s.url, "slimlm_active_sequences", lambda v: v >= 1, timeout=10, interval=0.01)
    s.signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        status = http(s.url + "/health", timeout=3)[0]
    except OSError:
        status = None  # refused, reset or timed out: not accepted
    t.join(60)
    assert status != 200, "a new request was served after SIGTERM"
    assert box["result"][0] == 200, box["result"]
    assert s.wait(30) == 0, s.stderr


def test_sigint_exits_zero(start_server):
    s = start_server()
    assert http(s.url + "/health")[0] == 200
    s.signal(signal.SIGINT)
    assert s.wait(30) == 0, s.stderr


@pytest.mark.parametrize("flags", [("--kv-cache", "f16"), ("--max-batch", "4", "--queue", "2")])
def test_other_flags_serve_greedy(start_server, base_url, flags):
    s = start_server(*flags)
    r = greedy(s.url, LONG_PROMPT, 12)
    assert r.usage.completion_tokens == 12
    if flags[0] != "--kv-cache":
        assert r.choices[0].text == greedy(base_url, LONG_PROMPT, 12).choices[0].text
