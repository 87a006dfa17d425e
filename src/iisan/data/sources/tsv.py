"""The reference IISAN layout: ``items.tsv`` (key, title) and ``users.tsv``
(user, space-separated item keys in time order). Images from ``--images DIR``,
``--images-lmdb PATH`` or, if present, the source's own ``images/`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from iisan.config import PrepareConfig
from iisan.data.build import RawSource
from iisan.data.lines import read_lines
from iisan.data.problems import Problems
from iisan.data.sources.common import drop_missing, image_source_from_options, require_file, split_columns
from iisan.errors import InputError

SYNTH_INFO_FILE = "synth.json"


def read(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    if not source.is_dir():
        raise InputError(f"iisan-tsv source {source} must be a folder with items.tsv and users.tsv")
    items_path = require_file(source, "items.tsv", "items.tsv.gz")
    users_path = require_file(source, "users.tsv", "users.tsv.gz")

    items = split_columns(read_lines(items_path, problems), ["key", "text"], items_path.name, problems)
    items = items.with_columns(pl.col("key").str.strip_chars())
    items = drop_missing(items, ["key"], "malformed_line", items_path.name, problems)

    users = split_columns(read_lines(users_path, problems), ["user", "seq"], users_path.name, problems)
    users = users.with_columns(
        pl.col("user").str.strip_chars(), pl.col("seq").str.extract_all(r"\S+").alias("items")
    )
    users = drop_missing(users, ["user"], "malformed_line", users_path.name, problems)
    no_items = users.filter(pl.col("items").list.len() == 0)
    problems.add_many(
        "malformed_line", users_path.name,
        ((line, f"user {user} has an empty sequence") for line, user in no_items.select("line", "user").iter_rows()),
        count=no_items.height,
    )
    interactions = (
        users.filter(pl.col("items").list.len() > 0)
        .select("user", pl.col("items").alias("item"), "line")
        .explode("item")
    )
    return RawSource(
        interactions=interactions,
        items=items.with_columns(pl.lit(None, dtype=pl.String).alias("image")),
        interactions_file=users_path.name,
        items_file=items_path.name,
        image_source=image_source_from_options(config, default_dir=source / "images"),
        info=_synth_info(source),
    )


def _synth_info(source: Path) -> dict:
    path = source / SYNTH_INFO_FILE
    if not path.is_file():
        return {}
    try:
        return {"synthetic": json.loads(path.read_text(encoding="utf-8"))}
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
