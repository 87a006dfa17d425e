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


DECODER_ARCHITECTURES = ("llama", "qwen2")


def build_tiny_decoder(dest: Path, architecture: str = "llama", hidden: int = 32, layers: int = 4, heads: int = 4,
                       seed: int = 0, intermediate: int | None = None, vocab_size: int | None = None) -> Path:
    """Write a random decoder LLM (``llama`` or ``qwen2``) with a word-level tokenizer to ``dest``.

    Like the real ones: a causal model, a tokenizer that adds a begin-of-sequence token and
    has no padding token. ``vocab_size`` pads the embedding table to a real model's size
    (for memory benchmarks); the tokenizer still knows only the tiny vocabulary.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2Model
    from transformers.utils import logging as hf_logging

    if architecture not in DECODER_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(DECODER_ARCHITECTURES)}, got {architecture!r}")
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    vocab = ["<unk>", "<s>", "</s>"] + [t for t in tiny_vocab() if not t.startswith("[") and not t.startswith("##")]
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    # Room past the vocabulary: a tokenizer class may add its own special tokens (Qwen2's pad).
    shape = dict(vocab_size=max(vocab_size or 0, len(vocab) + 16), hidden_size=hidden, num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                 intermediate_size=intermediate or hidden * 2, max_position_embeddings=128, bos_token_id=1,
                 eos_token_id=2, pad_token_id=None)
    config, model_class = ((LlamaConfig(**shape), LlamaModel) if architecture == "llama"
                           else (Qwen2Config(**shape), Qwen2Model))
    with atomic_directory(dest) as work:
        model_class(config).save_pretrained(work, safe_serialization=True)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                unk_token="<unk>").save_pretrained(work)
    return dest


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
