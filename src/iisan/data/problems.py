"""Counting and reporting bad input.

Every record that prepare cannot use is counted here under a problem kind, with the
first few examples (file, line, detail) kept for the report. Nothing is dropped without
passing through :meth:`Problems.add`. In strict mode the first problem raises
:class:`~iisan.errors.InputError` instead, naming the file, line and problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from iisan.errors import InputError

EXAMPLES_KEPT = 3

# The kinds prepare can report, with a human description for the report table.
KINDS: dict[str, str] = {
    "empty_file": "file has no data lines",
    "non_utf8": "line has bytes that are not UTF-8 (replaced with U+FFFD, line kept)",
    "malformed_line": "line cannot be parsed (bad JSON, empty key or empty sequence)",
    "wrong_column_count": "line has the wrong number of tab-separated columns",
    "missing_field": "record lacks a required field or has it empty",
    "invalid_timestamp": "timestamp is not a number (row dropped)",
    "duplicate_user": "user appears on more than one line (later line dropped)",
    "duplicate_item": "item key appears on more than one line (later line dropped)",
    "unknown_item": "sequence names an item key that is not in the items file (dropped)",
    "empty_text": "item has no text after cleaning (item kept without text)",
    "missing_image": "no image found for the item (item kept without image)",
    "unreadable_image": "image cannot be decoded (item kept without image)",
    "refused_image": "image path outside the source, not a regular file, or too large (item kept without image)",
}


@dataclass(frozen=True)
class Example:
    file: str
    line: int | None
    detail: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class ProblemKind:
    count: int = 0
    examples: list[Example] = field(default_factory=list)


class Problems:
    """Collects problems found while reading a source.

    Args:
        strict: raise :class:`InputError` at the first problem instead of counting it.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._kinds: dict[str, ProblemKind] = {}

    def add(self, kind: str, file: str, line: int | None, detail: str) -> None:
        """Record one problem."""
        self.add_many(kind, file, [(line, detail)], count=1)

    def add_many(
        self,
        kind: str,
        file: str,
        examples: Iterable[tuple[int | None, str]],
        count: int,
    ) -> None:
        """Record ``count`` problems of one kind found by a vectorised check.

        ``examples`` are (line, detail) pairs in file order; only the first few are kept.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        if count <= 0:
            return
        kept = [Example(file, line, detail) for line, detail in _take(examples, EXAMPLES_KEPT)]
        if self.strict:
            first = kept[0] if kept else Example(file, None, "")
            raise InputError(f"{first.where()}: {kind}: {first.detail}")
        entry = self._kinds.setdefault(kind, ProblemKind())
        entry.count += count
        room = EXAMPLES_KEPT - len(entry.examples)
        entry.examples.extend(kept[:room])

    def count(self, kind: str) -> int:
        entry = self._kinds.get(kind)
        return entry.count if entry else 0

    @property
    def total(self) -> int:
        return sum(entry.count for entry in self._kinds.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def to_json(self) -> dict[str, dict]:
        return {
            kind: {
                "count": entry.count,
                "description": KINDS[kind],
                "examples": [
                    {"file": ex.file, "line": ex.line, "detail": ex.detail} for ex in entry.examples
                ],
            }
            for kind, entry in sorted(self._kinds.items())
        }

    def summary(self) -> str:
        """One line: ``3 problems (unknown_item: 2, empty_text: 1)``."""
        if not self:
            return "no problems"
        parts = ", ".join(f"{kind}: {e.count}" for kind, e in sorted(self._kinds.items()))
        return f"{self.total} problems ({parts})"


def _take(items: Iterable[tuple[int | None, str]], n: int) -> list[tuple[int | None, str]]:
    out = []
    for item in items:
        if len(out) == n:
            break
        out.append(item)
    return out
