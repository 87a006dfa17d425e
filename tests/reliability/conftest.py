"""A private, movable copy of the tiny run (dataset, cache and run folder) to damage."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iisan.cli import app


@dataclass
class Scratch:
    dataset: Path
    cache: Path
    run: Path


@pytest.fixture
def scratch(tiny_run, tiny_multimodal, tmp_path) -> Scratch:
    dataset, cache = tiny_multimodal
    copy = Scratch(tmp_path / "ds", tmp_path / "cache", tmp_path / "run")
    shutil.copytree(dataset, copy.dataset)
    shutil.copytree(cache, copy.cache)
    shutil.copytree(tiny_run, copy.run)
    config = json.loads((copy.run / "config.json").read_text())
    config.update(dataset=str(copy.dataset), cache=str(copy.cache))
    (copy.run / "config.json").write_text(json.dumps(config))
    return copy


def cli(*args: str):
    """Run the CLI in-process; returns the click result."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    """Assert exit code 2, no traceback, and exactly one ``error:`` line holding every needle; return it."""
    lines = [line.strip() for line in re.split(r"[\r\n]", result.stderr)]  # progress bars use \r
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
