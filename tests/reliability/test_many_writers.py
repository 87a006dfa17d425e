"""Many writers, one run: every commit is kept and every reader catches up (issue 28, point 1:
two concurrent ``items add`` both printed "added", and only one's items were in the run).

Writers hold the run's lock (``iisan.run.lock``) and start from what is committed on disk; a
loaded :class:`Recommender` (what ``iisan serve`` holds) picks up other processes' commits
before it writes and, for queries, on a timer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from iisan.run.lock import run_lock
from iisan.serving import catalogue
from iisan.serving.recommender import Recommender
from tests.conftest import REPO
from tests.reliability.conftest import cli, one_line_error

PROCESSES, ADDS = 4, 3


def python(code: str, **env) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lock_holder(run, what: str) -> subprocess.Popen:
    """Another process holding the run's lock (as ``what``) until killed."""
    holder = python(f"""
        import time
        from iisan.run.lock import run_lock
        with run_lock({str(run)!r}, {what!r}):
            print("held", flush=True)
            time.sleep(60)
        """)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_concurrent_writers_keep_every_item(scratch):
    Recommender.load(scratch.run)  # the index exists before the race (its first build is locked too)
    workers = [python(f"""
        from iisan.serving.recommender import Recommender
        recommender = Recommender.load({str(scratch.run)!r})
        for m in range({ADDS}):
            recommender.add_items([{{"key": "p{n}-" + str(m), "text": "new item {n} " + str(m)}}])
        """) for n in range(PROCESSES)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    keys = set(Recommender.load(scratch.run).ids)
    assert {f"p{n}-{m}" for n in range(PROCESSES) for m in range(ADDS)} <= keys


def test_a_loaded_recommender_serves_what_another_process_added(scratch, tmp_path, monkeypatch):
    serving = Recommender.load(scratch.run)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"key": "from-cli", "text": "an item added from the command line"}) + "\n")
    worker = python(f"""
        from iisan.cli import main
        import sys
        sys.argv = ["iisan", "items", "add", {str(scratch.run)!r}, {str(new)!r}]
        main()
        """)
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    assert "from-cli" not in serving.ids  # not yet: queries check on a timer
    monkeypatch.setattr(catalogue, "REFRESH_SECONDS", 0.0)
    assert serving.recommend(["from-cli"], k=3)  # a query picks it up and can use it
    serving.add_items([{"key": "from-service", "text": "an item added by the service"}])
    assert {"from-cli", "from-service"} <= set(Recommender.load(scratch.run).ids)


def test_a_second_writer_waits_then_names_the_holder(scratch, tmp_path):
    holder = lock_holder(scratch.run, "a long rebuild")
    try:
        new = tmp_path / "new.jsonl"
        new.write_text(json.dumps({"key": "late", "text": "waits for the lock"}) + "\n")
        os.environ["IISAN_LOCK_WAIT"] = "0.5"
        try:
            result = cli("items", "add", scratch.run, new)
        finally:
            del os.environ["IISAN_LOCK_WAIT"]
        one_line_error(result, "is being changed by process", "a long rebuild", "try again")
        assert Recommender.load(scratch.run).ids.get("late") is None  # queries still load meanwhile
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the next writer goes ahead.
    assert cli("items", "add", scratch.run, new).exit_code == 0
    assert "late" in Recommender.load(scratch.run).ids


def test_training_into_a_run_waits_for_its_writer(scratch):
    """``train --force`` into a run that the service is adding to: refused, the run kept."""
    held, done = threading.Event(), threading.Event()

    def serve():
        with run_lock(scratch.run, "adding items"):
            held.set()
            done.wait(60)

    thread = threading.Thread(target=serve)
    thread.start()
    held.wait(10)
    try:
        os.environ["IISAN_LOCK_WAIT"] = "0"
        try:
            result = cli("train", scratch.dataset, "--cache", scratch.cache, "--out", scratch.run, "--force")
        finally:
            del os.environ["IISAN_LOCK_WAIT"]
    finally:
        done.set()
        thread.join()
    one_line_error(result, "is being changed by process", "adding items")
    assert (scratch.run / "metrics.json").is_file()  # not emptied


@pytest.mark.parametrize("wait", [0.0, 0.3])
def test_the_lock_is_exclusive_across_processes(scratch, wait):
    holder = lock_holder(scratch.run, "holding")
    try:
        from iisan.errors import RunBusyError

        with pytest.raises(RunBusyError, match="holding"), run_lock(scratch.run, "second", wait=wait):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(scratch.run, "after", wait=5):
        pass


def test_an_item_another_process_added_is_found_by_lookup_and_health_without_a_query(scratch, tmp_path,
                                                                                     monkeypatch):
    from fastapi.testclient import TestClient

    from iisan.serving.service import create_app

    serving = Recommender.load(scratch.run)
    client = TestClient(create_app(serving), raise_server_exceptions=False)
    items_before = client.get("/health").json()["items"]
    other = Recommender.load(scratch.run)  # a second server on the same run
    other.add_items([{"key": "from-the-other", "text": "an item the other server took"}])
    monkeypatch.setattr(catalogue, "REFRESH_SECONDS", 0.0)  # the period passed
    assert client.get("/items/from-the-other").status_code == 200
    assert client.get("/health").json()["items"] == items_before + 1
