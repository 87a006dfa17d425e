"""One writer at a time per run folder: an exclusive OS file lock on ``RUN/.lock``.

Everything that changes a run takes it: training (and resuming), building the index,
adding items from the CLI or the service. A second writer waits up to
:data:`WAIT_SECONDS` (``IISAN_LOCK_WAIT`` overrides it), then gives up with one line naming
the holder. Readers never take it (a committed generation can be cleaned away by the next
commit; a reader caught by that reads the newer one).

The lock is ``flock`` on an open file: the kernel drops it when the holder exits, however
it exits, so a killed writer never leaves a stale lock. It is re-entrant within a process
(a thread that holds it may take it again) and excludes the process's other threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from iisan.errors import ConfigError, RunBusyError

LOCK_FILE = ".lock"
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05


@dataclass
class _Held:
    """This process's hold on one run's lock: the open file and the threads' re-entrant lock."""

    threads: threading.RLock
    descriptor: int | None = None
    depth: int = 0


_registry: dict[Path, _Held] = {}
_registry_lock = threading.Lock()


def wait_seconds() -> float:
    """How long a writer waits for the lock: ``IISAN_LOCK_WAIT`` seconds, else :data:`WAIT_SECONDS`."""
    try:
        return max(0.0, float(os.environ.get("IISAN_LOCK_WAIT", WAIT_SECONDS)))
    except ValueError:
        return WAIT_SECONDS


@contextmanager
def run_lock(run_dir: str | os.PathLike[str], what: str, wait: float | None = None) -> Iterator[None]:
    """Hold the run's write lock for the block; ``what`` (e.g. ``"adding items"``) is what a
    waiting writer is told. ``wait=0`` tries once.

    Raises:
        RunBusyError: another writer held it for longer than ``wait`` seconds.
    """
    wait = wait_seconds() if wait is None else wait
    if not acquire(run_dir, what, wait):
        raise RunBusyError(f"{run_dir} is being changed by {holder(run_dir)}; gave up after "
                           f"{wait:.0f} s (IISAN_LOCK_WAIT): try again when it is done")
    try:
        yield
    finally:
        release(run_dir)


def acquire(run_dir: str | os.PathLike[str], what: str, wait: float) -> bool:
    """Take the lock within ``wait`` seconds; ``False`` if another writer kept it."""
    folder = Path(run_dir).resolve()
    with _registry_lock:
        held = _registry.setdefault(folder, _Held(threading.RLock()))
    deadline = time.monotonic() + wait
    took = held.threads.acquire(timeout=wait) if wait > 0 else held.threads.acquire(blocking=False)
    if not took:
        return False
    if held.depth:  # this thread holds it already
        held.depth += 1
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock file that is a link would have this writer truncate whatever it
        # points at, outside the run
        descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        held.threads.release()
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{folder / LOCK_FILE} is a symbolic link; iisan never writes through a link out of a "
                              "run: delete the link (its target is untouched) and try again") from None
        raise
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                held.threads.release()
                return False
            time.sleep(POLL_SECONDS)
    note = f"process {os.getpid()} ({what}, since {time.strftime('%H:%M:%S')})".encode()
    try:  # best effort: the note only makes a waiting writer's message clearer
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, note, 0)
    except OSError:
        pass
    held.descriptor, held.depth = descriptor, 1
    return True


def release(run_dir: str | os.PathLike[str]) -> None:
    held = _registry[Path(run_dir).resolve()]
    held.depth -= 1
    if held.depth == 0 and held.descriptor is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(held.descriptor, 0)
        fcntl.flock(held.descriptor, fcntl.LOCK_UN)
        os.close(held.descriptor)
        held.descriptor = None
    held.threads.release()


def holder(run_dir: str | os.PathLike[str]) -> str:
    """Who holds the lock, as its holder wrote it (``another process`` when it wrote nothing yet)."""
    try:
        return (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8", errors="replace").strip() or "another process"
    except OSError:
        return "another process"
