"""``iisan train``: AdamW, gradient clipping, early stopping on validation NDCG@10,
best checkpoint kept, resumable after a kill."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from iisan.assemble import Assembled, assemble, require_trained_cache
from iisan.config import TrainConfig
from iisan.data.split import prefix_samples
from iisan.distributed import LOCAL, Workers
from iisan.distributed import start as start_workers
from iisan.distributed import stop as stop_workers
from iisan.errors import ConfigError, MissingDependencyError, NonFiniteError
from iisan.evaluation.ranking import evaluate_split, item_embeddings
from iisan.fileio import atomic_directory, read_json_object, refuse_output_over_inputs, write_json_atomic
from iisan.models.baselines.knn import fit_frozen_content
from iisan.models.inputs import ItemFeatures
from iisan.models.sequential import SequentialRecommender
from iisan.options import flat_options
from iisan.progress import progress
from iisan.run.files import (
    RESUME_DIR, RESUME_FIX, WEIGHTS_FILE, append_metrics, holds_run_content, load_optimizer, load_weights,
    prepare_run_folder,
    read_run_config, resume_folder, save_resume_state, save_weights, trim_metrics, write_catalogue,
    write_run_config,
)
from iisan.run.lock import run_lock
from iisan.run.model_file import MODEL_CONFIG_FILE, SavedModel, read_model_config, write_model_config
from iisan.scoring.calibrate import fit_scorer
from iisan.scoring.scorer import save_scorer
from iisan.training.loss import candidate_softmax_loss, in_batch_softmax_loss, log_popularity, sampling_probabilities
from iisan.training.schedule import lr_factor, set_rates

log = logging.getLogger(__name__)

SELECT_METRIC = "ndcg@10"
RESUME_STATE = {"epoch": int, "best": (int, float), "best_epoch": int, "bad_epochs": int}


def train(
    dataset_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    cache_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    tensorboard: bool = False,
    distributed: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Train, keep the best epoch by validation NDCG@10, and evaluate it on test.

    Under torchrun (or with ``distributed``) the run is spread over the ranks with
    DistributedDataParallel: ``config.train_batch_size`` is the global batch, each rank takes
    its share of every batch and of every evaluation, and only rank 0 writes to
    ``run_dir``. See :mod:`iisan.distributed`.

    Returns:
        A summary: epochs run, best epoch, valid and test metrics, seconds per epoch,
        trainable and total parameter counts, number of ranks.
    """
    workers = start_workers(distributed, device)
    if workers.device.type == "cuda":
        # Deterministic cuBLAS needs a fixed workspace; without it every matmul warns (the
        # algorithms below run warn_only). Read when the first cuBLAS handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Same seed, same machine, same thread count: same weights. Multi-threaded CPU kernels
    # (the gradient of an embedding gather) otherwise accumulate in a varying order: two
    # runs differ in their weights after one epoch. The cost on an epoch is within noise.
    # warn_only: an op without a deterministic kernel (some on CUDA) warns instead of failing.
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(Path(dataset_dir), Path(run_dir), config, cache_dir, resume, force, tensorboard, workers)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        stop_workers(workers)


def _train(dataset_dir: Path, run_dir: Path, config: TrainConfig, cache_dir, resume: bool, force: bool,
           tensorboard: bool, workers: Workers) -> dict[str, Any]:
    refuse_output_over_inputs(run_dir, {"dataset": dataset_dir, "cache": cache_dir})
    # The writer (rank 0) holds the run's lock from before it empties the folder to the end.
    with run_lock(run_dir, "iisan train") if workers.is_main else contextlib.nullcontext():
        if workers.is_main and force and not resume and holds_run_content(run_dir):
            # Replacing a run: the new one is trained beside it and swapped in whole at the
            # end, so a bad input (a mistyped cache) or a kill leaves the old run as it was.
            with atomic_directory(run_dir) as work:
                summary = _train_locked(dataset_dir, work, config, cache_dir, resume, force, tensorboard, workers)
            return {**summary, "run": str(run_dir)}
        return _train_locked(dataset_dir, run_dir, config, cache_dir, resume, force, tensorboard, workers)


