"""A full disk is an error, not a crash (issue 28, point 7): ENOSPC at every write step of
every command that writes gives one line naming the path and the free space (exit 2), or a
503 from the service, and leaves the previous state loadable; a rerun finishes.

``IISAN_CRASH_MODE=enospc`` makes write step N fail as a full disk does (iisan.fileio.crash_point);
one test fills a real limit instead (RLIMIT_FSIZE: the kernel refuses the write)."""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

from fastapi.testclient import TestClient

from iisan import fileio
from iisan.cache.store import HiddenStateCache
from iisan.data.dataset import PreparedDataset
from iisan.serving.recommender import Recommender
from iisan.serving.service import create_app
from tests.conftest import REPO, png_bytes
from tests.reliability.conftest import cli, one_line_error

NEW = [{"key": "full-a", "text": "an item for a full disk"}, {"key": "full-b", "text": "another one"}]


def disk_full_at(n: int, monkeypatch, action):
    """Run ``action()`` with the first write step from step ``n`` on failing with ENOSPC, as
    once; (its result, whether a write failed)."""
    monkeypatch.setenv(fileio.CRASH_ENV, str(n))
    monkeypatch.setenv("IISAN_CRASH_MODE", "enospc")
    monkeypatch.setattr(fileio, "crash_points_passed", 0)
    monkeypatch.setattr(fileio, "disk_full_raised", False)
    try:
        result = action()
    finally:
        monkeypatch.delenv(fileio.CRASH_ENV)
    return result, fileio.disk_full_raised


def assert_full_disk_line(result) -> None:
    one_line_error(result, "no space left on device", "free there", "nothing was changed")


def test_items_add_on_a_full_disk(scratch, tmp_path, monkeypatch):
    Recommender.load(scratch.run)
    pristine = tmp_path / "pristine"
    shutil.copytree(scratch.run, pristine)
    items = tmp_path / "new.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in NEW))
    for n in range(1, 40):
        shutil.rmtree(scratch.run)
        shutil.copytree(pristine, scratch.run)
        result, full = disk_full_at(n, monkeypatch, lambda: cli("items", "add", scratch.run, items))
        if not full:  # past the last write step
            break
        assert_full_disk_line(result)
        assert not {"full-a", "full-b"} & set(Recommender.load(scratch.run).ids)
    assert n > 4 and result.exit_code == 0
    assert {"full-a", "full-b"} <= set(Recommender.load(scratch.run).ids)


def test_prepare_on_a_full_disk_keeps_the_previous_dataset(small_source, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    assert cli("prepare", small_source, "-f", "iisan-tsv", "--out", out).exit_code == 0
    before = PreparedDataset.load(out).fingerprint
    for n in range(1, 40):
        result, full = disk_full_at(n, monkeypatch, lambda: cli("prepare", small_source, "-f", "iisan-tsv",
                                                                 "--out", out, "--min-seq-len", "6"))
        if not full:
            break
        assert_full_disk_line(result)
        assert PreparedDataset.load(out).fingerprint == before
    assert n > 2 and result.exit_code == 0 and PreparedDataset.load(out).fingerprint != before


def test_encode_on_a_full_disk_then_a_rerun_finishes(scratch, tmp_path, monkeypatch):
    args = ("encode", scratch.dataset, "--out", tmp_path / "cache", "--text-encoder", "tiny-random-text",
            "--image-encoder", "none", "--pooling", "mean")
    for n in range(1, 40):
        result, full = disk_full_at(n, monkeypatch, lambda: cli(*args))
        if not full:
            break
        assert_full_disk_line(result)
        assert cli(*args).exit_code == 0  # the same command resumes (or starts over) and finishes
        HiddenStateCache.open(tmp_path / "cache", PreparedDataset.load(scratch.dataset).fingerprint)
        shutil.rmtree(tmp_path / "cache")
    assert n > 3 and result.exit_code == 0


def test_index_build_on_a_full_disk_keeps_the_previous_index(scratch, monkeypatch):
    Recommender.load(scratch.run)
    for n in range(1, 40):
        result, full = disk_full_at(n, monkeypatch, lambda: cli("index", "build", scratch.run, "--index", "hnsw"))
        if not full:
            break
        assert_full_disk_line(result)
        assert Recommender.load(scratch.run).index.kind == "flat"  # the previous one, whole
    assert result.exit_code == 0 and Recommender.load(scratch.run).index.kind == "hnsw"


def test_train_on_a_full_disk_then_resume_finishes(scratch, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("train", scratch.dataset, "--cache", scratch.cache, "--out", out, "--epochs", "2", "--train-batch-size", "32",
            "--seed", "1")
    for n in (1, 2, 5, 9, 14):
        result, full = disk_full_at(n, monkeypatch, lambda: cli(*args, "--force"))
        assert full
        assert_full_disk_line(result)
        resumed = cli(*args, "--resume") if (out / "config.json").is_file() else cli(*args, "--force")
        assert resumed.exit_code == 0, resumed.output
        assert json.loads((out / "metrics.json").read_text())["test"]["ndcg@10"] >= 0


def test_the_service_answers_503_on_a_full_disk(scratch, monkeypatch):
    recommender = Recommender.load(scratch.run)
    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    body = {"items": [{"key": "svc-full", "text": "x", "image": base64.b64encode(png_bytes()).decode()}]}
    for n in (1, 2, 3):
        response, full = disk_full_at(n, monkeypatch, lambda: client.post("/items", json=body))
        assert full and response.status_code == 503, response.text
        assert "no space left" in response.json()["error"] and response.headers["retry-after"] == "5"
        assert "svc-full" not in recommender.ids and "svc-full" not in Recommender.load(scratch.run).ids
    assert client.post("/items", json=body).status_code == 200


def test_a_real_write_limit_is_one_line(scratch, tmp_path):
    """The kernel refuses writes past RLIMIT_FSIZE (EFBIG): allocating the cache's arrays fails
    before anything is encoded, where a sparse memory map would have died with SIGBUS."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error return instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-m", "iisan", "encode", str(scratch.dataset), "--out", str(tmp_path / "c"),
                             "--text-encoder", "tiny-random-text", "--image-encoder", "none", "--pooling", "mean"],
                            env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "file too large" in errors[0] and "needed" in errors[0]
