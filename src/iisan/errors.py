"""Errors raised by the library.

Library code raises these; only ``cli.py`` turns them into exit codes and one-line
messages. Each subclasses a built-in where one fits, so callers that do not know our
types can still catch ``ValueError`` or ``FileNotFoundError``.
"""

from __future__ import annotations


class IisanError(Exception):
    """Base class for every error the library raises on purpose."""


class ConfigError(IisanError, ValueError):
    """An option or configuration value is out of range or inconsistent."""


class InputError(IisanError, ValueError):
    """Source data is malformed (raised at the first problem in ``--strict`` mode)."""


class DatasetError(IisanError, ValueError):
    """A prepared dataset directory is missing, incomplete or of another format version."""


class MissingDependencyError(IisanError, ImportError):
    """An optional package needed for this operation is not installed."""


class CacheMismatchError(IisanError):
    """A hidden-state cache was built for another dataset or another encoder setting."""


class NonFiniteError(IisanError, ArithmeticError):
    """A number that must be finite is NaN or infinite: a diverged step, damaged weights or states.

    Raised where the number is born, so a NaN never travels on to become a metric or a ranking.
    """


class StorageError(IisanError, OSError):
    """A write failed (disk full, permissions); the state on disk and in memory is the previous one."""


class UnknownItemError(IisanError, KeyError):
    """Item keys that the catalogue does not hold."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        shown = ", ".join(repr(k) for k in keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
        super().__init__(f"unknown item key{'s' if len(keys) > 1 else ''}: {shown}")

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class UnknownUserError(IisanError, KeyError):
    """A user the run's dataset does not hold (404 from the service)."""

    def __str__(self) -> str:
        return str(self.args[0])


class RunBusyError(IisanError):
    """Another process (or thread) is changing the run folder, and did not finish within the wait."""


class RunReplacedError(IisanError):
    """The run folder a process loaded was replaced since (trained again with ``--force``, its
    scorer fitted again): what it holds no longer answers for the run on disk."""
