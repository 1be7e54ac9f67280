"""slimlm.compress against `slimlm compress --json`; compress -> open -> perplexity round trips."""

import json

import pytest

import slimlm
from conftest import HELDOUT, assert_same, model_dir

SRC = model_dir("ref-gpt2")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "en.txt"
    p.write_text((HELDOUT / "en-US.txt").read_text()[:5000])
    return p


@pytest.mark.parametrize(
    "kwargs,args",
    [
        ({"mode": "int8"}, ["--mode", "int8"]),
        ({"mode": "lowrank", "rank": 32}, ["--mode", "lowrank", "--rank", 32]),
        (
            {"mode": "lowrank", "energy": 0.8, "factors": "f16", "embeddings": "keep", "skip": ["mlp_out"]},
            ["--mode", "lowrank", "--energy", 0.8, "--factors", "f16", "--embeddings", "keep", "--skip", "mlp_out"],
        ),
        (
            {"mode": "q4", "group": 64, "symmetric": True},
            ["--mode", "q4", "--group", 64, "--symmetric"],
        ),
        ({"mode": "q3", "embeddings": "q4"}, ["--mode", "q3", "--embeddings", "q4"]),
    ],
    ids=["int8", "lowrank-r32", "lowrank-e0.8-f16", "q4-g64-sym", "q3-emb-q4"],
)
def test_compress_open_perplexity_round_trip(tmp_path, cli, text_file, kwargs, args):
    out_py, out_cli = tmp_path / "py", tmp_path / "cli"
    stages = []
    report = slimlm.compress(SRC, out_py, progress=lambda d, t, s: stages.append(s), **kwargs)
    want = cli("compress", "--model", SRC, "--out", out_cli, *args)
    assert_same(report, want)
    assert stages
    # Same files, same model.
    a, b = slimlm.Model.open(out_py), slimlm.Model.open(out_cli)
    assert (out_py / "model.safetensors").read_bytes() == (out_cli / "model.safetensors").read_bytes()
    ins = a.inspect()
    ins_cli = cli("inspect", out_py)
    assert ins == ins_cli
    assert ins["ratio"] < 1 and ins["plan"] is not None
    # Perplexity of the compressed model: the Python value is the command line's.
    text = text_file.read_text()
    r = slimlm.perplexity(a, text)
    j = cli("perplexity", "--model", out_cli, "--text", text_file)
    assert r["ppl"] == pytest.approx(j["ppl"], rel=1e-9) and r["tokens_scored"] == j["tokens_scored"]
    base = slimlm.perplexity(SRC, text)["ppl"]
    assert abs(r["ppl"] / base - 1) < 0.5
    assert a.copied_bytes == 0
    assert len(b.generate("Debian", max_tokens=4).ids) == 4


def test_compress_with_a_plan_dict_or_file(tmp_path, cli):
    plan = {
        "default": {"method": "int8"},
        "components": {"embeddings": {"method": "f16"}, "mlp_in": {"method": "lowrank", "rank": 16, "factors": "int8"}},
        "overrides": [{"layers": [0], "method": "keep"}],
    }
    r = slimlm.compress(SRC, tmp_path / "a", plan=plan)
    pf = tmp_path / "plan.json"
    pf.write_text(json.dumps(plan))
    assert_same(slimlm.compress(SRC, tmp_path / "b", plan=pf), r)
    assert_same(cli("compress", "--model", SRC, "--out", tmp_path / "c", "--plan", pf), r)
    stored = {m["name"]: m["stored"] for m in r["matrices"]}
    assert stored["transformer.h.0.mlp.c_fc"] == "f32"
    assert stored["transformer.h.1.mlp.c_fc"].startswith("lowrank r=16")


def test_compress_errors(tmp_path):
    out = tmp_path / "o"
    slimlm.compress(SRC, out, mode="f16")
    with pytest.raises(slimlm.Error, match="exists"):
        slimlm.compress(SRC, out, mode="f16")
    slimlm.compress(SRC, out, mode="f16", overwrite=True)
    with pytest.raises(slimlm.InputError, match="mode"):
        slimlm.compress(SRC, tmp_path / "x")
    with pytest.raises(slimlm.InputError, match="unknown mode"):
        slimlm.compress(SRC, tmp_path / "x", mode="int4")
    with pytest.raises(slimlm.InputError, match="needs a rank, an energy or a budget"):
        slimlm.compress(SRC, tmp_path / "x", mode="lowrank")
    with pytest.raises(slimlm.InputError, match="apply to"):
        slimlm.compress(SRC, tmp_path / "x", mode="int8", rank=4)
    with pytest.raises(slimlm.PlanError):
        slimlm.compress(SRC, tmp_path / "x", plan={"default": {"method": "int3"}})
    with pytest.raises(slimlm.InputError, match="calibration"):
        slimlm.compress(SRC, tmp_path / "x", mode="lowrank", rank=8, svd="whiten")
    with pytest.raises(slimlm.IoError):
        slimlm.compress(tmp_path / "missing", tmp_path / "x", mode="int8")
    assert not (tmp_path / "x").exists()


def test_compress_with_calibration(tmp_path, cli):
    cal = (HELDOUT / "en-US.txt").read_text()[:3000]
    calf = tmp_path / "cal.txt"
    calf.write_text(cal)
    r = slimlm.compress(SRC, tmp_path / "a", mode="lowrank", rank=16, calibration=[cal], calibration_tokens=512)
    j = cli("compress", "--model", SRC, "--out", tmp_path / "b", "--mode", "lowrank", "--rank", 16,
            "--calibration", calf, "--calibration-tokens", 512)
    assert_same(r, j)
    assert slimlm.Model.open(tmp_path / "a").inspect()["plan"]["svd"] == "activation"


@pytest.mark.parametrize("quantizer", ["gptq", "awq"])
def test_compress_q4_with_a_calibrated_quantizer(tmp_path, cli, quantizer):
    cal = (HELDOUT / "en-US.txt").read_text()[:3000]
    calf = tmp_path / "cal.txt"
    calf.write_text(cal)
    r = slimlm.compress(SRC, tmp_path / "a", mode="q4", quantizer=quantizer, calibration=[cal],
                        calibration_tokens=512)
    j = cli("compress", "--model", SRC, "--out", tmp_path / "b", "--mode", "q4", "--quantizer", quantizer,
            "--calibration", calf, "--calibration-tokens", 512)
    assert_same(r, j)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(slimlm.Error, match="calibration"):
        slimlm.compress(SRC, tmp_path / "c", mode="q4", quantizer=quantizer)
    with pytest.raises(slimlm.InputError, match="unknown quantizer"):
        slimlm.compress(SRC, tmp_path / "d", mode="q4", quantizer="hqq")
