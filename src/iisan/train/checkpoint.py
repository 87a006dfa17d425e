"""Run-directory files: weights in safetensors, everything else in JSON; nothing pickled.

::

    RUN_DIR/config.json           the run's configuration tree, dataset and cache identity
    RUN_DIR/model.safetensors     best weights (by validation NDCG@10)
    RUN_DIR/metrics.jsonl         one line per epoch
    RUN_DIR/resume/model.safetensors, optimizer.safetensors, state.json   the last epoch, for --resume

The optimizer state is flattened into named tensors (``state.<param>.<key>``) with its
hyper-parameters in JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from iisan.errors import DatasetError
from iisan.fileio import write_atomic, write_json_atomic

RUN_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_LOG = "metrics.jsonl"
RESUME_DIR = "resume"


def save_weights(path: Path, module: torch.nn.Module) -> None:
    tensors = {name: t.detach().contiguous().clone() for name, t in module.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path, module: torch.nn.Module) -> None:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; is this a finished run directory?")
    module.load_state_dict(load_file(str(path)))


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{param}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{param}.{key}"] = value
    write_atomic(folder / "optimizer.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(folder / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param, key = name.split(".", 2)
        state.setdefault(int(param), {})[key] = value
    for name, value in meta["scalars"].items():
        param, key = name.split(".", 1)
        state.setdefault(int(param), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise DatasetError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); create one with `iisan train`")
    config = json.loads(path.read_text())
    if config.get("version") != RUN_VERSION:
        raise DatasetError(f"{run_dir} has run format version {config.get('version')}, this iisan reads {RUN_VERSION}")
    return config


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
