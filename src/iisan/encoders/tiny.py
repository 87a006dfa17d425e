"""Tiny randomly initialised encoders in Hugging Face format, for tests and benchmarks.

Built from a config in code (no weights downloaded), deterministic given the seed.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from iisan.encoders.onnx_dinov2 import image_processor_config
from iisan.fileio import atomic_directory

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    """Special tokens, characters and their ``##`` continuations, and a few common words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["the", "and", "with", "for", "model", "pack", "set", "red", "blue", "lamp", "mug"]
    return SPECIAL_TOKENS + chars + [f"##{c}" for c in chars] + words


def build_tiny_encoder(
    dest: Path, modality: str, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
    image_size: int = 32, patch: int = 8,
) -> Path:
    """Write a random BERT (text) or DINOv2 (image) model folder to ``dest``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast, Dinov2Config, Dinov2Model

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    with atomic_directory(dest) as work:
        if modality == "text":
            vocab = tiny_vocab()
            config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=64)
            BertModel(config, add_pooling_layer=False).save_pretrained(work, safe_serialization=True)
            tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
            tokenizer.save_pretrained(work)
        elif modality == "image":
            config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  mlp_ratio=2, patch_size=patch, image_size=image_size)
            Dinov2Model(config).save_pretrained(work, safe_serialization=True)
            (work / "preprocessor_config.json").write_text(json.dumps(image_processor_config(image_size), indent=2))
        else:
            raise ValueError(f"modality must be text or image, got {modality!r}")
    return dest
