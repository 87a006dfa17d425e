"""Training under torchrun: two CPU ranks with gloo give what one process gives on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from iisan.distributed import Workers, start
from iisan.errors import ConfigError
from iisan.run.files import resume_folder


@pytest.mark.parametrize("count", [0, 1, 2, 7, 150])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shares_cover_everything_once_in_rank_order(count, world):
    shares = [Workers(rank=r, world_size=world).share(count) for r in range(world)]
    covered = [i for share in shares for i in range(count)[share]]
    assert covered == list(range(count))
    sizes = [len(range(count)[share]) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_distributed_outside_torchrun_is_a_clear_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        start(requested=True)
    assert not start(requested=False).distributed


def _train(args: list[str], ranks: int, tmp_path) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = (launcher if ranks > 1 else [sys.executable]) + ["-m", "iisan", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _epochs(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# 150 training users in batches of 149: the second batch holds one user, so one rank has
# none and must still take part (an all-padding row). Dropout 0 so the ranks' random
# streams play no part.
@pytest.mark.parametrize("batch_size", [32, 149])
def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(tiny_multimodal, tmp_path, batch_size):
    dataset, cache = tiny_multimodal
    common = [str(dataset), "--cache", str(cache), "--epochs", "3", "--patience", "5", "--train-batch-size",
              str(batch_size), "--dropout", "0", "--seed", "3", "--json"]
    single = _train(common + ["--out", str(tmp_path / "single")], 1, tmp_path)
    multi = _train(common + ["--out", str(tmp_path / "multi")], 2, tmp_path)

    # Rank 0 alone prints the summary and writes the run.
    summary = json.loads(multi.stdout)
    assert summary["ranks"] == 2
    assert json.loads((tmp_path / "multi" / "config.json").read_text())["ranks"] == 2
    assert not list((tmp_path / "multi").glob("**/*.tmp*"))

    one, two = _epochs(tmp_path / "single"), _epochs(tmp_path / "multi")
    assert [e["epoch"] for e in one] == [e["epoch"] for e in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["valid"]["ndcg@10"] == pytest.approx(a["valid"]["ndcg@10"], abs=0.01)
    weights_one = load_file(str(resume_folder(tmp_path / "single") / "model.safetensors"))
    weights_two = load_file(str(resume_folder(tmp_path / "multi") / "model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-4, rtol=1e-3, msg=name)
    assert summary["test"]["ndcg@10"] == pytest.approx(json.loads(single.stdout)["test"]["ndcg@10"], abs=0.01)
