"""``iisan train``: AdamW, gradient clipping, early stopping on validation NDCG@10, best
checkpoint kept, resumable after a kill.

:class:`Trainer` reads in the order training happens, as RecBole's ``Trainer.fit`` and
torchtune's recipes do: :meth:`~Trainer.setup` (the run folder, model, optimizer, counters),
then per epoch :meth:`~Trainer.train_epoch` and :meth:`~Trainer.validate`, then
:meth:`~Trainer.finish` (best weights, what is fitted after training, test, the catalogue).
One step's parts are in :mod:`iisan.training.step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iisan.assemble import Assembled, assemble, require_trained_cache
from iisan.config import TrainConfig
from iisan.data.split import Windows
from iisan.distributed import Workers
from iisan.distributed import start as start_workers
from iisan.distributed import stop as stop_workers
from iisan.errors import ConfigError, MissingDependencyError, NonFiniteError
from iisan.evaluation.metrics import SELECT_METRIC
from iisan.evaluation.ranking import evaluate_split, item_embeddings
from iisan.fileio import atomic_directory, read_json_object, refuse_output_over_inputs, write_json_atomic
from iisan.models.baselines.knn import fit_frozen_content
from iisan.options import differing_options
from iisan.progress import progress
from iisan.run.files import (
    RESUME_DIR, RESUME_FIX, WEIGHTS_FILE, append_metrics, holds_run_content, load_optimizer, load_weights,
    prepare_run_folder, read_run_config, resume_folder, save_resume_state, save_weights, trim_metrics,
    write_catalogue, write_run_config,
)
from iisan.run.lock import run_lock
from iisan.run.model_file import MODEL_CONFIG_FILE, SavedModel, read_model_config, write_model_config
from iisan.scoring.calibrate import fit_scorer
from iisan.scoring.scorer import save_scorer
from iisan.training.loss import log_popularity, sampling_probabilities
from iisan.training.schedule import lr_factor, set_rates
from iisan.training.step import build_optimizer, step_objective, training_step

log = logging.getLogger(__name__)

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
    job = TrainJob(Path(dataset_dir), Path(run_dir), config, Path(cache_dir) if cache_dir is not None else None,
                   resume, force, tensorboard)
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
        return _locked(job, workers)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        stop_workers(workers)


@dataclass(frozen=True)
class TrainJob:
    """What one ``iisan train`` is asked: from which dataset and cache, into which folder, with
    which config, and how (continue a run, replace one, log to TensorBoard)."""

    dataset_dir: Path
    run_dir: Path
    config: TrainConfig
    cache_dir: Path | None = None
    resume: bool = False
    force: bool = False
    tensorboard: bool = False


def _locked(job: TrainJob, workers: Workers) -> dict[str, Any]:
    """Train under the run's lock; a run replaced (``force``) is trained beside it and swapped in whole."""
    refuse_output_over_inputs(job.run_dir, {"dataset": job.dataset_dir, "cache": job.cache_dir})
    # The writer (rank 0) holds the run's lock from before it empties the folder to the end.
    with run_lock(job.run_dir, "iisan train") if workers.is_main else contextlib.nullcontext():
        if workers.is_main and job.force and not job.resume and holds_run_content(job.run_dir):
            # So a bad input (a mistyped cache) or a kill leaves the old run as it was.
            with atomic_directory(job.run_dir) as work:
                summary = Trainer(dataclasses.replace(job, run_dir=work), workers).fit()
            return {**summary, "run": str(job.run_dir)}
        return Trainer(job, workers).fit()


