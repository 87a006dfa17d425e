"""Reading text files line by line into a table, counting bytes that are not UTF-8."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl

from iisan.data.problems import Problems
from iisan.errors import InputError


def read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{path} does not exist") from err
    except (OSError, EOFError) as err:
        raise InputError(f"cannot read {path}: {err}") from err


def read_lines(path: Path, problems: Problems) -> pl.DataFrame:
    """Return the non-blank lines of a text file as ``[line: int64, text: str]``.

    ``line`` is the 1-based line number in the file. Lines with bytes that are not
    UTF-8 are kept with the bad bytes replaced by U+FFFD and counted as ``non_utf8``.
    An empty file is counted as ``empty_file`` and yields an empty table.
    """
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not content
        data = data[3:]
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = _decode_lines_reporting(data.split(b"\n"), path.name, problems)
    table = pl.DataFrame(
        {"line": np.arange(1, len(lines) + 1, dtype=np.int64), "text": lines},
        schema={"line": pl.Int64, "text": pl.String},
    )
    table = table.with_columns(pl.col("text").str.strip_suffix("\r")).filter(
        pl.col("text").str.strip_chars().str.len_bytes() > 0
    )
    if table.height == 0:
        problems.add("empty_file", path.name, None, f"{path} has no data lines")
    return table


def _decode_lines_reporting(raw_lines: list[bytes], name: str, problems: Problems) -> list[str]:
    # Only reached when the file as a whole is not valid UTF-8, so the per-line loop
    # runs on files that need the line numbers for the report.
    decoded, bad = [], []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            decoded.append(raw.decode("utf-8", errors="replace"))
            bad.append((number, f"invalid byte 0x{raw[err.start]:02x} at column {err.start + 1}"))
    problems.add_many("non_utf8", name, bad, count=len(bad))
    return decoded
