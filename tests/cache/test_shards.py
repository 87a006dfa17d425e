"""Sharded encoding: N processes write disjoint shard folders; --merge-check assembles them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from iisan.cache.encode import encode, merge_shards, shard_range
from iisan.cache.store import HiddenStateCache, done_path, states_path
from iisan.cli import app
from iisan.data.dataset import PreparedDataset
from iisan.errors import CacheMismatchError, ConfigError
from tests.multimodal_data import TINY_ENCODE

ENCODE_ARGS = ["--text-encoder", "tiny-random-text", "--image-encoder", "tiny-random-image", "--pooling", "mean",
               "--image-size", "32", "--encode-batch-size", "16", "--workers", "1"]


@pytest.mark.parametrize("items, count", [(10, 3), (7, 7), (1000, 4), (5, 1)])
def test_shard_ranges_cover_every_item_once(items, count):
    ranges = [shard_range((k, count), items) for k in range(1, count + 1)]
    covered = [i for first, end in ranges for i in range(first, end)]
    assert covered == list(range(1, items + 1))
    with pytest.raises(ConfigError, match="1 <= K <= N"):
        shard_range((0, count), items)


def _launch_shards(dataset, cache, launcher: str) -> None:
    """Two concurrent shard processes: started one by one with K/N, or by torchrun with ``auto``."""
    command = ["-m", "iisan", "-q", "encode", str(dataset), "--out", str(cache), *ENCODE_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        commands = [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                     *command, "--shard", "auto"]]
    else:
        commands = [[sys.executable, *command, "--shard", f"{k}/2"] for k in (1, 2)]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for c in commands]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-3000:]


def test_shard_auto_outside_torchrun_is_a_clear_error(tiny_multimodal, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    result = CliRunner().invoke(app, ["encode", str(tiny_multimodal[0]), "--out", str(tmp_path / "c"),
                                      "--shard", "auto", *ENCODE_ARGS])
    assert result.exit_code == 2
    assert "torchrun" in result.output


@pytest.mark.parametrize("launcher", ["processes", "torchrun"])
def test_two_concurrent_shard_processes_merge_into_the_single_process_cache(tiny_multimodal, tmp_path, launcher):
    dataset, _ = tiny_multimodal
    cache = tmp_path / "sharded"
    _launch_shards(dataset, cache, launcher)
    assert sorted(p.name for p in cache.iterdir()) == ["shard-1-of-2", "shard-2-of-2"]

    result = CliRunner().invoke(app, ["encode", str(dataset), "--out", str(cache), "--merge-check", "--json"])
    assert result.exit_code == 0, result.output
    num_items = PreparedDataset.load(dataset).num_items
    assert json.loads(result.stdout) == {"cache": str(cache), "shards": 2, "items": num_items,
                                         "modalities": {"text": num_items, "image": num_items}}
    assert not list(cache.glob("shard-*"))  # folded into the cache

    single = tmp_path / "single"
    encode(dataset, single, TINY_ENCODE)
    fingerprint = PreparedDataset.load(dataset).fingerprint
    merged, reference = HiddenStateCache.open(cache, fingerprint), HiddenStateCache.open(single, fingerprint)
    for modality in ("text", "image"):
        # Text batches differ (sorted by length within each shard): equal up to float16 rounding.
        assert np.allclose(merged.states(modality), reference.states(modality), atol=2e-3)
        assert np.array_equal(merged.present(modality), reference.present(modality))
        assert np.load(done_path(cache, modality)).all()


def test_merge_refuses_missing_or_unfinished_shards(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    cache = tmp_path / "cache"
    config = TINY_ENCODE
    encode(dataset, cache, config, shard=(1, 3))
    encode(dataset, cache, config, shard=(3, 3))
    with pytest.raises(CacheMismatchError, match="shard 2/3 not started"):
        merge_shards(dataset, cache)
    encode(dataset, cache, config, shard=(2, 3))
    done = np.load(done_path(cache / "shard-2-of-3", "text"), mmap_mode="r+")
    first, _ = shard_range((2, 3), PreparedDataset.load(dataset).num_items)
    done[first:first + 5] = 0  # as if killed mid-run
    done.flush()
    with pytest.raises(CacheMismatchError, match="shard 2/3 has 5 text rows to go"):
        merge_shards(dataset, cache)
    assert not (cache / "manifest.json").exists() and (cache / "shard-1-of-3").is_dir()  # nothing merged
    encode(dataset, cache, config, shard=(2, 3))  # resuming redoes just those rows
    summary = merge_shards(dataset, cache)
    assert summary["shards"] == 3 and states_path(cache, "text").is_file()


def test_shard_option_errors_are_one_line(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    runner = CliRunner()
    for args, message in ((["--shard", "two"], "--shard takes K/N"), (["--shard", "3/2"], "1 <= K <= N"),
                          (["--merge-check"], "no shard folders"), (["--merge-check", "--shard", "1/2"], "without --shard")):
        result = runner.invoke(app, ["encode", str(dataset), "--out", str(tmp_path / "c"), *ENCODE_ARGS, *args])
        assert result.exit_code == 2 and message in result.output, result.output
