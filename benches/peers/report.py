#!/usr/bin/env python3
"""peers.jsonl → a Markdown table: median over repetitions, ratios to transformers FP32 eager."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
for r in rows:
    groups[(r["name"], r["peer"])].append(r)
print("| model | runtime | decode tok/s | × transformers FP32 | prefill tok/s | peak RSS MiB | × transformers FP32 |")
print("|---|---|---:|---:|---:|---:|---:|")
for name in dict.fromkeys(r["name"] for r in rows):
    med = {peer: {k: statistics.median(x[k] for x in rs) for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_bytes")}
           for (n, peer), rs in groups.items() if n == name}
    ref = med.get("transformers-fp32")
    for peer, m in med.items():
        print(f"| {name} | {peer} | {m['decode_tokens_per_s']:.1f} | "
              f"{m['decode_tokens_per_s'] / ref['decode_tokens_per_s']:.2f}× | {m['prefill_tokens_per_s']:.1f} | "
              f"{m['peak_rss_bytes'] / 2**20:.1f} | {m['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}× |")