def _train_locked(dataset_dir: Path, run_dir: Path, config: TrainConfig, cache_dir, resume: bool, force: bool,
                  tensorboard: bool, workers: Workers) -> dict[str, Any]:
    if workers.is_main:
        prepare_run_folder(run_dir, resume, force)
    else:
        logging.getLogger("iisan").setLevel(logging.WARNING)  # one rank speaks for the run
    workers.barrier()
    parts = assemble(dataset_dir, cache_dir, config, device=workers.device)
    config = parts.config
    model = parts.model.to(workers.device)
    # A method without trainable parameters (knn) is evaluated as it is: no epoch, no optimizer.
    trains = any(p.requires_grad for p in model.parameters())
    optimizer = build_optimizer(parts) if trains else None
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity)).to(workers.device)
    objective = step_objective(parts, log_pop, workers)
    state = _start_or_resume(run_dir, parts, optimizer, resume, dataset_dir, cache_dir, workers)
    writer = _tensorboard(run_dir) if tensorboard and workers.is_main else None

    # What ranks: the model while it trains, the model with its scorer once one is fitted (_finish).
    def evaluate(items: torch.Tensor, *splits: str) -> dict[str, dict[str, float]]:
        return {split: evaluate_split(parts.scorer, items, getattr(parts.splits, split),
                                      batch_size=config.eval_user_chunk, include_history=config.include_history,
                                      workers=workers)
                for split in splits}

    def embed_catalogue() -> torch.Tensor:  # once for all splits
        return item_embeddings(parts.scorer, parts.source, parts.dataset.num_items, workers)

    best_weights = None  # kept in memory: ranks need not read back what rank 0 wrote
    epoch_seconds = []
    # [samples, L + 1]: each user's window, or each of its prefixes on its own (built once)
    samples = prefix_samples(parts.splits.train) if config.samples == "prefixes" else parts.splits.train
    while trains and state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        loss = _train_epoch(parts, samples, objective, optimizer, epoch, workers)
        seconds = time.perf_counter() - start
        epoch_seconds.append(seconds)
        valid = evaluate(embed_catalogue(), "valid")["valid"]
        improved = valid[SELECT_METRIC] > state["best"]
        if improved:
            state.update(best=valid[SELECT_METRIC], best_epoch=epoch, bad_epochs=0)
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if workers.is_main:
                save_weights(run_dir / WEIGHTS_FILE, model)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if workers.is_main:
            record = {"epoch": epoch, "loss": loss, "seconds": round(seconds, 3), "valid": valid, "best": improved}
            append_metrics(run_dir, record)
            if writer is not None:
                writer.add_scalar("train/loss", loss, epoch)
                writer.add_scalar(f"valid/{SELECT_METRIC}", valid[SELECT_METRIC], epoch)
            save_resume_state(run_dir, model, optimizer, state)
        log.info("epoch %d  loss %.4f  valid %s %.4f  hr@10 %.4f  (%.1fs)%s", epoch, loss, SELECT_METRIC,
                 valid[SELECT_METRIC], valid["hr@10"], seconds, "  *" if improved else "")

    if best_weights is not None:
        model.load_state_dict(best_weights)
    elif trains:  # resumed after the last epoch: the best weights are only on disk
        load_weights(run_dir / WEIGHTS_FILE, model)
    calibration, results = _finish(run_dir, parts, workers, embed_catalogue, evaluate)
    if writer is not None:
        writer.close()
    workers.barrier()  # nobody leaves before rank 0 has written everything
    return {
        "run": str(run_dir),
        "method": config.method,
        "mode": config.mode,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "ranks": workers.world_size,
        **({"blend": calibration} if calibration else {}),
        **results,
    }


