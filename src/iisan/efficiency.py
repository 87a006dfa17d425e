"""``iisan bench efficiency``: training cost of every method, side by side, in one run.

Each method trains in a subprocess of its own (fresh memory) on the same batches: a few
warm-up steps, then ``steps`` timed ones. Measured per method: seconds per step (median)
and the epoch time it implies, trainable and total parameters (from ``requires_grad``),
and memory: on a GPU ``max_memory_allocated``; on CPU the process's peak RSS and its
training footprint, peak RSS minus the RSS after imports (what compares with the GPU
figure). The one-off cost of building the cache is measured too and shown amortised over
a typical run's epochs. TPME (DESIGN.md) combines time, trainable parameters and memory,
each min-max normalised over the compared methods; lower is better.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iisan.config import EncodeConfig
from iisan.options import check_options, option
from iisan.methods import method_names

log = logging.getLogger(__name__)

# bench name -> (TrainConfig.method, TrainConfig.mode), from the method registry: every
# method that reads content, and IISAN both ways (the paper's cached-vs-uncached comparison)
METHODS = {name: (name, "cached") for name in method_names(reads="raw")}
for _name in method_names(reads="states", trains=True):
    METHODS.update({"iisan-uncached": ("iisan", "uncached"), "iisan-cached": ("iisan", "cached")}
                   if _name == "iisan" else {_name: (_name, "cached")})
DEFAULT_METHODS = ("fft", "adapter", "lora", "bitfit", "iisan-uncached", "iisan-cached")
TPME_WEIGHTS = (0.45, 0.1, 0.45)  # time, trainable parameters, memory
WARMUP_STEPS = 3


@dataclass(frozen=True)
class EfficiencyConfig:
    """What ``iisan bench efficiency`` measures (fields: its ``--help``)."""

    methods: tuple[str, ...] = option(DEFAULT_METHODS, choices=tuple(METHODS),
                                      help="The methods to compare, comma-separated.")
    steps: int = option(20, minimum=1, help="Timed training steps per method (after 3 warm-up steps).")
    train_batch_size: int = option(16, minimum=1, aliases=("batch-size",), help="Users per training step.")
    image_size: int = option(224, minimum=1,
                             help="Image side in pixels (224 as in the paper; 112 keeps a CPU run to "
                                  "minutes).")
    text_encoder: str = option(EncodeConfig.text_encoder, help="Text encoder (registry name or folder).")
    image_encoder: str = option(EncodeConfig.image_encoder,
                                help="Image encoder (used when the dataset has images).")
    modality: str | None = option(None, cli=False,  # None: intra_inter when the data has images, else text
                                  help="The side network's modality.")
    typical_epochs: int = option(20, minimum=1, help="Epochs of a typical run, to amortise the cache's "
                                                     "one-off cost over.")
    seed: int = option(0, help="Random seed (the same batches for every method).")
    device: str = option("auto", cli=False, help="auto, cpu or cuda.")

    def __post_init__(self) -> None:
        check_options(self)


# ---- one method, in its own process -----------------------------------------------------


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory in MB: ``VmRSS`` now, or ``VmHWM``, its peak since the
    start or the last :func:`reset_peak_rss` (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure_method(dataset: Path, cache: Path, name: str, config: EfficiencyConfig) -> dict[str, Any]:
    """Train ``name`` for warm-up + ``config.steps`` steps in this process and measure it."""
    import numpy as np
    import torch

    from iisan.config import SideNetworkConfig, TrainConfig
    from iisan.devices import pick_device
    from iisan.assemble import assemble
    from iisan.distributed import Workers
    from iisan.training.step import build_optimizer, step_objective, training_step
    from iisan.training.loss import log_popularity

    import peft  # noqa: F401  (imports count before the baseline, not in the footprint)
    import transformers  # noqa: F401

    device = pick_device(config.device)
    if device.type == "cuda":
        # The peak-memory counters exist once CUDA has a context on the device: in a fresh
        # process reset_peak_memory_stats raised "Invalid device argument" before any tensor
        # was there. A one-element tensor creates the context (and is freed before the reset).
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    reset_peak_rss()  # the peak restarts here: after imports, before the model
    baseline_mb = rss_mb()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    method, mode = METHODS[name]
    train_config = TrainConfig.for_method(method, mode=mode, train_batch_size=config.train_batch_size, seed=config.seed,
                                          side=SideNetworkConfig(modality=config.modality or "intra_inter"))
    parts = assemble(dataset, cache, train_config, device=device)
    parts.model.to(device).train()
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity)).to(device)
    workers = Workers(device=device)
    objective = step_objective(parts, log_pop, workers)
    users = len(parts.splits.train)
    order = np.random.default_rng(config.seed).permutation(users)  # the same batches in every process
    total_steps = WARMUP_STEPS + config.steps
    batches = parts.splits.train[np.resize(order, total_steps * config.train_batch_size)].reshape(
        total_steps, config.train_batch_size, -1)
    seconds, losses = [], []
    for index, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses.append(training_step(parts, optimizer, batch, objective=objective, workers=workers))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    step = statistics.median(seconds)
    peak_mb = rss_mb("VmHWM")
    result = {
        "method": name,
        "device": str(device),
        "seconds_per_step": step,
        "seconds_per_epoch": step * math.ceil(users / config.train_batch_size),
        "trainable_parameters": sum(p.numel() for p in parts.model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parts.model.parameters()),
        "peak_rss_mb": peak_mb,
        "footprint_mb": peak_mb - baseline_mb,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# ---- the whole comparison -----------------------------------------------------------------


def tpme(rows: list[dict[str, Any]], memory_key: str) -> list[float]:
    """``a1 * norm(time) + a2 * norm(trainable params) + a3 * norm(memory)`` per row."""
    def norm(values: list[float]) -> list[float]:
        low, high = min(values), max(values)
        return [0.0 if high == low else (v - low) / (high - low) for v in values]

    columns = [norm([r[key] for r in rows]) for key in ("seconds_per_step", "trainable_parameters", memory_key)]
    return [sum(w * c[i] for w, c in zip(TPME_WEIGHTS, columns)) for i in range(len(rows))]


def run_efficiency(dataset: str | Path, out: str | Path, config: EfficiencyConfig,
                   cache: str | Path | None = None) -> dict[str, Any]:
    """Build the cache unless given (timed), measure every method in its own process, write the files.

    A method that fails (out of memory, an encoder that cannot be loaded) becomes a row
    with its ``error`` (the last lines of its output); the others are still measured and
    compared, and every file is written. ``report["failed"]`` names the failed methods.
    Progress goes to the ``iisan`` logger (the CLI shows it on stderr; ``-q`` hides it).
    """
    from iisan.data.dataset import PreparedDataset

    from iisan.devices import pick_device

    pick_device(config.device)  # an unusable device is one error, not one failed row per method
    dataset, out = Path(dataset), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cache is not None:  # what the given cache holds decides: a text-only cache of an image data set is text
        from iisan.cache.store import HiddenStateCache

        has_images = "image" in HiddenStateCache.open(cache).modalities
    else:
        has_images = PreparedDataset.load(dataset).items["image"].is_not_null().any()
    modality = config.modality or ("intra_inter" if has_images else "text")
    config = dataclasses.replace(config, modality=modality)
    cache_seconds = None
    if cache is None:
        cache = out / "cache"
        log.info(f"building the cache in {cache} (timed)")
        from iisan.cache.encode import encode

        settings = EncodeConfig(text_encoder=config.text_encoder, image_size=config.image_size,
                                image_encoder=config.image_encoder if has_images and modality != "text" else None)
        start = time.perf_counter()
        encode(dataset, cache, settings, force=True, device=config.device)  # the library, not the CLI
        cache_seconds = time.perf_counter() - start

    rows = []
    for name in config.methods:
        log.info(f"{name}: {WARMUP_STEPS} warm-up + {config.steps} timed steps of {config.train_batch_size} "
                 "users")
        rows.append(measure_in_subprocess(dataset, Path(cache), name, config))
        if "error" in rows[-1]:
            log.info(f"{name} failed: {rows[-1]['error']}")

    measured = [r for r in rows if "error" not in r]
    memory_key = ("cuda_max_allocated_mb" if measured and all("cuda_max_allocated_mb" in r for r in measured)
                  else "footprint_mb")
    for row, score in zip(measured, tpme(measured, memory_key) if measured else []):
        row["tpme"] = score
    reference = next((r for r in measured if r["method"] == "fft"), None)
    for row in measured:
        if reference is not None:
            row["speedup_vs_fft"] = reference["seconds_per_step"] / row["seconds_per_step"]
            row["memory_reduction_vs_fft"] = reference[memory_key] / max(row[memory_key], 1e-9)
    report = {
        "dataset": str(dataset),
        "cache": str(cache),
        "settings": config.__dict__,
        "memory_measure": memory_key,
        "cache_build_seconds": cache_seconds,
        "cache_build_seconds_per_epoch": cache_seconds / config.typical_epochs if cache_seconds else None,
        "methods": rows,
        "failed": [r["method"] for r in rows if "error" in r],
    }
    write_outputs(out, report)
    return report


def measure_in_subprocess(dataset: Path, cache: Path, name: str, config: EfficiencyConfig) -> dict[str, Any]:
    """:func:`measure_method` in a fresh process; a failure is returned as
    ``{"method", "device", "error"}``, never raised."""
    command = [sys.executable, "-m", "iisan.efficiency", str(dataset), str(cache), name, json.dumps(config.__dict__)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode == 0:
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"method": name, "device": config.device, "error": f"no result in its output: "
                                                                      f"{result.stdout[-300:]!r}"}
    lines = [line.strip() for line in result.stderr.strip().splitlines() if line.strip()]
    reason = " | ".join(lines[-3:]) or f"exit status {result.returncode}"
    return {"method": name, "device": config.device, "error": f"exit status {result.returncode}: {reason}"}


COLUMNS = (
    ("method", "method", "{}"),
    ("seconds_per_step", "s/step", "{:.4f}"),
    ("seconds_per_epoch", "s/epoch (est.)", "{:.1f}"),
    ("trainable_parameters", "trainable params", "{:,}"),
    ("total_parameters", "total params", "{:,}"),
    ("footprint_mb", "footprint MB", "{:,.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
    ("cuda_max_allocated_mb", "CUDA max alloc MB", "{:,.0f}"),
    ("speedup_vs_fft", "speed x fft", "{:.1f}x"),
    ("memory_reduction_vs_fft", "memory ÷ fft", "{:.1f}x"),
    ("tpme", "TPME", "{:.3f}"),
)


# What a terminal shows (every column is in the files): fits 80 columns.
TERMINAL_COLUMNS = ("method", "seconds_per_step", "trainable_parameters", "footprint_mb", "cuda_max_allocated_mb",
                    "speedup_vs_fft", "memory_reduction_vs_fft", "tpme")


def table_rows(report: dict[str, Any], keys: tuple[str, ...] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells (of the ``keys`` columns, default all); a failed method's
    row says so in its second cell."""
    measured = [r for r in report["methods"] if "error" not in r]
    columns = [c for c in COLUMNS if keys is None or c[0] in keys]
    present = [c for c in columns if measured and all(c[0] in r for r in measured)] or list(COLUMNS[:2])
    rows = []
    for r in report["methods"]:
        if "error" in r:
            rows.append([r["method"], f"failed: {r['error']}", *[""] * (len(present) - 2)])
        else:
            rows.append([fmt.format(r[key]) for key, _, fmt in present])
    return [c[1] for c in present], rows


