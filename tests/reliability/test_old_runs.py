"""Run folders saved by earlier code keep loading and answer as they did (issue 29: the
run folder's owner moved; what it reads must not). ``tests/fixtures/run-0.1-d657f23`` was
trained and indexed by the code at d657f23 (tiny encoders, 2 epochs), its dataset and cache
paths pointed nowhere, as for a moved run; ``.expected.json`` holds that code's answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from iisan.serving.recommender import Recommender
from tests.reliability.conftest import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-0.1-d657f23", run)
    return run


def test_a_run_saved_by_earlier_code_answers_as_it_did(old_run):
    expected = json.loads((FIXTURES / "run-0.1-d657f23.expected.json").read_text())
    recommender = Recommender.load(old_run)
    for case in expected:
        answer = recommender.recommend(case["history"], k=5)
        assert [key for key, _ in answer] == [key for key, _ in case["top"]]
        assert [score for _, score in answer] == pytest.approx([score for _, score in case["top"]], rel=1e-5)
    result = cli("recommend", old_run, "--history", ",".join(expected[0]["history"]), "-k", "5", "--json")
    assert result.exit_code == 0 and [row["key"] for row in json.loads(result.stdout)] == [
        key for key, _ in expected[0]["top"]]


def test_a_run_saved_by_earlier_code_takes_new_items_and_reports(old_run):
    recommender = Recommender.load(old_run)
    recommender.add_items([{"key": "new-in-an-old-run", "text": "a new item"}])
    assert "new-in-an-old-run" in Recommender.load(old_run).ids
    assert cli("report", old_run, "--out", old_run.parent / "report.md").exit_code == 0
