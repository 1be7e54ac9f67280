"""Hugging Face hub cache repositories (models--org--name) resolved through refs/main."""

import os

import pytest

import slimlm
from conftest import model_dir


def make_cache(root, src, rev="0123456789abcdef0123456789abcdef01234567"):
    repo = root / "models--slimlm--ref-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in src.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        os.symlink(f.resolve(), blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs" / "main").write_text(rev)
    return repo, snap


def test_open_hub_cache_repository(tmp_path):
    repo, snap = make_cache(tmp_path, model_dir("ref-gpt2"))
    m = slimlm.Model.open(repo)
    assert m.path == snap
    direct = slimlm.Model.open(model_dir("ref-gpt2"))
    assert m.generate("Debian", max_tokens=6).ids == direct.generate("Debian", max_tokens=6).ids
    assert m.copied_bytes == 0
    assert slimlm.Model.open(repo, revision=snap.name).path == snap
    assert slimlm.Model.open(snap).path == snap
    # Paths in the analysis functions resolve the same way.
    text = "Hello world, hello again"
    assert slimlm.perplexity(repo, text)["ppl"] == slimlm.perplexity(direct, text)["ppl"]
    with pytest.raises(slimlm.InputError, match="no ref"):
        slimlm.Model.open(repo, revision="v2")
