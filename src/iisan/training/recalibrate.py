"""``iisan calibrate``: fit a trained run's scorer again, without retraining.

Training fits the scorer as it ends (:mod:`iisan.scoring`); this stage runs that step alone
on the run's best weights, with the options the scorer was fitted with, changed by the ones
given, and then does what training's end does with it: the validation and test metrics
(``metrics.json``) and the catalogue's exact index. The model's weights are not touched.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from iisan.assemble import assemble_run
from iisan.config import ScoreConfig
from iisan.errors import ConfigError, DatasetError
from iisan.evaluation.ranking import evaluate_split, item_embeddings
from iisan.fileio import read_json_object, write_json_atomic
from iisan.methods import get_method
from iisan.method_options import ContentConfig
from iisan.run.files import INDEX_DIR, read_run_config, write_catalogue
from iisan.run.index_store import POINTER
from iisan.run.lock import run_lock
from iisan.scoring.calibrate import fit_scorer
from iisan.scoring.scorer import save_scorer, saved_options

METRICS_FILE = "metrics.json"
# Results that do not depend on the scorer: kept when it changes (every other one is stale).
KEPT_RESULTS = ("_unblended",)


def calibrate_run(run_dir: str | Path, options: dict[str, Any] | None = None, device: str = "auto") -> dict[str, Any]:
    """Fit the scorer of the run in ``run_dir`` on its validation split and commit it, with
    the options it has (the run's ``ScoreConfig``) changed by ``options`` (field -> value).

    Returns:
        ``{"blend": calibration's report, "valid": metrics, "test": metrics, "options": the
        options used, "seconds": s}``.

    Raises:
        ConfigError: a method without a scorer, an unknown option, or items added to the
            run since training (their content is not kept, so their vectors could not follow
            the new scorer).
        DatasetError: the run's dataset or cache is gone (one line, with the fix).
    """
    from iisan.devices import pick_device

    run_dir, options = Path(run_dir), dict(options or {})
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ScoreConfig)})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not an option of the scorer")
    start = time.perf_counter()
    saved = read_run_config(run_dir)  # a run folder, before its lock is taken
    _require_content_method(saved, run_dir)
    with run_lock(run_dir, "iisan calibrate"):
        _require_no_added_items(run_dir)
        # the scorer it has is not loaded: it may be damaged or of an older layout, and is replaced
        parts = assemble_run(run_dir, device=pick_device(device), scorer=False)
        chosen = dataclasses.replace(saved_options(run_dir, saved), **options)
        config = parts.config
        texts = parts.dataset.items["text"].to_list()
        scorer = fit_scorer(parts.model, parts.source, parts.shapes, texts, parts.splits, chosen,
                            config.include_history, seed=config.seed)
        if scorer is None:
            raise ConfigError(f"{run_dir}: its model reads no content, so it has no scorer to fit")
        save_scorer(run_dir, scorer, parts.shapes, parts.dataset.num_items)
        items = item_embeddings(scorer, parts.source, parts.dataset.num_items)
        results = {split: evaluate_split(scorer, items, getattr(parts.splits, split),
                                         batch_size=config.eval_user_chunk, include_history=config.include_history)
                   for split in ("valid", "test")}
        _record(run_dir, {**results, "blend": scorer.calibration})
        write_catalogue(run_dir, parts.dataset.items, items.cpu().numpy(), scorer.first_stage)
    return {"run": str(run_dir), "options": dataclasses.asdict(chosen), "blend": scorer.calibration, **results,
            "seconds": round(time.perf_counter() - start, 2)}


def _require_content_method(saved: dict[str, Any], run_dir: Path) -> None:
    from iisan.config import TrainConfig

    method = TrainConfig.from_json(saved["train"]).method
    if get_method(method).options is not ContentConfig:
        raise ConfigError(f"{run_dir} is a {method} run: only the content methods (iisan, frozen) have a scorer")


def _require_no_added_items(run_dir: Path) -> None:
    """Items added since training keep only their vectors, made with today's scorer."""
    pointer = run_dir / INDEX_DIR / POINTER
    try:
        added = read_json_object(pointer, {}, fix="").get("added", 0) if pointer.is_file() else 0
    except DatasetError:  # a damaged index holds nothing that can be kept: calibrating rebuilds it
        added = 0
    if isinstance(added, int) and added > 0:
        raise ConfigError(f"{run_dir} holds {added} item{'s' if added > 1 else ''} added since training, whose "
                          "vectors were made with the current scorer and whose content is not kept: calibrate "
                          "before adding items, or add them again to a calibrated copy of the run")


def _record(run_dir: Path, results: dict[str, Any]) -> None:
    """``metrics.json`` with the new results; of the earlier ones, those the scorer does not change."""
    path = run_dir / METRICS_FILE
    earlier = read_json_object(path, {}, fix=f"delete {path.name}: it is rewritten") if path.is_file() else {}
    kept = {key: value for key, value in earlier.items() if key.endswith(KEPT_RESULTS)}
    write_json_atomic(path, {**results, **kept})
