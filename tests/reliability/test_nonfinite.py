"""No number from broken state: NaN and infinity stop where they are born, never become a hit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from iisan.evaluation.metrics import MISS, metrics_from_ranks, pessimistic_ranks
from iisan.fileio import write_json_atomic
from tests.reliability.conftest import cli, one_line_error

TRAIN = ("--train-batch-size", "32", "--seed", "1")


def poison_cache(cache, rows=(3, 17, 40), modality="text") -> np.ndarray:
    """NaN into some items' states; returns the original rows to restore."""
    states = np.load(cache / f"{modality}.npy", mmap_mode="r+")
    original = np.array(states[list(rows)])
    states[list(rows)] = np.nan
    states.flush()
    return original


def restore_cache(cache, original, rows=(3, 17, 40), modality="text") -> None:
    states = np.load(cache / f"{modality}.npy", mmap_mode="r+")
    states[list(rows)] = original
    states.flush()


def test_nan_cache_stops_training_with_epoch_and_step(scratch):
    poison_cache(scratch.cache)
    out = scratch.run.parent / "new"
    one_line_error(cli("train", scratch.dataset, "--cache", scratch.cache, "--out", out, "--epochs", "2", *TRAIN),
                          "epoch 1, step ", "the loss is nan", "no epoch is complete", "lower --lr")
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()


def test_resume_continues_from_the_last_good_epoch(scratch):
    out = scratch.run.parent / "new"
    assert cli("train", scratch.dataset, "--cache", scratch.cache, "--out", out, "--epochs", "1", *TRAIN).exit_code == 0
    original = poison_cache(scratch.cache)
    one_line_error(cli("train", scratch.dataset, "--cache", scratch.cache, "--out", out, "--epochs", "2", "--resume", *TRAIN),
                   "epoch 2, step ", "keeps epoch 1", "--resume")
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    restore_cache(scratch.cache, original)
    result = cli("train", scratch.dataset, "--cache", scratch.cache, "--out", out, "--epochs", "2", "--resume", *TRAIN)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: json would accept NaN, check values
    assert all(math.isfinite(v) for v in _numbers(metrics))


def _numbers(tree):
    """Every number in a JSON tree (metrics, per-slice metrics, the blend's weights)."""
    if isinstance(tree, dict | list):
        for value in tree.values() if isinstance(tree, dict) else tree:
            yield from _numbers(value)
    elif not isinstance(tree, str):
        yield tree


def test_nan_item_states_are_refused_by_evaluate_and_recommend(scratch):
    poison_cache(scratch.cache, rows=(5, 6), modality="image")
    one_line_error(cli("evaluate", scratch.run), "2 items of", "non-finite embeddings")
    # recommend reads the index stored when training ended; re-embedding the catalogue refuses
    one_line_error(cli("index", "build", scratch.run), "2 items of", "non-finite")


def test_encode_refuses_non_finite_states_and_resumes(tiny_multimodal, tmp_path, monkeypatch):
    from iisan.cache import HiddenStateCache
    from iisan.cache.encode import encode
    from iisan.data import PreparedDataset
    from iisan.encoders.layer_states import FrozenEncoder
    from iisan.errors import NonFiniteError
    from tests.multimodal_data import TINY_ENCODE

    dataset, _ = tiny_multimodal
    real = FrozenEncoder.pooled_hidden_states

    def overflowing(self, inputs, pooling, compute=None, layers=None):
        out = real(self, inputs, pooling, compute, layers).clone()
        out[1] = 1e6  # beyond float16's 65504: would be stored as infinity
        return out

    monkeypatch.setattr(FrozenEncoder, "pooled_hidden_states", overflowing)
    with pytest.raises(NonFiniteError, match=r"encode text: .* for 1 item: '"):
        encode(dataset, tmp_path / "cache", TINY_ENCODE)
    monkeypatch.setattr(FrozenEncoder, "pooled_hidden_states", real)
    encode(dataset, tmp_path / "cache", TINY_ENCODE)  # the same command resumes and finishes
    cache = HiddenStateCache.open(tmp_path / "cache", PreparedDataset.load(dataset).fingerprint)
    assert all(np.isfinite(cache.states(m)).all() for m in cache.modalities)


def test_a_nan_target_score_is_a_miss_not_a_hit():
    scores = torch.tensor([[-math.inf, 0.5, math.nan, 0.1], [-math.inf, 0.2, 0.9, 0.3]])
    ranks = pessimistic_ranks(scores, torch.tensor([2, 2]))
    assert ranks.tolist() == [MISS, 0]
    metrics = metrics_from_ranks(ranks, (1,))
    assert metrics["hr@1"] == 0.5 and math.isfinite(metrics["ndcg@1"])


def test_metric_files_are_strict_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "m.json", {"ndcg@10": math.inf})
    assert not (tmp_path / "m.json").exists()
