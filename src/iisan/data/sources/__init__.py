"""Source formats. Each module exposes ``read(source, config, problems) -> RawSource``.

Adding a format means adding a module and one line in :data:`READERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iisan.config import PrepareConfig
from iisan.data.build import RawSource
from iisan.data.problems import Problems
from iisan.data.sources import amazon2023, movielens, recbole, table, tsv

Reader = Callable[[Path, PrepareConfig, Problems], RawSource]

READERS: dict[str, Reader] = {
    "iisan-tsv": tsv.read,
    "amazon2023": amazon2023.read,
    "csv": table.read,
    "movielens": movielens.read,
    "recbole": recbole.read,
}


def read_source(source: Path, config: PrepareConfig, problems: Problems) -> RawSource:
    return READERS[config.format](source, config, problems)
