"""Progress bars that follow the ``iisan`` logger: ``iisan -q`` (level WARNING) hides them."""

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
