"""Where models run: ``auto`` (this process's GPU when there is one), ``cpu`` or ``cuda``."""

from __future__ import annotations

import os

import torch

from iisan.config import DEVICES
from iisan.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """The device for ``name``; under torchrun a rank takes the GPU numbered by its ``LOCAL_RANK``.

    Raises:
        ConfigError: an unknown name, or ``cuda`` without a visible GPU.
    """
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no GPU is visible to this process")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % torch.cuda.device_count())
