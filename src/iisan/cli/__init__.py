"""The ``iisan`` command line (:mod:`iisan.cli.app`); options are generated from the
config classes (:mod:`iisan.cli.generated`), output is in :mod:`iisan.cli.output`."""

import sys

import typer

from iisan.cli.app import app
from iisan.options import command_position, renamed_flags
from iisan.threads import threads_first


# Flags a command no longer takes because what they did moved: the one line that says where.
RETIRED = {
    ("prepare", "--max-seq-len"): "prepare keeps each user's whole history now; --keep-last N keeps their last N "
                                  "(--keep-last 13 is the reference protocol, --max-seq-len 10 before), and the "
                                  "model's input length is `iisan train --max-seq-len`",
}


def main() -> None:
    args = threads_first(sys.argv[1:])  # --threads after the command too
    position = command_position(args)
    for (command, flag), why in RETIRED.items():
        given = args[position + 1:args.index("--") if "--" in args else len(args)]
        if args[position:position + 1] == [command] and any(arg.partition("=")[0] == flag for arg in given):
            typer.echo(f"Error: {flag}: {why}", err=True)
            raise SystemExit(2)
    commands = typer.main.get_command(app).commands  # each command's options, with their older names
    specs = lambda name: getattr(getattr(commands.get(name), "callback", None), "option_specs", ())  # noqa: E731
    app(args=renamed_flags(args, specs))


__all__ = ["app", "main"]
