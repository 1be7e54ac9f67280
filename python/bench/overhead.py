"""Per-token decode speed through the Python iterator against the Rust iterator (a benchmark, not a
test). Same model, prompt, greedy decoding, token count and threads for all three:

  python    `for piece in model.stream(...)`: wall clock per token after the first, Python in the loop
            (GIL released and re-taken, a str made, per token)
  rust      the library's `Session::generate` + `Tokenizer::stream` iterator in-process (no Python in
            the loop), wall clock per token after the first
  cli       `slimlm generate --json` decode_tokens_per_s (forward passes only, its own process)

    python bench/overhead.py [--model DIR] [--tokens 256] [--threads 1,2] [--rounds 7] [--cli PATH]

Rounds alternate the three so that drift of a shared machine hits them alike; medians are reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import slimlm

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SLIMLM_SHARED", REPO.parent / "shared"))
PROMPT = "To install a package with APT, the administrator runs"


def python_iter(model, ids, n, threads):
    """(tokens/s by wall clock, µs per token outside the forward passes)."""
    st = model.stream(ids, max_tokens=n, ignore_eos=True, threads=threads)
    it = iter(st)
    next(it)  # the first token comes from the prefill
    n0 = len(st.ids)
    t = time.perf_counter()
    for _ in it:
        pass
    dt = time.perf_counter() - t
    c = st.completion()
    tokens = len(c.ids) - n0
    # Every token after the first cost one forward pass (c.decode_ms) plus sampling, detokenizing and
    # the trip through Python.
    return tokens / dt, 1e6 * (dt - c.decode_ms / 1e3) / tokens


def rust_iter(model, ids, n, threads):
    count, wall, fwd_tok_s = slimlm._slimlm._rust_iterator_decode(model, ids, n, threads)
    tokens = count - 1
    return tokens / wall, 1e6 * (wall - tokens / fwd_tok_s) / tokens


def cli(path, model_dir, ids, n, threads):
    r = subprocess.run(
        [str(path), "generate", "--model", str(model_dir), "--prompt-ids", ",".join(map(str, ids)),
         "--max-tokens", str(n), "--ignore-eos", "--threads", str(threads), "--json"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(r.stdout)["decode_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "ref-gpt2"))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cli", default=os.environ.get("SLIMLM_CLI", REPO / "target" / "release" / "slimlm"))
    a = ap.parse_args()
    model = slimlm.Model.open(a.model)
    ids = model.tokenizer.encode(PROMPT)
    have_cli = Path(a.cli).is_file()
    print(f"model {a.model}, {a.tokens} tokens after a {len(ids)}-token prompt, kernels {slimlm.kernels()}, "
          f"python {sys.version.split()[0]}, {a.rounds} rounds")
    print("tok/s: wall clock per token after the first (cli: forward passes only); "
          "µs/tok: time per token outside the forward pass (sampling, detokenizing, the loop)")
    print(f"{'threads':>7} {'python tok/s':>13} {'rust tok/s':>11} {'cli tok/s':>10} {'python/rust':>12} "
          f"{'python µs/tok':>14} {'rust µs/tok':>12} {'overhead':>9}")
    for threads in [int(t) for t in a.threads.split(",")]:
        py, rs, cl = [], [], []
        python_iter(model, ids, 16, threads)  # warm up (page in the weights, start the threads)
        for _ in range(a.rounds):
            py.append(python_iter(model, ids, a.tokens, threads))
            rs.append(rust_iter(model, ids, a.tokens, threads))
            if have_cli:
                cl.append(cli(a.cli, a.model, ids, a.tokens, threads))
        p, r = statistics.median(x[0] for x in py), statistics.median(x[0] for x in rs)
        po, ro = statistics.median(x[1] for x in py), statistics.median(x[1] for x in rs)
        c = statistics.median(cl) if cl else float("nan")
        # The binding's cost relative to a token of the Rust iterator, free of the forward pass's noise.
        extra = (po - ro) * 1e-6 * r
        print(f"{threads:>7} {p:>13.1f} {r:>11.1f} {c:>10.1f} {p / r:>12.3f} {po:>14.1f} {ro:>12.1f} "
              f"{100 * extra:>8.2f}%")


if __name__ == "__main__":
    main()
