"""A tiny multimodal dataset with a tiny-encoder cache, shared by model and training tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from iisan.cache.encode import encode
from iisan.config import EncodeConfig, PrepareConfig
from iisan.data import prepare
from iisan.data.synth import SynthConfig, synthesize
from iisan.encoders.tiny import build_tiny_encoder

# Mean pooling: a random tiny BERT's CLS state is nearly the same for every item (it has not
# learned to pool), while the token mean carries each item's own content.
TINY_ENCODE = EncodeConfig(text_encoder="tiny-random-text", image_encoder="tiny-random-image",
                           image_size=32, encode_batch_size=32, workers=2, pooling="mean")


def build_tiny_multimodal(
    root: Path, items: int = 120, users: int = 150, seed: int = 5,
    image_layers: int | None = None, image_hidden: int = 32,
) -> tuple[Path, Path]:
    """Synthetic set + tiny-encoder cache; ``image_layers`` builds an image encoder of another shape."""
    synthesize(root / "src", SynthConfig(items=items, users=users, categories=4, colours=3, image_size=24,
                                         missing_image_rate=0.1, seed=seed))
    prepare(root / "src", root / "ds", PrepareConfig(format="iisan-tsv", keep_last=8))
    config = TINY_ENCODE
    if image_layers is not None:
        folder = build_tiny_encoder(root / "image-encoder", "image", hidden=image_hidden, layers=image_layers,
                                    image_size=32)
        config = dataclasses.replace(TINY_ENCODE, image_encoder=str(folder))
    encode(root / "ds", root / "cache", config)
    return root / "ds", root / "cache"
