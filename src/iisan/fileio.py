"""Atomic file writes: write to a temporary name in the same folder, flush it to disk, then rename.

A reader never sees a half-written file: either the old one or the new one, also after a
crash or a power cut (the data is on disk before the rename makes it visible).

Crash testing: with ``IISAN_CRASH_AFTER=N`` in the environment the process exits at the
N-th :func:`crash_point` (every write step calls one), as abruptly as ``kill -9``: no
cleanup, no ``finally``. Tests run a command for N = 1, 2, ... and check that every state
it can leave behind loads. ``IISAN_CRASH_MODE=raise`` raises :class:`SimulatedCrash`
instead, so a sweep over every N can run in one process.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from iisan.errors import ConfigError, DatasetError, StorageError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes it private; give it normal permissions
    try:
        yield tmp_path
        fsync_file(tmp_path)
        crash_point()
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_file(path.parent)  # the rename itself
    crash_point(writes=False)


GENERATION = re.compile(r"gen-(\d{6})")


def commit_generation(folder: Path, pointer: str, write: Callable[[Path, str | None], None],
                      content: dict[str, Any]) -> str:
    """Replace several files as one unit: ``write(new_folder, current)`` fills a new generation
    folder (``current`` names the committed one, to reuse from), then ``folder/pointer`` is
    rewritten atomically with ``content`` plus ``"generation": name``; that rename is the commit.
    Other generations and leftovers of interrupted commits are removed afterwards.

    A crash at any point leaves the previous generation or this one, each whole. Returns the
    new generation's name.
    """
    if folder.is_symlink():
        raise ConfigError(f"{folder} is a symbolic link; iisan never writes through a link out of a run: "
                          "delete the link (its target is untouched) and try again")
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := GENERATION.fullmatch(p.name))]
    name = f"gen-{max(numbers, default=0) + 1:06d}"
    current = current_generation(folder, pointer)
    work = folder / name
    try:
        with storage_errors(folder):
            work.mkdir()
            crash_point()
            write(work, current)
            for path in [*work.iterdir(), work]:
                fsync_file(path)  # every byte on disk before the pointer names the generation
            write_json_atomic(folder / pointer, {**content, "generation": name})
    except StorageError:
        if current_generation(folder, pointer) != name:  # not committed: the half-written folder goes
            shutil.rmtree(work, ignore_errors=True)
        raise
    for path in folder.iterdir():  # best effort: what is left goes with the next commit
        if path.name in (name, pointer):
            continue
        crash_point(writes=False)
        if path.is_dir() and not path.is_symlink():  # a link goes, never what it points at
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return name


def current_generation(folder: Path, pointer: str) -> str | None:
    """The generation ``folder/pointer`` names, if it is readable and names an existing one."""
    try:
        name = json.loads((folder / pointer).read_text(encoding="utf-8")).get("generation")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and GENERATION.fullmatch(name) and (folder / name).is_dir() else None


# Write failures that are the storage's, not a bug: the disk or quota is full, the device
# failed. They become one line naming the path (StorageError), never a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}
# The same failures reported by libraries that wrap the OS error in their own exception type
# (safetensors: "No space left on device (os error 28)"; polars and pyarrow alike).
_STORAGE_MESSAGES = ((f"(os error {errno.ENOSPC})", errno.ENOSPC), ("No space left on device", errno.ENOSPC),
                     (f"(os error {errno.EDQUOT})", errno.EDQUOT), (f"(os error {errno.EIO})", errno.EIO),
                     ("Input/output error", errno.EIO))


def storage_failure(err: BaseException, path: str | os.PathLike[str], needed: int | None = None) -> StorageError | None:
    """The :class:`StorageError` for a write to ``path`` that failed for want of space or by a
    device error, naming the free space there (and ``needed`` bytes when known); ``None``
    for any other failure."""
    code = getattr(err, "errno", None)
    if code not in STORAGE_ERRNOS:
        text = str(err)
        code = next((number for needle, number in _STORAGE_MESSAGES if needle in text), None)
        if code is None:
            return None
    space = f"{_size(free_bytes(path))} free there"
    if needed is not None:
        space += f", {_size(needed)} needed"
    return StorageError(f"cannot write {path}: {os.strerror(code).lower()} ({space}); "
                        "free some space or write elsewhere, then run it again (nothing was changed)")


@contextmanager
def storage_errors(path: str | os.PathLike[str], needed: int | None = None) -> Iterator[None]:
    """Turn a full disk or a device error inside the block into a :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        failure = storage_failure(err, path, needed)
        if failure is None:
            raise
        raise failure from err


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


CRASH_ENV = "IISAN_CRASH_AFTER"
CRASH_EXIT_CODE = 86
crash_points_passed = 0  # tests that simulate crashes in-process reset it
disk_full_raised = False  # whether the simulated full disk (IISAN_CRASH_MODE=enospc) failed a write


class SimulatedCrash(BaseException):
    """Raised at a crash point when ``IISAN_CRASH_MODE=raise``: lets a test sweep every crash
    point in-process (fast), where the default mode exits the process (faithful)."""


def crash_point(writes: bool = True) -> None:
    """A place where a crash must leave loadable state; stops here when the test hook says so.
    ``writes``: a write step ends here, so a full disk (``IISAN_CRASH_MODE=enospc``) can too;
    False after a commit, when only renames and deletions follow."""
    global crash_points_passed, disk_full_raised
    limit = os.environ.get(CRASH_ENV)
    if not limit:
        return
    crash_points_passed += 1
    if crash_points_passed >= int(limit):
        mode = os.environ.get("IISAN_CRASH_MODE")
        if mode == "raise":
            raise SimulatedCrash(crash_points_passed)
        if mode == "enospc":  # the disk is full from here on: the next write step fails as the OS says
            if writes and not disk_full_raised:
                disk_full_raised = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return
        os._exit(CRASH_EXIT_CODE)  # like kill -9: no exception, no cleanup


