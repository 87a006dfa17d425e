"""The run folder, its one owner: what it holds, how each part is written (atomically) and
read back (checked). Weights in safetensors, everything else in JSON or Parquet; nothing
pickled. ::

    RUN_DIR/config.json           how the run trained (the options), on what (dataset, cache)
    RUN_DIR/model.json            what it trained: the model's config, layers, encoders (iisan.run.model_file)
    RUN_DIR/model.safetensors     best weights (by validation NDCG@10)
    RUN_DIR/items.parquet         the trained catalogue (item_id, key, text)
    RUN_DIR/index/                the item index (see iisan.run.index_store), built when training ends
    RUN_DIR/.lock                 the writers' lock (see iisan.run.lock)
    RUN_DIR/metrics.jsonl         one line per epoch
    RUN_DIR/resume/state.json     the last complete epoch's counters, naming its folder:
    RUN_DIR/resume/gen-000004/model.safetensors, optimizer.safetensors, optimizer.json   (for --resume)

The optimizer state is flattened into named tensors (``state.<param>.<key>``) with its
hyper-parameters in JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from iisan import __version__
from iisan.errors import ConfigError, DatasetError
from iisan.fileio import (
    commit_generation, crash_point, current_generation, load_tensors, read_json_object, require_fields,
    storage_errors, write_atomic, write_bytes_atomic, write_json_atomic,
)
from iisan.run.index_store import INDEX_DIR, StoredIndex, empty_added_table, save_index, weights_digest
from iisan.run.lock import LOCK_FILE
from iisan.run.migrate import RUN_FORMAT, model_tensors, upgrade_optimizer_groups, upgrade_run_config, upgrade_weights
from iisan.item_rows import ItemRows
from iisan.search import ItemIndex
from iisan.two_stage import FirstStage

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CATALOGUE_FILE = "items.parquet"  # the trained catalogue's item_id, key, text: recommending needs no dataset
METRICS_LOG = "metrics.jsonl"
RESUME_DIR = "resume"
# The scorer's own files (iisan.scoring.scorer): a pointer naming the generation that holds its weights.
SCORER_DIR = "scorer"
SCORER_POINTER = "scorer.json"
SCORER_WEIGHTS = "blend.safetensors"
RESUME_FIX = "the resume state is damaged: start the run again with --force"
# What every run's config.json holds (written by write_run_config).
RUN_FIELDS: dict[str, Any] = {"version": int, "train": dict, "dataset": str, "dataset_fingerprint": str,
                              "cache": (str, type(None)), "num_items": int}


def save_weights(path: Path, module: torch.nn.Module) -> None:
    tensors = {name: t.detach().contiguous().clone() for name, t in module.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path, module: torch.nn.Module, fix: str = "retrain the run or restore the file") -> None:
    """Load weights, checking them first: a readable file, the tensors the module has with
    their shapes, and finite values.

    Raises:
        DatasetError: one line naming the file, what is wrong and ``fix``.
    """
    expected = module.state_dict()
    tensors = upgrade_weights(model_tensors(load_tensors(path, fix)), expected)
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
    try:  # every field read is checked: a damaged or edited file is one line, not a failure at the first step
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            _, param, key = name.split(".", 2)
            state.setdefault(int(param), {})[key] = value
        for name, value in meta["scalars"].items():
            param, key = name.split(".", 1)
            state.setdefault(int(param), {})[key] = value
        groups = upgrade_optimizer_groups(meta["param_groups"])
        for group, own in zip(groups, optimizer.param_groups, strict=True):
            for key, value in group.items():
                if key in own and key != "params" and not _same_kind(value, own[key]):
                    raise TypeError(f"param_groups {key} is {type(value).__name__} {value!r}, "
                                    f"expected {type(own[key]).__name__}")
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise DatasetError(f"{folder / 'optimizer.json'} does not hold this run's optimizer state ({err}); {fix}") from None


def _same_kind(saved: Any, own: Any) -> bool:
    """Whether a saved optimizer setting can stand where the optimizer holds ``own``."""
    if saved is None or own is None:  # "not set" (torch's own defaults: foreach, fused)
        return True
    if isinstance(own, bool) or isinstance(saved, bool):
        return isinstance(own, bool) == isinstance(saved, bool)
    if isinstance(own, (int, float)):
        return isinstance(saved, (int, float))
    if isinstance(own, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(own) and all(map(_same_kind, saved, own))
    return isinstance(saved, type(own))


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
    config = require_fields(config, RUN_FIELDS, str(path), fix="retrain the run or restore the file")
    from iisan.config import TrainConfig

    if config["version"] > RUN_FORMAT:
        raise DatasetError(f"{run_dir} has run format version {config['version']}, written by a newer iisan; "
                           f"this one reads up to {RUN_FORMAT}")
    try:  # every later reader rebuilds the options from it: a damaged field is one line here
        config = upgrade_run_config(config)
        TrainConfig.from_json(config["train"])
    except ConfigError as err:
        raise DatasetError(f"{path}: {err}; retrain the run or restore the file") from None
    return config


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


def run_identity(run_dir: Path) -> tuple:
    """What tells the run's weights from others put in their place: the files of
    ``config.json`` and the weights (every training writes new ones, by a rename, so a new
    inode) and the scorer's generation. Cheap: two stats and one small read."""
    def stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino, stat.st_mtime_ns

    return stamp(run_dir / CONFIG_FILE), stamp(run_dir / WEIGHTS_FILE), current_generation(run_dir / SCORER_DIR,
                                                                                             SCORER_POINTER)