class Trainer:
    """One run's training (see the module's docstring); every rank runs one, rank 0 writes."""

    def __init__(self, job: TrainJob, workers: Workers) -> None:
        self.job, self.workers = job, workers
        self.run_dir = job.run_dir
        self.parts: Assembled | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # None: a method with nothing to train (knn)
        self.state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0}
        self.best_weights: dict[str, torch.Tensor] | None = None  # in memory: ranks need not read rank 0's file
        self.epoch_seconds: list[float] = []

    def fit(self) -> dict[str, Any]:
        """setup, then epochs until ``epochs`` or ``patience`` ends them, then finish."""
        self.setup()
        while self.optimizer is not None and self.state["epoch"] < self.config.epochs \
                and self.state["bad_epochs"] < self.config.patience:
            epoch = self.state["epoch"] + 1
            start = time.perf_counter()
            loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            self.end_epoch(epoch, loss, seconds, self.validate("valid")["valid"])
        return self.finish()

    @property
    def config(self) -> TrainConfig:
        return self.parts.config

    def setup(self) -> None:
        """The run folder, the model and its optimizer, the objective, the loop's counters (fresh,
        or a resumed run's, with its weights and optimizer state)."""
        job, workers = self.job, self.workers
        if workers.is_main:
            prepare_run_folder(self.run_dir, job.resume, job.force)
        else:
            logging.getLogger("iisan").setLevel(logging.WARNING)  # one rank speaks for the run
        workers.barrier()
        self.parts = parts = assemble(job.dataset_dir, job.cache_dir, job.config, device=workers.device)
        parts.model.to(workers.device)
        if any(p.requires_grad for p in parts.model.parameters()):
            self.optimizer = build_optimizer(parts)
        log_pop = log_popularity(torch.from_numpy(parts.splits.popularity)).to(workers.device)
        self.objective = step_objective(parts, log_pop, workers)
        # every training transition: in windows of L + 1 items, or a window per target
        self.samples = parts.splits.prefixes if self.config.samples == "prefixes" else parts.splits.train
        log.info("training on %s transitions of %s users: %s samples (%s)", f"{len(parts.splits.prefixes):,}",
                 f"{len(parts.splits.valid.targets):,}", f"{len(self.samples):,}", self.config.samples)
        self._start_or_resume()
        self.writer = _tensorboard(self.run_dir) if job.tensorboard and workers.is_main else None

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training samples; the mean loss over batches (over all ranks)."""
        parts, workers = self.parts, self.workers
        parts.model.train()
        # Dropout: reproducible per epoch (so resume matches) and different on every rank.
        torch.manual_seed(self.config.seed * 1_000 + epoch + 7_919 * workers.rank)
        batches = EpochBatches(self.samples, parts, epoch, workers)
        total, steps = 0.0, 0
        first_step = (epoch - 1) * len(batches)  # global steps before this epoch: the schedule's position
        for batch, negatives in progress(batches, desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=1,
                                         disable=not workers.is_main):
            set_rates(self.optimizer, lr_factor(self.config, first_step + steps, len(batches)))
            try:
                total += training_step(parts, self.optimizer, batch, objective=self.objective, workers=workers,
                                       negatives=negatives)
            except NonFiniteError as err:
                kept = (f"the run keeps epoch {epoch - 1}, the last complete one: `--resume` continues from it"
                        if epoch > 1 else "no epoch is complete yet: the same command starts over")
                raise NonFiniteError(
                    f"epoch {epoch}, step {steps + 1}: {err}, so the weights were not updated; {kept} once the cause "
                    "is fixed (a damaged cache: rebuild it with `iisan encode --force`; a diverging recipe: lower --lr)"
                ) from None
            steps += 1
        return workers.sum(total) / (workers.world_size * max(steps, 1))

    def validate(self, *splits: str) -> dict[str, dict[str, float]]:
        """Metrics of ``splits`` with what ranks now: the model while it trains, the model with its
        scorer once :meth:`finish` fitted one (the catalogue embedded once for all splits)."""
        parts, workers = self.parts, self.workers
        items = item_embeddings(parts.scorer, parts.source, parts.dataset.num_items, workers)
        self.catalogue = items
        return {split: evaluate_split(parts.scorer, items, getattr(parts.splits, split),
                                      batch_size=self.config.eval_user_chunk,
                                      include_history=self.config.include_history, workers=workers)
                for split in splits}

    def end_epoch(self, epoch: int, loss: float, seconds: float, valid: dict[str, float]) -> None:
        """Keep the epoch's weights if validation improved; log it; save the resume state."""
        state, model = self.state, self.parts.model
        self.epoch_seconds.append(seconds)
        improved = valid[SELECT_METRIC] > state["best"]
        if improved:
            state.update(best=valid[SELECT_METRIC], best_epoch=epoch, bad_epochs=0)
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.workers.is_main:
                save_weights(self.run_dir / WEIGHTS_FILE, model)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if self.workers.is_main:
            record = {"epoch": epoch, "loss": loss, "seconds": round(seconds, 3), "valid": valid, "best": improved}
            append_metrics(self.run_dir, record)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, epoch)
                self.writer.add_scalar(f"valid/{SELECT_METRIC}", valid[SELECT_METRIC], epoch)
            save_resume_state(self.run_dir, model, self.optimizer, state)
        log.info("epoch %d  loss %.4f  valid %s %.4f  hr@10 %.4f  (%.1fs)%s", epoch, loss, SELECT_METRIC,
                 valid[SELECT_METRIC], valid["hr@10"], seconds, "  *" if improved else "")

    def finish(self) -> dict[str, Any]:
        """With the best weights loaded: fit what is fitted after training (knn's whitening and
        words; the scorer on validation, saved in its own files), evaluate valid and test with
        what ranks, write ``metrics.json`` and the catalogue with its index; the run's summary."""
        parts, workers, run_dir = self.parts, self.workers, self.run_dir
        model, config = parts.model, parts.config
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
        elif self.optimizer is not None:  # resumed after the last epoch: the best weights are only on disk
            load_weights(run_dir / WEIGHTS_FILE, model)
        texts = parts.dataset.items["text"].to_list()
        fitted = fit_frozen_content(model, parts.source, parts.dataset.num_items, texts,  # knn's words, whitening
                                    criterion=lambda: self.validate("valid")["valid"][SELECT_METRIC])
        # the best weights with what was fitted since; a method that trains nothing has no file yet
        if workers.is_main and (fitted or not (run_dir / WEIGHTS_FILE).is_file()):
            save_weights(run_dir / WEIGHTS_FILE, model)
        calibration = None
        if config.content.blend:  # weighed on validation
            parts.scorer = fit_scorer(model, parts.source, parts.shapes, texts, parts.splits, config.score,
                                      config.include_history, workers, seed=config.seed)
            calibration = parts.scorer.calibration
            if workers.is_main:
                save_scorer(run_dir, parts.scorer, parts.shapes, parts.dataset.num_items)
        results = self.validate("valid", "test")
        if workers.is_main:
            write_json_atomic(run_dir / "metrics.json", {**results, **({"blend": calibration} if calibration else {})})
            write_catalogue(run_dir, parts.dataset.items, self.catalogue.cpu().numpy(), parts.scorer.first_stage)
        if self.writer is not None:
            self.writer.close()
        workers.barrier()  # nobody leaves before rank 0 has written everything
        return {
            "run": str(run_dir), "method": config.method, "mode": config.mode,
            "epochs": self.state["epoch"], "best_epoch": self.state["best_epoch"],
            "seconds_per_epoch": round(float(np.mean(self.epoch_seconds)), 3) if self.epoch_seconds else None,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "ranks": workers.world_size,
            **({"blend": calibration} if calibration else {}),
            **results,
        }

    def _start_or_resume(self) -> None:
        """The loop's counters from the run's resume state (weights and optimizer restored), or
        fresh, with the run's ``config.json`` and ``model.json`` written."""
        job, parts, workers, run_dir = self.job, self.parts, self.workers, self.run_dir
        if job.resume:
            _continue_record(run_dir, parts, job.dataset_dir, job.cache_dir, workers)
        if job.resume and self.optimizer is not None and (run_dir / RESUME_DIR / "state.json").is_file():
            # Every rank reads the same files, so the run folder must be on a shared filesystem.
            state = read_json_object(run_dir / RESUME_DIR / "state.json", RESUME_STATE, RESUME_FIX)
            state.pop("generation", None)
            files = resume_folder(run_dir)
            load_weights(files / WEIGHTS_FILE, parts.model, RESUME_FIX)
            load_optimizer(files, self.optimizer)
            if workers.is_main:
                trim_metrics(run_dir, state["epoch"])
            log.info("resuming after epoch %d (best %s %.4f at epoch %d)", state["epoch"], SELECT_METRIC,
                     state["best"], state["best_epoch"])
            self.state = state
            return
        if workers.is_main:
            # model.json first: config.json is what says the folder holds a run to continue
            write_model_config(run_dir, described_model(parts))
            write_run_config(run_dir, parts.config.to_json(), job.dataset_dir, parts.dataset.fingerprint,
                             job.cache_dir, parts.dataset.num_items, workers.world_size)
            trim_metrics(run_dir, 0)  # resumed before any epoch was complete: start the log over


