"""What an item tower reads: per-modality hidden states of the selected layers.

Feature sources (:mod:`iisan.features`) turn item ids into :class:`ItemFeatures`; item
towers never know whether the states came from the cache (``cached``) or from the frozen
encoders run on raw content (``uncached``), which is what makes the two modes comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ItemFeatures:
    """Inputs of an item tower for ``n`` items.

    Attributes:
        ids: ``[n]`` item ids (0 is padding).
        states: modality -> ``[n, S, D]`` float32, the selected layers only.
        present: modality -> ``[n]`` bool, False where the item lacks the modality.
        inputs: for towers that run the encoders themselves (``fft``, ``adapter``, ``lora``,
            ``bitfit``): modality -> the encoder's model inputs (``input_ids`` and
            ``attention_mask``, or ``pixel_values``) for the rows that have the modality,
            which are ``present[modality].nonzero()`` in order.
        layers: modality -> the encoder layers ``states`` hold, in order (empty: exactly
            the ones the tower reads). A source may hold more than a tower reads (a
            scorer's floor reads the last layer); the tower takes its own.
        terms: ``[n, dims]``, the term vectors of items added after training
            (:meth:`~iisan.models.terms.TermVectors.embed` of their texts), which the
            catalogue's table does not hold; None for the catalogue's own items.
    """

    ids: torch.Tensor
    states: dict[str, torch.Tensor] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    terms: torch.Tensor | None = None
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to(self, device: torch.device) -> ItemFeatures:
        if self.ids.device == device:
            return self
        return ItemFeatures(ids=self.ids.to(device),
                            states={m: s.to(device, non_blocking=True) for m, s in self.states.items()},
                            present={m: p.to(device) for m, p in self.present.items()},
                            inputs={m: {k: v.to(device) for k, v in i.items()} for m, i in self.inputs.items()},
                            terms=None if self.terms is None else self.terms.to(device), layers=self.layers)
