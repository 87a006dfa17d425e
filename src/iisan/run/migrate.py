"""Run folders written by earlier iisan, brought to this one's format when they are read:
the one module that knows older layouts, so every other module reads only today's.

- ``config.json`` carries its format version; :func:`upgrade_run_config` applies one step
  per version until the current one. Inside version 1, options were added over many
  releases: a run saved before an option existed gets the value that reproduces what it did
  then (no schedule, the reference's user encoder, no blend, ...), which is why those
  defaults differ from today's.
- Weight files: :func:`upgrade_weights` renames, reshapes and fills tensors saved by an
  earlier layout of a part, by their names (as transformers fixes old checkpoints' keys on
  load); :func:`scorer_in_model_file` reads a scorer saved inside the model's file.
- The optimizer's saved groups (:func:`upgrade_optimizer_groups`) and runs saved before the
  folder held its catalogue (:func:`catalogue_from_sources`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from iisan.config import ScoreConfig, SideNetworkConfig, TrainConfig
from iisan.errors import ConfigError, DatasetError
from iisan.fileio import load_tensors
from iisan.method_options import ContentConfig, EncoderTuningConfig, KnnConfig
from iisan.methods import get_method

# 3: the model's description (layers, encoders) in model.json beside its weights;
# 2: a method's own options in one field (method_options); 1: one group per family
RUN_FORMAT = 3

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


def _version_2(saved: dict[str, Any]) -> dict[str, Any]:
    """Version 2 kept the item tower's layers and encoders in ``config.json``; version 3 keeps
    them with the model's config in ``model.json`` (:mod:`iisan.run.model_file`), which reads
    this run's from the record made here. ``knn_whiten`` was on or off; now on, off or auto."""
    saved = dict(saved)
    if not isinstance(saved.get("layers"), dict):
        raise ConfigError("the item tower's layers are missing from the file")
    train = dict(saved["train"])
    knn = train.get("method_options")
    if isinstance(knn, dict) and isinstance(knn.get("knn_whiten"), bool):  # on or off, before auto existed
        train["method_options"] = {**knn, "knn_whiten": "on" if knn["knn_whiten"] else "off"}
    saved["train"] = train
    model = {name: train[name] for name in ("method", "side", "user", "method_options") if name in train}
    saved["model"] = {"format": 1, "model": model, "num_items": saved["num_items"], "layers": saved.pop("layers"),
                      "encoders": saved.pop("encoders", {})}
    return saved


STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _version_1, 2: _version_2}


# Weight files.

SCORER_IN_MODEL_WEIGHTS = "blend."  # where runs saved before the scorer had files kept its weights


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model file's tensors without the scorer's that older runs kept in it (read by
    :func:`scorer_in_model_file`)."""
    return {name: t for name, t in tensors.items() if not name.startswith(SCORER_IN_MODEL_WEIGHTS)}


def upgrade_weights(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` saved by an earlier layout, as a module whose state dict is ``expected``
    takes them. Each rule names the era it reads; a tensor no rule knows is left for the
    caller's check."""
    tensors = dict(tensors)
    for name in [n for n in tensors if n not in expected and _leaf(n) == "table"]:
        del tensors[name]  # the word vectors' table, saved with the weights once: made again from the texts
    for name, want in expected.items():
        leaf, prefix = _leaf(name), name[: len(name) - len(_leaf(name))]
        if leaf == "alpha" and name in tensors and tensors[name].dim() == 0 and want.dim() == 1:
            # the blend before groups of users: one scalar alpha and one row of priors, as one group's
            tensors[name] = tensors[name].reshape(1)
            if f"{prefix}priors" in tensors:
                tensors[f"{prefix}priors"] = tensors[f"{prefix}priors"].reshape(1, -1)
        if name in tensors:
            continue
        if leaf == "group_bounds" and f"{prefix}alpha" in tensors:
            tensors[name] = torch.zeros(0)  # one group has no bounds
        elif leaf.startswith("mean_") and f"{prefix}whiten_{leaf[5:]}" in expected:
            tensors[name] = torch.zeros_like(want)  # the floor before whitening: states as they are
        elif leaf.startswith("whiten_") and f"{prefix}mean_{leaf[7:]}" in expected:
            tensors[name] = torch.eye(len(want))
    return tensors


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def scorer_in_model_file(saved: dict[str, Any], weights: Path) -> tuple[ScoreConfig, dict] | None:
    """A scorer saved inside the model's file (before the scorer had files of its own): its
    options and its tensors; ``None`` when the run has none there (trained without a blend, or
    stopped before it was fitted). ``saved``: the run's ``config.json``."""
    train = TrainConfig.from_json(saved["train"])
    if not train.content.blend:
        return None
    tensors = {name.removeprefix(SCORER_IN_MODEL_WEIGHTS): t
               for name, t in load_tensors(weights, "retrain the run or restore the file").items()
               if name.startswith(SCORER_IN_MODEL_WEIGHTS)}
    if not bool(tensors.pop("active", torch.tensor(True))):
        return None
    return train.score, tensors


def upgrade_optimizer_groups(groups: list[Any]) -> list[Any]:
    """Saved optimizer groups as the schedule reads them: runs saved before schedules existed
    kept no ``base_lr``; their rate was the base."""
    return [{"base_lr": group.get("lr"), **group} if isinstance(group, dict) else group for group in groups]


def catalogue_from_sources(saved: dict[str, Any]) -> Any:
    """For a run written before its folder held its catalogue (no ``items.parquet``; its
    ``config.json`` already named its encoders): the catalogue (``item_id``, ``key``,
    ``text``, a polars DataFrame) read from the dataset it was trained on.

    Raises:
        DatasetError: that dataset is gone or changed.
    """
    from iisan.data.dataset import PreparedDataset

    dataset = PreparedDataset.load(saved["dataset"])
    if dataset.fingerprint != saved["dataset_fingerprint"]:
        raise DatasetError(f"{saved['dataset']} changed since the run was trained, and the run holds no catalogue of "
                           "its own (written by an older iisan): retrain it")
    return dataset.items.select("item_id", "key", "text")