class EpochBatches:
    """One epoch's batches of ``samples`` (windows of ``L + 1`` items) in a shuffled order (the seed's and the
    epoch's): this rank's share of each, with the sampled negatives of ``--loss sampled`` (the
    same draws on every rank: each rank scores all candidates)."""

    def __init__(self, samples: Windows, parts: Assembled, epoch: int, workers: Workers) -> None:
        self.samples, self.config, self.epoch, self.workers = samples, parts.config, epoch, workers
        self.popularity = parts.splits.popularity
        self.starts = range(0, len(samples), self.config.train_batch_size)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        config = self.config
        order = np.random.default_rng(config.seed + self.epoch).permutation(len(self.samples))
        negative_rng = np.random.default_rng([config.seed, self.epoch])
        probabilities = sampling_probabilities(self.popularity) if config.loss == "sampled" else None
        for start in self.starts:
            batch = self.samples[order[start : start + config.train_batch_size]]
            mine = batch[self.workers.share(len(batch))]
            if not len(mine):
                # A last batch smaller than the number of ranks: this rank still has to take part
                # in the collectives; an all-padding row adds no target, no candidate, no gradient.
                mine = np.zeros((1, batch.shape[1]), dtype=batch.dtype)
            negatives = None
            if probabilities is not None:
                negatives = negative_rng.choice(len(probabilities), size=config.negatives, p=probabilities)
            yield mine, negatives


def _continue_record(run_dir: Path, parts: Assembled, dataset_dir: Path, cache_dir, workers: Workers) -> None:
    """A resumed run's files say what it continues with: the recipe given now (logged where it
    changed) and, for a run written before ``model.json`` existed, its model's description."""
    saved, described = _check_resumable(run_dir, parts)
    changed = [f"{name} {old} -> {value}"
               for name, value, old in differing_options(parts.config, TrainConfig.from_json(saved["train"]))]
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


def _check_resumable(run_dir: Path, parts: Assembled) -> tuple[dict[str, Any], SavedModel]:
    """A resumed run must train the same model (``model.json``) on the same data, from the same
    cache; the recipe (learning rates, epochs, batch size, ...) may change. The run's
    ``config.json`` and model description, as read."""
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
    return saved, described


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise MissingDependencyError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(str(run_dir / "tensorboard"))

