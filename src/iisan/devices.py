"""Where models run: ``auto`` (this process's GPU when there is one), ``cpu`` or ``cuda``."""

from __future__ import annotations

import os

import torch

from iisan.config import DEVICES, PRECISIONS
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


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for running the frozen encoders at ``precision`` on ``device``:
    ``None`` for float32.

    ``auto`` is bfloat16 on a GPU that supports it (same exponent range as float32, so no
    overflow or loss scaling; about 3 significant digits, below the float16 the cache
    stores anyway) and float32 elsewhere: CPUs without bfloat16 units run it slower.

    Raises:
        ConfigError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else None
    return torch.bfloat16 if precision == "bf16" else None


def precision_name(dtype: torch.dtype | None) -> str:
    """What a cache manifest records: ``bf16`` or ``fp32``."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``'s kind; a no-op context for ``None`` (float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
