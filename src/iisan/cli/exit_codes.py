"""Library errors become one line on stderr and an exit code: 2 for bad input or options,
1 for an internal error, 130 for Ctrl-C. ``IISAN_DEBUG=1`` re-raises for the traceback."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from iisan.cli.output import stderr
from iisan.errors import IisanError
from iisan.fileio import storage_failure

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Run ``fn``; a library error is one line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("IISAN_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except IisanError as err:
            if debug:
                raise
            fail(str(err))
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:  # last resort: never show a user a traceback
            if debug:
                raise
            failure = storage_failure(err, getattr(err, "filename", None) or "the output")
            if failure is not None:  # a full disk where no write site named its path
                fail(str(failure))
            stderr.print(f"[bold red]internal error:[/] {type(err).__name__}: {escape(str(err))}\n"
                         "This is a bug in iisan; rerun with IISAN_DEBUG=1 for the traceback and report it.",
                         highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 2) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
