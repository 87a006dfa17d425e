"""``iisan quickstart``: the whole pipeline on the embedded MovieLens-100K, start to finish.

MovieLens-100K has no images, so this is a text-only run (``--modality text``, the minilm
encoder reading titles and genres). Everything lands in one folder::

    OUT/data   prepared dataset        OUT/cache  hidden-state cache
    OUT/run    trained IISAN run       OUT/quickstart.json  the summary printed at the end
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from iisan.config import EncodeConfig, PrepareConfig, SideNetworkConfig, TrainConfig
from iisan.fileio import check_replaceable, write_json_atomic

log = logging.getLogger(__name__)

MARKER = "quickstart.json"


def quickstart(out: str | Path, epochs: int = TrainConfig.epochs, seed: int = 42, force: bool = False,
               text_encoder: str = EncodeConfig.text_encoder, top_k: int = 10,
               device: str = "auto") -> dict[str, Any]:
    """prepare → encode → train → evaluate → recommend, rebuilding ``out`` from scratch, on
    ``device`` (see :func:`iisan.devices.pick_device`).

    Raises:
        ConfigError: ``out`` is a non-empty folder that quickstart did not write (and not ``force``).
    """
    from iisan.cache.encode import encode
    from iisan.data.dataset import PreparedDataset
    from iisan.data.prepare import prepare
    from iisan.serving.recommender import Recommender
    from iisan.training.loop import train

    out = Path(out)
    check_replaceable(out, MARKER, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)  # written again only when every step has finished
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    log.info("1/4 prepare: MovieLens-100K from the recbole wheel (text only: it has no images)")
    prepare("builtin", out / "data", PrepareConfig(format="movielens"), force=True)
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info("2/4 encode: %s over every item's title and genres", text_encoder)
    encode(out / "data", out / "cache", EncodeConfig(text_encoder=text_encoder, image_encoder=None), force=True,
           device=device)
    seconds["encode"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info("3/4 train: IISAN, text modality, up to %d epochs with early stopping, then evaluate on test", epochs)
    config = TrainConfig(epochs=epochs, seed=seed, side=SideNetworkConfig(modality="text"))
    summary = train(out / "data", out / "run", config, cache_dir=out / "cache", force=True, device=device)
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info("4/4 recommend: top-%d for one user", top_k)
    dataset = PreparedDataset.load(out / "data")
    user = dataset.sequences.row(0, named=True)
    recommender = Recommender.load(out / "run", device=device)
    history = [recommender.keys[i] for i in user["items"]]
    recommendations = recommender.recommend(history, k=top_k)
    seconds["recommend"] = time.perf_counter() - start

    result = {
        "out": str(out),
        "dataset": dataset.meta.get("dataset"),
        "counts": dataset.meta["counts"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "test": summary["test"],
        "user": user["user_key"],
        "history": [{"key": k, "title": recommender.item(k)["title"]} for k in history[-5:]],
        "recommendations": [{**recommender.item(k), "score": round(s, 4)} for k, s in recommendations],
        "seconds": {step: round(t, 1) for step, t in seconds.items()},
    }
    write_json_atomic(out / MARKER, result)
    return result
