"""Recommendations from a trained run: history of item keys in, top-k item keys out.

Item embeddings are computed once at load; a query is one user-encoder pass and one
``[N]`` inner product, so it costs the same for any history length up to ``max_seq_len``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from iisan.errors import ConfigError, UnknownItemError
from iisan.evaluate.runner import item_embeddings, user_vectors
from iisan.train.assemble import Assembled, assemble_run


class Recommender:
    """A trained run, ready to answer queries."""

    def __init__(self, parts: Assembled) -> None:
        self.parts = parts
        items = parts.dataset.items
        # Indexed by item id; id 0 is padding.
        self.keys: list[str] = ["", *items["key"].to_list()]
        self.titles: list[str | None] = [None, *items["text"].to_list()]
        if items["item_id"].to_list() != list(range(1, len(self.keys))):
            raise ConfigError(f"{parts.dataset.root}: item ids are not 1..N; rerun `iisan prepare`")
        self.ids = {key: item_id for item_id, key in enumerate(self.keys) if item_id}
        self.max_seq_len = parts.config.user.max_seq_len
        self.embeddings = item_embeddings(parts.model, parts.source, parts.dataset.num_items)

    @classmethod
    def load(cls, run_dir: str | Path) -> Recommender:
        return cls(assemble_run(run_dir))

    def title(self, key: str) -> str | None:
        return self.titles[self.ids[key]]

    def recommend(self, history: list[str], k: int = 10, exclude_seen: bool = True,
                  on_unknown: str = "raise") -> list[tuple[str, float]]:
        """The ``k`` best next items for a user who interacted with ``history`` (oldest first).

        Args:
            history: original item keys; only the last ``max_seq_len`` feed the model.
            exclude_seen: leave the history's items out of the answer.
            on_unknown: ``raise`` (:class:`UnknownItemError` naming them) or ``skip``.
        """
        if on_unknown not in ("raise", "skip"):
            raise ConfigError(f"on_unknown must be raise or skip, got {on_unknown!r}")
        if k < 1:
            raise ConfigError(f"k must be positive, got {k}")
        unknown = [key for key in history if key not in self.ids]
        if unknown and on_unknown == "raise":
            raise UnknownItemError(unknown)
        ids = [self.ids[key] for key in history if key in self.ids]
        if not ids:
            raise ConfigError("the history holds no known item")
        inputs = np.zeros((1, self.max_seq_len), dtype=np.int64)
        recent = ids[-self.max_seq_len:]
        inputs[0, -len(recent):] = recent
        scores = (user_vectors(self.parts.model, self.embeddings, inputs) @ self.embeddings.T)[0]
        scores[0] = -torch.inf
        if exclude_seen:
            scores[torch.tensor(ids)] = -torch.inf
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        return [(self.keys[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
