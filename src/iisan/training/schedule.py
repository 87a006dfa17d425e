"""The learning rate over a run: linear warm-up, then constant or cosine decay.

The factor is a function of the global step alone (epoch and step within it), so a
resumed run continues on the same curve without saving scheduler state.
"""

from __future__ import annotations

import math

import torch

from iisan.config import TrainConfig


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiplier of every base learning rate at global ``step`` (0-based)."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    # cosine: from 1 after warm-up to 0 at the last step of the last allowed epoch
    remaining = config.epochs * steps_per_epoch - warmup
    done = min((step - warmup) / max(remaining, 1.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))


def set_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
