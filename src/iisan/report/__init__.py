"""How results look: :mod:`iisan.report.terminal` draws each command's result as rich
tables (what the CLI prints; ``rich.print`` shows them in a notebook too), and
:mod:`iisan.report.html` writes the page of ``iisan report`` comparing runs."""

from iisan.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