def report_notes(report: dict[str, Any]) -> list[str]:
    """The settings and the cache's one-off cost, in sentences (under every rendering of the table)."""
    settings = report["settings"]
    notes = [f"Batch {settings.get('train_batch_size', settings.get('batch_size'))} users, "
             f"{settings['steps']} timed steps after {WARMUP_STEPS} warm-up, modality "
             f"{settings['modality']}, image size {settings['image_size']}, device {report_device(report)}.",
             f"Memory in TPME and ratios: {memory_label(report)}."]
    if report["cache_build_seconds"] is not None:
        notes.append(f"Cache build (one-off): {report['cache_build_seconds']:.1f} s, "
                     f"{report['cache_build_seconds_per_epoch']:.1f} s per epoch over "
                     f"{settings['typical_epochs']} epochs.")
    return notes


def markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(report_notes(report)) + "\n"


def memory_label(report: dict[str, Any]) -> str:
    """The memory measure's column header, e.g. ``footprint MB``."""
    return next(label for key, label, _ in COLUMNS if key == report["memory_measure"])


def report_device(report: dict[str, Any]) -> str:
    """The device the methods ran on (as measured; the setting when none ran)."""
    return next((r["device"] for r in report["methods"] if "error" not in r), report["settings"]["device"])


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    from iisan.fileio import write_atomic, write_json_atomic

    write_json_atomic(out / "efficiency.json", report)
    keys = sorted({k for r in report["methods"] for k in r}, key=lambda k: (k != "method", k))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(report["methods"])

    write_atomic(out / "efficiency.csv", write_csv)
    write_atomic(out / "efficiency.md", lambda tmp: tmp.write_text(markdown(report), encoding="utf-8"))
    write_atomic(out / "efficiency.png", lambda tmp: _chart(report, tmp))


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in report["methods"] if "error" not in r]  # a failed method has no bar
    names = [r["method"] for r in rows]
    memory = report["memory_measure"]
    panels = (("seconds_per_step", "seconds per step", True), (memory, memory.replace("_", " "), True),
              ("trainable_parameters", "trainable parameters", True))
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, (key, title, log) in zip(axes, panels):
        axis.bar(names, [max(r[key], 1e-9) for r in rows], color="#4C72B0")
        axis.set_title(title)
        if log:
            axis.set_yscale("log")
        axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def _child() -> None:
    dataset, cache, name, settings = sys.argv[1:5]
    data = json.loads(settings)
    data["methods"] = tuple(data["methods"])
    print(json.dumps(measure_method(Path(dataset), Path(cache), name, EfficiencyConfig(**data))))


if __name__ == "__main__":
    _child()
