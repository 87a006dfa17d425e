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
    """Send the ``iisan`` logger's lines (not other libraries') to ``handler`` from ``level`` up.

    A rich handler whose console is not a terminal (output piped to a file, another program)
    is replaced by a plain one: rich would wrap each line at 80 columns and pad it to the
    console's width, where a script reading the log wants one line a record."""
    from rich.logging import RichHandler

    if isinstance(handler, RichHandler) and not handler.console.is_terminal:
        handler = logging.StreamHandler(handler.console.file)
        format, datefmt = f"%(asctime)s %(levelname)s {format}", "%Y-%m-%dT%H:%M:%S"
    handler.setFormatter(logging.Formatter(format, datefmt=datefmt))
    logger = logging.getLogger("iisan")
    logger.handlers, logger.propagate = [handler], propagate
    logger.setLevel(level)
