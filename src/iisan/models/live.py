"""``uncached`` mode: the frozen encoders run on raw content for every batch.

Same :class:`ItemFeatures` as the cache, computed under ``no_grad`` (nothing
back-propagates into the encoders either way). It exists to show that cached training
is the same computation, only cheaper, and to measure how much cheaper.
"""

from __future__ import annotations

import numpy as np
import torch

from iisan.data.dataset import PreparedDataset
from iisan.encoders.frozen import FrozenEncoder
from iisan.errors import CacheMismatchError
from iisan.models.features import ItemFeatures


class LiveSource:
    """Runs the encoders named by a cache manifest's entries, with the same settings.

    Args:
        dataset: the prepared dataset (texts and image files).
        entries: modality -> manifest entry (name, weight_hash, pooling, settings).
        layers: modality -> the layers the item tower reads.
    """

    def __init__(self, dataset: PreparedDataset, entries: dict[str, dict], layers: dict[str, tuple[int, ...]]) -> None:
        self.dataset = dataset
        self.layers = layers
        self.entries = entries
        self.encoders: dict[str, FrozenEncoder] = {}
        for modality in layers:
            encoder = FrozenEncoder.load(entries[modality]["name"], modality)  # type: ignore[arg-type]
            if encoder.weight_hash != entries[modality]["weight_hash"]:
                raise CacheMismatchError(f"the {modality} encoder's weights changed since the cache was built")
            self.encoders[modality] = encoder
        self.texts = dataset.items["text"].fill_null("").to_list()
        self.images = dataset.items["image"].to_list()

    def features(self, ids: np.ndarray) -> ItemFeatures:
        ids = np.asarray(ids, dtype=np.int64)
        texts = [self.texts[i - 1] if i > 0 else None for i in ids]
        images = [(self.dataset.root / self.images[i - 1]).read_bytes() if i > 0 and self.images[i - 1] else None
                  for i in ids] if "image" in self.layers else [None] * len(ids)
        return self.content_features(ids, texts, images)

    def content_features(self, ids: np.ndarray, texts: list[str | None], images: list[bytes | None]) -> ItemFeatures:
        """Features of raw content: ``texts[r]`` (``None`` for padding rows, "" for an item
        without text, as in the cache) and encoded image bytes ``images[r]`` (``None`` when
        absent). Also what new items, never cached, go through.

        Raises:
            OSError, ValueError: image bytes that do not decode.
        """
        ids = np.asarray(ids, dtype=np.int64)
        features = ItemFeatures(ids=torch.from_numpy(ids))
        for modality, layers in self.layers.items():
            encoder, entry = self.encoders[modality], self.entries[modality]
            states = torch.zeros(len(ids), encoder.num_layers + 1, encoder.hidden_size)
            present = torch.zeros(len(ids), dtype=torch.bool)
            if modality == "text":
                rows = np.array([r for r, text in enumerate(texts) if text is not None], dtype=np.int64)
                tokens = encoder.tokenize([texts[r] for r in rows], entry["settings"]["max_text_tokens"])
                inputs = encoder.collate_tokens(tokens) if len(rows) else None
            else:
                rows = np.array([r for r, image in enumerate(images) if image is not None], dtype=np.int64)
                pixels = [encoder.preprocess_image(images[r], entry["settings"]["image_size"]) for r in rows]
                inputs = {"pixel_values": torch.from_numpy(np.stack(pixels))} if len(rows) else None
            if len(rows):
                # Inference-mode outputs cannot enter an autograd graph; a clone can.
                states[torch.from_numpy(rows)] = encoder.pooled_hidden_states(inputs, entry["pooling"]).cpu().clone()
                present[torch.from_numpy(rows)] = True
            features.states[modality] = states[:, list(layers)]
            features.present[modality] = present
        return features
