#!/usr/bin/env python3
"""ONNX Runtime on the graph from convert.py (fp32, or dynamic INT8), measured like hf_bench.py.

InferenceSession on the CPU execution provider, intra_op_num_threads = --threads, inter_op 1,
sequential execution, all graph optimizations (the default level; applied when the session is made,
before timing). Inputs and outputs are numpy arrays, as optimum's ORTModelForCausalLM feeds them on CPU.
  prefill = one run over the prompt with an empty (length 0) past: logits of the last position;
  decode  = tokens - 1 runs of one token each, the presents fed back as the past, argmax of the logits.
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    a = common.args(__doc__, ["fp32", "int8"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(os.path.join(a.model, "model.onnx"), so, providers=["CPUExecutionProvider"])
    past_names = [i.name for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    heads, head_dim = s.get_inputs()[2].shape[1], s.get_inputs()[2].shape[3]
    outs = [o.name for o in s.get_outputs()]
    feed = {"input_ids": np.array([a.ids], np.int64), "position_ids": np.arange(len(a.ids), dtype=np.int64)[None]}
    feed.update({n: np.zeros((1, heads, 0, head_dim), np.float32) for n in past_names})
    generated = []
    t0 = time.perf_counter()
    r = s.run(outs, feed)
    t1 = time.perf_counter()
    pos = len(a.ids)
    nxt = int(r[0][0, -1].argmax())
    generated.append(nxt)
    t2 = time.perf_counter()
    for _ in range(a.tokens - 1):
        feed = dict(zip(past_names, r[1:]))
        feed["input_ids"] = np.array([[nxt]], np.int64)
        feed["position_ids"] = np.array([[pos]], np.int64)
        r = s.run(outs, feed)
        pos += 1
        nxt = int(r[0][0, -1].argmax())
        generated.append(nxt)
    t3 = time.perf_counter()
    common.emit("ort-" + a.variant, a, {"onnxruntime": ort.__version__}, t1 - t0, t3 - t2, generated)


if __name__ == "__main__":
    main()
