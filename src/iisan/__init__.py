"""iisan: multimodal sequential recommendation with IISAN's decoupled side network.

The whole pipeline from Python::

    import iisan

    iisan.prepare("raw/", "data/shop", iisan.PrepareConfig(format="iisan-tsv"))
    iisan.encode("data/shop", "cache/shop", iisan.EncodeConfig(text_encoder="minilm"))
    iisan.train("data/shop", "runs/shop", iisan.TrainConfig(epochs=20), cache_dir="cache/shop")
    iisan.evaluate("runs/shop", split="test")
    iisan.Recommender.load("runs/shop").recommend(["sku-1", "sku-7"], k=10)

Names are imported on first use, so ``import iisan`` stays cheap (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "prepare": ("iisan.data.prepare", "prepare"),
    "encode": ("iisan.cache.encode", "encode"),
    "train": ("iisan.training.loop", "train"),
    "evaluate": ("iisan.evaluation.run", "evaluate_run"),
    "Recommender": ("iisan.recommend", "Recommender"),
    "PreparedDataset": ("iisan.data.dataset", "PreparedDataset"),
    "HiddenStateCache": ("iisan.cache.store", "HiddenStateCache"),
    "PrepareConfig": ("iisan.config", "PrepareConfig"),
    "EncodeConfig": ("iisan.config", "EncodeConfig"),
    "TrainConfig": ("iisan.config", "TrainConfig"),
    "SideNetworkConfig": ("iisan.config", "SideNetworkConfig"),
    "UserEncoderConfig": ("iisan.config", "UserEncoderConfig"),
    "IisanError": ("iisan.errors", "IisanError"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iisan' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
