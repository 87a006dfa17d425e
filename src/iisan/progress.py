"""iisan's log lines and the progress bars that follow them: ``iisan -q`` (level WARNING)
hides both."""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, hidden when the ``iisan`` logger is set above INFO.

    Only an explicit level counts: a library user who never configured logging still
    sees the bars, as before.
    """
    quiet = logging.getLogger("iisan").level > logging.INFO
    options["disable"] = options.get("disable", False) or quiet
    return tqdm(iterable, **options)


def log_to(handler: logging.Handler, level: int, format: str = "%(message)s", datefmt: str = "%H:%M:%S",
           propagate: bool = False) -> None:
    """Send the ``iisan`` logger's lines (not other libraries') to ``handler`` from ``level`` up."""
    handler.setFormatter(logging.Formatter(format, datefmt=datefmt))
    logger = logging.getLogger("iisan")
    logger.handlers, logger.propagate = [handler], propagate
    logger.setLevel(level)
