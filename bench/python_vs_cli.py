"""The Python API against the command line: the same 3-epoch MovieLens-100K training run,
started as `iisan train ...` and as `python -c "import iisan; iisan.train(...)"`, side by
side (alternating, the same number of times), optionally with busy neighbour processes.

    python bench/python_vs_cli.py [--busy 1] [--repeats 3] [--epochs 3] [--work bench/out/python_vs_cli]

Neither run is given a thread count: each makes its own choice (IISAN_THREADS, else
OMP_NUM_THREADS, else auto), which is what is compared. The dataset and cache are built once
in --work. Prints a Markdown table and writes python_vs_cli-busyN.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/python_vs_cli"))
    parser.add_argument("--busy", type=int, default=0, help="busy neighbour processes during the runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    work = args.work.resolve()
    data, cache = work / "data", work / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "IISAN_THREADS")}
    if not (cache / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "iisan", "-q", "prepare", "builtin", "--format", "movielens", "--out", str(data), "--force"],
                       check=True, env=env)
        subprocess.run([sys.executable, "-m", "iisan", "-q", "encode", str(data), "--out", str(cache), "--image-encoder", "none"],
                       check=True, env=env)
    commands = {
        "cli": [sys.executable, "-m", "iisan", "-q", "train", str(data), "--cache", str(cache), "--out", str(work / "run-cli"),
                "--epochs", str(args.epochs), "--force"],
        "python": [sys.executable, "-c",
                   "import logging, iisan; logging.getLogger('iisan').setLevel(logging.WARNING); "
                   f"iisan.train({str(data)!r}, {str(work / 'run-python')!r}, "
                   f"iisan.TrainConfig(epochs={args.epochs}), cache_dir={str(cache)!r}, force=True)"],
    }
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():  # alternating: both see the same machine
                times[name].append(timed(command, env))
    finally:
        for neighbour in neighbours:
            neighbour.kill()
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {"busy_neighbours": args.busy, "epochs": args.epochs, "cpu_count": os.cpu_count(), "seconds": times,
              "median_seconds": medians, "python_over_cli": round(medians["python"] / medians["cli"], 3)}
    (work / f"python_vs_cli-busy{args.busy}.json").write_text(json.dumps(report, indent=2))
    print(f"{args.busy} busy neighbours, {args.epochs} epochs, {args.repeats} runs each\n"
          "| start | runs (s) | median s |\n| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {medians[name]:.1f} |")
    print(f"python / cli = {report['python_over_cli']:.2f}")


if __name__ == "__main__":
    main()
