"""Every benchmark script runs, at a tiny size: nothing runs them otherwise, and a refactor
once broke one unseen (issue 29: bench/serve.py's 1M-item part). These check that each
script finishes and prints its report, not its figures (those are measured, not tested).

Marked slow (CI runs them). The two that read ../shared's Scientific set live in
tests/test_scientific_slow.py, beside the other test of its encoded cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import polars as pl
import pytest

from iisan.run.files import read_run_config
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def bench(*args, timeout: int = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_prepare_bench(tmp_path):
    out = bench("bench/prepare.py", "--interactions", "20000", "--users", "2000", "--items", "500", "--out", tmp_path)
    assert "problems" in out


def test_scale_bench(tmp_path):
    out = bench("bench/scale.py", "--items", "3000", "--reference-items", "1000", "--users", "800", "--steps", "3",
                "--eval-users", "100", "--work", tmp_path, "--json")
    assert json.loads(out[out.index("{"):])


def test_serve_bench_both_parts(tmp_path):
    out = bench("bench/serve.py", "--work", tmp_path, "--items", "2000", "--clients", "2", "--seconds", "2",
                "--rounds", "1", "--candidates", "50", "--big-items", "3000", "--queries", "20")
    report = json.loads((tmp_path / "serve.json").read_text())
    for method in ("id", "iisan"):
        served = report["methods"][method]
        assert served["http"][0]["requests"] > 0 and served["http"][0]["errors"] == 0, out
        assert [row["index"] for row in served["in_process"]] == ["flat", "hnsw", "hnsw"]
    blended = report["methods"]["iisan"]
    assert blended["searched_bytes_per_item"] == 128 and blended["candidates"] == 50
    assert 0 <= blended["in_process"][0]["recall@10_vs_full_scoring"] <= 1
    assert report["iisan_vs_id_throughput"] > 0


def test_python_vs_cli_bench(tmp_path):
    out = bench("bench/python_vs_cli.py", "--work", tmp_path, "--repeats", "1", "--epochs", "1")
    assert "python / cli = " in out and (tmp_path / "python_vs_cli-busy0.json").is_file()


def test_run_readers(tiny_run, tmp_path):
    """The scripts that read finished runs: summarise_runs, repeat_targets, versa_table, rare_ceiling,
    cold_knowledge, calibration."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(tiny_run, runs / "iisan-1")
    assert "iisan" in bench("bench/summarise_runs.py", runs, "--slices")
    assert "repeat_share" in json.loads(bench("bench/repeat_targets.py", runs / "iisan-1", "--json"))[str(runs / "iisan-1")]
    assert "iisan" in bench("bench/versa_table.py", runs, "--steps", "2")
    ceiling = json.loads(bench("bench/rare_ceiling.py", runs / "iisan-1", "--json"))
    ceiling = ceiling[str(runs / "iisan-1")]
    assert set(ceiling["own_slice_only"]) == {"alpha 0", "alpha 0.25", "alpha 0.5", "alpha 1", "alpha 2", "alpha 4",
                                              "floor"}
    assert set(ceiling["best_with_popularity_prior"]) == {"cold", "tail"}
    # Fewer competitors never rank a target lower: the oracle is at least the floor over every item.
    for name, every_item in ceiling["floor_every_item"].items():
        assert every_item is None or ceiling["own_slice_only"]["floor"][name] >= every_item
    assert "own slice only, best alpha + popularity" in bench("bench/rare_ceiling.py", runs / "iisan-1")
    known = json.loads(bench("bench/cold_knowledge.py", runs / "iisan-1", "--auc", "0.9,1", "--json"))
    known = known[str(runs / "iisan-1")]
    assert [row["predictor"] for row in known["rows"]] == ["the run's groups (rare share)", "AUC 0.9", "AUC 1"]
    # Its first row scores the run's own blend on calibration's users: calibration's own figure.
    recorded = json.loads((runs / "iisan-1" / "metrics.json").read_text())["blend"]["valid_after"]
    assert known["rows"][0]["valid"] == pytest.approx(recorded, abs=6e-5)
    assert "groups of users from" in bench("bench/cold_knowledge.py", runs / "iisan-1", "--auc", "1")
    # The script itself exits non-zero if the library's fit and the exhaustive one differ.
    timed = json.loads(bench("bench/calibration.py", runs / "iisan-1", "--select", "balanced", "--json"))
    assert timed["library_s"] > 0 and timed["exhaustive_s"] > 0 and timed["settings"] > 1


def test_covisits_bench(tiny_run):
    dataset = read_run_config(tiny_run)["dataset"]
    result = json.loads(bench("bench/covisits.py", dataset, "--split", "test", "--json"))
    users = pl.read_parquet(f"{dataset}/sequences.parquet").height
    assert sum(row["users"] for row in result["slices"].values()) == users
    # A cold target never occurs in the training part, so nothing there can precede it.
    assert result["slices"].get("cold", {"covisited": 0.0})["covisited"] == 0.0
    assert all(0 <= row["covisited"] <= 1 and 0 <= row["ndcg@10"] <= 1 for row in result["slices"].values())
