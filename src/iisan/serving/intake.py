"""New items from untrusted hands (a JSONL file, an HTTP body): read, checked and turned
into what the encoders take, before anything touches the catalogue."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from iisan.data.images import ImageRefused, RefusedPath, check_relative, open_image, read_image_file
from iisan.data.text import clean_text
from iisan.errors import InputError, NonFiniteError
from iisan.fileio import text_encoding
from iisan.models.terms import TermVectors

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Items per encoder pass when embedding new ones: the pass holds every layer's token states
# (32 images through a 12-layer ViT at 224 px: about 0.3 GB), whatever the batch read.
ENCODE_CHUNK = 32


class LocatedItem(dict):
    """A new item read from a file, with where it was read (``FILE:LINE``), so that an
    error about it points at the line rather than at the item's number."""

    def __init__(self, fields: dict[str, Any], where: str) -> None:
        super().__init__(fields)
        self.where = where


# Bounds on one new item, wherever it comes from (a file, the service, Python): far above any
# title or description, far below what would hold gigabytes while it is cleaned and tokenized
MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 10_000


def vet_items(items: list[dict[str, Any]], layers: dict[str, tuple[int, ...]], first: int = 1) -> tuple[list[str], list[str], list[bytes | None]]:
    """Keys, cleaned texts and image bytes of untrusted new ``items`` for a model that reads
    ``layers`` (modality -> layers), named in errors by where they were read
    (:class:`LocatedItem`) or else numbered from ``first``.

    Raises:
        InputError: the first malformed item, in one line naming it.
    """
    if not layers:
        raise InputError("this run's items are ids without content (method id): new items cannot be embedded")
    keys, texts, images = [], [], []
    for n, item in enumerate(items, start=first):
        where = getattr(item, "where", f"item {n}")
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object with key, text and image")
        unknown = set(item) - {"key", "text", "image"}
        if unknown:
            raise InputError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))}")
        key, text, image = item.get("key"), item.get("text"), item.get("image")
        if not isinstance(key, str) or not key.strip():
            raise InputError(f"{where}: key must be a non-empty string")
        if len(key) > MAX_KEY_CHARS:
            raise InputError(f"{where}: key is {len(key):,} characters, more than {MAX_KEY_CHARS:,}")
        if text is not None and not isinstance(text, str):
            raise InputError(f"{where} ({key!r}): text must be a string")
        if text is not None and len(text) > MAX_TEXT_CHARS:  # an encoder reads a few dozen tokens of it
            raise InputError(f"{where} ({key!r}): text is {len(text):,} characters, more than {MAX_TEXT_CHARS:,}")
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
    a symlink leading out of the file's folder is refused. Each item is a
    :class:`LocatedItem`: vetting it later names its line.

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
        except RecursionError:  # deeper than Python's parser goes: no item is
            raise InputError(f"{path}:{number}: not valid JSON for an item (nested too deep)") from None
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
        yield LocatedItem(item, f"{path}:{number}")


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



def embed_in_batches(items: Iterable[dict[str, Any]], layers: dict[str, tuple[int, ...]],
                     embed: Callable[[list[str], list[bytes | None]], np.ndarray],
                     check_keys: Callable[[list[str]], None], batch_size: int) -> tuple[list[str], list[str], np.ndarray]:
    """Vet and embed ``items`` (any iterable, read once) ``batch_size`` at a time, keeping
    only keys, texts and vectors: memory does not grow with images or encoder states.
    ``check_keys`` sees the keys so far after every batch (a repeat fails early).

    Raises:
        InputError: a malformed item (or none at all), or whatever ``check_keys`` raises.
    """
    keys: list[str] = []
    texts: list[str] = []
    rows: list[np.ndarray] = []
    batch: list[dict[str, Any]] = []
    for item in itertools.chain(items, [None]):
        if item is not None:
            batch.append(item)
        if batch and (item is None or len(batch) == batch_size):
            batch_keys, batch_texts, images = vet_items(batch, layers, first=len(keys) + 1)
            keys += batch_keys
            texts += batch_texts
            check_keys(keys)
            rows.append(embed(batch_texts, images))
            batch = []
    if not keys:
        raise InputError("no items to add")
    return keys, texts, np.concatenate(rows)


def refuse_taken(keys: list[str], catalogue: dict[str, int]) -> None:
    """Refuse keys given twice or already in the ``catalogue`` (key -> id).

    Raises:
        InputError: naming up to ten of them.
    """
    duplicates = sorted({key for key, count in Counter(keys).items() if count > 1})
    if duplicates:
        raise InputError(f"keys given twice: {', '.join(map(repr, duplicates[:10]))}")
    taken = [key for key in keys if key in catalogue]
    if taken:
        raise InputError(f"already in the catalogue: {', '.join(map(repr, taken[:10]))}")


class ContentEmbedder:
    """New items' ranking vectors from their content: the frozen encoders (names and
    settings from the run's ``config.json``, weights from the encoder packages, loaded on
    first use) and the trained item tower, as the catalogue's own were made.

    Their final ids are not known when they are embedded and need not be: any id past the
    trained catalogue gives the same vector (no id offset, the cold prior), so the first
    free ids stand in.
    """

    def __init__(self, trained, trained_items: int) -> None:
        self.trained = trained
        self.ranker = trained.scorer  # the model with its scorer, or the model alone
        self.trained_items = trained_items
        self._source = None
        # the term vectors the ranker reads, if any (the scorer's floor, or knn's content): one at most
        parts = [trained.model, *([trained.scorer.blend] if trained.scorer is not trained.model else [])]
        self.terms = next((m for part in parts for m in part.modules() if isinstance(m, TermVectors)), None)
        # One embedding at a time: the first loads the encoders (and imports transformers),
        # which concurrent first requests would otherwise race on, half-imported
        self._lock = threading.Lock()

    def embed(self, texts: list[str], images: list[bytes | None]) -> np.ndarray:
        """``[n, width]`` float32 vectors of the items with these texts and image bytes.

        Raises:
            InputError: an image cannot be decoded. NonFiniteError: the model gives NaN.
        """
        with self._lock:
            return self._embed(texts, images)

    def _embed(self, texts: list[str], images: list[bytes | None]) -> np.ndarray:
        self.ranker.eval()
        chunks = []
        for start in range(0, len(texts), ENCODE_CHUNK):  # an encoder pass holds every layer's states
            end = min(start + ENCODE_CHUNK, len(texts))
            ids = np.arange(self.trained_items + 1, self.trained_items + 1 + end - start)
            try:
                features = self._content_source().content_features(ids, texts[start:end], images[start:end])
            except (OSError, ValueError) as err:
                raise InputError(f"cannot decode an image: {err}") from err
            if self.terms is not None:  # the catalogue's table does not hold them
                features.terms = self.terms.embed(texts[start:end])
            with torch.no_grad():
                chunks.append(self.ranker.catalogue_vectors(features.to(self.ranker.device)).cpu().numpy())
        rows = np.concatenate(chunks).astype(np.float32)
        if not np.isfinite(rows).all():
            raise NonFiniteError("the model gives non-finite embeddings for these items; nothing was added")
        return rows

    def _content_source(self):
        if self._source is None:
            from iisan.features.live import LiveSource, RawContentSource

            if self.trained.encoder_modules:  # the encoder baselines run them inside the tower
                self._source = RawContentSource(None, self.trained.encoders, self.trained.encoder_modules)
            else:
                layers = self.ranker.layers
                self._source = LiveSource(None, {m: self.trained.encoders[m] for m in layers}, layers,
                                          self.ranker.device)
        return self._source
