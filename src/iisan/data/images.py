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
import stat
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from iisan.data.problems import Problems
from iisan.errors import InputError, MissingDependencyError
from iisan.progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGE_BYTES = 50 * 2**20  # far above any product photo; a bound on what one file may cost
# What an image may declare in its header, checked before a pixel is decoded: a few kilobytes
# can declare gigabytes (decompression bombs). 25 M pixels is a 6000 x 4000 camera photo;
# the side and aspect bounds stop strips such as 40,000,000 x 1, which overflow decoders.
MAX_IMAGE_PIXELS = 25_000_000
MAX_IMAGE_SIDE = 12_000
MAX_ASPECT_RATIO = 25
# The formats read, by Pillow's names; anything else (TIFF, SVG, ...) is refused unopened.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
FORMATS_READ = "JPEG, PNG, WebP, GIF or BMP"
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


class ImageRefused(ValueError):
    """Bytes that are not decoded: not an image of a format read, or over the size bounds."""


def bounds_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` is refused, or ``None``."""
    if width < 1 or height < 1:
        return f"an image of {width}x{height} pixels is empty"
    if max(width, height) > MAX_IMAGE_SIDE:
        return f"an image of {width}x{height} pixels exceeds the {MAX_IMAGE_SIDE:,}-pixel limit on a side"
    if width * height > MAX_IMAGE_PIXELS:
        return f"an image of {width}x{height} pixels exceeds the {MAX_IMAGE_PIXELS:,}-pixel limit"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return f"an image of {width}x{height} pixels is longer than {MAX_ASPECT_RATIO}:1"
    return None


@contextmanager
def open_image(data: bytes) -> Iterator[Image.Image]:
    """The image in ``data``, opened from its header only (nothing decoded yet), checked for
    format and size: the one door every image (dataset, new item, encoder) goes through.

    Raises:
        ImageRefused: one line saying why.
    """
    if data[:1] == b"\x80":
        raise ImageRefused("value looks pickled; only encoded image bytes are read (nothing is unpickled)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our bounds are lower
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.UnidentifiedImageError:  # its message names a memory address
        raise ImageRefused(f"not an image in a format iisan reads ({FORMATS_READ})") from None
    except (OSError, SyntaxError, ValueError, OverflowError, Image.DecompressionBombError) as err:
        raise ImageRefused(f"cannot read the image header ({type(err).__name__}: {err})") from None
    with image:
        problem = bounds_problem(*image.size)
        if problem:
            raise ImageRefused(problem)
        yield image


class RefusedPath(Exception):
    """An image path that is not read: outside its root, a special file, or too large."""


def read_image_file(path: Path, root: Path | None, allow_outside: bool = False,
                    max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an untrusted image file, read with bounds.

    Unless ``allow_outside``, the path must stay under ``root`` once symlinks are resolved
    (a link within the source tree is fine; one to ``/etc`` or ``/dev/zero`` is not). Only
    regular files are read (no devices, pipes or sockets), and at most ``max_bytes``.

    Raises:
        FileNotFoundError: nothing there (or a dangling symlink).
        RefusedPath: why the file is not read.
    """
    resolved = path.resolve(strict=True)
    if root is not None and not allow_outside and not resolved.is_relative_to(root.resolve()):
        raise RefusedPath(f"{path} leads outside {root} (to {resolved}); pass --allow-outside-paths (Python: allow_outside_paths=True) to read it")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat below refuses it anyway.
    fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RefusedPath(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise RefusedPath(f"{path} is larger than {max_bytes // 2**20} MiB")
        data = handle.read(max_bytes + 1)  # the size can change between stat and read
    if len(data) > max_bytes:
        raise RefusedPath(f"{path} is larger than {max_bytes // 2**20} MiB")
    return data


def check_relative(locator: str, allow_outside: bool) -> Path:
    """A path from a table or a JSON line, refused when absolute or climbing with ``..``
    (unless ``allow_outside``): such paths name files the data set does not hold."""
    path = Path(locator)
    if not allow_outside and (path.is_absolute() or ".." in path.parts):
        raise RefusedPath(f"{locator} is {'absolute' if path.is_absolute() else 'outside its folder (..)'}; "
                          "paths are relative to the file's folder (pass --allow-outside-paths, Python: allow_outside_paths=True, to allow it)")
    return path


class ImageSource(Protocol):
    """Finds the encoded bytes of one item's image."""

    label: str

    def fetch(self, key: str, locator: str | None) -> bytes | None:
        """Return the item's encoded image, ``None`` if it declares no image.

        Raises:
            FileNotFoundError: the item should have an image and it is not there.
            RefusedPath: the file is not read (see :func:`read_image_file`).
        """


class DirectoryImages:
    """Images stored as ``<key>.jpg|.jpeg|.png|.webp`` in one folder."""

    def __init__(self, root: Path, allow_outside: bool = False) -> None:
        if not root.is_dir():
            raise InputError(f"image folder {root} does not exist or is not a folder")
        self.label = root.name or str(root)
        self.root = root
        self.allow_outside = allow_outside
        self._by_key: dict[str, str] = {}
        # One directory listing instead of four stat calls per item.
        for entry in os.scandir(root):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES:
                self._by_key.setdefault(stem, entry.name)

    def fetch(self, key: str, locator: str | None) -> bytes | None:
        name = self._by_key.get(key)
        if name is None:
            raise FileNotFoundError(f"no {key}.jpg|.jpeg|.png|.webp in {self.root}")
        return read_image_file(self.root / name, self.root, self.allow_outside)


class PathImages:
    """One image path per item (absolute, or relative to ``base``), as in CSV item tables."""

    def __init__(self, base: Path, label: str, allow_outside: bool = False) -> None:
        self.base = base
        self.label = label
        self.allow_outside = allow_outside

    def fetch(self, key: str, locator: str | None) -> bytes | None:
        if not locator:
            return None  # an empty cell: the item has no image, which is fine
        path = check_relative(locator, self.allow_outside)
        path = path if path.is_absolute() else self.base / path
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return read_image_file(path, self.base, self.allow_outside)


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

    def fetch(self, key: str, locator: str | None) -> bytes | None:
        with self._env.begin() as txn:
            value = txn.get(key.encode("utf-8"))
            if value is None:
                raise FileNotFoundError(f"no key {key!r} in {self.label}")
            if len(value) > MAX_IMAGE_BYTES:
                raise RefusedPath(f"the value of {key!r} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
            return bytes(value)


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
            data = source.fetch(key, locators[index])
        except FileNotFoundError as err:
            return None, "missing_image", f"item {key}: {err}"
        except RefusedPath as err:
            return None, "refused_image", f"item {key}: {err}"
        except OSError as err:
            return None, "unreadable_image", f"item {key}: {err.strerror or err}"
        if data is None:
            return None, None, ""
        fmt, error = _check_image(data)
        if fmt is None:
            return None, "unreadable_image", f"item {key}: {error}"
        relative = f"images/{item_id}{_FORMAT_SUFFIX.get(fmt, '.img')}"
        _place_file(data, out_dir / relative)
        return PlacedImage(relative, hashlib.sha256(data).hexdigest()), None, ""

    placed: list[PlacedImage | None] = [None] * len(keys)
    failures: dict[str, list[tuple[int | None, str]]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(place, range(len(keys)))
        for index, (image, kind, detail) in enumerate(
            progress(results, total=len(keys), desc="images", unit="img", leave=False, mininterval=1)
        ):
            placed[index] = image
            if kind is not None:
                failures.setdefault(kind, []).append((None, detail))
    for kind, examples in failures.items():
        problems.add_many(kind, source.label, examples, count=len(examples))
    return placed


def _check_image(data: bytes) -> tuple[str | None, str]:
    """Return ``(format, "")`` if the bytes decode as an image, else ``(None, reason)``."""
    try:
        with open_image(data) as image:
            fmt = image.format or "unknown"
            image.load()  # full decode: truncated files fail here, not at encode time
        return fmt, ""
    except ImageRefused as err:
        return None, str(err)
    except (OSError, SyntaxError, ValueError, OverflowError, MemoryError) as err:
        return None, f"cannot decode image ({type(err).__name__}: {err})"


def _place_file(data: bytes, dest: Path) -> None:
    """A copy, never a link: the prepared dataset is self-contained and the source may change."""
    dest.unlink(missing_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
