"""A tiny multimodal dataset with a tiny-encoder cache, shared by model and training tests."""

from __future__ import annotations

from pathlib import Path

from iisan.cache.encode import encode
from iisan.config import EncodeConfig, PrepareConfig
from iisan.data import prepare
from iisan.data.synth import SynthConfig, synthesize

# Mean pooling: a random tiny BERT's CLS state is nearly the same for every item (it has not
# learned to pool), while the token mean carries each item's own content.
TINY_ENCODE = EncodeConfig(text_encoder="tiny-random-text", image_encoder="tiny-random-image",
                           image_size=32, batch_size=32, workers=2, pooling="mean")


def build_tiny_multimodal(root: Path, items: int = 120, users: int = 150, seed: int = 5) -> tuple[Path, Path]:
    synthesize(root / "src", SynthConfig(items=items, users=users, categories=4, colours=3, image_size=24,
                                         missing_image_rate=0.1, seed=seed))
    prepare(root / "src", root / "ds", PrepareConfig(format="iisan-tsv", max_seq_len=5))
    encode(root / "ds", root / "cache", TINY_ENCODE)
    return root / "ds", root / "cache"
