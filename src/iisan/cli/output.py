"""Where the commands print: a person's terminal (rich renderings from
:mod:`iisan.report.terminal`), or JSON on stdout for ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType

stdout = Console(width=None if sys.stdout.isatty() else 10_000)  # piped: tables at their own width, not 80
stderr = Console(stderr=True)


def show(result: Any, as_json: bool, render: Callable[[Any], RenderableType]) -> None:
    """``result`` as JSON (``--json``), or as ``render`` draws it for a person."""
    if as_json:
        text = json.dumps(result, indent=2, ensure_ascii=False, default=str, allow_nan=False)
        sys.stdout.write(text + "\n")
    else:
        stdout.print(render(result), highlight=False, markup=False)  # user data shown verbatim
