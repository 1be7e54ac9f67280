#!/usr/bin/env python3
"""What users would otherwise run: Hugging Face transformers on PyTorch, measured like `slimlm bench memory`.

One model, one mode per process (so peak RSS is this run's): prefill a prompt of --prompt-tokens, then
decode --tokens greedily through the KV cache. Prints one JSON object. Modes: `fp32` (eager) and `int8`
(torch's dynamic INT8 quantization of every linear layer; GPT-2's Conv1D layers are turned into
nn.Linear first, or dynamic quantization would skip them).
"""
import argparse
import json
import resource
import time

import torch
import transformers


def conv1d_to_linear(model):
    """GPT-2's Conv1D ([in, out] weights) as nn.Linear, so quantize_dynamic sees them."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data = child.weight.data.t().contiguous()
                lin.bias.data = child.bias.data
                setattr(module, child_name, lin)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    model.eval()
    if a.mode == "int8":
        model = torch.ao.quantization.quantize_dynamic(conv1d_to_linear(model), {torch.nn.Linear}, dtype=torch.qint8)
    text = ("The Debian Administrator's Handbook explains how packages are installed, upgraded and "
            "removed with APT, and how the system keeps track of them. ")
    base = tok(text)["input_ids"]
    ids = [base[i % len(base)] for i in range(a.prompt_tokens)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[0, -1].argmax().view(1, 1)
        t2 = time.perf_counter()
        for _ in range(a.tokens - 1):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[0, -1].argmax().view(1, 1)
        t3 = time.perf_counter()
    print(json.dumps({
        "peer": "transformers-" + a.mode,
        "model": a.model,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": a.threads,
        "prompt_tokens": a.prompt_tokens,
        "tokens": a.tokens,
        "prefill_tokens_per_s": a.prompt_tokens / (t1 - t0),
        "decode_tokens_per_s": (a.tokens - 1) / (t3 - t2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
