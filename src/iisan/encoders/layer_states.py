"""A frozen encoder: prepares inputs and returns the pooled hidden state of every layer.

Layer 0 is the embedding output, layers 1..L the transformer blocks (the model's
``hidden_states`` tuple). Pooling per layer is the first token (CLS, as in the paper),
the mean over real tokens, or the last real token (decoder LLMs). By default each
encoder is pooled the way it was trained: see :func:`default_pooling`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from iisan.data.images import open_image
from iisan.devices import autocast_to
from iisan.encoders.onnx_dinov2 import IMAGENET_MEAN, IMAGENET_STD
from iisan.encoders.identity import weights_identity
from iisan.encoders.registry import EncoderLoadError, Modality, resolve

log = logging.getLogger(__name__)

Pooling = Literal["cls", "mean", "last"]
POOLINGS = ("cls", "mean", "last")

# Causal language models: every state sees only earlier tokens, so only the last one has read
# the whole text (and the first is the same for every input).
DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "phi", "phi3", "opt")


@dataclass
class FrozenEncoder:
    """A loaded, frozen encoder (``requires_grad`` off, eval mode).

    Attributes:
        name: registry name or resolved folder path.
        modality: ``text`` or ``image``.
        model: the Hugging Face model.
        weight_hash: identifies the weights in cache manifests.
        tokenizer: for text encoders.
        image_mean / image_std: normalisation for image encoders.
    """

    name: str
    modality: Modality
    folder: Path
    model: torch.nn.Module
    weight_hash: str
    tokenizer: Any = None
    image_mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    image_std: tuple[float, ...] = tuple(IMAGENET_STD)

    @classmethod
    def load(cls, name: str, modality: Modality, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> FrozenEncoder:
        """Resolve ``name`` (registry name or local folder) and load it frozen onto ``device``,
        with its weights in ``dtype`` when given (bfloat16: half the memory of a large
        encoder, read straight from the files at that precision).

        Raises:
            ConfigError: unknown name.
            MissingDependencyError: the package carrying the weights is missing.
            EncoderLoadError: the folder cannot be loaded.
        """
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        resolved, folder = resolve(name, modality)
        digest = weights_identity(folder)
        hf_logging.set_verbosity_error()  # no "newly initialised pooler" notes for unused heads
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(folder, use_safetensors=True, **_dtype_argument(dtype))
            tokenizer = AutoTokenizer.from_pretrained(folder) if modality == "text" else None
        except (OSError, ValueError, KeyError) as err:
            raise EncoderLoadError(f"cannot load {modality} encoder from {folder}: {err}") from err
        model.eval().requires_grad_(False).to(device)
        encoder = cls(resolved, modality, folder, model, digest, tokenizer)
        if modality == "image":
            encoder.image_mean, encoder.image_std = _normalisation(folder)
        return encoder

    @property
    def default_pooling(self) -> Pooling:
        return default_pooling(self.folder, self.model.config)

    def resolve_pooling(self, requested: str) -> Pooling:
        """``requested``, or this encoder's own pooling for ``auto``."""
        return self.default_pooling if requested == "auto" else requested  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        """L: the number of transformer blocks (the cache stores L + 1 layers)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    # ---- inputs ------------------------------------------------------------------------

    def tokenize(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        """Token ids per text (with special tokens, truncated), unpadded."""
        return self.tokenizer(texts, truncation=True, max_length=max_tokens, padding=False)["input_ids"]

    def collate_tokens(self, token_lists: list[list[int]]) -> dict[str, torch.Tensor]:
        """Pad token lists into ``input_ids`` and ``attention_mask`` ``[batch, tokens]``."""
        width = max(len(t) for t in token_lists)
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(token_lists), width), pad, dtype=np.int64)
        mask = np.zeros((len(token_lists), width), dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def preprocess_image(self, data: bytes, image_size: int) -> np.ndarray:
        """Decode, resize the short side, centre-crop to ``image_size``, normalise: ``[3, S, S]``.

        Raises:
            OSError, ValueError: the bytes are not a decodable image.
        """
        return self.normalise_pixels(crop_image(data, image_size))

    def normalise_pixels(self, crop: np.ndarray) -> np.ndarray:
        """``[S, S, 3]`` uint8 (from :func:`crop_image`) to the model's ``[3, S, S]`` float32 input."""
        pixels = crop.astype(np.float32) / 255.0
        pixels = (pixels - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    # ---- forward -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def pooled_hidden_states(self, inputs: dict[str, torch.Tensor], pooling: Pooling,
                             compute: torch.dtype | None = None, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """Run the model and pool every layer: ``[batch, L + 1, hidden]`` float32, on the model's device.

        ``compute``: run under autocast to this dtype (bfloat16 on a GPU; ``None``: float32).
        ``layers``: pool only these (``[batch, len(layers), hidden]``).
        Each layer is pooled in float32 as it comes, never stacked token by token: a deep
        encoder's ``[batch, L + 1, tokens, hidden]`` would multiply the memory by its depth.
        """
        device = self.device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with autocast_to(device, compute):
            outputs = self.model(**inputs, output_hidden_states=True)
        mask = inputs.get("attention_mask")
        hidden = outputs.hidden_states if layers is None else [outputs.hidden_states[i] for i in layers]
        return torch.stack([pool_tokens(layer.float(), mask, pooling) for layer in hidden], dim=1)


def crop_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode, resize the short side and centre-crop to ``image_size``: ``[S, S, 3]`` uint8,
    the part of preprocessing worth keeping between steps (4x smaller than float32 pixels).

    Raises:
        OSError, ValueError: the bytes are not a decodable image.
    """
    short_side = round(image_size * 256 / 224)  # DINOv2/ImageNet evaluation ratio
    with open_image(data) as image:  # bounded before decoding, whoever vetted the bytes
        image.draft("RGB", (short_side, short_side))  # JPEG: decode at reduced size when possible
        image = image.convert("RGB")
        scale = short_side / min(image.size)
        size = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        return np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)


def _dtype_argument(dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained``'s weight-precision argument: ``dtype`` since transformers 4.56,
    ``torch_dtype`` before (an unknown keyword would be taken as a config field, silently)."""
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def default_pooling(folder: Path, config: Any) -> Pooling:
    """The pooling an encoder was trained for.

    A sentence-transformers folder says so in its pooling module's config (all-MiniLM-L6-v2
    and all-mpnet-base-v2: masked mean; their CLS state was never trained as a sentence
    representation). Otherwise a decoder (causal LM) is pooled at its last token and any
    other model at its first (BERT's and ViT/DINOv2's CLS token).
    """
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            pooling_dir = next(e["path"] for e in entries if str(e.get("type", "")).endswith(".Pooling"))
            settings = json.loads((folder / pooling_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            settings = {}
        for key, pooling in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                             ("pooling_mode_lasttoken", "last")):
            if settings.get(key):
                return pooling  # type: ignore[return-value]
    if getattr(config, "is_decoder", False) or getattr(config, "model_type", "") in DECODER_TYPES:
        return "last"
    return "cls"


def pool_tokens(states: torch.Tensor, mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """Pool ``states [batch, ..., tokens, hidden]`` over tokens: the first (``cls``), the mean
    over the real ones, or the last real one (``mask [batch, tokens]``, 1 = real, padding
    on the right; ``None``: all real)."""
    if pooling == "cls":
        return states[..., 0, :]
    if pooling == "last":
        if mask is None:
            return states[..., -1, :]
        last = (mask.sum(dim=1) - 1).clamp_min(0)  # [batch]
        index = last.reshape(-1, *([1] * (states.dim() - 2)), 1).expand(*states.shape[:-2], 1, states.shape[-1])
        return states.gather(-2, index.to(states.device)).squeeze(-2)
    if pooling != "mean":
        raise ValueError(f"pooling must be one of cls, mean, last; got {pooling!r}")
    if mask is None:
        return states.mean(dim=-2)
    weights = mask.reshape(mask.shape[0], *([1] * (states.dim() - 3)), mask.shape[1], 1).to(states.dtype)
    return (states * weights).sum(dim=-2) / weights.sum(dim=-2).clamp_min(1.0)


def _normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    config = json.loads(path.read_text())
    return tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD))
