#!/usr/bin/env python3
"""CTranslate2 (a converted model from convert.py), measured like hf_bench.py.

Generator(device="cpu", intra_threads=--threads, inter_threads=1), compute type float32 (fp32) or
int8_float32 (int8: INT8 weights and matmuls, the rest in float32). One generate_batch call, greedy
(sampling_topk=1, beam 1), include_prompt_in_result=False so that the prompt goes through the decoder
in one pass (the default, True, would force-decode it token by token), max_length = --tokens new
tokens. The prompt ids are turned into CTranslate2's token strings through the model's own
vocabulary.json (id → string), so no re-tokenization. A step callback timestamps each token:
  prefill = time from the call to the first token's callback: the prompt pass, the logits of its
            last position and the first argmax (plus the call's setup, a few microseconds);
  decode  = time from the first token's callback to the last one's, over tokens - 1 steps.
generate_batch stops at the model's end token: `tokens` in the record shows if it stopped early.
"""
import json
import os
import sys
import time

import ctranslate2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    a = common.args(__doc__, ["fp32", "int8"])
    vocab = json.load(open(os.path.join(a.model, "vocabulary.json")))
    prompt = [vocab[i] for i in a.ids]
    gen = ctranslate2.Generator(a.model, device="cpu", compute_type={"fp32": "float32", "int8": "int8_float32"}[a.variant],
                                intra_threads=a.threads, inter_threads=1)
    stamps, ids = [], []

    def step(r):
        stamps.append(time.perf_counter())
        ids.append(r.token_id)
        return False

    t0 = time.perf_counter()
    gen.generate_batch([prompt], max_length=a.tokens, sampling_topk=1, beam_size=1, include_prompt_in_result=False,
                       callback=step)
    common.emit("ct2-" + a.variant, a, {"ctranslate2": ctranslate2.__version__}, stamps[0] - t0,
                stamps[-1] - stamps[0], ids, compute_type=gen.compute_type)


if __name__ == "__main__":
    main()
