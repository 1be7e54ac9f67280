"""Perplexity of two compressed models against the dense one on held-out text, and which tokens the
compression hurts most (per-token NLL as numpy arrays).

    python examples/compare_compressed.py [--model ref-gpt2] [--chars 20000]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import slimlm
from _common import HELDOUT, MODELS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ref-gpt2")
    ap.add_argument("--chars", type=int, default=20000, help="characters of each held-out text")
    a = ap.parse_args()
    src = MODELS / a.model

    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8"
        r64 = Path(tmp) / "r64"
        slimlm.compress(src, int8, mode="int8")
        slimlm.compress(src, r64, mode="lowrank", rank=64)  # INT8 factors and embeddings by default
        models = {"dense": slimlm.Model.open(src), "int8": slimlm.Model.open(int8), "r64 int8": slimlm.Model.open(r64)}
        for name, m in models.items():
            print(f"{name:>9}: {m.file_bytes / 1e6:7.2f} MB")

        print(f"\n{'text':<10}" + "".join(f"{n:>12}" for n in models) + f"{'int8 Δ':>10}{'r64 Δ':>10}")
        worst = None
        for f in sorted(HELDOUT.glob("*.txt")):
            text = f.read_text()[: a.chars]
            res = {n: slimlm.perplexity(m, text) for n, m in models.items()}
            ppl = {n: r["ppl"] for n, r in res.items()}
            print(
                f"{f.stem:<10}" + "".join(f"{ppl[n]:>12.2f}" for n in models)
                + f"{100 * (ppl['int8'] / ppl['dense'] - 1):>+9.2f}%{100 * (ppl['r64 int8'] / ppl['dense'] - 1):>+9.2f}%"
            )
            if f.stem == "en-US":
                worst = res

        # Per token: where did rank 64 lose the most? (nll[i] scores ids[i + 1])
        dense, cand = worst["dense"], worst["r64 int8"]
        delta = cand["nll"] - dense["nll"]
        tok = models["dense"].tokenizer
        ids = dense["ids"]
        print(f"\nen-US: mean NLL +{delta.mean():.4f} nats/token; 95th percentile {np.percentile(delta, 95):+.3f}")
        print("tokens rank 64 hurts most (context … token):")
        for i in np.argsort(delta)[-8:][::-1]:
            ctx = tok.decode(ids[max(0, i - 5) : i + 1].tolist())
            print(f"  {delta[i]:+6.2f} nats  {ctx!r} … {tok.decode([int(ids[i + 1])])!r}")


if __name__ == "__main__":
    main()
