#!/usr/bin/env python3
"""Convert a Hugging Face model directory for one peer engine, once: run.sh calls this in its own process
before any timing and skips it when the output directory exists (written to OUT.tmp, then renamed).

  convert.py --engine llama.cpp --variant {f32,f16,q8_0,q4_0} --src HF_DIR --out DIR --llama-convert PY
      DIR/model.gguf. f32/f16/q8_0: llama.cpp's own convert_hf_to_gguf.py (--outtype), from the
      llama-cpp-python sdist that built the installed llama_cpp (run.sh extracts it), given n_ctx in
      config.json when it lacks it (the GPT-2 converter requires it). q4_0:
      llama_cpp.llama_model_quantize from the f32 GGUF (made first, beside DIR, if missing), with the
      library's default quantize parameters.
  convert.py --engine ort --variant {fp32,int8} --src HF_DIR --out DIR
      DIR/model.onnx. fp32: torch.onnx.export (the dynamo exporter) of the transformers model with eager
      attention, wrapped so that the graph takes input_ids, position_ids and past_key_values.{i}.key/value
      and returns logits of the last position and present.{i}.key/value (optimum's names; optimum-onnx
      itself pins transformers < 4.58, older than the one here). int8: the fp32 graph with the transposed
      tied LM head made an initializer and each Gemm written as MatMul + Add (quantize_dynamic only
      quantizes MatMul), then onnxruntime.quantization.quantize_dynamic, QInt8 weights, per channel.
  convert.py --engine ct2 --variant {fp32,int8} --src HF_DIR --out DIR
      CTranslate2's TransformersConverter, quantization float32 or int8.
"""
import argparse
import os
import shutil
import subprocess
import sys


def llama_cpp(a, tmp):
    out = os.path.join(tmp, "model.gguf")
    if a.variant in ("f32", "f16", "q8_0"):
        # The GPT-2 converter reads config.json's `n_ctx`, which the hub's gpt2 has and configs saved by
        # newer transformers (and slimlm synth) do not: give it a copy of the config with n_ctx =
        # n_positions, the other files linked.
        import json

        src = a.src
        cfg = json.load(open(os.path.join(a.src, "config.json")))
        if "n_positions" in cfg and "n_ctx" not in cfg:
            src = os.path.join(tmp, "hf")
            os.makedirs(src)
            for f in os.listdir(a.src):
                if f != "config.json":
                    os.symlink(os.path.abspath(os.path.join(a.src, f)), os.path.join(src, f))
            json.dump(dict(cfg, n_ctx=cfg["n_positions"]), open(os.path.join(src, "config.json"), "w"), indent=2)
        subprocess.run([sys.executable, a.llama_convert, src, "--outfile", out, "--outtype", a.variant], check=True)
        shutil.rmtree(os.path.join(tmp, "hf"), ignore_errors=True)
        return
    import ctypes

    import llama_cpp as lc

    f32 = a.out.rsplit(".", 1)[0] + ".f32"
    if not os.path.exists(f32):
        subprocess.run([sys.executable, __file__, "--engine", "llama.cpp", "--variant", "f32", "--src", a.src,
                        "--out", f32, "--llama-convert", a.llama_convert], check=True)
    p = lc.llama_model_quantize_default_params()
    p.ftype = {"q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0}[a.variant]
    p.nthread = os.cpu_count()
    rc = lc.llama_model_quantize(os.path.join(f32, "model.gguf").encode(), out.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed: {rc}")


def ort_export(src, out):
    import inspect

    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, position_ids, *past):
            cache = transformers.DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)],
                                              config=self.m.config)
            o = self.m(input_ids=input_ids, position_ids=position_ids, use_cache=True, logits_to_keep=1, **{kw: cache})
            c = getattr(o, kw)
            return (o.logits,) + tuple(t for i in range(layers) for t in (c.layers[i].keys, c.layers[i].values))

    t0, s = 5, 3
    ex = (torch.randint(0, cfg.vocab_size, (1, s)), torch.arange(t0, t0 + s).view(1, s),
          *[torch.randn(1, heads, t0, head_dim) for _ in range(2 * layers)])
    seq, past = torch.export.Dim("seq", min=1, max=cfg.n_positions), torch.export.Dim("past", min=0, max=cfg.n_positions)
    kv = [f"past_key_values.{i}.{n}" for i in range(layers) for n in ("key", "value")]
    torch.onnx.export(WithPast(model), ex, out, dynamo=True, external_data=True,
                      input_names=["input_ids", "position_ids"] + kv,
                      output_names=["logits"] + [n.replace("past_key_values", "present") for n in kv],
                      dynamic_shapes={"input_ids": {1: seq}, "position_ids": {1: seq}, "past": tuple({2: past} for _ in kv)})


def ort_int8(fp32_onnx, out, tmp):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = onnx.load(fp32_onnx)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type == "Transpose" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
                and list(attrs.get("perm", [1, 0])) == [1, 0]):
            w = numpy_helper.to_array(inits[n.input[0]])
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), n.output[0]))
            continue
        if (n.op_type == "Gemm" and n.input[1] in inits and not attrs.get("transA", 0)
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
            b = n.input[1]
            if attrs.get("transB", 0):
                w = numpy_helper.to_array(inits[b])
                b = b + ".T"
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), b))
            mm = n.output[0] + ".mm"
            nodes.append(helper.make_node("MatMul", [n.input[0], b], [mm if len(n.input) > 2 else n.output[0]], n.name + ".mm"))
            if len(n.input) > 2:
                nodes.append(helper.make_node("Add", [mm, n.input[2]], [n.output[0]], n.name + ".add"))
            continue
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    pre = os.path.join(tmp, "matmul.onnx")
    onnx.save(m, pre, save_as_external_data=True, location="matmul.onnx.data")
    quantize_dynamic(pre, out, weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=False)
    os.remove(pre)
    os.remove(pre + ".data")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["llama.cpp", "ort", "ct2"], required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--llama-convert", help="llama.cpp's convert_hf_to_gguf.py")
    a = ap.parse_args()
    if os.path.exists(a.out):
        return
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if a.engine == "llama.cpp":
        llama_cpp(a, tmp)
    elif a.engine == "ort":
        if a.variant == "fp32":
            ort_export(a.src, os.path.join(tmp, "model.onnx"))
        else:
            fp32 = a.out.rsplit(".", 1)[0] + ".fp32"
            if not os.path.exists(fp32):
                subprocess.run([sys.executable, __file__, "--engine", "ort", "--variant", "fp32", "--src", a.src,
                                "--out", fp32], check=True)
            ort_int8(os.path.join(fp32, "model.onnx"), os.path.join(tmp, "model.onnx"), tmp)
    else:
        import ctranslate2

        q = {"fp32": "float32", "int8": "int8"}[a.variant]
        ctranslate2.converters.TransformersConverter(a.src).convert(os.path.join(tmp, "ct2"), quantization=q, force=True)
        for f in os.listdir(os.path.join(tmp, "ct2")):
            os.rename(os.path.join(tmp, "ct2", f), os.path.join(tmp, f))
        os.rmdir(os.path.join(tmp, "ct2"))
    os.rename(tmp, a.out)


if __name__ == "__main__":
    main()
