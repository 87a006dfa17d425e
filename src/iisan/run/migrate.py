"""Run folders written by earlier iisan, brought to this one's format when they are read.

A run's ``config.json`` carries its format version; :func:`upgrade_run_config` applies one
step per version until the current one, so every other module reads only today's format.
Inside version 1, options were added over many releases: a run saved before an option
existed gets the value that reproduces what it did then (no schedule, the reference's user
encoder, no blend, ...), which is why those defaults differ from today's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from iisan.config import ScoreConfig, SideNetworkConfig
from iisan.errors import ConfigError
from iisan.method_options import ContentConfig, EncoderTuningConfig, KnnConfig
from iisan.methods import get_method

RUN_FORMAT = 2  # 2: a method's own options in one field (method_options); 1: one group per family

# Fields renamed to say what they count; version 1 files saved before use the old names.
RENAMED = {"batch_size": "train_batch_size", "eval_batch_size": "eval_user_chunk"}
# What runs saved before a scorer option existed did: one group, no words, the floor as it is.
SCORE_SAVED_BEFORE = {"blend_groups": 1, "blend_terms": 0, "blend_whiten": "off", "serve_width": 0}


def upgrade_run_config(saved: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of any format version as this iisan writes it.

    Raises:
        ConfigError: a version newer than this iisan's, or a version 1 ``train`` entry whose
            method is not registered here.
    """
    version = saved["version"]
    if version > RUN_FORMAT:
        raise ConfigError(f"run format version {version} was written by a newer iisan; this one reads up to "
                          f"{RUN_FORMAT}")
    while version < RUN_FORMAT:
        saved = {**STEPS[version](saved), "version": version + 1}
        version += 1
    return saved


def upgrade_score_options(options: dict[str, Any]) -> dict[str, Any]:
    """A scorer's saved options (``scorer.json``, or a version 1 run's) as :class:`ScoreConfig`
    takes them: options saved before one existed as those runs did, fields this iisan does not
    know left out (a scorer refitted by a newer one still loads)."""
    options = {**SCORE_SAVED_BEFORE, **{k: v for k, v in options.items() if k in ScoreConfig.__dataclass_fields__}}
    if isinstance(options["blend_whiten"], bool):  # saved while it was on or off
        options["blend_whiten"] = "on" if options["blend_whiten"] else "off"
    if options.get("candidates", 0) is None:  # "chosen on validation", as 0 says now
        options["candidates"] = 0
    return options


def _version_1(saved: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept one group per family of method options (``content``, ``knn``, ``tuning``;
    flat in the oldest runs, the scorer's inside ``content``); version 2 keeps the method's own
    in ``method_options`` and nothing of the others."""
    train = dict(saved["train"])
    # runs saved before these options existed: a constant learning rate, whole sequences
    train = {"schedule": "constant", "warmup_epochs": 0.0, "samples": "sequences", **train}
    for old, new in RENAMED.items():
        if old in train:
            train[new] = train.pop(old)
    side = {"head": "wide", **train.pop("side", {})}  # runs saved before head existed: the paper's
    user = {"variant": "reference", **train.pop("user", {})}  # runs saved before variants existed
    # no offsets and no blend before they existed; adapters took the side network's bottleneck
    content = {"id_offset": False, "blend": False, **_pop_fields(train, ContentConfig), **train.pop("content", {})}
    score = {**_pop_fields(train, ScoreConfig), **_pop_fields(content, ScoreConfig), **train.pop("score", {})}
    if content.get("id_offset_lr") is None:
        content.pop("id_offset_lr", None)
    tuning = {"precision": "fp32", "adapter_bottleneck": side.get("bottleneck", SideNetworkConfig.bottleneck),
              **_pop_fields(train, EncoderTuningConfig), **train.pop("tuning", {})}
    knn = {**_pop_fields(train, KnnConfig), **train.pop("knn", {})}
    own = get_method(train.get("method", "iisan")).options
    groups = {ContentConfig: content, KnnConfig: knn, EncoderTuningConfig: tuning}
    method_options = groups.get(own) if own is not None else None
    train.update(side=side, user=user, score=upgrade_score_options(score), method_options=method_options)
    return {**saved, "train": train}


def _pop_fields(data: dict[str, Any], config_class: type) -> dict[str, Any]:
    return {f.name: data.pop(f.name) for f in fields(config_class) if f.name in data}


STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _version_1}
