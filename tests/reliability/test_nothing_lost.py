"""Nothing is lost to --force, a symlink or a second process (issue 46, point 2): a command
that replaces its output checks its inputs and builds the new output beside the old one
first; a writer never follows a link out of the run; a process that loaded a run notices
when another one is put in its place; two evaluations never drop each other's entry."""

from __future__ import annotations

import json
import os
import socket

import pytest

from iisan.config import TrainConfig
from iisan.errors import ConfigError, RunReplacedError
from iisan.fileio import atomic_directory, clean_leftovers, commit_generation
from iisan.serving.recommender import Recommender
from iisan.training.loop import train
from tests.reliability.conftest import cli, one_line_error


def quick_config() -> TrainConfig:
    return TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=3, eval_user_chunk=64,
                                  blend_groups=1, blend_terms=0, serve_width=0)


def test_train_force_with_a_mistyped_cache_leaves_the_run_whole(scratch):
    before = sorted(p.name for p in scratch.run.iterdir())
    result = cli("train", scratch.dataset, "--cache", scratch.run.parent / "no-such-cache", "--out", scratch.run,
                 "--force", "--epochs", "1")
    one_line_error(result, "no-such-cache")
    assert sorted(p.name for p in scratch.run.iterdir()) == before
    first = Recommender.load(scratch.run).recommend([Recommender.load(scratch.run).keys[1]], k=3)
    assert len(first) == 3


def test_train_force_swaps_the_new_run_in_whole_and_leaves_nothing_beside_it(scratch):
    old_config = (scratch.run / "config.json").stat().st_ino
    summary = train(scratch.dataset, scratch.run, quick_config(), cache_dir=scratch.cache, force=True)
    assert summary["run"] == str(scratch.run)
    assert (scratch.run / "config.json").stat().st_ino != old_config
    assert json.loads((scratch.run / "config.json").read_text())["train"]["seed"] == 3
    assert [p.name for p in scratch.run.parent.iterdir() if p.name.startswith(f".{scratch.run.name}.")] == []
    assert Recommender.load(scratch.run).num_items > 0


def test_a_replacement_keeps_the_old_folder_until_the_new_one_is_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as work:
            (work / "new.txt").write_text("half")
            raise RuntimeError("killed midway")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
    with atomic_directory(out) as work:
        (work / "new.txt").write_text("new")
        assert (out / "old.txt").is_file()  # still the old content while the new one is built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_leftovers_of_a_killed_replacement_are_mended_by_the_next_writer(tmp_path):
    out = tmp_path / "data"
    old = tmp_path / ".data.old"  # killed between the two renames of a system that cannot swap
    old.mkdir()
    (old / "dataset.json").write_text("{}")
    dead = tmp_path / f".data.work-{socket.gethostname()}-{2**22 + 12345}-abc123"  # a pid no process has
    dead.mkdir()
    alive = tmp_path / f".data.work-{socket.gethostname()}-{os.getpid()}-abc123"  # this process's: in use
    alive.mkdir()
    clean_leftovers(out)
    assert (out / "dataset.json").is_file() and not old.exists()  # the old content is back, whole
    assert not dead.exists() and alive.exists()


def test_prepare_force_replaces_a_dataset_and_cleans_a_dead_writers_work(small_source, tmp_path):
    out = tmp_path / "ds"
    assert cli("prepare", small_source, "-f", "iisan-tsv", "-o", out).exit_code == 0
    dead = tmp_path / f".ds.work-{socket.gethostname()}-{2**22 + 12345}-zz9"
    dead.mkdir()
    result = cli("prepare", small_source, "-f", "iisan-tsv", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "src") == ["ds"]


def test_a_lock_file_linked_out_of_the_run_is_refused_and_its_target_untouched(scratch, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (scratch.run / ".lock").unlink(missing_ok=True)
    (scratch.run / ".lock").symlink_to(target)
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"key": "fresh-1", "text": "a new item"}) + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "symbolic link", ".lock")
    assert target.read_text() == "keep me"


def test_a_commit_never_writes_into_a_linked_folder_nor_deletes_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    linked = tmp_path / "index"
    linked.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        commit_generation(linked, "index.json", lambda folder, _: (folder / "x").write_text("x"), {})
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "gen-000001").symlink_to(outside, target_is_directory=True)  # an old generation that is a link
    commit_generation(folder, "index.json", lambda work, _: (work / "x").write_text("x"), {})
    assert not (folder / "gen-000001").exists() and (outside / "keep.txt").read_text() == "keep"


def test_a_server_refuses_once_its_run_is_trained_again_in_its_place(scratch):
    recommender = Recommender.load(scratch.run)
    key = recommender.keys[1]
    assert recommender.recommend([key], k=2)
    train(scratch.dataset, scratch.run, quick_config(), cache_dir=scratch.cache, force=True)
    recommender.store._checked = 0.0  # as if the refresh period had passed
    with pytest.raises(RunReplacedError, match="replaced on disk"):
        recommender.recommend([key], k=2)
    with pytest.raises(RunReplacedError):
        recommender.add_items([{"key": "fresh-1", "text": "a new item"}])
    assert "fresh-1" not in Recommender.load(scratch.run).ids  # nothing acknowledged, nothing committed
    assert recommender.health()["status"] == "failing"


def test_metrics_of_a_run_replaced_while_it_was_evaluated_are_not_recorded(scratch, monkeypatch):
    import iisan.run_metrics as run_metrics

    before = json.loads((scratch.run / "metrics.json").read_text())
    real = run_metrics.evaluate_split

    def evaluate_while_training_writes(*args, **kwargs):
        metrics = real(*args, **kwargs)
        weights = scratch.run / "model.safetensors"  # a new weights file, as a training's checkpoint writes one
        (scratch.run / "new.safetensors").write_bytes(weights.read_bytes())
        os.replace(scratch.run / "new.safetensors", weights)
        return metrics

    monkeypatch.setattr(run_metrics, "evaluate_split", evaluate_while_training_writes)
    with pytest.raises(RunReplacedError, match="evaluate again"):
        run_metrics.evaluate_run(scratch.run, split="valid")
    assert json.loads((scratch.run / "metrics.json").read_text()) == before


def test_an_evaluation_records_its_metrics_under_the_run_lock(scratch, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import iisan.run_metrics as run_metrics
    from iisan.errors import RunBusyError
    from iisan.run.lock import run_lock

    before = (scratch.run / "metrics.json").read_text()
    monkeypatch.setenv("IISAN_LOCK_WAIT", "0.2")
    with run_lock(scratch.run, "another writer"), ThreadPoolExecutor(1) as pool:
        with pytest.raises(RunBusyError):  # it waits for the writer instead of overwriting
            pool.submit(run_metrics.evaluate_run, scratch.run, split="valid").result()
    assert (scratch.run / "metrics.json").read_text() == before
    run_metrics.evaluate_run(scratch.run, split="valid")
    assert run_metrics.metrics_key("valid", False, False) in json.loads((scratch.run / "metrics.json").read_text())
