"""``--config FILE``: option values from a TOML, YAML or JSON file, for ``train``, ``encode``
and ``bench efficiency``; flags given on the command line override the file.

A file holds the options by their flag names with underscores (``batch_size = 128``), flat
or in sections (``[train]``, ``[side]``, ``[user]``, ``[encode]``, ``[bench]``: merged), or
is a run's own ``config.json``, so that ``iisan train --config runs/x/config.json --out
runs/y`` trains the same run again (its dataset, cache and every training option).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from iisan.config import SideNetworkConfig, TrainConfig, UserEncoderConfig
from iisan.errors import ConfigError

SECTIONS = ("train", "side", "user", "encode", "bench")
# Training options with no flag: a run's config.json may hold them only at their defaults.
NO_FLAG = {"grad_clip": TrainConfig.grad_clip, "eval_batch_size": TrainConfig.eval_batch_size,
           "gate_temperature": SideNetworkConfig.gate_temperature, "dim": UserEncoderConfig.dim,
           "blocks": UserEncoderConfig.blocks, "heads": UserEncoderConfig.heads}
LIST_OPTIONS = ("layers", "text_layers", "image_layers", "methods", "k")


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
    """The ``iisan train`` options that reproduce a run from its ``config.json``."""
    train = TrainConfig.from_json(saved["train"]).to_json()
    side, user = train.pop("side"), train.pop("user")
    options = {"dataset": saved.get("dataset"), "cache": saved.get("cache"), **train}
    rule = side.pop("layer_rule")
    layers = side.pop("layers")
    options["layers"] = rule.replace("_", "-") if layers is None else list(layers)
    options.update(side)
    options["dropout"] = user["dropout"]
    options["user_encoder"] = user["variant"]
    extra = {**{k: options.pop(k) for k in ("grad_clip", "eval_batch_size", "gate_temperature") if k in options},
             **{k: user[k] for k in ("dim", "blocks", "heads")}}
    changed = {k: v for k, v in extra.items() if v != NO_FLAG[k]}
    if changed:
        raise ConfigError(f"--config {path}: {', '.join(f'{k} = {v}' for k, v in changed.items())} cannot be set "
                          "from the command line; train it from Python (iisan.train with a TrainConfig)")
    return options


def as_defaults(options: dict[str, Any], known: set[str], where: str) -> dict[str, Any]:
    """``options`` as a Click ``default_map`` for a command with parameters ``known``:
    lists become comma-separated, ``None`` leaves the command's own default.

    Raises:
        ConfigError: an option the command does not have.
    """
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"--config: {where} has no option {', '.join(unknown)} "
                          f"(it has: {', '.join(sorted(known - {'config'}))})")
    defaults = {}
    for key, value in options.items():
        if value is None and key in ("text_encoder", "image_encoder"):
            value = "none"  # encode: that modality is skipped
        if value is None:
            continue
        if key in LIST_OPTIONS and isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        defaults[key] = value
    return defaults
