"""How results look: :mod:`iisan.report.terminal` draws each command's result as rich
tables (what the CLI prints; ``rich.print`` shows them in a notebook too), and
:mod:`iisan.report.html` writes the page of ``iisan report`` comparing runs."""

__all__ = ["build_report", "write_report"]


def __getattr__(name: str):
    # on first use: the page's module reads torch (the evaluation's metrics), and the command
    # line, which imports this package for its tables, must start without it
    if name in __all__:
        from iisan.report import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
