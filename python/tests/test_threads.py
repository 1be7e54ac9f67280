"""One model used from several Python threads at once; the GIL released during computation."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import slimlm
from conftest import HELDOUT, model_dir, open_model

PROMPTS = ["The Debian package manager", "Die Paketverwaltung", "Le gestionnaire de paquets", "import os"]


def test_two_threads_generate_on_one_model(gpt2):
    serial = [gpt2.generate(p, max_tokens=24, threads=1).ids for p in PROMPTS]
    with ThreadPoolExecutor(2) as ex:
        par = list(ex.map(lambda p: gpt2.generate(p, max_tokens=24, threads=1).ids, PROMPTS * 2))
    assert par == serial * 2


def test_threads_stream_and_score_concurrently(gpt2):
    text = (HELDOUT / "en-US.txt").read_text()[:3000]
    want_ppl = slimlm.perplexity(gpt2, text, threads=1)["ppl"]
    want_text = gpt2.generate(PROMPTS[0], max_tokens=32).text
    out = {}

    def score():
        out["ppl"] = slimlm.perplexity(gpt2, text, threads=1)["ppl"]

    def stream():
        out["text"] = "".join(gpt2.stream(PROMPTS[0], max_tokens=32, threads=1))

    ts = [threading.Thread(target=score), threading.Thread(target=stream)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out["ppl"] == pytest.approx(want_ppl, rel=1e-12) and out["text"] == want_text


def test_gil_is_released_during_computation(gpt2):
    text = (HELDOUT / "de-DE.txt").read_text()[:6000]
    done = threading.Event()
    t = threading.Thread(target=lambda: (slimlm.perplexity(gpt2, text, 128, 128), done.set()))
    ticks = 0
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    t.join()
    elapsed = time.perf_counter() - start
    # Python kept running in this thread for the whole computation (with the GIL held by the
    # extension, it could not have run at all).
    assert elapsed > 0.05 and ticks > 1000


def test_one_session_from_two_threads_is_serialised(gpt2):
    s = gpt2.session(threads=1)
    ids = gpt2.tokenizer.encode("one two three four five six seven eight")

    def feed():
        for i in ids:
            s.step(i)

    ts = [threading.Thread(target=feed) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert s.position == 2 * len(ids)


def test_pickle_and_processes(tmp_path):
    import pickle

    m = slimlm.Model.open(model_dir("ref-gpt2"), context=256)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.config["n_ctx"] == 256 and m2.path == m.path
    assert m2.generate("Debian", max_tokens=5).ids == m.generate("Debian", max_tokens=5).ids