def _start_or_resume(run_dir: Path, parts: Assembled, optimizer, resume: bool, dataset_dir: Path, cache_dir,
                     workers: Workers) -> dict[str, Any]:
    """The loop's counters: from the run's resume state (weights and optimizer restored), or
    fresh, with the run's ``config.json`` written."""
    if resume:
        _continue_record(run_dir, parts, dataset_dir, cache_dir, workers)
    if resume and optimizer is not None and (run_dir / RESUME_DIR / "state.json").is_file():
        # Every rank reads the same files, so the run folder must be on a shared filesystem.
        state = read_json_object(run_dir / RESUME_DIR / "state.json", RESUME_STATE, RESUME_FIX)
        state.pop("generation", None)
        files = resume_folder(run_dir)
        load_weights(files / WEIGHTS_FILE, parts.model, RESUME_FIX)
        load_optimizer(files, optimizer)
        if workers.is_main:
            trim_metrics(run_dir, state["epoch"])
        log.info("resuming after epoch %d (best %s %.4f at epoch %d)", state["epoch"], SELECT_METRIC, state["best"],
                 state["best_epoch"])
        return state
    if workers.is_main:
        write_run_config(run_dir, parts.config.to_json(), dataset_dir, parts.dataset.fingerprint, cache_dir,
                         parts.dataset.num_items, workers.world_size)
        write_model_config(run_dir, described_model(parts))
        trim_metrics(run_dir, 0)  # resumed before any epoch was complete: start the log over
    return {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0}


def _finish(run_dir: Path, parts: Assembled, workers: Workers, embed_catalogue, evaluate) -> tuple[dict | None, dict]:
    """With the best weights loaded: fit what is fitted after training (knn's whitening and
    words; the scorer on validation, saved in its own files), evaluate valid and test with
    what ranks, and write ``metrics.json`` and the catalogue with its index."""
    model, config = parts.model, parts.config
    # knn's frozen content that is whitened or reads words: fitted on the catalogue
    texts = parts.dataset.items["text"].to_list()
    fitted = fit_frozen_content(model, parts.source, parts.dataset.num_items, texts)
    # the best weights with what was fitted since; a method that trains nothing has no file yet
    if workers.is_main and (fitted or not (run_dir / WEIGHTS_FILE).is_file()):
        save_weights(run_dir / WEIGHTS_FILE, model)
    scorer = None
    if config.content.blend:  # weighed on validation
        scorer = fit_scorer(model, parts.source, parts.shapes, texts, parts.splits, config.score,
                            config.include_history, workers, seed=config.seed)
    calibration = scorer.calibration if scorer is not None else None
    if scorer is not None:
        parts.scorer = scorer
        if workers.is_main:
            save_scorer(run_dir, scorer, parts.shapes, parts.dataset.num_items)
    items = embed_catalogue()
    results = evaluate(items, "valid", "test")
    if workers.is_main:
        write_json_atomic(run_dir / "metrics.json", {**results, **({"blend": calibration} if calibration else {})})
        write_catalogue(run_dir, parts.dataset.items, items.cpu().numpy(), parts.scorer.first_stage)
    return calibration, results


