"""``iisan prepare``: read a source, build the dataset, swap the directory into place."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from iisan.config import PrepareConfig
from iisan.data.build import build_dataset
from iisan.data.dataset import META_FILE
from iisan.data.problems import Problems
from iisan.data.sources import read_source
from iisan.data.sources.movielens import BUILTIN
from iisan.fileio import atomic_directory, check_replaceable, refuse_output_over_inputs

log = logging.getLogger(__name__)


def prepare(
    source: str | Path, out_dir: str | Path, config: PrepareConfig, force: bool = False
) -> tuple[dict[str, Any], Problems]:
    """Prepare ``source`` into the dataset directory ``out_dir``.

    The dataset is built in a temporary folder beside ``out_dir`` and renamed into place,
    so an interrupted run never leaves a half-written dataset. An existing dataset at
    ``out_dir`` is replaced.

    Returns:
        The content of ``dataset.json`` and the problems found.

    Raises:
        InputError: the source is unusable, or (strict mode) at its first problem.
        ConfigError: ``out_dir`` holds something other than a dataset and ``force`` is off.
    """
    source, out_dir = Path(source), Path(out_dir)
    refuse_output_over_inputs(out_dir, {"source": None if str(source) == BUILTIN else source,
                                        "image folder": config.images, "image LMDB": config.images_lmdb,
                                        "item file": config.items})
    check_replaceable(out_dir, META_FILE, force)
    problems = Problems(strict=config.strict)
    log.info("reading %s (%s)", source, config.format)
    raw = read_source(source, config, problems)
    with atomic_directory(out_dir) as work:
        label = BUILTIN if str(source) == BUILTIN else str(source.resolve())  # not a path in the cwd
        meta = build_dataset(raw, config, problems, work, source=label)
    return meta, problems

