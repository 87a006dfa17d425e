"""The ``iisan`` command line (:mod:`iisan.cli.app`); options are generated from the
config classes (:mod:`iisan.cli.generated`), output is in :mod:`iisan.cli.output`."""

from iisan.cli.app import app, threads_first


def main() -> None:
    app(args=threads_first())  # --threads after the command too


__all__ = ["app", "main"]
