"""Shared fixtures: the reference models and goldens in ../shared, and the slimlm command line."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import slimlm

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SLIMLM_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
HELDOUT = SHARED / "corpora" / "heldout"
UDHR = SHARED / "corpora" / "udhr"

REFERENCE_MODELS = [
    "ref-gpt2",
    "ref-gptneo",
    "ref-opt",
    "ref-opt-postln",
    "ref-neox",
    "ref-neox-seq",
    "ref-bloom",
]

if not MODELS.is_dir():
    raise RuntimeError(f"{MODELS} not found: the tests need ../shared (or set SLIMLM_SHARED)")


def model_dir(name: str) -> Path:
    return MODELS / name


_open_cache = {}


def open_model(name: str) -> slimlm.Model:
    """One open Model per reference model for the whole run (opening only maps the files)."""
    if name not in _open_cache:
        _open_cache[name] = slimlm.Model.open(model_dir(name))
    return _open_cache[name]


@pytest.fixture(scope="session")
def gpt2() -> slimlm.Model:
    return open_model("ref-gpt2")


_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I8": np.int8}


def read_safetensors(path: Path) -> dict:
    """A safetensors file as numpy arrays (read here with numpy alone, independently of slimlm)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


_golden_cache = {}


def golden(name: str):
    """(golden.json, tensors) of a reference model."""
    if name not in _golden_cache:
        d = model_dir(name) / "golden"
        _golden_cache[name] = (
            json.loads((d / "golden.json").read_text()),
            read_safetensors(d / "golden.safetensors"),
        )
    return _golden_cache[name]


def cli_path():
    p = os.environ.get("SLIMLM_CLI")
    if p:
        return Path(p)
    return REPO / "target" / "release" / "slimlm"


@pytest.fixture(scope="session")
def cli():
    """Runs `slimlm ARGS --json` and returns the parsed object."""
    path = cli_path()
    if not path.is_file():
        msg = f"the slimlm command line is not built ({path}); run `cargo build --release`"
        if os.environ.get("SLIMLM_REQUIRE_CLI"):
            pytest.fail(msg)
        pytest.skip(msg)

    def run(*args):
        r = subprocess.run(
            [str(path), *map(str, args), "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise AssertionError(f"slimlm {' '.join(map(str, args))} failed:\n{r.stderr}")
        return json.loads(r.stdout)

    return run


def assert_same(py, cli, path="", rel=1e-9):
    """Equal JSON-like values: floats within `rel` (the same computation; only thread scheduling could
    reorder a sum), everything else exactly."""
    if isinstance(cli, dict):
        assert isinstance(py, dict), f"{path}: {type(py)}"
        assert set(py) == set(cli), f"{path}: keys {sorted(py)} vs {sorted(cli)}"
        for k in cli:
            assert_same(py[k], cli[k], f"{path}.{k}", rel)
    elif isinstance(cli, list):
        assert isinstance(py, list) and len(py) == len(cli), f"{path}: {py!r} vs {cli!r}"
        for i, (a, b) in enumerate(zip(py, cli)):
            assert_same(a, b, f"{path}[{i}]", rel)
    elif isinstance(cli, float) or isinstance(py, float):
        assert py == pytest.approx(cli, rel=rel, abs=1e-12), f"{path}: {py} vs {cli}"
    else:
        assert py == cli, f"{path}: {py!r} vs {cli!r}"
