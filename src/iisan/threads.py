"""CPU threads for torch: ``--threads``, the ``IISAN_THREADS`` environment variable, or ``auto``.

Kept free of torch imports: the CLI decides the count before torch loads, so torch and
every child process (the efficiency bench's, torchrun's) start with it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from iisan.errors import ConfigError

THREADS_ENV = "IISAN_THREADS"
log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may use: its affinity mask, narrowed by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host sees 64 cores; torch would start 64
    threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no quota) or "200000 100000" (2 CPUs)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def busy_cores(cores: int, samples: int = 5) -> int:
    """Cores other processes keep busy now: runnable processes other than this one
    (``procs_running`` in /proc/stat, median of a few reads 10 ms apart). Not the load
    average: it trails by a minute, so it would count this pipeline's previous step (an
    encode just finished) as a neighbour. 0 when unknown, or when the figure cannot be
    this machine's own (a container may see its host's, far above its cores)."""
    counts = []
    for n in range(samples):
        try:
            text = Path("/proc/stat").read_text()
            counts.append(int(text.split("procs_running", 1)[1].split()[0]))
        except (OSError, IndexError, ValueError):
            return 0
        if n + 1 < samples:
            time.sleep(0.01)
    others = max(0, sorted(counts)[len(counts) // 2] - 1)
    return 0 if others > 4 * cores else others


def thread_count(spec: str | int | None = None) -> int:
    """The intra-op thread count for ``spec``: a positive number, or ``auto``.

    ``None`` reads :data:`THREADS_ENV`, then ``OMP_NUM_THREADS`` (a user's own setting is
    kept), else ``auto``: the cores this process may use less those other processes keep
    busy right now, at least one: with a busy neighbour one thread beats two (the threads of
    a parallel region wait for the one that is descheduled), idle two beat one (bench/threads.py).

    Raises:
        ConfigError: a spec that is neither ``auto`` nor a positive integer.
    """
    if spec is None:
        spec = os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS") or "auto"
    text = str(spec).strip().lower()
    if text == "auto":
        cores = available_cores()
        busy = busy_cores(cores)
        if busy and cores > 1:  # a long job (an image encode) would run on fewer cores all along: say so
            log.info("threads auto: %d of %d cores (other processes keep %d busy now; --threads %d uses them all)",
                     max(1, cores - busy), cores, busy, cores)
        return max(1, cores - busy)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"threads must be a positive number or auto, got {spec!r} "
                          f"(from --threads, {THREADS_ENV} or OMP_NUM_THREADS)")
    return int(text)


def use_threads(spec: str | int | None = None) -> int:
    """Apply :func:`thread_count` to this process and its children; returns the count.

    Before torch is imported this sets ``OMP_NUM_THREADS`` (and MKL's), which torch reads
    when it loads; afterwards it calls ``torch.set_num_threads`` too. numpy's OpenBLAS
    (``OPENBLAS_NUM_THREADS``) is read when numpy loads: set here for child processes (the
    service does its products in torch).
    """
    count = thread_count(spec)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def threads_first(args: list[str]) -> list[str]:
    """The command line ``args`` with ``--threads N`` moved before the command, where the
    command line reads it: ``iisan recommend RUN --threads 1`` works as ``iisan --threads 1
    recommend RUN`` does. Nothing after ``--`` moves."""
    moved: list[str] = []
    rest: list[str] = []
    n = 0
    while n < len(args):
        arg = args[n]
        if arg == "--":
            rest += args[n:]
            break
        if arg == "--threads" and n + 1 < len(args):
            moved += args[n:n + 2]
            n += 2
            continue
        (moved if arg.startswith("--threads=") else rest).append(arg)
        n += 1
    return moved + rest
