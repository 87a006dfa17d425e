"""fft, adapter, lora, bitfit: encoders trained inside the item tower, on raw content."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from iisan.assemble import assemble
from iisan.config import SideNetworkConfig, TrainConfig
from iisan.evaluation.ranking import item_embeddings
from iisan.features import CachedSource
from iisan.method_options import ContentConfig
from iisan.models.baselines.embedded import EMBEDDED_METHODS
from iisan.training.step import build_optimizer, training_step
from iisan.training.loop import train
from iisan.training.loss import log_popularity

CONFIG = TrainConfig(train_batch_size=16, seed=1, lr=3e-3, side_lr=3e-3, epochs=1, eval_user_chunk=64)

# What each method may change inside the encoders.
TRAINED = {
    "fft": lambda name: True,
    "adapter": lambda name: ".adapter." in name,
    "lora": lambda name: "lora_" in name,
    "bitfit": lambda name: name.endswith("bias"),
}


@pytest.mark.parametrize("method", EMBEDDED_METHODS)
def test_steps_reduce_the_loss_and_change_only_what_the_method_trains(tiny_multimodal, method):
    dataset, cache = tiny_multimodal
    parts = assemble(dataset, cache, dataclasses.replace(CONFIG, method=method, method_options=None))
    model = parts.model
    assert set(model.item.encoders) == {"text", "image"}
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    encoder_trainable = {n for n in trainable if n.startswith("item.encoders.")}
    assert encoder_trainable, "the method trains something inside the encoders"
    assert all(TRAINED[method](n) for n in encoder_trainable)
    # Only fft trains every encoder weight on the path to the last hidden state (the text
    # encoder's pooler and the image encoder's final norm come after it: not trained, not counted).
    encoder_names = {n for n, _ in model.named_parameters() if n.startswith("item.encoders.")}
    off_path = {n for n in encoder_names
                if n.startswith(("item.encoders.image.layernorm.", "item.encoders.text.pooler."))
                or n == "item.encoders.image.embeddings.mask_token"}
    assert off_path and not off_path & trainable
    assert (encoder_trainable == encoder_names - off_path) == (method == "fft")

    model.train()
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    batch = parts.splits.train[:16]
    losses = [training_step(parts, optimizer, batch, log_pop) for _ in range(8)]
    assert losses[-1] < losses[0]
    # Every trainable parameter is on the graph (DistributedDataParallel relies on it).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    after = model.state_dict()
    for name, value in after.items():
        if not name.startswith("item.encoders."):
            continue
        if name in trainable:
            continue
        assert torch.equal(value, before[name]), f"{method} changed frozen {name}"
    changed = {n for n in encoder_trainable if not torch.equal(after[n], before[n])}
    assert changed, "the trained encoder parameters moved"


@pytest.mark.parametrize("method", ["adapter", "lora", "bitfit"])
def test_untrained_tower_computes_what_frozen_computes_on_the_cache(tiny_multimodal, method):
    # Adapters start as the identity and LoRA's update at zero: before any step the tower is
    # the frozen baseline on the same encoders (up to the cache's float16 rounding).
    dataset, cache = tiny_multimodal
    text_only = dataclasses.replace(CONFIG, side=SideNetworkConfig(modality="text"))
    embedded = assemble(dataset, cache, dataclasses.replace(text_only, method=method, method_options=None))
    frozen = assemble(dataset, cache, dataclasses.replace(text_only, method="frozen", method_options=ContentConfig.unused()))
    assert isinstance(frozen.source, CachedSource)
    frozen.model.item.heads.load_state_dict(embedded.model.item.heads.state_dict())
    frozen.model.item.fusion.load_state_dict(embedded.model.item.fusion.state_dict())
    num_items = embedded.dataset.num_items
    live = item_embeddings(embedded.model, embedded.source, num_items)
    cached = item_embeddings(frozen.model, frozen.source, num_items)
    torch.testing.assert_close(live, cached, atol=2e-3, rtol=1e-2)


def test_an_encoder_baseline_trains_saves_and_reloads_from_the_run(tiny_multimodal, tmp_path):
    from iisan.assemble import assemble_run

    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "run", dataclasses.replace(CONFIG, method="lora", method_options=None), cache_dir=cache)
    assert summary["trainable_parameters"] < summary["total_parameters"]
    reloaded = assemble_run(tmp_path / "run")
    items = item_embeddings(reloaded.model, reloaded.source, reloaded.dataset.num_items)
    assert torch.isfinite(items).all() and items[1:].abs().sum() > 0
    assert np.isclose(summary["test"]["ndcg@10"], json_metrics(tmp_path / "run")["test"]["ndcg@10"])

    # Served, a new item goes through the trained encoders: a copy of item 1 embeds as item 1.
    from iisan.serving.recommender import Recommender

    recommender = Recommender.load(tmp_path / "run")
    row = recommender.parts.dataset.items.row(0, named=True)
    image = (recommender.parts.dataset.root / row["image"]).read_bytes() if row["image"] else None
    recommender.add_items([{"key": "twin", "text": row["text"], "image": image}])
    torch.testing.assert_close(recommender.embeddings[-1], recommender.embeddings[1], atol=1e-5, rtol=1e-4)


def json_metrics(run):
    import json

    return json.loads((run / "metrics.json").read_text())


def _tiny(model_type: str) -> torch.nn.Module:
    from transformers import (
        BertConfig, BertModel, Dinov2Config, Dinov2Model, LlamaConfig, LlamaModel, MPNetConfig, MPNetModel,
    )

    shape = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    config, model = {"bert": (BertConfig, BertModel), "mpnet": (MPNetConfig, MPNetModel),
                     "dinov2": (Dinov2Config, Dinov2Model), "llama": (LlamaConfig, LlamaModel)}[model_type]
    return model(config(**shape))


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "dinov2", "llama"])
def test_lora_and_adapters_find_their_places_by_model_type(model_type):
    """LoRA goes on exactly the query, key and value projections of every layer, adapters
    after the two output projections of every layer, whichever spelling this transformers
    version uses; a model type not in the table is laid out like one that is."""
    from iisan.models.baselines.embedded import LAYER_PARTS, attention_projections, insert_adapters

    model = _tiny(model_type)
    targets = attention_projections(model)
    assert len(targets) == 3 * 2 and len({t.rsplit(".", 1)[1] for t in targets}) == 3
    assert all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in targets)
    insert_adapters(model, bottleneck=4)
    assert sum(name.endswith(".adapter") for name, _ in model.named_modules()) == 2 * 2
    renamed = _tiny(model_type)
    renamed.config.model_type = "unheard-of"
    assert model_type in LAYER_PARTS and attention_projections(renamed) == targets
