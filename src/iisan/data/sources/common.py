"""Helpers shared by the source readers."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from iisan.config import PrepareConfig
from iisan.data.images import DirectoryImages, ImageSource, LmdbImages
from iisan.data.problems import Problems
from iisan.errors import InputError


def split_columns(
    lines: pl.DataFrame, names: list[str], file: str, problems: Problems
) -> pl.DataFrame:
    """Split tab-separated lines into ``names`` columns plus ``line``.

    Lines with another number of columns are counted as ``wrong_column_count`` and dropped.
    """
    fields = lines.with_columns(pl.col("text").str.split("\t").alias("fields"))
    width = pl.col("fields").list.len()
    bad = fields.filter(width != len(names))
    problems.add_many(
        "wrong_column_count", file,
        ((line, f"expected {len(names)} tab-separated columns, found {n}")
         for line, n in bad.select("line", width.alias("n")).iter_rows()),
        count=bad.height,
    )
    good = fields.filter(width == len(names))
    return good.select(
        "line", *[pl.col("fields").list.get(i).alias(name) for i, name in enumerate(names)]
    )


def drop_missing(
    table: pl.DataFrame, columns: list[str], kind: str, file: str, problems: Problems
) -> pl.DataFrame:
    """Drop rows where any of ``columns`` is null or blank, counting them as ``kind``."""
    missing = pl.any_horizontal([pl.col(c).is_null() | pl.col(c).str.contains(r"^\s*$") for c in columns])
    bad = table.filter(missing)
    detail = f"needs a non-empty {', '.join(columns)}"
    problems.add_many(kind, file, ((line, detail) for line in bad["line"].head(3)), count=bad.height)
    return table.filter(~missing)


def drop_bad_timestamps(inter: pl.DataFrame, file: str, detail: str, problems: Problems) -> pl.DataFrame:
    """Drop rows whose ``timestamp`` could not be read (null), counting them as
    ``invalid_timestamp`` with ``detail`` (what a valid one is in this format)."""
    bad = inter.filter(pl.col("timestamp").is_null())
    problems.add_many("invalid_timestamp", file, ((line, detail) for line in bad["line"].head(3)), count=bad.height)
    return inter.filter(pl.col("timestamp").is_not_null())


def chronological(inter: pl.DataFrame) -> pl.DataFrame:
    """Order ``[user, item, line, timestamp]`` rows for :class:`RawSource`.

    Users are numbered by first appearance; within a user, rows go by timestamp and ties
    keep file order (the sort is stable on ``line``).
    """
    # Two steps: sorting on plain integer columns is about twice as fast as sorting on
    # the window expression directly.
    ordered = inter.with_columns(pl.col("line").min().over("user").alias("first_seen"))
    return ordered.sort(["first_seen", "timestamp", "line"]).select("user", "item", "line")


def image_source_from_options(config: PrepareConfig, default_dir: Path | None = None) -> ImageSource | None:
    """The image source named by ``--images`` / ``--images-lmdb``, else ``default_dir`` if it exists."""
    if config.images is not None:
        return DirectoryImages(config.images, config.allow_outside_paths)
    if config.images_lmdb is not None:
        return LmdbImages(config.images_lmdb)
    if default_dir is not None and default_dir.is_dir():
        return DirectoryImages(default_dir, config.allow_outside_paths)
    return None


def require_file(folder: Path, *candidates: str) -> Path:
    """The first of ``candidates`` that exists in ``folder``, else a clear error."""
    for name in candidates:
        path = folder / name
        if path.is_file():
            return path
    raise InputError(f"{folder} has none of {', '.join(candidates)}")