def holds_run_content(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything but its lock file."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def prepare_run_folder(run_dir: Path, resume: bool, force: bool) -> None:
    """Make ``run_dir`` ready for training: a run to continue (``resume``), or an empty
    folder (a non-empty one is emptied only with ``force``; the lock file stays, its holder
    is this process)."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume: {run_dir} holds no run to continue")
        return
    content = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
    if content:
        if not force:
            raise ConfigError(f"{run_dir} is not empty; pass --resume to continue that run or --force to replace it (Python: resume=True, force=True)")
        for path in content:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def write_run_config(run_dir: Path, train: dict[str, Any], dataset: Path, dataset_fingerprint: str, cache: Path | None,
                     num_items: int, ranks: int) -> None:
    """``config.json``: the training options, what the run was trained on (dataset and cache),
    the catalogue size. What the model is goes to ``model.json`` (:mod:`iisan.run.model_file`)."""
    write_json_atomic(run_dir / CONFIG_FILE, {
        "version": RUN_FORMAT,
        "iisan_version": __version__,
        "train": train,
        "dataset": str(Path(dataset).resolve()),
        "dataset_fingerprint": dataset_fingerprint,
        "cache": str(Path(cache).resolve()) if cache is not None else None,
        "num_items": num_items,
        "ranks": ranks,
    })


def scorer_weights_file(run_dir: Path) -> Path | None:
    """The committed scorer's weights file, ``None`` when the run has no scorer of its own."""
    generation = current_generation(run_dir / SCORER_DIR, SCORER_POINTER)
    return run_dir / SCORER_DIR / generation / SCORER_WEIGHTS if generation is not None else None


def ranking_digest(run_dir: Path) -> str:
    """What the run's ranking vectors are made from (its model's and scorer's weights), as the
    index records it: an index of other weights is refused."""
    return weights_digest(run_dir / WEIGHTS_FILE, scorer_weights_file(run_dir))


def write_catalogue(run_dir: Path, items: pl.DataFrame, embeddings: np.ndarray, stage: FirstStage | None = None) -> None:
    """The trained catalogue (``item_id``, ``key``, ``text``) and its exact index (``stage``:
    the scorer's served first stage, whose candidates are scored exactly), so the run folder
    alone answers queries: moved elsewhere, or with its dataset and cache deleted."""
    write_atomic(run_dir / CATALOGUE_FILE, lambda tmp: items.select("item_id", "key", "text").write_parquet(tmp))
    index = stage.index(embeddings) if stage is not None else ItemIndex(embeddings, "flat")
    stored = StoredIndex(index, ItemRows(embeddings), empty_added_table())
    save_index(run_dir / INDEX_DIR, stored, len(items), ranking_digest(run_dir))


def save_resume_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Weights, optimizer and counters of the last epoch, committed as one generation:
    ``state.json`` is rewritten last and names the folder, so a crash never pairs one
    epoch's counters with another's weights."""

    def write(folder: Path, _current) -> None:
        save_weights(folder / WEIGHTS_FILE, model)
        save_optimizer(folder, optimizer)

    commit_generation(run_dir / RESUME_DIR, "state.json", write, state)


def resume_settings(run_dir: Path, options: dict[str, Any] | None = None) -> tuple[Any, Path | None]:
    """The training config and cache a killed run continues with: its own, saved in its
    ``config.json``, with ``options`` (flat, as ``iisan train`` was given them) changing its
    recipe (epochs, learning rates, batch size, ...). The model (``model.json``: method, side
    network, user encoder, the method's own options) stays the run's.

    Raises:
        DatasetError: no run in ``run_dir``. ConfigError: an option that changes the model.
    """
    from iisan.config import TrainConfig
    from iisan.options import flat_options

    saved = read_run_config(Path(run_dir))
    config = TrainConfig.from_json(saved["train"])
    options = dict(options or {})
    if options.get("method", config.method) != config.method:
        differ = [f"--method {options['method']} (the run has {config.method})"]
    else:
        resumed = TrainConfig.from_options({**flat_options(config), **options})
        differ = resumed.model.changes_from(config.model)
    if differ:
        raise ConfigError(f"--resume continues {run_dir}'s model; only its recipe (epochs, learning rates, batch size, "
                          f"...) may change: {'; '.join(differ)}")
    return resumed, Path(saved["cache"]) if saved.get("cache") else None
