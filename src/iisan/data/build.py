"""From a source's raw tables to the prepared dataset directory.

Every source reader produces a :class:`RawSource`; everything after that (duplicate
users and items, unknown keys, k-core, keeping each user's recent items, the item
vocabulary, images, the fingerprint, the files) is done here once, in polars, for all
formats.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from iisan import __version__
from iisan.config import PrepareConfig
from iisan.data.cold_start import COLD_ITEMS_FILE, COLD_START_FILE, hold_out, newest_items
from iisan.data.dataset import DATASET_VERSION, ITEMS_FILE, META_FILE, SEQUENCES_FILE, file_sha256
from iisan.data.images import ImageSource, materialise_images
from iisan.data.problems import Problems
from iisan.data.split import positions_in_runs
from iisan.data.text import clean_text
from iisan.errors import InputError
from iisan.fileio import crash_point, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class RawSource:
    """What a source reader hands over.

    Attributes:
        interactions: ``[user: str, item: str, line: int64]``, one row per interaction,
            rows of one user contiguous and in time order, users in the order they should
            be numbered (their first appearance). ``line`` locates the row for reports.
        items: ``[key: str, text: str|null, image: str|null, line: int64]``; ``image`` is
            a locator for ``image_source`` (a path for CSV tables), may be all null.
        interactions_file / items_file: names used in problem reports.
        image_source: where images come from, or ``None`` for a text-only source.
        info: extra facts for ``dataset.json`` (for example ``{"synthetic": {...}}``).
        extra_item_columns: further item columns to carry into ``items.parquet``.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    interactions_file: str
    items_file: str
    image_source: ImageSource | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra_item_columns: tuple[str, ...] = ()


def build_dataset(
    raw: RawSource, config: PrepareConfig, problems: Problems, out_dir: Path, source: str
) -> dict[str, Any]:
    """Filter, split and number ``raw``; write the dataset files into ``out_dir``.

    Returns the content written to ``dataset.json``.

    Raises:
        InputError: nothing usable is left (every user filtered out or no data at all).
    """
    filtered: dict[str, int] = {}
    items = _drop_duplicate_items(raw.items, raw.items_file, problems)
    inter = _drop_duplicate_users(raw.interactions, raw.interactions_file, problems)
    inter = _drop_unknown_items(inter, items, raw.interactions_file, problems)

    inter, held, cold_users = _filter_sequences(inter, config, problems, filtered)

    # Item ids 1..N in order of first appearance in the kept sequences; 0 is padding.
    vocab = inter.select(pl.col("item").unique(maintain_order=True)).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("item_id")
    )
    filtered["unused_items"] = items.height - vocab.height
    inter = inter.join(vocab, on="item", how="left", maintain_order="left")
    item_table = _item_table(vocab, items, raw, out_dir, problems)
    sequences = inter.group_by("run", maintain_order=True).agg(
        pl.col("user").first().alias("user_key"), pl.col("item_id").alias("items")
    ).drop("run")

    item_table.drop("image_sha256").write_parquet(out_dir / ITEMS_FILE)
    crash_point()
    sequences.write_parquet(out_dir / SEQUENCES_FILE)
    crash_point()
    written = [ITEMS_FILE, SEQUENCES_FILE]
    cold_counts = {}
    if held is not None:
        cold_counts = _write_cold_start(held, cold_users, vocab, items, raw, config, out_dir, problems)
        written += [COLD_ITEMS_FILE, COLD_START_FILE]
    files = {name: file_sha256(out_dir / name) for name in written}

    meta = {
        "version": DATASET_VERSION,
        "iisan_version": __version__,
        "format": config.format,
        "source": source,
        "synthetic": bool(raw.info.get("synthetic")),
        "keep_last": config.keep_last,
        "min_seq_len": config.min_seq_len,
        "kcore": config.effective_kcore,
        "counts": {
            "users": sequences.height,
            "items": item_table.height,
            "interactions": inter.height,
            "items_with_text": int(item_table["text"].is_not_null().sum()),
            "items_with_image": int(item_table["image"].is_not_null().sum()),
            **cold_counts,
        },
        "filtered": filtered,
        "problems": problems.to_json(),
        "fingerprint": _fingerprint(item_table, sequences),
        "files": files,  # checked at every load: an edited table is refused, never half-trusted
        "config": config.to_json(),
        **{k: v for k, v in raw.info.items() if k != "synthetic"},
    }
    if raw.info.get("synthetic"):
        meta["synthetic_config"] = raw.info["synthetic"]
    write_json_atomic(out_dir / META_FILE, meta)
    return meta


