"""The ``iisan`` command line (:mod:`iisan.cli.app`); options are generated from the
config classes (:mod:`iisan.cli.generated`), output is in :mod:`iisan.cli.output`."""

import sys

import typer

from iisan.cli.app import app
from iisan.config import RETIRED_FLAGS
from iisan.options import renamed_flags
from iisan.threads import threads_first


def main() -> None:
    commands = typer.main.get_command(app).commands  # each command's options, with their older names
    specs = lambda name: getattr(getattr(commands.get(name), "callback", None), "option_specs", ())  # noqa: E731
    app(args=renamed_flags(threads_first(sys.argv[1:]), specs, RETIRED_FLAGS))  # --threads after the command too


__all__ = ["app", "main"]
