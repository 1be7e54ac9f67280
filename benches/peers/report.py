#!/usr/bin/env python3
"""peers.jsonl → one Markdown table per run: medians (min–max) over repetitions, the first-tokens check
against transformers FP32, the headline ratios, the memory bandwidth and the versions.

Exits 1 when an FP32 engine's first tokens differ from transformers FP32's on the same ids (or when an
FP32 run failed): a broken conversion must not pass as fast. Lower-precision variants are only reported.
"""
import json
import statistics
import sys
from collections import defaultdict

FP32 = {"transformers-fp32", "slimlm-f32", "llama.cpp-f32", "ort-fp32", "ct2-fp32"}
ORDER = ["slimlm-f32", "slimlm-f16", "slimlm-int8", "llama.cpp-f32", "llama.cpp-f16", "llama.cpp-q8_0",
         "llama.cpp-q4_0", "ort-fp32", "ort-int8", "ct2-fp32", "ct2-int8", "transformers-fp32", "transformers-int8"]
# (numerator, denominator, metric) → the headline ratios, "× " = numerator / denominator (medians).
RATIOS = [
    ("slimlm-int8", "llama.cpp-q8_0", "decode_tokens_per_s"),
    ("slimlm-int8", "ort-int8", "decode_tokens_per_s"),
    ("slimlm-f16", "llama.cpp-f16", "decode_tokens_per_s"),
    ("slimlm-int8", "ort-int8", "prefill_tokens_per_s"),
    ("slimlm-f32", "ort-fp32", "prefill_tokens_per_s"),
]


def spread(xs, fmt="{:.1f}"):
    if not xs:
        return "–"
    med = fmt.format(statistics.median(xs))
    return med if len(xs) == 1 else f"{med} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def check(first, ref):
    if first is None or ref is None:
        return "?"
    if first == ref:
        return "✓ same"
    k = next((i for i, (a, b) in enumerate(zip(first, ref)) if a != b), min(len(first), len(ref)))
    return f"differs at {k}"


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    bad = []
    names = list(dict.fromkeys(r["name"] for r in rows))
    peers = defaultdict(list)
    for r in rows:
        if r["peer"] not in ("bandwidth", "reference"):
            peers[(r["name"], r["peer"])].append(r)
    print("| model | runtime | decode tok/s | × HF FP32 | prefill tok/s | peak RSS MiB | first 8 tokens vs HF FP32 |")
    print("|---|---|---:|---:|---:|---:|---|")
    med = {}
    for name in names:
        ref = next((r for r in rows if r["name"] == name and r["peer"] == "reference"), None)
        ref_tokens = ref and ref.get("first_tokens")
        mine = sorted((p for n, p in peers if n == name), key=lambda p: (ORDER.index(p) if p in ORDER else 99, p))
        want = max((x.get("tokens") or 0) for (n, _), xs in peers.items() if n == name for x in xs)
        hf = [x["decode_tokens_per_s"] for x in peers.get((name, "transformers-fp32"), []) if "error" not in x]
        for p in mine:
            ok = [x for x in peers[(name, p)] if "error" not in x]
            failed = len(peers[(name, p)]) - len(ok)
            dec = [x["decode_tokens_per_s"] for x in ok if x.get("decode_tokens_per_s")]
            pre = [x["prefill_tokens_per_s"] for x in ok]
            rss = [x["peak_rss_bytes"] / 2**20 for x in ok]
            med[(name, p)] = {"decode_tokens_per_s": dec and statistics.median(dec),
                              "prefill_tokens_per_s": pre and statistics.median(pre)}
            firsts = {json.dumps(x.get("first_tokens")) for x in ok}
            c = "; ".join(check(json.loads(f), ref_tokens) for f in sorted(firsts)) if ok else "–"
            if p in FP32 and (failed or (ok and not all(check(x.get("first_tokens"), ref_tokens) == "✓ same" for x in ok))):
                c = "**FAIL** " + c
                bad.append(f"{name} {p}")
            elif p not in FP32 and ok and c != "?":
                c += " (lower precision: reported, not failed)" if c != "✓ same" else ""
            if ok and min(x.get("tokens") or 0 for x in ok) < want:
                c += f"; only {min(x.get('tokens') or 0 for x in ok)} tokens"
            if any(x.get("prompt_ids_equal") is False for x in ok):
                c += "; own tokenization differs"
            if failed:
                c += f"; {failed} run(s) failed"
            x_hf = f"{statistics.median(dec) / statistics.median(hf):.2f}×" if dec and hf else "–"
            print(f"| {name} | {p} | {spread(dec)} | {x_hf} | {spread(pre)} | {spread(rss, '{:.0f}')} | {c} |")
    print()
    for name in names:
        parts = []
        for a, b, k in RATIOS:
            x, y = med.get((name, a), {}).get(k), med.get((name, b), {}).get(k)
            if x and y:
                parts.append(f"{a} ÷ {b} {k.split('_')[0]}: **{x / y:.2f}×**")
        if parts:
            print(f"{name}: " + "; ".join(parts) + "  ")
    bw = [r for r in rows if r["peer"] == "bandwidth"]
    if bw:
        print(f"\nMemory bandwidth (numpy, one thread, best of 5 passes over 1 GiB; median (min–max) of "
              f"{len(bw)} probes): read {spread([r['read_gb_per_s'] for r in bw])} GB/s, "
              f"copy {spread([r['copy_gb_per_s'] for r in bw])} GB/s (read + write bytes).  ")
    some = next((r for r in rows if "threads" in r and r["peer"] not in ("bandwidth", "reference")), None)
    if some:
        print(f"Threads {some['threads']}, prompt {some['prompt_tokens']} tokens (the same ids for every engine), "
              f"decode = {some['tokens'] - 1} greedy steps after the first token; peak RSS is the process's "
              f"(Python engines include the interpreter and their imports).  ")
    versions = {}
    for r in rows:
        versions.update(r.get("versions") or {})
    if versions:
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".")
    if bad:
        print(f"\n**FP32 first-tokens check failed: {', '.join(bad)}.**")
        sys.exit(1)


if __name__ == "__main__":
    main()