def _filter_sequences(inter: pl.DataFrame, config: PrepareConfig, problems: Problems,
                      filtered: dict[str, int]) -> tuple[pl.DataFrame, pl.Series | None, pl.DataFrame | None]:
    """The k-core, the item cold-start hold-out and each user's most recent items, counting
    what each removes in ``filtered``. Returns the interactions kept, the held-out items and
    the users whose next item one of them was (``None`` without ``--cold-items``).

    Raises:
        InputError: no user is left.
    """
    kcore = config.effective_kcore
    if kcore > 0:
        before = inter.height
        inter = _kcore(inter, kcore)
        filtered["kcore_removed_interactions"] = before - inter.height

    cold_users = held = None
    if config.cold_items > 0:  # the item cold-start protocol: never seen in training
        held = newest_items(inter, config.cold_items)
        before = inter.height
        inter, cold_users = hold_out(inter, held)
        filtered["cold_start_removed_interactions"] = before - inter.height

    inter, short_users, older = _keep_recent(inter, config.keep_last, config.min_seq_len)
    filtered["short_users"] = short_users
    if config.keep_last:
        filtered["older_than_keep_last"] = older
    if inter.height == 0:
        raise InputError(
            f"no user has at least {config.min_seq_len} interactions after filtering "
            f"({problems.summary()}); check the source or lower --min-seq-len"
        )
    return inter, held, cold_users


def _write_cold_start(held: pl.Series, users: pl.DataFrame, vocab: pl.DataFrame, items: pl.DataFrame,
                      raw: RawSource, config: PrepareConfig, out_dir: Path,
                      problems: Problems) -> dict[str, int]:
    """Write the held-out items' content and the cold-start users (their history as item ids
    of the catalogue, every known one or the last ``keep_last``); the counts for ``dataset.json``."""
    # Ids after the catalogue's, as `items add` would give them: their images get unique names.
    cold = pl.DataFrame({"item": held}).with_columns(
        pl.int_range(vocab.height + 1, vocab.height + held.len() + 1, dtype=pl.Int32).alias("item_id"))
    table = _item_table(cold, items, raw, out_dir, problems)
    table.select("key", "text", "image").write_parquet(out_dir / COLD_ITEMS_FILE)
    crash_point()
    ids = dict(zip(vocab["item"].to_list(), vocab["item_id"].to_list()))
    rows = []
    for user, history, target in users.iter_rows():
        known = [ids[key] for key in history if key in ids][-config.keep_last:]  # [-0:]: all
        if known:  # a user whose every earlier item left the catalogue has nothing to go on
            rows.append((user, known, target))
    pl.DataFrame(rows, schema={"user_key": pl.String, "history": pl.List(pl.Int32), "target": pl.String},
                 orient="row").write_parquet(out_dir / COLD_START_FILE)
    crash_point()
    return {"cold_items": table.height, "cold_start_users": len(rows)}


def _drop_duplicate_items(items: pl.DataFrame, file: str, problems: Problems) -> pl.DataFrame:
    first = items["key"].is_first_distinct()
    dups = items.filter(~first)
    problems.add_many(
        "duplicate_item", file,
        ((line, f"item {key} first defined earlier") for line, key in dups.select("line", "key").iter_rows()),
        count=dups.height,
    )
    return items.filter(first)


def _drop_duplicate_users(inter: pl.DataFrame, file: str, problems: Problems) -> pl.DataFrame:
    # Rows of one user are contiguous, so each run of equal user keys is one source
    # record; a key with two runs is a duplicate user. The first run wins.
    inter = inter.with_columns(pl.col("user").rle_id().alias("run"))
    runs = inter.unique(subset="run", keep="first", maintain_order=True)
    later = runs.filter(~pl.col("user").is_first_distinct())
    problems.add_many(
        "duplicate_user", file,
        ((line, f"user {user} already seen") for line, user in later.select("line", "user").iter_rows()),
        count=later.height,
    )
    return inter.filter(~pl.col("run").is_in(later["run"].implode()))


