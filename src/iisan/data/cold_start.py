"""The item cold-start protocol: items held out of training entirely, added after it.

``iisan prepare --cold-items F`` picks the newest fraction ``F`` of the catalogue and
removes every interaction with those items from the sequences, so no training sample,
validation or test target, and no cache row ever shows them. Users whose last
interaction was one of them become the protocol's test users: their history (every
kept item before it) and that target are written to ``cold_start.parquet``; the held-out
items' content (key, text, image) to ``cold_items.parquet``. After training, ``iisan
evaluate RUN --cold-start`` adds the items to a copy of the run (as ``iisan items add``
would) and ranks them with the rest of the catalogue for those users.

Which items are newest: a source without timestamps across users (the reference TSV)
still orders each user's items in time, so an item's newness is the mean relative
position of its interactions within their users' sequences (0 first, 1 last): items
bought mostly at the ends of sequences are the ones that appeared late. Ties go by key.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from iisan.data.split import positions_in_runs

COLD_ITEMS_FILE = "cold_items.parquet"
COLD_START_FILE = "cold_start.parquet"


def newest_items(inter: pl.DataFrame, fraction: float) -> pl.Series:
    """The keys of the newest ``fraction`` of the items in ``inter`` (``user``, ``item`` and
    ``run`` columns; a user's rows contiguous and in time order); at least one item."""
    position, length = positions_in_runs(inter["run"].rle_id().to_numpy())
    relative = position / np.maximum(length - 1, 1)
    newness = (pl.DataFrame({"item": inter["item"], "relative": relative})
               .group_by("item").agg(pl.col("relative").mean())
               .sort(["relative", "item"], descending=[True, False]))
    count = max(1, round(fraction * newness.height))
    return newness["item"].head(count)


def hold_out(inter: pl.DataFrame, held: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Remove ``held`` items from the interactions.

    Returns the interactions without them, and the cold-start users: ``user``, ``history``
    (the item keys before their last interaction, held-out ones removed) and ``target``
    (their last item, when it is held out).
    """
    is_held = inter["item"].is_in(held.implode())
    last = inter["run"].is_last_distinct()
    marked = inter.with_columns(is_held.alias("held"), last.alias("last"))
    targets = marked.filter(pl.col("last") & pl.col("held")).select("run", pl.col("item").alias("target"))
    histories = (marked.filter(~pl.col("held")).group_by("run", maintain_order=True)
                 .agg(pl.col("user").first(), pl.col("item").alias("history")))
    users = targets.join(histories, on="run", how="inner", maintain_order="left")
    return inter.filter(~is_held), users.select("user", "history", "target")
