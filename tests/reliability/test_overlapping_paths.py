"""``--out`` never lands on an input: with or without ``--force``, a command whose output
folder is, contains or lies inside one of its inputs is refused before anything is written,
and the input stays byte for byte as it was (issue 28: ``train --cache C --out C --force``
emptied the cache, ``encode DATA --out DATA --force`` replaced the dataset)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, one_line_error


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("out", "relation"), [
    ("cache", "is the cache"), ("ds", "is the dataset"), ("cache/run", "lies inside the cache"), (".", "contains"),
])
def test_train_refuses_an_out_over_its_inputs(scratch, out, relation):
    root = scratch.dataset.parent
    before = snapshot(scratch.dataset), snapshot(scratch.cache)
    result = cli("train", scratch.dataset, "--cache", scratch.cache, "--out", root / out, "--force", "--epochs", "1")
    one_line_error(result, relation, "choose an --out outside every input")
    assert (snapshot(scratch.dataset), snapshot(scratch.cache)) == before


@pytest.mark.parametrize("out", ["ds", "ds/cache"])
def test_encode_refuses_an_out_over_its_dataset(scratch, out):
    before = snapshot(scratch.dataset)
    result = cli("encode", scratch.dataset, "--out", scratch.dataset.parent / out, "--force")
    one_line_error(result, "the dataset", "choose an --out outside every input")
    assert snapshot(scratch.dataset) == before


def test_prepare_refuses_an_out_over_its_source(small_source):
    before = snapshot(small_source)
    for out in (small_source, small_source.parent):
        result = cli("prepare", small_source, "-f", "iisan-tsv", "--out", out, "--force")
        one_line_error(result, "the source", "choose an --out outside every input")
    assert snapshot(small_source) == before
    result = cli("prepare", small_source, "-f", "iisan-tsv", "--out", small_source.parent / "elsewhere")
    assert result.exit_code == 0, result.output  # a sibling is fine
