"""Run-directory files: weights in safetensors, everything else in JSON; nothing pickled.

::

    RUN_DIR/config.json           the run's configuration tree, dataset and cache identity
    RUN_DIR/model.safetensors     best weights (by validation NDCG@10)
    RUN_DIR/items.parquet         the trained catalogue (item_id, key, text)
    RUN_DIR/index/                the item index (see iisan.index), built when training ends
    RUN_DIR/metrics.jsonl         one line per epoch
    RUN_DIR/resume/state.json     the last complete epoch's counters, naming its folder:
    RUN_DIR/resume/gen-000004/model.safetensors, optimizer.safetensors, optimizer.json   (for --resume)

The optimizer state is flattened into named tensors (``state.<param>.<key>``) with its
hyper-parameters in JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from iisan.errors import DatasetError
from iisan.fileio import (crash_point, current_generation, load_tensors, read_json_object, require_fields, storage_errors,
                          write_atomic, write_bytes_atomic, write_json_atomic)

RUN_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CATALOGUE_FILE = "items.parquet"  # the trained catalogue's item_id, key, text: recommending needs no dataset
METRICS_LOG = "metrics.jsonl"
RESUME_DIR = "resume"
RESUME_FIX = "the resume state is damaged: start the run again with --force"
# What every run's config.json holds (written by train.loop._write_run_config).
RUN_FIELDS: dict[str, Any] = {"version": int, "train": dict, "dataset": str, "dataset_fingerprint": str,
                              "cache": (str, type(None)), "layers": dict, "num_items": int}


def save_weights(path: Path, module: torch.nn.Module) -> None:
    tensors = {name: t.detach().contiguous().clone() for name, t in module.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path, module: torch.nn.Module, fix: str = "retrain the run or restore the file") -> None:
    """Load weights, checking them first: a readable file, the tensors the module has with
    their shapes, and finite values.

    Raises:
        DatasetError: one line naming the file, what is wrong and ``fix``.
    """
    tensors = load_tensors(path, fix)
    expected = module.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    reshaped = [name for name in expected.keys() & tensors.keys() if expected[name].shape != tensors[name].shape]
    if missing or unexpected or reshaped:
        if reshaped:
            name = sorted(reshaped)[0]
            first = (f"tensor {name} has shape {list(tensors[name].shape)}, the run's config.json makes "
                     f"{list(expected[name].shape)}")
        else:
            first = f"tensor {(missing or unexpected)[0]} is {'missing' if missing else 'not in the model'}"
        more = len(missing) + len(unexpected) + len(reshaped) - 1
        raise DatasetError(f"{path} does not match the model its config.json describes: {first}"
                           f"{f' (and {more} more differences)' if more else ''}; {fix}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DatasetError(f"{path}: tensor {name} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                               f"(NaN or infinity); the file is damaged: {fix}")
    module.load_state_dict(tensors)


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
    fix = RESUME_FIX
    tensors = load_tensors(folder / "optimizer.safetensors", fix)
    meta = read_json_object(folder / "optimizer.json", {"param_groups": list, "scalars": dict}, fix)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param, key = name.split(".", 2)
        state.setdefault(int(param), {})[key] = value
    for name, value in meta["scalars"].items():
        param, key = name.split(".", 1)
        state.setdefault(int(param), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def resume_folder(run_dir: Path) -> Path:
    """The folder holding the last complete epoch's weights and optimizer state."""
    folder = run_dir / RESUME_DIR
    return folder / (current_generation(folder, "state.json") or ".")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json``, checked for the fields a run is rebuilt from.

    Raises:
        DatasetError: no run here, another format version, or a damaged file.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise DatasetError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); create one with `iisan train`")
    config = read_json_object(path, {"version": int}, fix="retrain the run or restore the file")
    if config["version"] != RUN_VERSION:
        raise DatasetError(f"{run_dir} has run format version {config['version']}, this iisan reads {RUN_VERSION}")
    return require_fields(config, RUN_FIELDS, str(path), fix="retrain the run or restore the file")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with storage_errors(run_dir / METRICS_LOG), open(run_dir / METRICS_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=False) + "\n")
    crash_point()


def trim_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after ``last_epoch``: a crash after logging an epoch but before
    its resume state was saved makes ``--resume`` run that epoch again, and it logs it again."""
    path = run_dir / METRICS_LOG
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] <= last_epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut by the crash
            continue
    if len(kept) != len(lines):
        write_bytes_atomic(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
