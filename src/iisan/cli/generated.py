"""Command-line options generated from config fields (:mod:`iisan.options`): the flag, its
type, choices, help, ``--help`` panel and shown default all come from the field, so an
option is written once, in its config class.

A command declares ``options: Options`` and is decorated with :func:`with_options`; it is
called with ``options``, the values given on the command line or in ``--config`` (flat,
by field name; options left out are absent, so the config's and the method's defaults
apply), and without one parameter per option. ``--config FILE`` (:data:`ConfigFile`) sets
the same options from a file.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import Annotated, Any

import typer

from iisan.errors import IisanError
from iisan.options import OptionSpec, all_specs, describe_default, one_of, parse_list

Options = dict[str, Any]
NOT_GIVEN = None  # every generated option defaults to None: "not given"
METAVAR_WIDTH = 16  # choices listed in the type column up to this width, in the help text beyond


def with_options(*config_classes: type, only: tuple[str, ...] | None = None,
                 default_text: Callable[[OptionSpec], str] = describe_default) -> Callable:
    """Add an option for every field of ``config_classes`` (and their nested configs), or
    for those named in ``only``, to the decorated command, which receives them as ``options``.

    ``default_text`` gives the default shown in ``--help`` (a method may change it).
    """
    specs = [spec for cls in config_classes for spec in all_specs(cls) if only is None or spec.name in only]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        clash = [spec.name for spec in specs if spec.name in signature.parameters]
        if clash:
            raise TypeError(f"{command.__name__} declares {clash} by hand and as config fields: define them "
                            f"once")
        generated = [inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY,
                                       default=... if spec.default is MISSING else NOT_GIVEN,  # ...: required
                                       annotation=_annotation(spec, default_text(spec))) for spec in specs]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            options = {spec.name: _value(spec, value) for spec in specs  # every one popped, given or not
                       if (value := kwargs.pop(spec.name)) is not NOT_GIVEN}
            return command(*args, **kwargs, options=options)

        # Required arguments first, then the config's options, then the command's own
        # switches (--device, --json: the same on every command) at the end of --help.
        first = [p for p in own if p.default is inspect.Parameter.empty]
        last = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
                if p.default is not inspect.Parameter.empty]
        parameters = first + generated + last
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.option_specs = tuple(specs)
        return run

    return decorate


def _annotation(spec: OptionSpec, default: str) -> Any:
    """The typer annotation of one generated option."""
    # The default goes in the help text (typer would show a text default in parentheses);
    # none for a required option, one that is off or unset unless given.
    help = spec.help
    if (spec.choices is not None and len("|".join(spec.choices)) > METAVAR_WIDTH
            and not all(choice in help for choice in spec.choices)):  # the help may name them already
        help += f" One of: {', '.join(spec.choices)}."
    if spec.default not in (MISSING, None, False) or (spec.default is None and spec.none_word):
        help += f" [dim]\\[default: {default}][/]"
    settings: dict[str, Any] = {"help": help, "rich_help_panel": spec.panel, "show_default": False}
    # Older long names stay accepted in --config files (OptionSpec.names), not as flags: a
    # second flag would widen every row of --help.
    flags = [f"--{spec.flag}", *(f"-{a}" for a in spec.aliases if len(a) == 1)]
    if spec.kind is bool:
        # --no-X only for what is on by default (an off switch widens every row of its panel)
        names = [f"{f}/--{spec.off_flag or 'no-' + f[2:]}" if spec.default is True and f[1] == "-" else f for f in flags]
        return Annotated[bool | None, typer.Option(*names, metavar="", **settings)]  # a flag shows no type
    if spec.choices is not None and not spec.is_list:
        word = "|".join(spec.choices)
        metavar = word if len(word) <= METAVAR_WIDTH else "NAME"  # a long list would squeeze the help column
        return Annotated[str | None, typer.Option(*flags, parser=one_of(spec.choices), metavar=metavar,
                                                  **settings)]
    if spec.is_list:
        return Annotated[str | None, typer.Option(*flags, metavar=f"{spec.kind.__name__.upper()},...",
                                                  **settings)]
    if spec.none_word is not None or spec.kind is str:
        return Annotated[str | None, typer.Option(*flags, **settings)]
    kind = Path if spec.kind is Path else spec.kind
    return Annotated[kind | None, typer.Option(*flags, **settings)]


def _value(spec: OptionSpec, value: Any) -> Any:
    """A command-line value as the field holds it."""
    if spec.none_word is not None and str(value).lower() in (spec.none_word, ""):
        return None
    if spec.is_list:
        return parse_list(spec, value) if isinstance(value, str) else tuple(value)
    return value


def _read_config_file(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config FILE``: the file's values become this command's defaults (flags still win)."""
    if value is not None:
        from iisan.configfile import as_defaults, read_config_file

        specs = getattr(ctx.command.callback, "option_specs", ())
        aliases = {name: spec.name for spec in specs for name in spec.names}
        try:
            ctx.default_map = {**(ctx.default_map or {}), **as_defaults(
                read_config_file(value), ctx.command.params, f"`iisan {ctx.info_name}`", aliases, ctx)}
        except IisanError as err:
            raise typer.BadParameter(str(err)) from None
    return value


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", callback=_read_config_file, is_eager=True, show_default=False,
    help="TOML, YAML or JSON file of option values (names with underscores, flat or in \\[train], "
         "\\[encode], \\[bench] sections; a run's config.json for train); flags given here override it.")]
