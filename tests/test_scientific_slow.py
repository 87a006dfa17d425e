"""End to end on the real Amazon Scientific data with the real minilm encoder (slow: ~3 min)."""

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
from tests.conftest import SCIENTIFIC

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
def test_iisan_text_on_scientific_beats_popularity(tmp_path):
    data, cache, run = tmp_path / "sci", tmp_path / "cache", tmp_path / "run"
    assert runner.invoke(app, ["prepare", str(SCIENTIFIC), "-f", "iisan-tsv", "-o", str(data)]).exit_code == 0
    encoded = runner.invoke(app, ["encode", str(data), "--out", str(cache), "--image-encoder", "none"])
    assert encoded.exit_code == 0, encoded.output
    trained = runner.invoke(app, ["train", str(data), "--cache", str(cache), "--modality", "text",
                                  "--epochs", "3", "--out", str(run), "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["test"]["hr@10"] > 2 * popularity_hr10(data)
    # The run folder carries everything `evaluate` needs; it reproduces training's test figure.
    evaluated = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    assert evaluated["metrics"]["hr@10"] == pytest.approx(summary["test"]["hr@10"], abs=1e-9)
