"""iisan: multimodal sequential recommendation with IISAN's decoupled side network.

The whole pipeline from Python::

    import iisan

    iisan.prepare("raw/", "data/shop", iisan.PrepareConfig(format="iisan-tsv"))
    iisan.encode("data/shop", "cache/shop", iisan.EncodeConfig(text_encoder="minilm"))
    iisan.train("data/shop", "runs/shop", iisan.TrainConfig(epochs=20), cache_dir="cache/shop")
    iisan.evaluate("runs/shop", split="test")
    iisan.Recommender.load("runs/shop").recommend(["sku-1", "sku-7"], k=10)

Names are imported on first use, so ``import iisan`` stays cheap (no torch until needed).
The first use also does what the command line does at start: torch's CPU threads from
``IISAN_THREADS`` (else ``OMP_NUM_THREADS``, else ``auto``: the free cores; see
:mod:`iisan.threads`), unless torch was imported before with its own count; and, when
logging is not configured, iisan's progress lines (epochs, validation) on stderr.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# module -> the public names it defines; ``evaluate`` is evaluation.run's ``evaluate_run``
_MODULES: dict[str, tuple[str, ...]] = {
    "iisan.data.prepare": ("prepare",),
    "iisan.cache.encode": ("encode",),
    "iisan.training.loop": ("train",),
    "iisan.run_metrics": ("evaluate", "evaluate_cold_start"),
    "iisan.serving.recommender": ("Recommender",),
    "iisan.data.dataset": ("PreparedDataset",),
    "iisan.cache.store": ("HiddenStateCache",),
    "iisan.config": ("PrepareConfig", "EncodeConfig", "TrainConfig", "ModelConfig", "SideNetworkConfig",
                     "UserEncoderConfig", "Query"),
    "iisan.errors": ("IisanError",),
}
_RENAMED = {"evaluate": "evaluate_run"}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = ["__version__", "set_threads", *_EXPORTS]


def set_threads(threads: int | str = "auto") -> int:
    """Set torch's CPU threads as ``iisan --threads`` does: a number, or ``"auto"`` (the
    cores this process may use, less those other processes keep busy). Returns the count.

    Without a call, the first use of the API applies ``IISAN_THREADS``, else
    ``OMP_NUM_THREADS``, else ``auto``.
    """
    _set_up_once()
    from iisan.threads import use_threads

    return use_threads(threads)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iisan' has no attribute {name!r}")
    _set_up_once()
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


_set_up = False


def _set_up_once() -> None:
    """Threads and log lines as the CLI has them (see the module docstring), once."""
    global _set_up
    if _set_up:
        return
    _set_up = True
    import logging
    import os
    import sys

    from iisan.threads import THREADS_ENV, use_threads

    # Before torch loads, the count reaches torch and its children; after, only an explicit
    # IISAN_THREADS overrides what the caller's torch already uses.
    if "torch" not in sys.modules or os.environ.get(THREADS_ENV):
        use_threads(None)
    from iisan.progress import log_to

    if not logging.getLogger("iisan").handlers and not logging.getLogger().handlers:
        log_to(logging.StreamHandler(), logging.INFO, "%(asctime)s %(message)s", propagate=True)
