#!/usr/bin/env python3
"""llama.cpp through llama-cpp-python (built for this CPU, GGML_NATIVE) on a GGUF from convert.py,
measured like hf_bench.py.

Llama(n_ctx=256, n_batch=n_ubatch=512 (so the prompt is one batch), n_threads = n_threads_batch =
--threads, memory-mapped weights, flash attention off (the wrapper's default)), KV cache F32 for
every variant (llama.cpp defaults to F16; slimlm's bench and transformers keep F32, and an F16 cache
would make the f32 GGUF inexact). Llama.eval asks for the logits of a batch's last position only.
  prefill = one Llama.eval of the whole prompt (one llama_decode);
  decode  = tokens - 1 Llama.eval of one token each, the next one the argmax of llama_get_logits_ith(-1).
"""
import os
import sys
import time

import llama_cpp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    a = common.args(__doc__, ["f32", "f16", "q8_0", "q4_0"])
    llm = llama_cpp.Llama(os.path.join(a.model, "model.gguf"), n_ctx=256, n_batch=512, n_ubatch=512,
                          n_threads=a.threads, n_threads_batch=a.threads, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    generated = []
    t0 = time.perf_counter()
    llm.eval(a.ids)
    t1 = time.perf_counter()
    nxt = argmax()
    generated.append(nxt)
    t2 = time.perf_counter()
    for _ in range(a.tokens - 1):
        llm.eval([nxt])
        nxt = argmax()
        generated.append(nxt)
    t3 = time.perf_counter()
    common.emit("llama.cpp-" + a.variant, a, {"llama-cpp-python": llama_cpp.__version__}, t1 - t0, t3 - t2, generated,
                system_info=llama_cpp.llama_print_system_info().decode().strip())


if __name__ == "__main__":
    main()
