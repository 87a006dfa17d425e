"""IISAN's item tower: a decoupled side network over frozen encoders' hidden states.

For each selected layer ``i`` (LayerDrop: by default layer 0 and every other layer),
with ``H_text[i]``, ``H_img[i]`` the encoders' pooled states and gates
``g = sigmoid(w / 0.1)`` (``w`` initialised at 0, so ``g = 0.5``)::

    intra-text:   t = SANB_t[i](g_t[i] * H_text[i] + (1 - g_t[i]) * t)
    intra-image:  v = SANB_v[i](g_v[i] * H_img[i]  + (1 - g_v[i]) * v)
    inter:        m = SANB_m[i](m + g_m[i] * H_img[i] + (1 - g_m[i]) * H_text[i])

``t``, ``v`` and ``m`` start at zero. Each tower ends in a head, ``Linear(D, D)`` then
``Linear(D, d)`` (``wide``, the paper's) or ``Linear(D, d)`` then ``Linear(d, d)``
(``compact``, for wide encoders), and the item embedding is ``Linear(k * d, d)`` over the
concatenation of the active towers (image, text, inter; ``k`` of them). Nothing here
touches the encoders: gradients stop at the cached states.

Each encoder's layers are chosen per modality (an explicit list, a number of evenly spaced
groups, or the shared rule) and read by both its intra tower and the inter tower.
Encoders of different depth or width (IISAN-Versa) change only how the inter tower reads
them: see :mod:`iisan.models.versa`.
"""

from __future__ import annotations

import torch
from torch import nn

from iisan.config import SideNetworkConfig
from iisan.errors import ConfigError
from iisan.models.inputs import ItemFeatures
from iisan.models.layers import head_kind, select_layers
from iisan.models.fusion import heads_and_fusion
from iisan.models.sanb import SANB
from iisan.models.versa import InterModalInputs


class _SideTower(nn.Module):
    """One SANB block and one gate logit per step (the towers differ only in what they mix)."""

    def __init__(self, width: int, steps: int, config: SideNetworkConfig, bottleneck: int | None = None) -> None:
        super().__init__()
        self.temperature = config.gate_temperature
        self.blocks = nn.ModuleList(SANB(width, bottleneck or config.bottleneck) for _ in range(steps))
        self.gates = nn.Parameter(torch.zeros(steps))


class GatedTower(_SideTower):
    """One intra-modal tower: gated mix of the next layer's state into the running state."""

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``states``: ``[n, steps, D]`` -> ``[n, D]``."""
        running = torch.zeros_like(states[:, 0])
        gates = torch.sigmoid(self.gates / self.temperature)
        for step, block in enumerate(self.blocks):
            running = block(gates[step] * states[:, step] + (1 - gates[step]) * running)
        return running


class InterTower(_SideTower):
    """The inter-modal tower: adds a gated mix of both modalities' states at every step."""

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``text``, ``image``: ``[n, steps, D]`` -> ``[n, D]``."""
        running = torch.zeros_like(text[:, 0])
        gates = torch.sigmoid(self.gates / self.temperature)
        for step, block in enumerate(self.blocks):
            running = block(running + gates[step] * image[:, step] + (1 - gates[step]) * text[:, step])
        return running


def _head(width: int, dim: int, kind: str) -> nn.Sequential:
    """``wide``: ``D -> D -> d``; ``compact``: ``D -> d -> d``."""
    if kind == "compact":
        return nn.Sequential(nn.Linear(width, dim), nn.Linear(dim, dim))
    return nn.Sequential(nn.Linear(width, width), nn.Linear(width, dim))


class IISANItemEncoder(nn.Module):
    """Side network + heads + fusion: cached per-layer states -> item embeddings ``[n, d]``.

    Args:
        config: the side network's settings.
        shapes: modality -> ``(L + 1, D)`` of its encoder (from the cache manifest).
        dim: the item embedding width ``d``.
        constant: modality -> layers whose state is the same for every item (from the
            cache); the default layer rule skips them.
        layers: modality -> the layers to read, overriding the config (a trained run's
            own, so that it reloads exactly as it was trained).
        stored: modality -> the layers the cache holds, when it holds only some.
    """

    def __init__(self, config: SideNetworkConfig, shapes: dict[str, tuple[int, int]], dim: int,
                 constant: dict[str, tuple[int, ...]] | None = None,
                 layers: dict[str, tuple[int, ...]] | None = None,
                 stored: dict[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        config = config.resolved(tuple(shapes))  # "auto": the encoders whose states there are
        self.config = config
        missing = [m for m in config.encoder_modalities if m not in shapes]
        if missing:
            raise ConfigError(f"modality {config.modality!r} needs {' and '.join(missing)} states, "
                              f"but the cache has only {', '.join(shapes) or 'none'}")
        constant, stored = constant or {}, stored or {}
        self.layers = {m: tuple(layers[m]) if layers and m in layers else
                       select_layers(config, shapes[m][0], constant.get(m, ()), modality=m, available=stored.get(m))
                       for m in config.encoder_modalities}
        uses_inter = config.modality in ("inter", "intra_inter")
        self.towers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for modality in ("image", "text"):
            if config.modality in (modality, "intra", "intra_inter"):
                width = shapes[modality][1]
                self.towers[modality] = GatedTower(width, len(self.layers[modality]), config,
                                                   config.bottleneck_for(modality))
                self.heads[modality] = _head(width, dim, head_kind(config, width))
        self.inter_inputs = None
        if uses_inter:
            self.inter_inputs = InterModalInputs(
                {m: (len(self.layers[m]), shapes[m][1]) for m in ("text", "image")},
                inter_layers=config.inter_layers, dtl_to=config.dtl_to, dtl=config.dtl,
            )
            width = self.inter_inputs.width
            self.towers["inter"] = InterTower(width, self.inter_inputs.steps, config)
            self.heads["inter"] = _head(width, dim, head_kind(config, width))
        self.fusion = nn.Linear(len(self.towers) * dim, dim)

    def side_parameters(self) -> list[nn.Parameter]:
        """The SANB blocks, gates and Versa's dimension transformation (trained at ``side_lr``)."""
        extra = list(self.inter_inputs.parameters()) if self.inter_inputs is not None else []
        return list(self.towers.parameters()) + extra

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        states = {}
        for name, tower in self.towers.items():
            if name == "inter":
                states[name] = tower(self.inter_inputs(features.states["text"], "text"),
                                     self.inter_inputs(features.states["image"], "image"))
            else:
                states[name] = tower(features.states[name])
        return heads_and_fusion(self.heads, self.fusion, states, features.present)


def build_tower(config, context) -> IISANItemEncoder:
    """The ``iisan`` entry of the method registry (:mod:`iisan.methods`)."""
    return IISANItemEncoder(config.side, context.shapes, config.user.dim, constant=context.constant,
                            layers=context.layers, stored=context.stored)
