"""Per-layer cosine similarity of hidden states between a dense model and compressed versions of it,
computed in numpy from `Model.hidden_states` and checked against `slimlm.eval.compare`; plotted with
matplotlib when installed.

    python examples/layer_cosine.py [--model ref-gpt2] [--ranks 32,64,128] [--png layer_cosine.png]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import slimlm
from _common import HELDOUT, MODELS, plt_or_none


def cosines(a, b):
    """Mean over tokens of the cosine similarity of rows of a and b."""
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-30)).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ref-gpt2")
    ap.add_argument("--ranks", default="32,64,128")
    ap.add_argument("--png", default="layer_cosine.png")
    a = ap.parse_args()
    ref = slimlm.Model.open(MODELS / a.model)
    text = (HELDOUT / "en-US.txt").read_text()
    ids = ref.tokenizer.encode(text)[:256]  # one window: compare() sees windows alone
    want = ref.hidden_states(ids)

    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in [int(x) for x in a.ranks.split(",")]:
            out = Path(tmp) / f"r{r}"
            slimlm.compress(ref, out, mode="lowrank", rank=r)
            cand = slimlm.Model.open(out)
            got = cand.hidden_states(ids)
            curves[f"rank {r}"] = [cosines(x, y) for x, y in zip(want, got)]
            # The library's own per-layer report agrees.
            rep = slimlm.eval.compare(ref, cand, text=ids, context=256)
            lib = [h["cosine"] for h in rep["hidden"]]
            assert np.allclose(curves[f"rank {r}"], lib, atol=1e-4), (curves[f"rank {r}"], lib)

    print("layer " + "".join(f"{k:>10}" for k in curves))
    for i in range(len(want)):
        print(f"{i:<6}" + "".join(f"{v[i]:>10.5f}" for v in curves.values()))
    plt = plt_or_none()
    if plt is None:
        print("(pip install matplotlib to draw the chart)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, v in curves.items():
        ax.plot(range(len(v)), v, marker="o", label=k)
    ax.set_xlabel("layer (hidden state entering it; last: final)")
    ax.set_ylabel("mean cosine similarity to dense")
    ax.set_title(f"{a.model}: low-rank INT8 factors")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
