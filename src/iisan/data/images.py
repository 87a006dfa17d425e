"""Where item images come from, and copying the ones we keep into the dataset.

A source reader says *where* images are (a folder of ``<key>.<ext>`` files, an LMDB,
or a path per item); :func:`materialise_images` checks that each kept item's image
decodes and places it at ``DATASET_DIR/images/<item_id>.<ext>``, so a prepared
dataset directory is self-contained.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image
from tqdm import tqdm

from iisan.data.problems import Problems
from iisan.errors import InputError, MissingDependencyError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Images above this many pixels are refused rather than decoded (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


class ImageSource(Protocol):
    """Finds the encoded bytes of one item's image."""

    label: str

    def fetch(self, key: str, locator: str | None) -> tuple[bytes | None, Path | None]:
        """Return ``(bytes, file)`` for the item, ``(None, None)`` if it declares no image.

        ``file`` is the source file when there is one, so it can be hard-linked.

        Raises:
            FileNotFoundError: the item should have an image and it is not there.
        """


class DirectoryImages:
    """Images stored as ``<key>.jpg|.jpeg|.png|.webp`` in one folder."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise InputError(f"image folder {root} does not exist or is not a folder")
        self.label = root.name or str(root)
        self.root = root
        self._by_key: dict[str, str] = {}
        # One directory listing instead of four stat calls per item.
        for entry in os.scandir(root):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES:
                self._by_key.setdefault(stem, entry.name)

    def fetch(self, key: str, locator: str | None) -> tuple[bytes | None, Path | None]:
        name = self._by_key.get(key)
        if name is None:
            raise FileNotFoundError(f"no {key}.jpg|.jpeg|.png|.webp in {self.root}")
        path = self.root / name
        return path.read_bytes(), path


class PathImages:
    """One image path per item (absolute, or relative to ``base``), as in CSV item tables."""

    def __init__(self, base: Path, label: str) -> None:
        self.base = base
        self.label = label

    def fetch(self, key: str, locator: str | None) -> tuple[bytes | None, Path | None]:
        if not locator:
            return None, None  # an empty cell: the item has no image, which is fine
        path = Path(locator)
        path = path if path.is_absolute() else self.base / path
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path.read_bytes(), path


class LmdbImages:
    """An LMDB whose keys are item keys (UTF-8) and values encoded image bytes."""

    def __init__(self, path: Path) -> None:
        try:
            import lmdb
        except ImportError as err:
            raise MissingDependencyError("--images-lmdb needs the `lmdb` package: pip install lmdb") from err
        if not path.exists():
            raise InputError(f"image LMDB {path} does not exist")
        try:
            self._env = lmdb.open(
                str(path), readonly=True, lock=False, subdir=path.is_dir(), readahead=False
            )
        except lmdb.Error as err:
            raise InputError(f"cannot open image LMDB {path}: {err}") from err
        self.label = path.name

    def fetch(self, key: str, locator: str | None) -> tuple[bytes | None, Path | None]:
        with self._env.begin() as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            raise FileNotFoundError(f"no key {key!r} in {self.label}")
        return bytes(value), None


@dataclass(frozen=True)
class PlacedImage:
    relative_path: str
    sha256: str


def materialise_images(
    source: ImageSource,
    keys: Sequence[str],
    locators: Sequence[str | None],
    item_ids: Sequence[int],
    out_dir: Path,
    problems: Problems,
    workers: int = 4,
) -> list[PlacedImage | None]:
    """Check and place each item's image under ``out_dir/images``.

    Returns, per item, where the image now lies (relative to ``out_dir``) and its
    content hash, or ``None`` when the item has no usable image (counted as
    ``missing_image`` or ``unreadable_image``).
    """
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    def place(index: int) -> tuple[PlacedImage | None, str | None, str]:
        key, item_id = keys[index], item_ids[index]
        try:
            data, src_file = source.fetch(key, locators[index])
        except FileNotFoundError as err:
            return None, "missing_image", f"item {key}: {err}"
        except OSError as err:
            return None, "unreadable_image", f"item {key}: {err}"
        if data is None:
            return None, None, ""
        fmt, error = _check_image(data)
        if fmt is None:
            return None, "unreadable_image", f"item {key}: {error}"
        relative = f"images/{item_id}{_FORMAT_SUFFIX.get(fmt, '.img')}"
        _place_file(data, src_file, out_dir / relative)
        return PlacedImage(relative, hashlib.sha256(data).hexdigest()), None, ""

    placed: list[PlacedImage | None] = [None] * len(keys)
    failures: dict[str, list[tuple[int | None, str]]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(place, range(len(keys)))
        for index, (image, kind, detail) in enumerate(
            tqdm(results, total=len(keys), desc="images", unit="img", leave=False, mininterval=1)
        ):
            placed[index] = image
            if kind is not None:
                failures.setdefault(kind, []).append((None, detail))
    for kind, examples in failures.items():
        problems.add_many(kind, source.label, examples, count=len(examples))
    return placed


def _check_image(data: bytes) -> tuple[str | None, str]:
    """Return ``(format, "")`` if the bytes decode as an image, else ``(None, reason)``."""
    if data[:1] == b"\x80":
        return None, "value looks pickled; only encoded image bytes are read (nothing is unpickled)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    return None, f"{image.width}x{image.height} pixels is over the limit"
                fmt = image.format or "unknown"
                image.load()  # full decode: truncated files fail here, not at encode time
        return fmt, ""
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        return None, f"cannot decode image ({type(err).__name__}: {err})"


def _place_file(data: bytes, src_file: Path | None, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    if src_file is not None:
        try:
            os.link(src_file, dest)  # same filesystem: no copy at all
            return
        except OSError:
            pass
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)

