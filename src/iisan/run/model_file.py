"""``RUN/model.json``: what the weights beside it (``RUN/model.safetensors``) are the weights
of, and all a model is rebuilt from, as a transformers model folder keeps ``config.json``
beside its weights. The run's ``config.json`` says how it was trained and on what; this file
says what was trained:

- ``model``: the :class:`~iisan.config.ModelConfig` (method, side network, user encoder, the
  method's own options);
- ``num_items``: the catalogue the id embeddings and offsets were sized for;
- ``layers``: modality -> the encoder layers the item tower reads (decided once, when the
  run started, from the cache);
- ``encoders``: modality -> the encoder whose states it reads (name, weights' hash, pooling,
  settings, shape), to embed new items the same way and to check a cache against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iisan.cache.store import EncoderEntry
from iisan.config import ModelConfig
from iisan.errors import ConfigError, DatasetError
from iisan.fileio import read_json_object, require_fields, write_json_atomic

MODEL_CONFIG_FILE = "model.json"
MODEL_FORMAT = 1
FIX = "retrain the run or restore the file"
FIELDS: dict[str, Any] = {"format": int, "model": dict, "num_items": int, "layers": dict, "encoders": dict}


@dataclass(frozen=True)
class SavedModel:
    """A trained model's description, read from ``model.json`` (see the module's docstring)."""

    config: ModelConfig
    num_items: int
    layers: dict[str, tuple[int, ...]]
    encoders: dict[str, EncoderEntry]

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """modality -> ``(L + 1, D)`` of the encoder states the model reads."""
        return {m: e.shape for m, e in self.encoders.items()}

    def to_json(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "model": self.config.to_json(), "num_items": self.num_items,
                "layers": {m: list(v) for m, v in self.layers.items()},
                "encoders": {m: e.to_json() for m, e in self.encoders.items()}}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> SavedModel:
        """Raises: DatasetError: a damaged or newer record (one line naming ``where``)."""
        raw = require_fields(raw, FIELDS, where, fix=FIX)
        if raw["format"] > MODEL_FORMAT:
            raise DatasetError(f"{where} has model format {raw['format']}, written by a newer iisan; this one reads up "
                               f"to {MODEL_FORMAT}")
        try:
            config = ModelConfig.from_json(raw["model"])
            layers = {m: tuple(int(i) for i in v) for m, v in raw["layers"].items()}
        except (ConfigError, TypeError, ValueError) as err:
            raise DatasetError(f"{where}: in 'model', {err}; {FIX}") from None
        encoders = {m: EncoderEntry.from_json(e, f"{where} ({m} encoder)", FIX, DatasetError)
                    for m, e in raw["encoders"].items()}
        return cls(config, raw["num_items"], layers, encoders)


def write_model_config(run_dir: Path, saved: SavedModel) -> None:
    write_json_atomic(run_dir / MODEL_CONFIG_FILE, saved.to_json())


def read_model_config(run_dir: Path, run_config: dict[str, Any]) -> SavedModel:
    """The run's model description: ``model.json``, or for a run written before it existed the
    record :func:`iisan.run.migrate.upgrade_run_config` made from its ``config.json``
    (``run_config``, as :func:`iisan.run.files.read_run_config` returns it)."""
    path = run_dir / MODEL_CONFIG_FILE
    if path.is_file():
        return SavedModel.from_json(read_json_object(path, {"format": int}, fix=FIX), str(path))
    if "model" in run_config:
        return SavedModel.from_json(run_config["model"], f"{run_dir / 'config.json'} (written before model.json)")
    raise DatasetError(f"{run_dir} has no {MODEL_CONFIG_FILE}: the weights cannot be told apart; {FIX}")
