"""Items read from raw content at every batch, not from the cache.

:class:`LiveSource` (``uncached`` mode) runs the frozen encoders and yields the same
:class:`ItemFeatures` as the cache, computed under ``no_grad`` (nothing back-propagates
into the encoders either way): it shows that cached training is the same computation,
only cheaper, and measures how much cheaper. :class:`RawContentSource` yields the
encoders' inputs instead, for the baselines whose item tower runs and trains the
encoders itself (``fft``, ``adapter``, ``lora``, ``bitfit``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from iisan.cache.store import EncoderEntry
from iisan.data.dataset import PreparedDataset
from iisan.encoders.layer_states import FrozenEncoder, crop_image
from iisan.encoders.identity import canonical_identity
from iisan.errors import CacheMismatchError
from iisan.models.inputs import ItemFeatures


def content_inputs(encoder: FrozenEncoder, entry: EncoderEntry, modality: str, texts: list[str | None],
                   images: list[bytes | None]) -> tuple[np.ndarray, dict[str, torch.Tensor] | None]:
    """The rows that have ``modality`` and the encoder's inputs for them (``None`` if no row has it).

    ``texts[r]`` is ``None`` for padding rows and "" for an item without text (encoded, as in
    the cache); ``images[r]`` is encoded image bytes or ``None`` when absent. Preprocessing
    follows the manifest ``entry``'s settings, so cached and live states agree.

    Raises:
        OSError, ValueError: image bytes that do not decode.
    """
    if modality == "text":
        rows = np.array([r for r, text in enumerate(texts) if text is not None], dtype=np.int64)
        if not len(rows):
            return rows, None
        return rows, encoder.collate_tokens(encoder.tokenize([texts[r] for r in rows],
                                                             entry.settings["max_text_tokens"]))
    rows = np.array([r for r, image in enumerate(images) if image is not None], dtype=np.int64)
    if not len(rows):
        return rows, None
    pixels = [encoder.preprocess_image(images[r], entry.settings["image_size"]) for r in rows]
    return rows, {"pixel_values": torch.from_numpy(np.stack(pixels))}


# Image crops kept between steps, per source: uint8 [S, S, 3] (147 KB at 224 px), so 1 GiB
# holds about 7,000 items; the rest are decoded again (in threads) when next needed.
CROP_MEMORY_BYTES = 1 << 30
DECODE_THREADS = 4


class _RawContent:
    """Texts and image files of a prepared dataset's items, by item id; subclasses turn the
    encoders' inputs into features in ``_features``.

    Catalogue items are prepared once, not at every step: their token ids are kept (a few
    hundred bytes each), their decoded and cropped images up to :data:`CROP_MEMORY_BYTES`;
    images not kept are decoded in :data:`DECODE_THREADS` threads (PIL releases the GIL).
    """

    def __init__(self, dataset: PreparedDataset | None, modalities) -> None:
        # Without a dataset (a run loaded from its own folder) only content_features works:
        # the new items' content is given, the catalogue's is never read again.
        self.dataset = dataset
        self.modalities = tuple(modalities)
        self.texts = dataset.items["text"].fill_null("").to_list() if dataset is not None else []
        self.images = dataset.items["image"].to_list() if dataset is not None else []
        self._tokens: dict[int, list[int]] = {}
        self._crops: dict[int, np.ndarray] = {}
        self._crop_bytes = 0
        self._pool: ThreadPoolExecutor | None = None

    def features(self, ids: np.ndarray) -> ItemFeatures:
        """Features of catalogue items, from what earlier steps prepared."""
        ids = np.asarray(ids, dtype=np.int64)
        return self._features(ids, lambda encoder, entry, modality: self._prepared_inputs(encoder, entry, modality,
                                                                                           ids))

    def content_features(self, ids: np.ndarray, texts: list[str | None], images: list[bytes | None]) -> ItemFeatures:
        """Features of raw content (see :func:`content_inputs`): what new items, never cached, go through.

        Raises:
            OSError, ValueError: image bytes that do not decode.
        """
        ids = np.asarray(ids, dtype=np.int64)
        return self._features(ids, lambda encoder, entry, modality: content_inputs(encoder, entry, modality, texts,
                                                                                   images))

    def _features(self, ids: np.ndarray, inputs_of) -> ItemFeatures:
        """``ItemFeatures`` of ``ids``; ``inputs_of(encoder, entry, modality)`` gives the rows
        that have the modality and the encoder's inputs for them."""
        raise NotImplementedError

    def _prepared_inputs(self, encoder: FrozenEncoder, entry: EncoderEntry, modality: str,
                         ids: np.ndarray) -> tuple[np.ndarray, dict[str, torch.Tensor] | None]:
        """:func:`content_inputs` for catalogue items, from what earlier steps prepared."""
        if modality == "text":
            rows = np.flatnonzero(ids > 0)
            missing = sorted({int(i) for i in ids[rows]} - self._tokens.keys())
            if missing:
                tokens = encoder.tokenize([self.texts[i - 1] for i in missing], entry.settings["max_text_tokens"])
                self._tokens.update(zip(missing, tokens))
            if not len(rows):
                return rows, None
            return rows, encoder.collate_tokens([self._tokens[int(i)] for i in ids[rows]])
        rows = np.array([r for r, i in enumerate(ids) if i > 0 and self.images[i - 1]], dtype=np.int64)
        if not len(rows):
            return rows, None
        size = entry.settings["image_size"]
        missing = sorted({int(i) for i in ids[rows]} - self._crops.keys())
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)
        decoded = dict(zip(missing, self._pool.map(
            lambda i: crop_image((self.dataset.root / self.images[i - 1]).read_bytes(), size), missing)))
        for item, crop in decoded.items():
            if self._crop_bytes + crop.nbytes <= CROP_MEMORY_BYTES:
                self._crops[item] = crop
                self._crop_bytes += crop.nbytes
        crops = [self._crops.get(int(i), decoded.get(int(i))) for i in ids[rows]]
        return rows, {"pixel_values": torch.from_numpy(np.stack([encoder.normalise_pixels(c) for c in crops]))}


