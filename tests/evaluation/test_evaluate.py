"""``evaluate_run``: reloads a run, reproduces training's test metrics, merges metrics.json."""

from __future__ import annotations

import json
import shutil

import pytest

from iisan.data.dataset import PreparedDataset
from iisan.errors import ConfigError, DatasetError
from iisan.run_metrics import evaluate_run


def test_reproduces_the_metrics_written_by_training(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    trained = json.loads((run / "metrics.json").read_text())
    result = evaluate_run(run, split="test")
    slices = trained["test"].pop("slices")
    assert result["metrics"] == pytest.approx(trained["test"], abs=1e-9)
    for name, expected in slices.items():
        assert result["slices"][name] == pytest.approx(expected, abs=1e-9)
    dataset = PreparedDataset.load(json.loads((run / "config.json").read_text())["dataset"])
    assert (result["users"], result["items"]) == (dataset.sequences.height, dataset.num_items)


def test_merges_splits_and_history_setting(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(run, split="valid", ks=(1, 3))
    evaluate_run(run, split="test", include_history=True)
    recorded = json.loads((run / "metrics.json").read_text())
    assert set(recorded) == {"valid", "test", "test_with_history", "blend"}
    assert set(recorded["valid"]) == {"hr@1", "ndcg@1", "mrr@1", "hr@3", "ndcg@3", "mrr@3", "mrr", "slices",
                                     "exposure@10"}
    assert set(recorded["valid"]["slices"]["head"]) == {"hr@1", "ndcg@1", "mrr@1", "hr@3", "ndcg@3", "mrr@3", "mrr",
                                                       "users"}


def test_bad_arguments(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="split"):
        evaluate_run(tiny_run, split="train")
    with pytest.raises(ConfigError, match="positive"):
        evaluate_run(tiny_run, ks=(0,))
    with pytest.raises(DatasetError, match="not a run directory"):
        evaluate_run(tmp_path)
