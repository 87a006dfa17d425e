"""RecBole atomic files: ``NAME.inter`` and, optionally, ``NAME.item``.

Tab-separated, with a typed header line (``user_id:token	item_id:token	rating:float
timestamp:float``), the format most public sequential-recommendation data sets are
published in for RecBole. Interactions are ordered by ``timestamp`` (file order when the
file has none). The item text is the ``.item`` file's title-like fields (a name containing
``title``, or ``name``), then its other text fields (``token``, ``token_seq``) each with its
name (``Toy Story. release year: 1995. class: Animation Children's Comedy``), joined with
". "; ``--text-col a,b`` names the fields instead (values only). Field names are RecBole's defaults (``user_id``, ``item_id``,
``timestamp``) unless ``--user-col``, ``--item-col``, ``--time-col`` name others.
Images from ``--images DIR`` or ``--images-lmdb PATH`` (keys are the item ids).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from iisan.config import CsvColumns, PrepareConfig
from iisan.data.build import RawSource
from iisan.data.lines import read_lines
from iisan.data.problems import Problems
from iisan.data.sources.common import chronological, drop_bad_timestamps, drop_missing, image_source_from_options, split_columns
from iisan.errors import InputError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
RECBOLE_NAMES = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}


def read(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    inter_path = _inter_file(source)
    item_path = inter_path.with_suffix(".item")
    inter_lines = read_lines(inter_path, problems)
    fields = _header(inter_lines, inter_path)
    user, item, timestamp = (_field(fields, config.columns, role) for role in ("user", "item", "timestamp"))
    for role, name in (("user", user), ("item", item)):
        if name is None:
            raise InputError(f"{inter_path.name}: no {role} field (looked for {RECBOLE_NAMES[role]!r}; "
                             f"its fields are {', '.join(fields)}); name it with --{role}-col")
    inter = split_columns(inter_lines.slice(1), list(fields), inter_path.name, problems)
    inter = inter.with_columns(pl.col(user).str.strip_chars().alias("user"), pl.col(item).str.strip_chars().alias("item"))
    inter = drop_missing(inter, ["user", "item"], "malformed_line", inter_path.name, problems)
    if timestamp is None:  # no time field: the file's order is the time order
        inter = inter.with_columns(pl.col("line").cast(pl.Float64).alias("timestamp"))
    else:
        inter = inter.with_columns(pl.col(timestamp).cast(pl.Float64, strict=False).alias("timestamp"))
        inter = drop_bad_timestamps(inter, inter_path.name, f"{timestamp} is not a number", problems)
    interactions = chronological(inter.select("user", "item", "line", "timestamp"))

    if item_path.is_file():
        items = _items(item_path, config.columns, problems)
        items_file = item_path.name
    else:  # ids only: the id method trains; content methods need a .item file with text
        keys = interactions["item"].unique(maintain_order=True)
        items = pl.DataFrame({"key": keys, "text": pl.Series([None] * len(keys), dtype=pl.String),
                              "line": pl.Series(range(len(keys)), dtype=pl.Int64)})
        items_file = f"{inter_path.stem}.item (absent)"
    return RawSource(
        interactions=interactions,
        items=items.with_columns(pl.lit(None, dtype=pl.String).alias("image")).select("key", "text", "image", "line"),
        interactions_file=inter_path.name,
        items_file=items_file,
        image_source=image_source_from_options(config),
        info={"dataset": inter_path.stem, "format": "recbole atomic files"},
    )


def _inter_file(source: Path) -> Path:
    """``source`` itself (a ``.inter`` file) or the one ``.inter`` file in the folder."""
    if source.is_file() and source.suffix == ".inter":
        return source
    if source.is_dir():
        found = sorted(source.glob("*.inter"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InputError(f"{source} holds several .inter files ({', '.join(p.name for p in found)}); "
                             "give the one to read as SOURCE")
    raise InputError(f"recbole source {source} must be a NAME.inter file or a folder with one (NAME.item beside it "
                     "is read for item text)")


def _header(lines: pl.DataFrame, path: Path) -> dict[str, str]:
    """``{field name: type}`` from an atomic file's first line."""
    if lines.height == 0:
        raise InputError(f"{path} is empty")
    fields = {}
    for part in lines["text"][0].split("\t"):
        name, _, kind = part.strip().rpartition(":")
        if not name or kind not in FIELD_TYPES:
            raise InputError(f"{path.name} line 1: not a RecBole atomic header (name:type fields, types "
                             f"{', '.join(FIELD_TYPES)}); got {part.strip()!r}")
        fields[name] = kind
    return fields


def _field(fields: dict[str, str], columns: CsvColumns, role: str) -> str | None:
    """The header field for ``role``: the one named by the user's option, else RecBole's default name."""
    chosen = getattr(columns, role)
    for name in (chosen, RECBOLE_NAMES[role]):
        if name in fields:
            return name
    return None


def _items(path: Path, columns: CsvColumns, problems: Problems) -> pl.DataFrame:
    lines = read_lines(path, problems)
    fields = _header(lines, path)
    key = _field(fields, columns, "item")
    if key is None:
        raise InputError(f"{path.name}: no item field (looked for 'item_id'; its fields are {', '.join(fields)})")
    if columns.text != CsvColumns.text:  # --text-col a,b
        text_fields = [name.strip() for name in columns.text.split(",") if name.strip()]
        missing = [name for name in text_fields if name not in fields]
        if missing:
            raise InputError(f"{path.name} has no field {', '.join(missing)} (its fields are {', '.join(fields)})")
        labelled = []
    else:  # the title first, then every other text field with its name ("release year: 1995")
        text_fields = [n for n in fields if n != key and ("title" in n or n == "name")]
        labelled = [n for n, kind in fields.items() if n != key and n not in text_fields and kind in ("token", "token_seq")]
    items = split_columns(lines.slice(1), list(fields), path.name, problems)
    items = items.with_columns(pl.col(key).str.strip_chars().alias("key"))
    items = drop_missing(items, ["key"], "malformed_line", path.name, problems)
    parts = [pl.when(pl.col(n).str.strip_chars() != "").then(pl.col(n).str.strip_chars()) for n in text_fields]
    parts += [pl.when(pl.col(n).str.strip_chars() != "").then(pl.format(f"{n.replace('_', ' ')}: {{}}", pl.col(n).str.strip_chars()))
              for n in labelled]
    text = pl.concat_str(parts, separator=". ", ignore_nulls=True) if parts else pl.lit(None, dtype=pl.String)
    return items.select("key", pl.when(text.str.strip_chars() != "").then(text).alias("text"), "line")
