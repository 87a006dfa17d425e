"""bf16 encoders (encode, the encoder baselines), and raw content prepared once, not per step."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from iisan.assemble import assemble
from iisan.cache.encode import encode
from iisan.cache.store import HiddenStateCache
from iisan.config import EncodeConfig, SideNetworkConfig, TrainConfig
from iisan.errors import CacheMismatchError
from iisan.features.live import content_inputs
from iisan.training.step import build_optimizer, training_step
from iisan.training.loss import log_popularity

TEXT_ONLY = EncodeConfig(text_encoder="tiny-random-text", image_encoder=None, pooling="mean", encode_batch_size=32)


def test_bf16_encode_is_recorded_close_to_fp32_and_never_mixed_on_resume(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    fp32 = tmp_path / "fp32"
    bf16 = tmp_path / "bf16"
    encode(dataset, fp32, dataclasses.replace(TEXT_ONLY, precision="fp32"), device="cpu")
    encode(dataset, bf16, dataclasses.replace(TEXT_ONLY, precision="bf16"), device="cpu")
    a, b = HiddenStateCache.open(fp32), HiddenStateCache.open(bf16)
    assert a.entry("text").precision == "fp32" and b.entry("text").precision == "bf16"
    x = np.asarray(a.states("text")[1:], dtype=np.float32)
    y = np.asarray(b.states("text")[1:], dtype=np.float32)
    assert not np.array_equal(x, y)  # bf16 really ran
    cosine = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    assert cosine.min() > 0.99  # and stays close: about 3 significant digits

    with pytest.raises(CacheMismatchError, match="precision"):  # a resume never mixes precisions
        encode(dataset, bf16, dataclasses.replace(TEXT_ONLY, precision="fp32"), device="cpu")

    # A cache written before precision was recorded was float32: resuming it in fp32 is fine.
    manifest = json.loads((fp32 / "manifest.json").read_text())
    del manifest["encoders"]["text"]["precision"]
    (fp32 / "manifest.json").write_text(json.dumps(manifest))
    resumed = encode(dataset, fp32, dataclasses.replace(TEXT_ONLY, precision="fp32"), device="cpu")
    assert resumed["modalities"]["text"]["rows_encoded"] == 0


def test_an_encoder_baseline_runs_its_encoder_in_bf16_when_asked(tiny_multimodal):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("fft", train_batch_size=8, precision="bf16", side=SideNetworkConfig(modality="text"))
    parts = assemble(dataset, cache, config)
    seen = []
    encoder = parts.model.item.encoders["text"]
    # The encoder's matrix products run in bf16 (autocast keeps its layer norms in float32).
    first_linear = next(m for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    loss = training_step(parts, build_optimizer(parts), parts.splits.train[:8],
                         log_popularity(torch.from_numpy(parts.splits.popularity)))
    assert seen == [torch.bfloat16] and np.isfinite(loss)
    assert encoder.embeddings.word_embeddings.weight.grad is not None  # fft still trains the encoder


def test_raw_content_is_prepared_once_and_gives_the_same_inputs(tiny_multimodal):
    dataset, cache = tiny_multimodal
    parts = assemble(dataset, cache, TrainConfig.for_method("fft", side=SideNetworkConfig(modality="intra_inter")))
    source = parts.source
    ids = np.array([3, 0, 9, 3, 40, parts.dataset.num_items])
    first = source.features(ids)
    # The same inputs as preparing each item's raw content from scratch.
    texts = [source.texts[i - 1] if i > 0 else None for i in ids]
    images = [(source.dataset.root / source.images[i - 1]).read_bytes() if i > 0 and source.images[i - 1] else None
              for i in ids]
    for modality, encoder in source.encoders.items():
        rows, direct = content_inputs(encoder, source.entries[modality], modality, texts, images)
        assert torch.equal(first.present[modality], torch.from_numpy(np.isin(np.arange(len(ids)), rows)))
        for key, value in direct.items():
            assert torch.equal(first.inputs[modality][key], value), (modality, key)
    kept_tokens, kept_crops = len(source._tokens), len(source._crops)
    assert kept_tokens == len({3, 9, 40, parts.dataset.num_items}) and kept_crops > 0
    second = source.features(ids)  # served from what the first call prepared
    assert len(source._tokens) == kept_tokens and len(source._crops) == kept_crops
    for modality in source.encoders:
        for key, value in first.inputs[modality].items():
            assert torch.equal(second.inputs[modality][key], value)
