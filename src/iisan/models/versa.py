"""IISAN-Versa: feeding the inter-modal tower from encoders of different depth and width.

The inter-modal tower takes one text state and one image state per step. When the two
encoders have different numbers of selected layers, **group layer-dropping** splits the
deeper one's selected layers into as many contiguous groups as the shallower one has, and
each step reads one representative per group (the group's last layer, or the group's
mean). When their hidden sizes differ, a **dimension transformation layer** (DTL, one
``Linear``) brings one side to the other's width. With equal depth and width both reduce
to the identity: IISAN's own LayerDrop, no extra parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from iisan.config import INTER_LAYERS
from iisan.models.layers import even_groups


def layer_groups(deep: int, steps: int) -> list[tuple[int, ...]]:
    """Split positions ``0..deep-1`` into ``steps`` contiguous groups of near-equal size.

    The larger groups come last, so with default LayerDrop the first step pairs the two
    embedding outputs (layer 0 with layer 0) and the last step pairs the two final layers.
    """
    return even_groups(deep, steps)


def alignment_matrix(deep: int, steps: int, inter_layers: str) -> torch.Tensor:
    """``[steps, deep]`` weights: step ``s`` reads ``sum_j W[s, j] * state[j]``.

    ``last``: the last layer of each group; ``mean``: the group mean; ``truncate``: the
    first ``steps`` layers, the deeper encoder's extra layers simply dropped (the naive
    control the Versa paper argues against).
    """
    weights = torch.zeros(steps, deep)
    if inter_layers == "truncate":
        weights[torch.arange(steps), torch.arange(steps)] = 1.0
        return weights
    for step, group in enumerate(layer_groups(deep, steps)):
        if inter_layers == "last":
            weights[step, group[-1]] = 1.0
        elif inter_layers == "mean":
            weights[step, list(group)] = 1.0 / len(group)
        else:
            raise ValueError(f"inter_layers must be one of {', '.join(INTER_LAYERS)}, got {inter_layers!r}")
    return weights


class InterModalInputs(nn.Module):
    """Brings text and image states ``[n, S_m, D_m]`` to a common ``[n, steps, width]``.

    Args:
        shapes: modality -> ``(selected layers, hidden size)`` for ``text`` and ``image``.
        inter_layers: how the deeper encoder's layers map onto the steps (``last``,
            ``mean`` or ``truncate``).
        dtl_to: ``smaller`` maps the wider encoder's states down to the narrower width,
            ``larger`` maps the narrower one's up.
        dtl: ``shared`` (one map for every step) or ``per_step`` (one map per step, as the
            reference's Versa scripts).
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], inter_layers: str = "last", dtl_to: str = "smaller",
                 dtl: str = "shared") -> None:
        super().__init__()
        self.steps = min(depth for depth, _ in shapes.values())
        widths = [width for _, width in shapes.values()]
        self.width = min(widths) if dtl_to == "smaller" else max(widths)
        self.dtl = nn.ModuleDict()
        self._aligned: list[str] = []
        for modality, (depth, width) in shapes.items():
            if depth != self.steps:
                self.register_buffer(f"align_{modality}", alignment_matrix(depth, self.steps, inter_layers),
                                     persistent=False)
                self._aligned.append(modality)
            if width != self.width:
                self.dtl[modality] = nn.Linear(width, self.width) if dtl == "shared" else \
                    StepwiseLinear(self.steps, width, self.width)

    def forward(self, states: torch.Tensor, modality: str) -> torch.Tensor:
        if modality in self._aligned:
            states = torch.einsum("sl,nld->nsd", getattr(self, f"align_{modality}"), states)
        if modality in self.dtl:
            states = self.dtl[modality](states)
        return states


class StepwiseLinear(nn.Module):
    """One ``Linear(d_in, d_out)`` per step, applied to ``[n, steps, d_in]`` in one einsum;
    each step's map is initialised as ``nn.Linear`` initialises its own."""

    def __init__(self, steps: int, d_in: int, d_out: int) -> None:
        super().__init__()
        layers = [nn.Linear(d_in, d_out) for _ in range(steps)]
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().T for layer in layers]))  # [steps, d_in, d_out]
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # [steps, d_out]

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nsi,sio->nso", states, self.weight) + self.bias
