"""Shared by the peer benchmarks: the prompt, its token ids, and the JSON record every script prints.

Every engine gets the same prompt ids: run.sh makes them once with the model's Hugging Face tokenizer
(`prompt_ids.py`) and passes them as --prompt-ids, so no engine tokenizes on its own. Each script
measures the same two things, in one process per engine and variant:
  prefill: one forward pass over the whole prompt (tokens / seconds);
  decode:  tokens - 1 single-token steps through the KV cache, greedy (argmax), excluding the first
           token (which comes out of the prefill), i.e. (tokens - 1) / seconds.
`first_tokens` are the first 8 greedy ids, compared with transformers FP32 by report.py.
"""
import argparse
import json
import resource

# The same text as `slimlm bench memory --prompt-tokens N`, repeated to N tokens.
TEXT = ("The Debian Administrator's Handbook explains how packages are installed, upgraded and "
        "removed with APT, and how the system keeps track of them. ")
FIRST = 8


def hf_prompt_ids(tokenizer, n):
    base = tokenizer(TEXT)["input_ids"]
    return [base[i % len(base)] for i in range(n)]


def args(description, variants):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True, help="the engine's converted model (file or directory)")
    ap.add_argument("--hf-model", help="the Hugging Face directory it came from (for the record)")
    ap.add_argument("--variant", choices=variants, required=True)
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids (from prompt_ids.py)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.ids = [int(x) for x in a.prompt_ids.split(",")]
    return a


def emit(peer, a, versions, t_prefill, t_decode, generated, **extra):
    """Print the record: t_prefill covers the prompt pass, t_decode the len(generated) - 1 steps after it."""
    r = {
        "peer": peer,
        "model": a.hf_model or a.model,
        "engine_model": a.model,
        "versions": versions,
        "threads": a.threads,
        "prompt_tokens": len(a.ids),
        "tokens": len(generated),
        "prefill_tokens_per_s": len(a.ids) / t_prefill,
        "decode_tokens_per_s": (len(generated) - 1) / t_decode if len(generated) > 1 else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "first_tokens": generated[:FIRST],
    }
    r.update(extra)
    print(json.dumps(r))
