"""``--config FILE``: option values from a TOML, YAML or JSON file, for ``train``, ``encode``
and ``bench efficiency``; flags given on the command line override the file.

A file holds the options by their names (``train_batch_size = 128``; a flag's spelling with
underscores works too), flat
or in sections (``[train]``, ``[side]``, ``[user]``, ``[encode]``, ``[bench]``: merged), or
is a run's own ``config.json``, so that ``iisan train --config runs/x/config.json --out
runs/y`` trains the same run again (its dataset, cache and every training option).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from iisan.config import TrainConfig
from iisan.errors import ConfigError
from iisan.options import flat_options

SECTIONS = ("train", "side", "user", "encode", "bench")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's options as ``{flag name with underscores: value}``.

    Raises:
        ConfigError: a file that cannot be read or parsed, or an option that has no flag.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ValueError(" ".join(str(err).split())) from None
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config {path}: use a .toml, .yaml, .yml or .json file")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: cannot read it ({err})") from None
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--config {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    except ImportError:  # PyYAML comes with transformers; named in case it was removed
        raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    if "train" in data and "dataset_fingerprint" in data:  # a run's config.json
        return _run_options(data, path)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return {key.replace("-", "_"): value for key, value in flat.items()}


def _run_options(saved: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``iisan train`` options that reproduce a run from its ``config.json``: every
    option field of the train, side network and user encoder configs, flat."""
    config = TrainConfig.from_json(saved["train"])
    options = {"dataset": saved.get("dataset"), "cache": saved.get("cache")}
    return {**options, **flat_options(config)}


def _file_key(param) -> str:
    """How a config file names a Click parameter: its first long flag with underscores
    (``json`` for ``--json``, whatever the Python name), else its name."""
    flags = [opt for opt in getattr(param, "opts", ()) if opt.startswith("--")]
    return flags[0][2:].replace("-", "_") if flags else param.name


def as_defaults(options: dict[str, Any], params: list, where: str,
                aliases: dict[str, str] | None = None, context: Any = None) -> dict[str, Any]:
    """``options`` as a Click ``default_map`` for a command with ``params`` (Click
    parameters): a key may be a parameter's name or any of its flags with underscores
    (``train_batch_size`` for ``--train-batch-size``) or an older name in ``aliases`` (old
    name -> parameter name, ``batch_size`` -> ``train_batch_size``); lists become comma-separated;
    ``None`` leaves the command's own default (or, for an encoder, skips it). Given the
    command's Click ``context``, each value is parsed as its flag's would be, so a value of
    the wrong type is reported with the file's key rather than as the flag it became.

    Raises:
        ConfigError: an option the command does not have, or a value its option cannot take.
    """
    names = dict(aliases or {})
    for param in params:
        for spelling in (param.name, *getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
            names.setdefault(spelling.lstrip("-").replace("-", "_"), param.name)
    unknown = sorted(set(options) - set(names))
    if unknown:
        known = sorted({_file_key(param) for param in params if param.name != "config"})
        raise ConfigError(f"--config: {where} has no option {', '.join(unknown)} "
                          f"(it has: {', '.join(known)})")
    defaults = {}
    for key, value in options.items():
        if value is None and key in ("text_encoder", "image_encoder"):
            value = "none"  # encode: that modality is skipped
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        defaults[names[key]] = value
    if context is not None:
        by_name = {param.name: param for param in params}
        for key, value in options.items():
            if names[key] in defaults:
                _check_value(by_name[names[key]], defaults[names[key]], f"{key} = {value!r}", context)
    return defaults


def _check_value(param: Any, value: Any, entry: str, context: Any) -> None:
    """Parse ``value`` as ``param`` would parse it from the command line (its callback, if
    any, is left for Click to run once)."""
    from typer import BadParameter  # typer's own Click, not the click package

    if param.callback is not None:
        return
    try:
        param.process_value(context, value)
    except BadParameter as err:
        raise ConfigError(f"{entry}: {err.message}") from None
