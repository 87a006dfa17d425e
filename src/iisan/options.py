"""Options defined once: a config field carries its type, default, help and bounds, and
everything else is derived from it.

A field declared with :func:`option` (as peft's configs put help in field metadata) is
validated by :func:`check_options` (choices from its ``Literal`` type or ``choices=``,
``minimum``/``above`` bounds), becomes a command-line option (``iisan.cli.generated``),
a ``--config`` key and a row of the options reference in the docs. Checks across fields
stay in the config's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from iisan.errors import ConfigError

log = logging.getLogger(__name__)


def option(default: Any = MISSING, *, help: str | Callable[[], str], flag: str | None = None,
           minimum: float | None = None, above: float | None = None, maximum: float | None = None,
           choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None, panel: str | None = None,
           none_word: str | None = None, aliases: tuple[str, ...] = (), default_factory: Any = MISSING,
           cli: bool = True, families: Callable[[], tuple[type, ...]] | None = None,
           off_flag: str | None = None) -> Any:
    """A dataclass field that is also a user-facing option.

    Args:
        help: one or more sentences for ``--help`` and the reference, or a function giving
            them (read when asked: a registry may grow).
        flag: the command-line name without dashes (default: the field name with dashes).
        minimum: numbers must be at least this.
        above: numbers must be greater than this.
        maximum: numbers must be at most this.
        choices: the allowed values when they are not a ``Literal``, or a function giving them
            (the method registry's, which may grow).
        panel: the ``--help`` group; ``None`` is the first, common one.
        none_word: a word that means ``None`` on the command line (``--image-encoder none``).
        aliases: older names still accepted (flags and ``--config`` keys).
        cli: ``False`` for a field that the data decides (not an option).
        families: for a field holding one of several config classes, chosen by another field
            (``TrainConfig.method_options``: the method's), a function giving every class it
            may hold now; their options are options of the owner too (:func:`all_specs`).
        off_flag: a switch that is on by default: the flag turning it off, when ``no-`` and
            the flag read worse (``include-seen`` for ``exclude_seen``).
    """
    metadata = {"help": help, "flag": flag, "minimum": minimum, "above": above, "maximum": maximum, "choices": choices,
                "panel": panel, "none_word": none_word, "aliases": aliases, "cli": cli, "families": families,
                "off_flag": off_flag}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": metadata})


@dataclass(frozen=True)
class OptionSpec:
    """One option as the command line, the docs and validation see it."""

    name: str  # the field name, also the --config key
    owner: type  # the config class that declares it
    kind: type  # int, float, str, bool or Path; for lists, the element type
    default: Any  # the field's default (MISSING when required)
    help_from: str | Callable[[], str]
    flag: str
    choices_from: tuple[str, ...] | Callable[[], tuple[str, ...]] | None
    minimum: float | None
    above: float | None
    maximum: float | None
    panel: str | None
    optional: bool  # None is a value
    is_list: bool  # tuple[kind, ...]
    none_word: str | None
    aliases: tuple[str, ...]
    off_flag: str | None = None  # a switch on by default: its off flag (default: no-FLAG)

    @property
    def help(self) -> str:
        """The help text now (a registry's may grow after the config class was made)."""
        return self.help_from() if callable(self.help_from) else self.help_from

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values now (a registry may grow after the config class was made)."""
        return self.choices_from() if callable(self.choices_from) else self.choices_from

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling that names this option in a ``--config`` file."""
        return (self.name, self.flag.replace("-", "_"), *(a.replace("-",
                                                                    "_") for a in self.aliases if len(a) > 1))


@functools.cache
def option_specs(config_class: type) -> tuple[OptionSpec, ...]:
    """The options of ``config_class``, in field order; nested config fields are not options
    themselves (see :func:`nested_configs`)."""
    hints = typing.get_type_hints(config_class)
    specs = []
    for f in dataclasses.fields(config_class):
        meta = f.metadata.get("option")
        if meta is None or not meta["cli"]:
            continue
        kind, optional, is_list, literal = _unpack(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        specs.append(OptionSpec(
            name=f.name, owner=config_class, kind=kind, default=default, help_from=meta["help"],
            flag=meta["flag"] or f.name.replace("_", "-"), choices_from=meta["choices"] or literal,
            minimum=meta["minimum"], above=meta["above"], maximum=meta["maximum"], panel=meta["panel"], optional=optional,
            is_list=is_list,
            none_word=meta["none_word"], aliases=meta["aliases"], off_flag=meta.get("off_flag")))
    return tuple(specs)


def nested_configs(config_class: type) -> dict[str, type]:
    """Fields of ``config_class`` that are configs themselves (``TrainConfig.side``)."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)
            if dataclasses.is_dataclass(hints[f.name])}


def family_configs(config_class: type) -> dict[str, tuple[type, ...]]:
    """Fields of ``config_class`` holding one of several config classes, with every class each
    may hold now (see :func:`option`'s ``families``)."""
    return {f.name: tuple(dict.fromkeys(f.metadata["option"]["families"]()))
            for f in dataclasses.fields(config_class) if (f.metadata.get("option") or {}).get("families")}


def all_specs(config_class: type) -> tuple[OptionSpec, ...]:
    """The options of ``config_class``, of its nested configs and of every class its family
    fields may hold, flat: their names are unique."""
    specs = list(option_specs(config_class))
    for nested in nested_configs(config_class).values():
        specs.extend(all_specs(nested))
    for family in family_configs(config_class).values():
        for member in family:
            specs.extend(all_specs(member))
    return tuple(specs)


def _unpack(hint: Any) -> tuple[type, bool, bool, tuple[str, ...] | None]:
    """``(kind, optional, is_list, literal choices)`` of a field's type."""
    optional = False
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        hint = args[0]
    if get_origin(hint) is Literal:
        return str, optional, False, tuple(get_args(hint))
    if get_origin(hint) is tuple:
        return get_args(hint)[0], optional, True, None
    return hint, optional, False, None


KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def _of_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, kind)


def check_options(config: Any) -> None:
    """Validate every option field of ``config`` against its spec (and take a ``str`` where
    a path is expected, as Python callers write them).

    Raises:
        ConfigError: the first value outside its choices or bounds, naming the field.
    """
    for spec in option_specs(type(config)):
        value = getattr(config, spec.name)
        if spec.kind is Path and isinstance(value, str):
            value = Path(value)
            object.__setattr__(config, spec.name, value)  # frozen dataclasses: in __post_init__ only
        if spec.is_list and isinstance(value, list):  # read from JSON: the field holds a tuple
            value = tuple(value)
            object.__setattr__(config, spec.name, value)
        if value is None:
            if not spec.optional:
                raise ConfigError(f"{spec.name} needs a value")
            continue
        if spec.is_list and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{spec.name} must be a list of {spec.kind.__name__}, got {value!r}")
        for item in (value if spec.is_list else (value,)):
            if not _of_kind(item, spec.kind):  # a saved or --config value of the wrong type
                raise ConfigError(f"{spec.name} must be {KIND_WORDS.get(spec.kind, spec.kind.__name__)}, "
                                  f"got {type(item).__name__} {item!r}")
            if spec.choices is not None and item not in spec.choices:
                raise ConfigError(f"{spec.name} must be one of {', '.join(spec.choices)}, got {item!r}")
            if spec.minimum is not None and item < spec.minimum:
                bound = {0: "0 or more", 1: "positive"}.get(spec.minimum, f"at least {spec.minimum:g}")
                raise ConfigError(f"{spec.name} must be {bound}, got {item}")
            if spec.maximum is not None and item > spec.maximum:
                raise ConfigError(f"{spec.name} must be at most {spec.maximum:g}, got {item}")
            if spec.above is not None and item <= spec.above:
                bound = "positive" if spec.above == 0 else f"above {spec.above:g}"
                raise ConfigError(f"{spec.name} must be {bound}, got {item}")
        if spec.is_list and not value:
            raise ConfigError(f"{spec.name} needs at least one value")


def parse_list(spec: OptionSpec, text: str) -> tuple:
    """A comma-separated command-line value as the field's tuple.

    Raises:
        ConfigError: a part that is not of the field's element type.
    """
    return parse_values(text, spec.kind, f"--{spec.flag}")


def parse_values(text: str, kind: type, flag: str) -> tuple:
    """``"1,2, 3"`` as ``(1, 2, 3)`` of ``kind``.

    Raises:
        ConfigError: a part that is not a ``kind``, naming ``flag``.
    """
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(kind, "values")
        raise ConfigError(f"{flag} takes comma-separated {what}, got {text!r}") from None


def describe_default(spec: OptionSpec) -> str:
    """The default as ``--help`` and the reference show it."""
    value = spec.default
    if value is MISSING:
        return "required"
    if value is None:
        return spec.none_word or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def build_config(config_class: type, options: dict[str, Any]) -> Any:
    """``config_class`` from flat option values, each nested config from its own fields.

    Raises:
        ConfigError: a name that is no option of ``config_class``.
    """
    options = dict(options)
    nested = {name: build_config(cls, {key: options.pop(key) for key in _names(cls) if key in options})
              for name, cls in nested_configs(config_class).items()}
    unknown = sorted(set(options) - {spec.name for spec in option_specs(config_class)})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: no such option")
    return config_class(**options, **nested)


def flat_options(config: Any) -> dict[str, Any]:
    """Every option value of ``config`` and of its nested configs, flat by field name (what
    :func:`build_config` takes back)."""
    values = {spec.name: getattr(config, spec.name) for spec in option_specs(type(config))}
    for name in (*nested_configs(type(config)), *family_configs(type(config))):
        if getattr(config, name) is not None:
            values.update(flat_options(getattr(config, name)))
    return values


def differing_options(config: Any, other: Any) -> list[tuple[str, Any, Any]]:
    """``(name, value in config, value in other)`` for every option whose values differ, flat
    (nested and family options included)."""
    mine, theirs = flat_options(config), flat_options(other)
    return [(name, value, theirs.get(name)) for name, value in mine.items() if theirs.get(name) != value]


def _names(config_class: type) -> set[str]:
    return {spec.name for spec in all_specs(config_class)}


def one_of(values: tuple[str, ...]) -> Callable[[str], str]:
    """The command-line parser of an option that takes one of ``values`` (typer's own choice
    type, an Enum, puts "Value error, " before its message)."""

    def parse(value: str) -> str:
        if value not in values:
            import typer

            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    return parse


def command_position(args: list[str]) -> int:
    """Where the command is in ``args``, after the global options (``len(args)``: none)."""
    position = 0
    while position < len(args) and args[position].startswith("-"):
        position += 2 if args[position] == "--threads" else 1
    return position


def renamed_flags(args: list[str], specs_of: Callable[[str], Iterable[OptionSpec]],
                  retired: dict[tuple[str, str], str] | None = None) -> list[str]:
    """The command line ``args`` with each flag renamed since a release written by its new name,
    with a warning (``iisan encode --batch-size 8`` is ``--encode-batch-size 8``): the older long
    names of a command's options (``specs_of(command)``), which ``--config`` files accept too.
    A flag its command no longer takes because its work moved (``retired[(command, flag)]``
    says where) stops with that one line and exit code 2. Nothing after ``--`` changes."""
    position = command_position(args)
    if position >= len(args):
        return list(args)
    renamed = {f"--{alias}": f"--{spec.flag}" for spec in specs_of(args[position])
               for alias in spec.aliases if len(alias) > 1}
    out = list(args[: position + 1])
    for n, arg in enumerate(args[position + 1:], start=position + 1):
        if arg == "--":
            return out + list(args[n:])
        name, equals, value = arg.partition("=")
        if (args[position], name) in (retired or {}):
            print(f"Error: {name}: {retired[args[position], name]}", file=sys.stderr)
            raise SystemExit(2)
        if name in renamed:
            log.warning("%s is now called %s; the old name will be removed in a later release", name, renamed[name])
            arg = renamed[name] + equals + value
        out.append(arg)
    return out
