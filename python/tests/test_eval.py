"""slimlm.eval.* against `slimlm eval ... --json`, with the same arguments and defaults."""

import pytest

import slimlm
from conftest import HELDOUT, UDHR, assert_same, model_dir, open_model

REF = model_dir("ref-gpt2")


def test_compare_equals_the_command_line(tmp_path, cli):
    text = (HELDOUT / "en-US.txt").read_text()[:4000]
    f = tmp_path / "t.txt"
    f.write_text(text)
    r = slimlm.eval.compare(REF, method="lowrank:r64:int8", text=text, max_tokens=300)
    j = cli("eval", "compare", "--reference", REF, "--method", "lowrank:r64:int8", "--text", f, "--max-tokens", 300)
    assert_same(r, j)
    assert r["hidden"][0]["layer"] == 0 and 0 < r["logits"]["top1_agreement"] <= 1
    # A compressed directory as the candidate, and Model objects instead of paths.
    out = tmp_path / "int8"
    slimlm.compress(REF, out, mode="int8")
    r2 = slimlm.eval.compare(open_model("ref-gpt2"), slimlm.Model.open(out), text=text, context=128, max_tokens=256)
    j2 = cli("eval", "compare", "--reference", REF, "--candidate", out, "--text", f, "--context", 128, "--max-tokens", 256)
    assert_same(r2, j2)


def test_disparity_equals_the_command_line(cli):
    r = slimlm.eval.disparity(REF, method="int8", languages=["eng", "fra", "cmn_hans"], max_tokens=256)
    j = cli("eval", "disparity", "--reference", REF, "--method", "int8", "--languages", "eng,fra,cmn_hans", "--max-tokens", 256)
    assert_same(r, j)
    assert [l["lang"] for l in r["languages"]] == ["eng", "fra", "cmn_hans"]
    assert (r["context"], r["stride"]) == (256, 256)
    # Embeddings and windows passed through; a string of languages works as on the command line.
    r = slimlm.eval.disparity(REF, method="lowrank:r32:f16", embeddings="keep", languages="eng,deu_1996",
                              max_lines=5, context=64, stride=32, corpus=UDHR)
    j = cli("eval", "disparity", "--reference", REF, "--method", "lowrank:r32:f16", "--embeddings", "keep",
            "--languages", "eng,deu_1996", "--max-lines", 5, "--context", 64, "--stride", 32, "--corpus", UDHR)
    assert_same(r, j)


def test_sweep_equals_the_command_line(cli):
    calls = []
    r = slimlm.eval.sweep(REF, points=["int8", "f16"], ranks=[32], languages="eng", max_tokens=200,
                          progress=lambda *a: calls.append(a))
    j = cli("eval", "sweep", "--model", REF, "--points", "int8,f16", "--ranks", 32, "--languages", "eng", "--max-tokens", 200)
    assert_same(r, j)
    assert [p["label"] for p in r["points"]] == ["int8", "f16", "lowrank:r32:int8"]
    assert calls
    r = slimlm.eval.sweep(REF, energies="0.5", int8_groups=["row", 64], factors="f16", languages=["eng"], max_tokens=128)
    j = cli("eval", "sweep", "--model", REF, "--energies", "0.5", "--int8-groups", "row,64", "--factors", "f16",
            "--languages", "eng", "--max-tokens", 128)
    assert_same(r, j)


def test_sensitivity_equals_the_command_line(cli):
    r = slimlm.eval.sensitivity(REF, unit="component", languages="eng", max_tokens=96)
    j = cli("eval", "sensitivity", "--model", REF, "--unit", "component", "--languages", "eng", "--max-tokens", 96)
    assert_same(r, j)
    assert r["base"] == "lowrank:r32:int8" and r["protect"] == "int8"
    # The plan it returns compresses as it is.
    assert isinstance(r["plan"], dict)


def test_eval_errors(tmp_path):
    with pytest.raises(slimlm.InputError, match="exactly one"):
        slimlm.eval.compare(REF, text="Hello world")
    with pytest.raises(slimlm.InputError, match="exactly one"):
        slimlm.eval.disparity(REF, REF, method="int8")
    with pytest.raises(slimlm.InputError, match="unknown method"):
        slimlm.eval.disparity(REF, method="int3", languages="eng")
    with pytest.raises(slimlm.InputError, match="no text for language"):
        slimlm.eval.disparity(REF, method="int8", languages="xx_notalanguage")
    with pytest.raises(slimlm.InputError, match="sweep points"):
        slimlm.eval.sweep(REF)
    with pytest.raises(slimlm.InputError, match="differ in"):
        slimlm.eval.compare(REF, model_dir("ref-gptneo"), text="Hello world, hello")
    with pytest.raises(slimlm.IoError, match="candidate"):
        slimlm.eval.compare(REF, tmp_path / "none", text="Hello world, hello")
    with pytest.raises(slimlm.InputError, match="budget_mb"):
        slimlm.eval.sensitivity(REF, budget_mb=-1)