def fsync_file(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically.

    Raises:
        StorageError: the disk is full (or failed); ``path`` is as it was.
    """
    with storage_errors(path), atomic_path(path) as tmp:
        write(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with storage_errors(path, len(data)), atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Strict JSON: NaN or infinity raise ``ValueError`` instead of writing ``NaN``, which
    JSON does not have and other readers refuse."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty work folder beside ``path``; on success it replaces ``path``.

    At every instant ``path`` holds the old content or the new, whole: the two folders are
    swapped in one step (``renameat2(RENAME_EXCHANGE)``, Linux), then the old one is deleted.
    Where the system cannot swap, two renames are used and a writer killed between them is
    mended by the next one (the old folder put back). Work folders of writers that died (on
    this host) are removed by the next writer of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.work-{socket.gethostname()}-{os.getpid()}-", dir=path.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield work
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        failure = storage_failure(err, path) if isinstance(err, Exception) else None
        if failure is not None:
            raise failure from err
        raise
    fsync_file(work)
    if path.exists() and not path.is_symlink() and exchange(work, path):
        shutil.rmtree(work, ignore_errors=True)  # the old content, now under the work name
    elif path.exists() or path.is_symlink():
        old = _old_name(path)
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        crash_point(writes=False)
        work.rename(path)
        if old.is_symlink():  # --out was a link: the link goes, never what it points at
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(path)
    fsync_file(path.parent)


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or the file system cannot, having changed nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def clean_leftovers(path: Path) -> None:
    """Mend what an interrupted replacement of ``path`` left beside it: the old folder put back
    if the new one never arrived, else deleted; work folders of dead writers deleted."""
    old = _old_name(path)
    if old.is_dir() and not old.is_symlink():
        if not path.exists() and not path.is_symlink():
            old.rename(path)  # killed between the two renames: the old content is whole
        else:
            shutil.rmtree(old, ignore_errors=True)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.work-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")
    for leftover in path.parent.iterdir():
        match = pattern.fullmatch(leftover.name)
        if (match and match["host"] == socket.gethostname() and not _alive(int(match["pid"]))
                and leftover.is_dir() and not leftover.is_symlink()):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Byte-order marks, longest first (UTF-32 LE starts like UTF-16 LE), and the codec that reads
# past them; without one, text is UTF-8.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def text_encoding(path: str | os.PathLike[str]) -> str:
    """The codec for a text file: from its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(4)
    return next((codec for bom, codec in _BOMS if head.startswith(bom)), "utf-8")


def refuse_output_over_inputs(out_dir: str | os.PathLike[str], inputs: dict[str, Any]) -> None:
    """Refuse an output folder that is, contains or lies inside one of the command's
    ``inputs`` (name -> path, ``None`` skipped): replacing it, as ``--force`` and atomic
    commits do, would delete the input. Paths are compared resolved (links, ``..``)."""
    out = Path(out_dir).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        given = Path(path).resolve()
        if out == given:
            relation = "is"
        elif given in out.parents:
            relation = "lies inside"
        elif out in given.parents:
            relation = "contains"
        else:
            continue
        raise ConfigError(f"--out {out_dir} {relation} the {name} {path}: writing there could delete it; "
                          "choose an --out outside every input")


def check_replaceable(out_dir: Path, marker: str, force: bool) -> None:
    """Refuse to replace a non-empty folder that lacks ``marker`` unless ``force``."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a directory path")
    if any(out_dir.iterdir()) and not (out_dir / marker).exists() and not force:
        raise ConfigError(
            f"--out {out_dir} is a non-empty folder that iisan did not write; "
            "choose another path or pass --force (Python: force=True) to replace it"
        )


def read_json_object(path: str | os.PathLike[str], required: dict[str, type | tuple[type, ...]], fix: str,
                     error: type[Exception] = DatasetError) -> dict[str, Any]:
    """Read a JSON object, checking that ``required`` fields are there with the right types.

    Raises:
        ``error`` (by default :class:`DatasetError`): one line naming the file, what is wrong
        and ``fix`` (for instance "rerun `iisan prepare`").
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {path} ({getattr(err, 'strerror', None) or err}); {fix}") from None
    except ValueError as err:
        raise error(f"{path} is not valid JSON ({err}); it is damaged or truncated: {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object; it is damaged: {fix}")
    return require_fields(data, required, str(path), fix, error)


def require_fields(data: dict[str, Any], required: dict[str, type | tuple[type, ...]], where: str, fix: str,
                   error: type[Exception] = DatasetError) -> dict[str, Any]:
    """Check that ``data`` has the ``required`` fields with the right types; returns ``data``.

    Raises:
        ``error``: one line naming ``where``, the field, what is wrong and ``fix``.
    """
    for name, kind in required.items():
        if name not in data:
            raise error(f"{where} lacks the field {name!r}; it is damaged or from another tool: {fix}")
        # bool is an int in Python, but never a valid count or size here
        if not isinstance(data[name], kind) or (isinstance(data[name], bool) and kind in (int, (int, float))):
            raise error(f"{where}: field {name!r} is a {type(data[name]).__name__}, expected "
                        f"{getattr(kind, '__name__', None) or ' or '.join(k.__name__ for k in kind)}; {fix}")
    return data


def load_tensors(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """Every tensor of a safetensors file (torch tensors), or one clear :class:`DatasetError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DatasetError(f"{path} is damaged or truncated ({_first_line(err)}); {fix}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