def _drop_unknown_items(
    inter: pl.DataFrame, items: pl.DataFrame, file: str, problems: Problems
) -> pl.DataFrame:
    known = inter["item"].is_in(items["key"].implode())
    unknown = inter.filter(~known)
    problems.add_many(
        "unknown_item", file,
        ((line, f"user {user}: item {item} is not in the items file")
         for line, user, item in unknown.select("line", "user", "item").iter_rows()),
        count=unknown.height,
    )
    return inter.filter(known)


def _kcore(inter: pl.DataFrame, k: int) -> pl.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none are left."""
    while True:
        kept = inter.filter((pl.len().over("user") >= k) & (pl.len().over("item") >= k))
        if kept.height == inter.height:
            return kept
        inter = kept


def _keep_recent(inter: pl.DataFrame, keep_last: int, min_len: int) -> tuple[pl.DataFrame, int, int]:
    """Keep each user's last ``keep_last`` items (every one when 0); drop users left with fewer
    than ``min_len``.

    Returns the kept rows, the number of users dropped and of older interactions cut.
    """
    # Each user's rows are one contiguous run, so run-length arithmetic in numpy does
    # what a window function over users would, without hashing keys.
    run = inter["run"].rle_id().to_numpy()
    if run.size == 0:
        return inter, 0, 0
    position, length = positions_in_runs(run)
    keep_len = keep_last or run.size
    recent = position >= length - keep_len
    long_enough = np.minimum(length, keep_len) >= min_len  # per row: its user's
    keep = recent & long_enough
    return (
        inter.filter(pl.Series(keep)),
        int((~long_enough[position == 0]).sum()),
        int(run.size - recent.sum()),
    )


def _item_table(
    vocab: pl.DataFrame, items: pl.DataFrame, raw: RawSource, out_dir: Path, problems: Problems
) -> pl.DataFrame:
    table = vocab.join(items, left_on="item", right_on="key", how="left", maintain_order="left")
    table = table.rename({"item": "key"}).with_columns(clean_text(table["text"]).alias("text"))
    no_text = table.filter(pl.col("text").is_null())
    problems.add_many(
        "empty_text", raw.items_file,
        ((line, f"item {key} has no text") for line, key in no_text.select("line", "key").iter_rows()),
        count=no_text.height,
    )
    image_paths: list[str | None] = [None] * table.height
    image_hashes: list[str | None] = [None] * table.height
    if raw.image_source is not None:
        placed = materialise_images(
            raw.image_source, table["key"].to_list(), table["image"].to_list(),
            table["item_id"].to_list(), out_dir, problems,
        )
        image_paths = [p.relative_path if p else None for p in placed]
        image_hashes = [p.sha256 if p else None for p in placed]
    table = table.with_columns(
        pl.Series("image", image_paths, dtype=pl.String),
        pl.Series("image_sha256", image_hashes, dtype=pl.String),
    )
    return table.select("item_id", "key", "text", "image", *raw.extra_item_columns, "image_sha256")


def _fingerprint(items: pl.DataFrame, sequences: pl.DataFrame) -> str:
    """A hash of the dataset's content: item keys, texts, image bytes and sequences.

    Computed from values, not from Parquet bytes, so it does not depend on the writer.
    """
    digest = hashlib.sha256()
    for column in ("key", "text", "image_sha256"):
        values = items[column].fill_null("\x00").to_list()
        digest.update("\x1f".join(values).encode("utf-8") + b"\x1e")
    digest.update("\x1f".join(sequences["user_key"].to_list()).encode("utf-8") + b"\x1e")
    flat = sequences["items"].explode().to_numpy().astype("<i4")
    lengths = sequences["items"].list.len().to_numpy().astype("<i4")
    digest.update(np.ascontiguousarray(flat).tobytes())
    digest.update(np.ascontiguousarray(lengths).tobytes())
    return digest.hexdigest()[:32]
