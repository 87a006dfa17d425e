"""Generic tables: interactions CSV/Parquet (user, item, timestamp) + items CSV/Parquet
(item, text, image). Column names are configurable; see :class:`~iisan.config.CsvColumns`.

SOURCE is either a folder holding ``interactions.{csv,tsv,parquet}`` and
``items.{csv,tsv,parquet}``, or the interactions file itself with ``--items FILE``.
Image paths in the items table are relative to the items file's folder; absolute paths, ``..``
and symlinks leading out of that folder are refused and counted unless ``--allow-outside-paths``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from iisan.config import PrepareConfig
from iisan.data.build import RawSource
from iisan.data.images import DirectoryImages, PathImages
from iisan.data.problems import Problems
from iisan.data.sources.common import chronological, drop_bad_timestamps, drop_missing, require_file
from iisan.errors import InputError
from iisan.fileio import text_encoding

SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")


def read(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    inter_path, items_path = _find_files(source, config)
    cols = config.columns

    inter = _read_table(inter_path, problems, string_columns=[cols.user, cols.item])
    _require_columns(inter, inter_path, {"--user-col": cols.user, "--item-col": cols.item, "--time-col": cols.timestamp})
    inter = inter.select(
        pl.col(cols.user).cast(pl.String).alias("user"),
        pl.col(cols.item).cast(pl.String).alias("item"),
        _timestamp(inter[cols.timestamp]).alias("timestamp"),
        "line",
    )
    inter = drop_missing(inter, ["user", "item"], "missing_field", inter_path.name, problems)
    inter = chronological(drop_bad_timestamps(inter, inter_path.name, "timestamp is empty or not a number/date",
                                              problems))

    items = _read_table(items_path, problems, string_columns=[cols.item_key, cols.text, cols.image])
    _require_columns(items, items_path, {"--item-key-col": cols.item_key, "--text-col": cols.text})
    has_image = cols.image in items.columns
    items = items.select(
        pl.col(cols.item_key).cast(pl.String).alias("key"),
        pl.col(cols.text).cast(pl.String).alias("text"),
        (pl.col(cols.image).cast(pl.String) if has_image else pl.lit(None, dtype=pl.String)).alias("image"),
        "line",
    )
    items = drop_missing(items, ["key"], "missing_field", items_path.name, problems)

    if config.images is not None:
        image_source = DirectoryImages(config.images, config.allow_outside_paths)
    elif has_image:
        image_source = PathImages(items_path.parent, label=items_path.name, allow_outside=config.allow_outside_paths)
    else:
        image_source = None
    return RawSource(
        interactions=inter, items=items, interactions_file=inter_path.name,
        items_file=items_path.name, image_source=image_source,
    )


def _find_files(source: Path, config: PrepareConfig) -> tuple[Path, Path]:
    if source.is_dir():
        inter = require_file(source, *(f"interactions{s}" for s in SUFFIXES))
        items = config.items or require_file(source, *(f"items{s}" for s in SUFFIXES))
    elif source.is_file():
        if config.items is None:
            raise InputError(f"{source} is a file: name the items table with --items FILE")
        inter, items = source, config.items
    else:
        raise InputError(f"{source} does not exist")
    if not items.is_file():
        raise InputError(f"items table {items} does not exist")
    return inter, items


def _read_table(path: Path, problems: Problems, string_columns: list[str]) -> pl.DataFrame:
    """Read CSV/TSV/Parquet into polars with a ``line`` column (1-based file line).

    Rows with the wrong number of fields are counted as ``wrong_column_count``. Line
    numbers assume one record per line (no newlines inside quoted fields); for Parquet
    ``line`` is the 1-based row number.
    """
    if path.name.endswith(".parquet"):
        try:
            table = pl.from_arrow(pq.read_table(path))
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read {path}: {err}") from err
        return table.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))

    try:
        table, bad_lines, bad_examples = _parse_csv(path, string_columns, use_threads=True)
        if bad_lines and min(bad_lines) < 0:
            # Parallel parsing does not know line numbers; a file with bad rows is read
            # again on one thread so that the report can name them.
            table, bad_lines, bad_examples = _parse_csv(path, string_columns, use_threads=False)
    except pa.ArrowInvalid as err:
        if "Empty CSV file" in str(err):
            problems.add("empty_file", path.name, None, f"{path} has no header or rows")
            return pl.DataFrame({"line": pl.Series([], dtype=pl.Int64)})
        raise InputError(f"cannot parse {path}: {_first_line(err)}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not {text_encoding(path).upper()} text ({err.reason}); save it as UTF-8") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from err
    problems.add_many("wrong_column_count", path.name, bad_examples, count=len(bad_lines))
    if table.num_rows == 0:
        problems.add("empty_file", path.name, None, f"{path} has a header but no rows")
    repeated = sorted({name for name in table.column_names if table.column_names.count(name) > 1})
    if repeated:  # which of the two is meant cannot be guessed
        raise InputError(f"{path}: the header names column {', '.join(map(repr, repeated))} more than once; "
                         "rename the copies so that each column has its own name")
    frame = pl.from_arrow(table)
    return frame.with_columns(pl.Series("line", _valid_line_numbers(table.num_rows, bad_lines)))


def _parse_csv(
    path: Path, string_columns: list[str], use_threads: bool
) -> tuple[pa.Table, list[int], list[tuple[int | None, str]]]:
    bad_lines: list[int] = []
    bad_examples: list[tuple[int | None, str]] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_lines.append(row.number if row.number is not None else -1)
        if len(bad_examples) < 3:
            bad_examples.append((row.number, f"expected {row.expected_columns} columns, found {row.actual_columns}"))
        return "skip"

    encoding = text_encoding(path)  # UTF-16 / UTF-32 with a byte-order mark are transcoded
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=64 << 20, use_threads=use_threads,
                                       encoding="utf8" if encoding.startswith("utf-8") else encoding),
        parse_options=pacsv.ParseOptions(
            delimiter="\t" if ".tsv" in path.name else ",", invalid_row_handler=on_invalid_row
        ),
        # Keys are read as text so that item "007" stays "007", not 7.
        convert_options=pacsv.ConvertOptions(
            strings_can_be_null=True, column_types={c: pa.string() for c in string_columns}
        ),
    )
    return table, bad_lines, bad_examples


def _valid_line_numbers(num_rows: int, bad_lines: list[int]) -> np.ndarray:
    # Data starts on line 2 (after the header); skipped bad lines shift later rows down.
    if not bad_lines:
        return np.arange(2, num_rows + 2, dtype=np.int64)
    every = np.arange(2, num_rows + len(bad_lines) + 2, dtype=np.int64)
    return np.setdiff1d(every, np.asarray(bad_lines, dtype=np.int64), assume_unique=True)[:num_rows]


def _require_columns(table: pl.DataFrame, path: Path, needed: dict[str, str]) -> None:
    if table.height == 0 and table.width <= 1:
        raise InputError(f"{path} is empty")
    for option, column in needed.items():
        if column not in table.columns:
            have = ", ".join(c for c in table.columns if c != "line")
            raise InputError(f"{path} has no column {column!r} (it has: {have}); name it with {option}")


def _timestamp(column: pl.Series) -> pl.Series:
    """Numbers stay numbers; dates become epoch seconds; anything else becomes null."""
    if column.dtype.is_numeric():
        return column.cast(pl.Float64)
    if column.dtype.is_temporal():
        return column.cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Float64)
    text = column.cast(pl.String).str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    try:
        date = text.str.to_datetime(strict=False).dt.epoch("s").cast(pl.Float64)
    except pl.exceptions.PolarsError:  # no date format fits any value
        return number
    return number.fill_null(date)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]
