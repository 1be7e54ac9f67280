#!/usr/bin/env python3
"""What users would otherwise run: Hugging Face transformers on PyTorch, measured like `slimlm bench memory`.

One model, one mode per process (so peak RSS is this run's): prefill a prompt of --prompt-tokens, then
decode --tokens greedily through the KV cache. Prints one JSON object. Modes: `fp32` (eager) and `int8`
(torch's dynamic INT8 quantization of every linear layer; GPT-2's Conv1D layers are turned into
nn.Linear first, or dynamic quantization would skip them).

The prompt pass computes the logits of its last position only (`logits_to_keep=1`, as `generate()`
does), like every other engine here. With --prompt-ids (run.sh passes them) the prompt is exactly those
ids; without, it is made from common.TEXT with this model's tokenizer, as before.
"""
import argparse
import inspect
import json
import os
import resource
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


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
    ap.add_argument("--prompt-ids", help="comma-separated token ids (from prompt_ids.py)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    if a.mode == "int8":
        model = torch.ao.quantization.quantize_dynamic(conv1d_to_linear(model), {torch.nn.Linear}, dtype=torch.qint8)
    if a.prompt_ids:
        ids = [int(x) for x in a.prompt_ids.split(",")]
    else:
        ids = common.hf_prompt_ids(tok, a.prompt_tokens)
    # transformers 5 renamed the cache argument and output `past_key_values` → `cache`.
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    generated = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        past = getattr(out, cache)
        nxt = out.logits[0, -1].argmax().view(1, 1)
        generated.append(int(nxt))
        t2 = time.perf_counter()
        for _ in range(a.tokens - 1):
            out = model(input_ids=nxt, use_cache=True, **{cache: past})
            past = getattr(out, cache)
            nxt = out.logits[0, -1].argmax().view(1, 1)
            generated.append(int(nxt))
        t3 = time.perf_counter()
    a.ids, a.hf_model = ids, a.model
    common.emit("transformers-" + a.mode, a, {"torch": torch.__version__, "transformers": transformers.__version__},
                t1 - t0, t3 - t2, generated, torch=torch.__version__, transformers=transformers.__version__)


if __name__ == "__main__":
    main()