class NextItemObjective(torch.nn.Module):
    """The training loss of one batch as a module, so that DistributedDataParallel can wrap it
    (it synchronises gradients of what runs inside ``forward``)."""

    def __init__(self, model: SequentialRecommender, log_pop: torch.Tensor, workers: Workers = LOCAL,
                 loss: str = "in_batch", last_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.log_pop = log_pop  # a plain attribute, not a buffer: DDP must not broadcast it
        self.workers = workers
        self.loss = loss
        self.last_only = last_only  # prefix samples: only the last position's target counts

    @classmethod
    def for_run(cls, parts: Assembled, log_pop: torch.Tensor, workers: Workers = LOCAL) -> NextItemObjective:
        config = parts.config
        return cls(parts.model, log_pop, workers, config.loss, last_only=config.samples == "prefixes")

    def forward(self, features: ItemFeatures, inverse: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``features`` of the distinct items the step needs (the batch's, plus every
        candidate of the ``full`` and ``sampled`` losses); ``inverse [B, L + 1]`` maps each
        slot to its row there; ``ids [B, L + 1]`` the slots' item ids."""
        table = self.model.embed_items(features)
        embeddings = table[inverse]
        input_mask = ids[:, :-1] != 0
        user_states = self.model.user(embeddings[:, :-1], input_mask)  # [B, L, d]
        if self.last_only:  # the earlier positions' targets are other samples' (shorter prefixes)
            input_mask = input_mask.clone()
            input_mask[:, :-1] = False
        if self.loss == "in_batch":
            return in_batch_softmax_loss(user_states, embeddings, ids, input_mask, self.log_pop, self.workers)
        sampled = self.loss == "sampled"
        return candidate_softmax_loss(user_states, table, features.ids, inverse[:, 1:], input_mask,
                                      log_q=self.log_pop[features.ids] if sampled else None,
                                      own_items=ids if sampled else None, workers=self.workers)


def step_objective(parts: Assembled, log_pop: torch.Tensor, workers: Workers = LOCAL) -> torch.nn.Module:
    """The module a training step calls: the objective, wrapped in DDP when there are several ranks."""
    objective = NextItemObjective.for_run(parts, log_pop, workers)
    if not workers.distributed:
        return objective
    device_ids = [workers.device] if workers.device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=device_ids, broadcast_buffers=False)


def _train_epoch(parts: Assembled, train_ids: np.ndarray, objective: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, epoch: int, workers: Workers) -> float:
    """One pass over the training samples ``train_ids [samples, L + 1]``; the mean loss over
    batches (over all ranks)."""
    config, model = parts.config, parts.model
    model.train()
    # Dropout: reproducible per epoch (so resume matches) and different on every rank.
    torch.manual_seed(config.seed * 1_000 + epoch + 7_919 * workers.rank)
    order = np.random.default_rng(config.seed + epoch).permutation(len(train_ids))
    # Sampled negatives: the same draws on every rank (each rank scores all candidates).
    negative_rng = np.random.default_rng([config.seed, epoch])
    probabilities = sampling_probabilities(parts.splits.popularity) if config.loss == "sampled" else None
    total, steps = 0.0, 0
    batches = range(0, len(order), config.train_batch_size)
    first_step = (epoch - 1) * len(batches)  # global steps before this epoch: the schedule's position
    for start in progress(batches, desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=1,
                      disable=not workers.is_main):
        batch = train_ids[order[start : start + config.train_batch_size]]
        mine = batch[workers.share(len(batch))]
        if not len(mine):
            # A last batch smaller than the number of ranks: this rank still has to take part
            # in the collectives; an all-padding row adds no target, no candidate, no gradient.
            mine = np.zeros((1, batch.shape[1]), dtype=batch.dtype)
        negatives = None
        if probabilities is not None:
            negatives = negative_rng.choice(len(probabilities), size=config.negatives, p=probabilities)
        set_rates(optimizer, lr_factor(config, first_step + steps, len(batches)))
        try:
            total += training_step(parts, optimizer, mine, objective=objective, workers=workers, negatives=negatives)
        except NonFiniteError as err:
            kept = (f"the run keeps epoch {epoch - 1}, the last complete one: `--resume` continues from it"
                    if epoch > 1 else "no epoch is complete yet: the same command starts over")
            raise NonFiniteError(
                f"epoch {epoch}, step {steps + 1}: {err}, so the weights were not updated; {kept} once the cause "
                "is fixed (a damaged cache: rebuild it with `iisan encode --force`; a diverging recipe: lower --lr)"
            ) from None
        steps += 1
    return workers.sum(total) / (workers.world_size * max(steps, 1))


def training_step(parts: Assembled, optimizer: torch.optim.Optimizer, batch_ids: np.ndarray,
                  log_pop: torch.Tensor | None = None, objective: torch.nn.Module | None = None,
                  workers: Workers = LOCAL, negatives: np.ndarray | None = None) -> float:
    """One optimisation step on ``batch_ids [B, L + 1]``; returns the loss.

    The item tower embeds each distinct item the loss needs once: the batch's items, with
    ``loss="full"`` the whole catalogue, with ``loss="sampled"`` also ``negatives`` (item ids).

    Give ``log_pop`` (the objective is then built for this step) or ``objective`` (from
    :func:`step_objective`, which holds it). Under torchrun ``batch_ids`` is this rank's
    share of the global batch, ``objective`` the DDP-wrapped :class:`NextItemObjective`,
    and the value returned this rank's share of the global loss (their mean over ranks is
    the global loss).
    """
    if objective is None:
        if log_pop is None:
            raise ValueError("training_step needs log_pop or an objective")
        objective = NextItemObjective.for_run(parts, log_pop, workers)
    device = workers.device
    if parts.config.loss == "full":
        unique, inverse = np.arange(parts.dataset.num_items + 1), batch_ids
    else:
        # Each distinct item goes through the item tower once, however often it occurs.
        extra = negatives if parts.config.loss == "sampled" and negatives is not None else np.zeros(0, np.int64)
        unique, inverse = np.unique(np.concatenate([batch_ids.ravel(), extra]), return_inverse=True)
        inverse = inverse[: batch_ids.size]
    features = parts.source.features(unique).to(device)
    loss = objective(features, torch.from_numpy(inverse.reshape(batch_ids.shape)).to(device),
                     torch.from_numpy(batch_ids).to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # The norm is of the gradients after DDP averaged them, so every rank sees the same value
    # and stops together; a NaN loss on any rank makes it NaN.
    norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.config.grad_clip)
    value = float(loss.detach())
    if not (math.isfinite(value) and math.isfinite(float(norm))):
        optimizer.zero_grad(set_to_none=True)
        what = f"the loss is {value}" if not math.isfinite(value) else f"the gradient norm is {float(norm)}"
        raise NonFiniteError(what)
    optimizer.step()
    return value


def build_optimizer(parts: Assembled) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (:meth:`SequentialRecommender.parameter_groups`),
    each at the recipe's rate for it, kept as the group's ``base_lr``, which the schedule
    scales step by step."""
    config = parts.config
    rates = {"rest": config.lr, "side": config.side_lr, "id_offsets": config.content.id_offset_lr}
    groups = [{"params": params, "lr": rates[part], "base_lr": rates[part]}
              for part, params in parts.model.parameter_groups().items() if params or part == "rest"]
    # Fused: one kernel per tensor instead of a dozen (bench/train_step.py times the step both
    # ways). A resumed run keeps the form its saved optimizer.json names, so runs saved before
    # continue unfused.
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True)


def _continue_record(run_dir: Path, parts: Assembled, dataset_dir: Path, cache_dir, workers: Workers) -> None:
    """A resumed run's files say what it continues with: the recipe given now (logged where it
    changed) and, for a run written before ``model.json`` existed, its model's description."""
    described = _check_resumable(run_dir, parts)
    before = flat_options(TrainConfig.from_json(read_run_config(run_dir)["train"]))
    changed = [f"{name} {before.get(name)} -> {value}" for name, value in flat_options(parts.config).items()
               if before.get(name) != value]
    if changed:
        log.info("resuming with a changed recipe: %s", ", ".join(changed))
    if workers.is_main:
        if not (run_dir / MODEL_CONFIG_FILE).is_file():  # first: a config.json of today's format needs it
            write_model_config(run_dir, described)
        if changed:
            write_run_config(run_dir, parts.config.to_json(), dataset_dir, parts.dataset.fingerprint, cache_dir,
                             parts.dataset.num_items, workers.world_size)


