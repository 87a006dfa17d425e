"""Amazon Reviews 2023: ``reviews.jsonl(.gz)`` + ``meta.jsonl(.gz)``.

Also accepts the published file names, ``<Category>.jsonl.gz`` with
``meta_<Category>.jsonl.gz``. Interactions are sorted by timestamp and k-core filtered
(``--kcore``, default 5). The first ``images[].large`` URL is kept as ``image_url``;
images are not downloaded (iisan never uses the network), but ``--images DIR`` with
files named ``<parent_asin>.jpg`` attaches local copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from iisan.config import PrepareConfig
from iisan.data.build import RawSource
from iisan.data.lines import read_lines
from iisan.data.problems import Problems
from iisan.data.sources.common import chronological, drop_bad_timestamps, drop_missing, image_source_from_options
from iisan.errors import InputError

REVIEW_FIELDS = {"user_id": pl.String, "parent_asin": pl.String, "timestamp": pl.Int64}
META_FIELDS = {
    "parent_asin": pl.String,
    "title": pl.String,
    "images": pl.List(pl.Struct({"large": pl.String})),
}


def read(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    reviews_path, meta_path = _find_files(source)
    reviews = _parse_jsonl(read_lines(reviews_path, problems), REVIEW_FIELDS, reviews_path.name, problems)
    reviews = drop_missing(reviews, ["user_id", "parent_asin"], "missing_field", reviews_path.name, problems)
    reviews = drop_bad_timestamps(reviews, reviews_path.name, "timestamp missing or not an integer", problems)
    interactions = chronological(reviews.rename({"user_id": "user", "parent_asin": "item"}))

    meta = _parse_jsonl(read_lines(meta_path, problems), META_FIELDS, meta_path.name, problems)
    meta = drop_missing(meta, ["parent_asin"], "missing_field", meta_path.name, problems)
    items = meta.select(
        pl.col("parent_asin").alias("key"),
        pl.col("title").alias("text"),
        pl.lit(None, dtype=pl.String).alias("image"),
        pl.col("images").list.eval(pl.element().struct.field("large")).list.drop_nulls()
        .list.first().alias("image_url"),
        "line",
    )
    return RawSource(
        interactions=interactions,
        items=items,
        interactions_file=reviews_path.name,
        items_file=meta_path.name,
        image_source=image_source_from_options(config),
        extra_item_columns=("image_url",),
    )


def _find_files(source: Path) -> tuple[Path, Path]:
    if not source.is_dir():
        raise InputError(f"amazon2023 source {source} must be a folder with reviews.jsonl and meta.jsonl")
    for suffix in (".jsonl", ".jsonl.gz"):
        reviews, meta = source / f"reviews{suffix}", source / f"meta{suffix}"
        if reviews.is_file() and meta.is_file():
            return reviews, meta
    metas = sorted(source.glob("meta_*.jsonl*"))
    if len(metas) == 1:
        category = metas[0].name.removeprefix("meta_")
        reviews = source / category
        if reviews.is_file():
            return reviews, metas[0]
    raise InputError(
        f"{source} needs reviews.jsonl(.gz) and meta.jsonl(.gz), "
        "or one <Category>.jsonl.gz with meta_<Category>.jsonl.gz"
    )


def _parse_jsonl(
    lines: pl.DataFrame, fields: dict[str, pl.DataType], file: str, problems: Problems
) -> pl.DataFrame:
    """Decode JSON lines into ``fields`` columns plus ``line``.

    The whole column is decoded natively; only if that fails (a bad line somewhere) do
    we parse line by line to count each bad line.
    """
    dtype = pl.Struct(fields)
    try:
        decoded = lines["text"].str.json_decode(dtype)
        return lines.select("line").with_columns(decoded.struct.unnest())
    except pl.exceptions.PolarsError:
        pass
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int | None, str]] = []
    for line, text in lines.iter_rows():
        try:
            record = json.loads(text)
        except ValueError as err:
            bad.append((line, f"invalid JSON: {err}"))
            continue
        except RecursionError:  # nested deeper than Python's parser goes: no record of ours is
            bad.append((line, "invalid JSON: nested too deep"))
            continue
        if not isinstance(record, dict):
            bad.append((line, f"expected a JSON object, found {type(record).__name__}"))
            continue
        rows.append({"line": line, **{name: _coerce(record.get(name), dtype) for name, dtype in fields.items()}})
    problems.add_many("malformed_line", file, bad, count=len(bad))
    return pl.DataFrame(rows, schema={"line": pl.Int64, **fields})


def _coerce(value: Any, dtype: pl.DataType) -> Any:
    # Values of the wrong type become null, which the caller then counts.
    if dtype == pl.String:
        return value if isinstance(value, str) else None
    if dtype == pl.Int64:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, list):  # images: keep only each entry's "large" URL
        return [{"large": v.get("large") if isinstance(v.get("large"), str) else None}
                for v in value if isinstance(v, dict)]
    return None

