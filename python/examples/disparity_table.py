"""The README's disparity table, in Python: INT8 and rank-64 INT8 factors against the dense model,
perplexity per UDHR language, degradation and its disparity; drawn with matplotlib when installed.

    python examples/disparity_table.py [--models ref-gpt2,ref-gptneo] [--max-tokens N] [--png out.png]

The README's numbers use the full texts (no --max-tokens); a few hundred tokens per language give a
quick look in seconds.
"""

import argparse

import slimlm
from _common import MODELS, plt_or_none

METHODS = [("INT8", "int8"), ("low-rank r64, INT8 factors", "lowrank:r64:int8")]


def pct(x):
    return f"{100 * x:+.2f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ref-gpt2,ref-gptneo")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--png", default="disparity.png")
    a = ap.parse_args()

    rows, bars = [], {}
    for name in a.models.split(","):
        ref = slimlm.Model.open(MODELS / name)  # opened once, used for every method
        for label, method in METHODS:
            r = slimlm.eval.disparity(ref, method=method, max_tokens=a.max_tokens)
            d = r["disparity"]
            rows.append(
                f"| {name} | {label} | {pct(d['mean_degradation'])} | {d['worst_lang']} {pct(d['worst'])} "
                f"| {d['best_lang']} {pct(d['best'])} | {d['ppl_ratio']:.3f} |"
            )
            bars[(name, label)] = {l["lang"]: l["degradation"] for l in r["languages"]}

    print("| model | method | mean degradation | worst language | best language | ppl ratio (1+worst)/(1+best) |")
    print("|---|---|---:|---|---|---:|")
    print("\n".join(rows))

    plt = plt_or_none()
    if plt is None:
        print("(pip install matplotlib to draw the chart)")
        return
    langs = list(next(iter(bars.values())))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(bars)
    for i, ((name, label), deg) in enumerate(bars.items()):
        xs = [j + i * width for j in range(len(langs))]
        ax.bar(xs, [100 * deg[l] for l in langs], width, label=f"{name}: {label}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(langs))], langs)
    ax.set_ylabel("perplexity degradation (%)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
