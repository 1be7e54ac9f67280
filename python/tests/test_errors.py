"""Exceptions for bad input: one class per library error variant, all under slimlm.Error."""

import json
import shutil
import struct

import numpy as np
import pytest

import slimlm
from conftest import model_dir, read_safetensors

SRC = model_dir("ref-gpt2")


def copy_model(tmp_path, name="m"):
    d = tmp_path / name
    d.mkdir()
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        if (SRC / f).exists():
            shutil.copy(SRC / f, d / f)
    return d


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        b = a.tobytes()
        header[name] = {"dtype": {np.float32: "F32"}[a.dtype.type], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_hierarchy():
    kinds = [slimlm.IoError, slimlm.FormatError, slimlm.ConfigError, slimlm.ChangedError, slimlm.MissingTensorError,
             slimlm.TensorError, slimlm.TokenizerError, slimlm.InputError, slimlm.KernelsError, slimlm.NonFiniteError,
             slimlm.PlanError, slimlm.CancelledError]
    assert all(issubclass(k, slimlm.Error) and k.__module__ == "slimlm" for k in kinds)
    assert issubclass(slimlm.Error, Exception)
    assert issubclass(slimlm.IoError, OSError)
    assert issubclass(slimlm.InputError, ValueError) and issubclass(slimlm.PlanError, ValueError)


def test_missing_directory(tmp_path):
    with pytest.raises(slimlm.IoError) as e:
        slimlm.Model.open(tmp_path / "nope")
    assert e.value.path == str(tmp_path / "nope")
    assert "not found" in str(e.value)
    with pytest.raises(OSError):
        slimlm.Model.open(tmp_path / "nope")


def test_truncated_weights(tmp_path):
    d = copy_model(tmp_path)
    (d / "model.safetensors").write_bytes((SRC / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(slimlm.FormatError) as e:
        slimlm.Model.open(d)
    assert e.value.path.endswith("model.safetensors")


def test_bad_config(tmp_path):
    d = copy_model(tmp_path)
    shutil.copy(SRC / "model.safetensors", d / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(slimlm.ConfigError, match="llama"):
        slimlm.Model.open(d)


def test_missing_and_misshapen_tensors(tmp_path):
    t = read_safetensors(SRC / "model.safetensors")
    d = copy_model(tmp_path, "missing")
    write_safetensors(d / "model.safetensors", {k: v for k, v in t.items() if "h.3.mlp.c_fc.weight" not in k})
    with pytest.raises(slimlm.MissingTensorError) as e:
        slimlm.Model.open(d)
    assert "h.3.mlp.c_fc.weight" in e.value.tensor
    d = copy_model(tmp_path, "shape")
    bad = dict(t)
    name = next(k for k in t if k.endswith("h.0.mlp.c_fc.weight"))
    bad[name] = t[name][:, :-1]
    write_safetensors(d / "model.safetensors", bad)
    with pytest.raises(slimlm.TensorError) as e:
        slimlm.Model.open(d)
    assert e.value.tensor == name


def test_bad_tokens_and_arguments(gpt2):
    s = gpt2.session()
    with pytest.raises(slimlm.InputError, match="out of range"):
        s.step(50257)
    with pytest.raises(slimlm.InputError, match="no tokens"):
        s.prefill([])
    s.prefill([1] * 500)
    with pytest.raises(slimlm.InputError, match="context"):
        s.prefill([1] * 20)
    assert s.position == 500
    with pytest.raises(OverflowError):
        s.step(-1)
    with pytest.raises(TypeError):
        gpt2.generate(3.5)
    with pytest.raises(slimlm.InputError, match="threads"):
        gpt2.session(threads=0)
    with pytest.raises(slimlm.InputError, match="KV cache"):
        slimlm.Model.open(SRC, kv_cache="int4")
    with pytest.raises(slimlm.InputError, match="learned positions"):
        slimlm.Model.open(SRC, context=4096)
    with pytest.raises(slimlm.PlanError):
        slimlm.compress(SRC, "/tmp/never-written", mode="lowrank", rank=8, factors="int3")
