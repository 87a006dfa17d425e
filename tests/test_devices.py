"""Where models run: --device on every command, the device-resident cache, precision, threads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iisan.cache.store import HiddenStateCache
from iisan.cli import app
from iisan.devices import compute_dtype, pick_device
from iisan.errors import ConfigError
from iisan.features import CachedSource
from iisan.threads import THREADS_ENV, busy_cores, thread_count, use_threads

runner = CliRunner()
HAS_GPU = torch.cuda.is_available()


def test_compute_dtype_is_bf16_only_where_asked_or_on_a_gpu():
    cpu = torch.device("cpu")
    assert compute_dtype("auto", cpu) is None  # CPUs run float32 unless told
    assert compute_dtype("fp32", cpu) is None
    assert compute_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"):
        compute_dtype("fp8", cpu)


def test_unknown_or_missing_devices_are_refused():
    with pytest.raises(ConfigError, match="device must be one of"):
        pick_device("tpu")
    if HAS_GPU:
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="no GPU is visible"):
            pick_device("cuda")


def _commands(run, history, new_items):
    return {
        "evaluate": ["evaluate", str(run), "--split", "valid", "--json"],
        "recommend": ["recommend", str(run), "--history", history, "--json"],
        "index build": ["index", "build", str(run), "--json"],
        "index check": ["index", "check", str(run), "--queries", "20", "--json"],
        "items add": ["items", "add", str(run), str(new_items), "--json"],
    }


def test_every_model_command_runs_on_the_device_it_is_given(tiny_run, tiny_multimodal, tmp_path):
    from iisan.data.dataset import PreparedDataset

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    items = PreparedDataset.load(json.loads((run / "config.json").read_text())["dataset"]).items
    new_items = tmp_path / "new.jsonl"
    new_items.write_text(json.dumps({"key": "new-1", "text": items["text"][0]}) + "\n")
    commands = _commands(run, ",".join(items["key"][:3].to_list()), new_items)
    for name, args in commands.items():
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 0, (name, result.output)
    assert json.loads(runner.invoke(app, [*commands["evaluate"], "--device", "cpu"]).stdout)["device"] == "cpu"
    dataset, cache = tiny_multimodal
    for name, args in {**commands, "serve": ["serve", str(run)], "quickstart": ["quickstart", "--out", str(tmp_path / "q")],
                       "train": ["train", str(dataset), "--cache", str(cache), "--out", str(tmp_path / "t")],
                       "encode": ["encode", str(dataset), "--out", str(cache), "--force"],  # refused before deleting
                       "bench efficiency": ["bench", "efficiency", str(dataset), "--cache", str(cache)]}.items():
        if HAS_GPU:
            continue  # the cuda path itself is exercised on a GPU machine (README: GPU section)
        result = runner.invoke(app, [*args, "--device", "cuda"])
        assert result.exit_code == 2 and "no GPU is visible" in result.output, (name, result.output)
    assert HiddenStateCache.open(cache).num_items > 0  # encode --force refused before touching the cache


def test_the_cache_is_kept_resident_on_the_device_and_gathers_there(tiny_multimodal):
    _, cache_dir = tiny_multimodal
    cache = HiddenStateCache.open(cache_dir)
    layers = {m: (0, 1, 2) for m in cache.modalities}
    resident = CachedSource(cache, layers, device="cpu")
    streamed = CachedSource(cache, layers, in_memory_limit=0)  # read from the memory map per batch
    assert resident.resident and not streamed.resident
    ids = np.array([5, 0, 7, 7, cache.num_items])
    a, b = resident.features(ids), streamed.features(ids)
    for modality in cache.modalities:
        assert a.states[modality].device == resident.device
        assert torch.equal(a.states[modality], b.states[modality])
        assert torch.equal(a.present[modality], b.present[modality])
    whole = resident.features(np.arange(cache.num_items + 1))  # the full-catalogue loss: no copy
    assert all(whole.states[m].data_ptr() == resident._in_memory[m].data_ptr() for m in cache.modalities)
    if HAS_GPU:
        on_gpu = CachedSource(cache, layers, device="cuda").features(ids)
        assert all(on_gpu.states[m].is_cuda and torch.equal(on_gpu.states[m].cpu(), a.states[m]) for m in cache.modalities)


# ---- threads ------------------------------------------------------------------------------


def test_thread_count_reads_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_count(None) == 3  # a user's own OMP setting is kept
    monkeypatch.setenv(THREADS_ENV, "2")
    assert thread_count(None) == 2  # ours wins over OMP's
    assert thread_count("5") == 5  # the flag wins over both
    assert thread_count("auto") >= 1
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(ConfigError, match="threads must be a positive number or auto"):
            thread_count(bad)


def test_use_threads_sets_torch_and_the_children(monkeypatch):
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    try:
        assert use_threads("1") == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "1"  # a child process (the bench's, torchrun's) starts with it
    finally:
        torch.set_num_threads(before)


def test_auto_leaves_the_cores_a_busy_neighbour_holds():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        assert busy_cores(os.cpu_count() or 1) >= 1  # the spinner is runnable all the time
    finally:
        spinner.kill()
        spinner.wait()


def test_the_cli_refuses_a_bad_thread_count_in_one_line():
    result = runner.invoke(app, ["--threads", "zero", "encoders", "list"])
    assert result.exit_code == 2 and "threads must be a positive number or auto" in result.output
    assert "Traceback" not in result.output
