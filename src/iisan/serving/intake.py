"""New items from untrusted hands (a JSONL file, an HTTP body): read, checked and turned
into what the encoders take, before anything touches the catalogue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from iisan.data.images import ImageRefused, RefusedPath, check_relative, open_image, read_image_file
from iisan.data.text import clean_text
from iisan.errors import InputError
from iisan.fileio import text_encoding

MAX_IMAGE_BYTES = 20 * 1024 * 1024


def vet_items(items: list[dict[str, Any]], layers: dict[str, tuple[int, ...]], first: int = 1) -> tuple[list[str], list[str], list[bytes | None]]:
    """Keys, cleaned texts and image bytes of untrusted new ``items`` for a model that reads
    ``layers`` (modality -> layers), numbered from ``first`` in errors.

    Raises:
        InputError: the first malformed item, in one line naming it.
    """
    if not layers:
        raise InputError("this run's items are ids without content (method id): new items cannot be embedded")
    keys, texts, images = [], [], []
    for n, item in enumerate(items, start=first):
        where = f"item {n}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object with key, text and image")
        unknown = set(item) - {"key", "text", "image"}
        if unknown:
            raise InputError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))}")
        key, text, image = item.get("key"), item.get("text"), item.get("image")
        if not isinstance(key, str) or not key.strip():
            raise InputError(f"{where}: key must be a non-empty string")
        if text is not None and not isinstance(text, str):
            raise InputError(f"{where} ({key!r}): text must be a string")
        text = clean_text(pl.Series([text], dtype=pl.String))[0] if text else None
        data = _image_bytes(image, f"{where} ({key!r})")
        if "image" not in layers and "text" in layers and text is None:
            raise InputError(f"{where} ({key!r}): this run reads text, and the item has none")
        if "text" not in layers and data is None:
            raise InputError(f"{where} ({key!r}): this run reads images, and the item has none")
        if text is None and data is None:
            raise InputError(f"{where} ({key!r}): the item has neither text nor an image")
        keys.append(key.strip())
        texts.append(text if text is not None else "")  # as the cache: an item without text reads ""
        images.append(data)
    return keys, texts, images


def _image_bytes(image: Any, where: str) -> bytes | None:
    if image is None:
        return None
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, (str, Path)):
        path = Path(image)
        try:  # the caller chose the path (read_new_items checked a file's); still no devices, bounded
            data = read_image_file(path, None, max_bytes=MAX_IMAGE_BYTES)
        except RefusedPath as err:
            raise InputError(f"{where}: {err}") from None
        except OSError as err:
            raise InputError(f"{where}: cannot read image {path}: {err.strerror or err}") from err
    else:
        raise InputError(f"{where}: image must be bytes or a file path")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{where}: image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    # The header only: a small file can declare a huge canvas (a decompression bomb).
    try:
        with open_image(data):
            pass
    except ImageRefused as err:
        raise InputError(f"{where}: {err}") from None
    return data


def read_new_items(path: str | Path, allow_outside_paths: bool = False) -> list[dict[str, Any]]:
    """Every item of :func:`iter_new_items`, as a list (images read into memory)."""
    return list(iter_new_items(path, allow_outside_paths))


def iter_new_items(path: str | Path, allow_outside_paths: bool = False) -> Iterator[dict[str, Any]]:
    """Items to add from a JSON Lines file: ``{"key": ..., "text": ..., "image": ...}`` per
    line, ``image`` a path relative to the file's folder. Blank lines are skipped. Read
    line by line, each image when its line is reached: memory does not grow with the file.

    Unless ``allow_outside_paths``, an image path that is absolute, climbs with ``..`` or is
    a symlink leading out of the file's folder is refused.

    Raises:
        InputError: the file cannot be read, a line is not a JSON object, or an image path is
            refused (naming the line).
    """
    path = Path(path)
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(item, dict):
            raise InputError(f"{path}:{number}: expected a JSON object with key, text and image")
        if isinstance(item.get("image"), str):
            try:
                image = path.parent / check_relative(item["image"], allow_outside_paths)
                item["image"] = read_image_file(image, path.parent, allow_outside_paths, MAX_IMAGE_BYTES)
            except RefusedPath as err:
                raise InputError(f"{path}:{number}: {err}") from None
            except OSError as err:
                raise InputError(f"{path}:{number}: cannot read image {item['image']}: {err.strerror or err}") from None
        yield item


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a text file, one at a time: UTF-8, or UTF-16 / UTF-32 with a byte-order mark.

    Raises:
        InputError: the file cannot be opened, or is not text in those encodings (naming the line).
    """
    number = 0
    try:
        with open(path, encoding=text_encoding(path), newline=None) as handle:
            for number, line in enumerate(handle, start=1):
                yield line.rstrip("\n")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}:{number + 1}: not UTF-8 text ({err.reason}); save it as UTF-8") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