def load_encoders(entries: dict[str, EncoderEntry], modalities, device: torch.device | str = "cpu",
                  frozen: bool = False) -> dict[str, FrozenEncoder]:
    """The encoders named by cache manifest ``entries``, checked to be the same weights.

    ``frozen`` (they only run forward, as in ``uncached`` mode): loaded at the precision the
    cache was built with, bf16 weights for a bf16 cache. Encoders that train stay float32.
    """
    encoders = {}
    for modality in modalities:
        dtype = torch.bfloat16 if frozen and entries[modality].precision == "bf16" else None
        encoder = FrozenEncoder.load(entries[modality].name, modality, device, dtype)  # type: ignore[arg-type]
        if canonical_identity(entries[modality].weight_hash, encoder.folder) != encoder.weight_hash:
            raise CacheMismatchError(f"the {modality} encoder's weights changed since the cache was built")
        encoders[modality] = encoder
    return encoders


class LiveSource(_RawContent):
    """Runs the encoders named by a cache manifest's entries, with the same settings.

    Args:
        dataset: the prepared dataset (texts and image files).
        entries: modality -> manifest entry (name, weight_hash, pooling, settings).
        layers: modality -> the layers the item tower reads.
    """

    def __init__(self, dataset: PreparedDataset | None, entries: dict[str, EncoderEntry], layers: dict[str, tuple[int, ...]],
                 device: torch.device | str = "cpu") -> None:
        super().__init__(dataset, layers)
        self.layers = layers
        self.entries = entries
        self.encoders = load_encoders(entries, layers, device, frozen=True)

    def _features(self, ids: np.ndarray, inputs_of) -> ItemFeatures:
        """The frozen encoders' pooled states of the selected layers, as the cache holds them."""
        first = next(iter(self.encoders.values()), None)
        features = ItemFeatures(ids=torch.from_numpy(ids).to(first.device if first is not None else "cpu"),
                                layers=self.layers)
        for modality, layers in self.layers.items():
            encoder, entry = self.encoders[modality], self.entries[modality]
            device = encoder.device  # the states stay where the encoder ran: no round trip through the host
            states = torch.zeros(len(ids), len(layers), encoder.hidden_size, device=device)
            present = torch.zeros(len(ids), dtype=torch.bool, device=device)
            rows, inputs = inputs_of(encoder, entry, modality)
            if len(rows):
                index = torch.from_numpy(rows).to(device)
                compute = torch.bfloat16 if entry.precision == "bf16" else None  # as the cache was built
                pooled = encoder.pooled_hidden_states(inputs, entry.pooling, compute, tuple(layers))
                # Inference-mode outputs cannot enter an autograd graph; a copy into this tensor can.
                states[index] = pooled.to(torch.float16).float()  # as cached: float16
                present[index] = True
            features.states[modality] = states
            features.present[modality] = present
        return features


class RawContentSource(_RawContent):
    """Model inputs of raw content, for item towers that run (and train) the encoders themselves.

    Args:
        dataset: the prepared dataset.
        entries: modality -> manifest entry (its settings: token limit, image size).
        encoders: modality -> the loaded encoder (its tokenizer and image preprocessing).
    """

    def __init__(self, dataset: PreparedDataset | None, entries: dict[str, EncoderEntry], encoders: dict[str, FrozenEncoder]) -> None:
        super().__init__(dataset, encoders)
        self.entries = entries
        self.encoders = encoders

    def _features(self, ids: np.ndarray, inputs_of) -> ItemFeatures:
        """The encoders' model inputs; the tower runs the encoders."""
        features = ItemFeatures(ids=torch.from_numpy(ids))
        for modality, encoder in self.encoders.items():
            rows, inputs = inputs_of(encoder, self.entries[modality], modality)
            present = torch.zeros(len(ids), dtype=torch.bool)
            present[torch.from_numpy(rows)] = True
            features.present[modality] = present
            if inputs is not None:
                features.inputs[modality] = inputs
        return features