def described_model(parts: Assembled) -> SavedModel:
    """What ``model.json`` says of the model being trained: its config, size, the layers its
    tower reads (not the scorer's) and their encoders."""
    layers = parts.model.layers
    encoders = {m: parts.cache.entry(m) for m in layers} if parts.cache else {}
    return SavedModel(parts.config.model, parts.dataset.num_items, layers, encoders)


def _check_resumable(run_dir: Path, parts: Assembled) -> SavedModel:
    """A resumed run must train the same model (``model.json``) on the same data, from the same
    cache; the recipe (learning rates, epochs, batch size, ...) may change."""
    saved = read_run_config(run_dir)
    if saved["dataset_fingerprint"] != parts.dataset.fingerprint:
        raise ConfigError(f"--resume: {run_dir} was trained on another dataset ({saved['dataset']})")
    described = read_model_config(run_dir, saved)
    require_trained_cache(described, parts.cache, run_dir,
                          fix=f"resume with the cache it was trained on ({saved.get('cache')}) or start a new run")
    changed = parts.config.model.changes_from(described.config)
    if changed or described.layers != parts.model.layers:
        raise ConfigError(f"--resume continues {run_dir}'s model; these options change it: "
                          f"{', '.join(changed) or 'the layers its item tower reads'}; resume with the run's own or "
                          "start a new run")
    return described


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise MissingDependencyError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(str(run_dir / "tensorboard"))

