"""The ``iisan`` command line (:mod:`iisan.cli.app`); options are generated from the
config classes (:mod:`iisan.cli.generated`), output is in :mod:`iisan.cli.output`."""

from iisan.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
