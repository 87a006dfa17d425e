"""The Side Adapted Network Block (SANB), IISAN's building block."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INIT_STD = 1e-2


class SANB(nn.Module):
    """``x + up(relu(down(x)))``: a residual bottleneck, near identity at initialisation.

    Args:
        width: input and output width (the encoder's hidden size).
        bottleneck: inner width (64 in the paper).
    """

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=INIT_STD)  # small: the block starts as ~identity
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))
