"""End to end on the real Amazon Scientific data with the real minilm encoder (slow).

Every test that reads the encoded Scientific set (the ``scientific_minilm`` session
fixture, about 2 minutes to build) is in this file, so CI's ``--dist loadfile`` runs them
on one worker and builds it once, while the other slow tests run on the second."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iisan.cli import app
from iisan.data.dataset import PreparedDataset
from iisan.data.split import split_sequences
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from tests.test_bench_smoke import bench

runner = CliRunner()


def popularity_hr10(dataset_dir) -> float:
    """HR@10 on test of ranking by training popularity, history excluded."""
    dataset = PreparedDataset.load(dataset_dir)
    flat, offsets = dataset.sequence_arrays()
    splits = split_sequences(flat, offsets, 10, dataset.num_items)
    test = splits.test
    users = len(test.targets)
    scores = torch.from_numpy(splits.popularity).double().expand(users, -1).clone()
    scores[:, 0] = -torch.inf
    rows, cols = test.history_pairs(np.arange(users))
    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    return metrics_from_ranks(pessimistic_ranks(scores, torch.from_numpy(test.targets)), (10,))["hr@10"]


@pytest.mark.slow
@pytest.mark.shared_data
def test_iisan_text_on_scientific_beats_popularity(scientific_minilm, tmp_path):
    # prepared and encoded through the command line by the fixture (once for every test that needs it)
    data, cache, run = scientific_minilm / "scientific", scientific_minilm / "cache-minilm", tmp_path / "run"
    encoded = runner.invoke(app, ["encode", str(data), "--out", str(cache), "--image-encoder", "none", "--json"])
    assert encoded.exit_code == 0, encoded.output
    text = json.loads(encoded.stdout)["modalities"]["text"]  # the complete cache: a rerun encodes nothing
    assert text["rows_encoded"] == 0 and text["rows_already_done"] > 19_000
    # One epoch is enough to be twice popularity; --serve-width 0 skips fitting the served first
    # stage (two thirds of the run here; the quickstart and serve bench tests cover it end to end).
    trained = runner.invoke(app, ["train", str(data), "--cache", str(cache), "--modality", "text",
                                  "--epochs", "1", "--serve-width", "0", "--out", str(run), "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["test"]["hr@10"] > 2 * popularity_hr10(data)
    # The run folder carries everything `evaluate` needs; it reproduces training's test figure.
    evaluated = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    assert evaluated["metrics"]["hr@10"] == pytest.approx(summary["test"]["hr@10"], abs=1e-9)


# --work: the session's Scientific set and minilm cache, laid out as these benches build
# theirs, so they find it complete and do not encode again.
@pytest.mark.slow
@pytest.mark.shared_data
def test_train_step_bench_on_scientific(scientific_minilm):
    out = bench("bench/train_step.py", "--work", scientific_minilm, "--steps", "3", "--uncached-steps", "1",
                "--unfused-steps", "2", timeout=1200)
    report = json.loads(out[out.index("{"):])
    assert report["step_ms_median"] > 0 and report["fused_over_for_loop_step_ratio"] > 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_threads_bench_on_scientific(scientific_minilm):
    bench("bench/threads.py", "--work", scientific_minilm, "--threads", "1", "--repeats", "1", "--steps", "3",
          "--jobs", "step", timeout=1200)
    assert json.loads((scientific_minilm / "threads-busy0.json").read_text())
