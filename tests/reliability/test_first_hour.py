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
