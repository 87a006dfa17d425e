"""The first hour, continued (issue 46, point 6): global options where a newcomer types them."""

from __future__ import annotations

import subprocess
import sys

from iisan.threads import threads_first


def test_threads_moves_before_the_command_and_nothing_after_a_double_dash_does():
    assert threads_first(["recommend", "RUN", "--threads", "1", "--history", "a"]) == [
        "--threads", "1", "recommend", "RUN", "--history", "a"]
    assert threads_first(["evaluate", "RUN", "--threads=2"]) == ["--threads=2", "evaluate", "RUN"]
    assert threads_first(["recommend", "--", "--threads", "3"]) == ["recommend", "--", "--threads", "3"]


def test_threads_after_the_command_works_from_the_installed_command(scratch):
    key = __import__("polars").read_parquet(scratch.run / "items.parquet")["key"][0]
    done = subprocess.run([sys.executable, "-m", "iisan", "recommend", str(scratch.run), "--threads", "1",
                           "--history", key, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert '"key"' in done.stdout


def test_help_and_version_start_without_importing_torch():
    for args in (["--help"], ["--version"], ["train", "--help"]):
        code = ("import sys\nfrom iisan.cli import main\nsys.argv = ['iisan', *sys.argv[1:]]\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert done.stderr.strip().splitlines()[-1] == "False", (args, done.stderr[-800:])


def test_a_method_without_epochs_says_so_instead_of_none_seconds():
    import io

    from rich.console import Console

    from iisan.report import terminal

    metrics = {"ndcg@10": 0.1, "hr@10": 0.2}
    summary = {"method": "knn", "mode": "cached", "epochs": 0, "best_epoch": 0, "seconds_per_epoch": None,
               "trainable_parameters": 0, "total_parameters": 10, "valid": metrics, "test": metrics}
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(terminal.trained(summary, "runs/knn"))
    text = console.export_text()
    assert "None" not in text and "nothing to train" in text


def test_train_says_which_modality_auto_chose(tiny_multimodal, tmp_path, caplog):
    from iisan.assemble import assemble
    from iisan.config import TrainConfig

    dataset, cache = tiny_multimodal
    with caplog.at_level("INFO", logger="iisan.assemble"):
        assemble(dataset, cache, TrainConfig.for_method("iisan", epochs=1))
    assert any("modality auto: intra_inter" in record.getMessage() and "text and image" in record.getMessage()
               for record in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_renamed_flag_keeps_working_with_a_warning(tmp_path):
    from iisan.config import EncodeConfig, TrainConfig
    from iisan.options import option_specs, renamed_flags

    specs = {"encode": option_specs(EncodeConfig), "train": option_specs(TrainConfig)}
    assert renamed_flags(["--threads", "2", "encode", "DATA", "--batch-size", "8"], lambda c: specs.get(c, ())) == [
        "--threads", "2", "encode", "DATA", "--encode-batch-size", "8"]
    assert renamed_flags(["train", "DATA", "--batch-size=8", "--", "--batch-size"], lambda c: specs.get(c, ())) == [
        "train", "DATA", "--train-batch-size=8", "--", "--batch-size"]
    done = subprocess.run([sys.executable, "-m", "iisan", "encode", str(tmp_path / "none"), "--out",
                           str(tmp_path / "cache"), "--batch-size", "8"], capture_output=True, text=True, timeout=120)
    assert "--batch-size is now called --encode-batch-size" in done.stderr
    assert "not a prepared dataset" in done.stderr  # the flag was read: the command went on to its input


def test_a_retired_flag_says_where_its_work_went(tmp_path):
    """issue 48: prepare's --max-seq-len cut histories; prepare keeps them whole now, and the
    one line names --keep-last and train's --max-seq-len instead of guessing --min-seq-len."""
    done = subprocess.run([sys.executable, "-m", "iisan", "prepare", "builtin", "-f", "movielens", "--out",
                           str(tmp_path / "ds"), "--max-seq-len", "10"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "ds").exists()
    assert "--keep-last 13" in done.stderr and "iisan train --max-seq-len" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_quality_bench_says_where_its_data_comes_from_when_it_is_missing(tmp_path):
    import os

    from tests.conftest import REPO

    done = subprocess.run(["bash", str(REPO / "bench" / "quality.sh"), str(tmp_path / "work")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SCIENTIFIC": str(tmp_path / "none")})
    assert done.returncode == 2
    assert "items.tsv" in done.stderr and "../shared/datasets" in done.stderr and "SCIENTIFIC=" in done.stderr


def test_piped_output_is_one_line_a_log_record_never_wrapped_at_80_columns(small_source, tmp_path):
    import shutil

    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "source"
    shutil.copytree(small_source, deep)
    done = subprocess.run([sys.executable, "-m", "iisan", "prepare", str(deep), "-f", "iisan-tsv", "-o",
                           str(tmp_path / "ds")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reading = [line for line in done.stderr.splitlines() if "reading" in line]
    assert len(reading) == 1 and str(deep) in reading[0] and len(reading[0]) > 80, done.stderr
    assert reading[0].rstrip() == reading[0]  # not padded to a console's width either


def test_auto_threads_says_when_busy_cores_leave_it_fewer(monkeypatch, caplog):
    import iisan.threads as threads

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda cores: 1)
    with caplog.at_level("INFO", logger="iisan.threads"):
        assert threads.thread_count("auto") == 1
    assert any("1 of 2 cores" in r.getMessage() and "--threads 2" in r.getMessage() for r in caplog.records)
