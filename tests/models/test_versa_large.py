"""IISAN-Versa for large encoders: per-modality layer groups, per-step DTL, compact heads,
per-modality bottlenecks, stored layer subsets, and decoder LLMs as text encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iisan.models.layers import head_kind, select_layers
from iisan.cache.store import HiddenStateCache
from iisan.cli import app
from iisan.config import SideNetworkConfig
from iisan.encoders.tiny import build_tiny_decoder
from iisan.errors import ConfigError
from iisan.models.inputs import ItemFeatures
from iisan.models.iisan import IISANItemEncoder
from iisan.models.versa import StepwiseLinear

runner = CliRunner()


def test_steps_pick_the_last_layer_of_evenly_spaced_groups_never_a_constant_one():
    side = SideNetworkConfig(text_steps=6, image_steps=3)
    # An 80-layer LLM (81 states) whose layer 0 is constant: 6 groups of the 80 others.
    text = select_layers(side, 81, constant=(0,), modality="text")
    assert len(text) == 6 and text[-1] == 80 and 0 not in text
    gaps = np.diff(text)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert select_layers(side, 13, modality="image") == (4, 8, 12)  # dinov2-small: 13 states
    with pytest.raises(ConfigError, match="only 12 usable layers"):
        select_layers(SideNetworkConfig(image_steps=13), 13, constant=(0,), modality="image")


def test_explicit_per_modality_lists_win_and_the_shared_rule_is_unchanged():
    side = SideNetworkConfig(text_layers=(4, 19, 34), text_steps=2, layer_rule="every_other")
    assert select_layers(side, 81, modality="text") == (4, 19, 34)  # the list wins over steps
    assert select_layers(side, 13, modality="image") == (0, 2, 4, 6, 8, 10, 12)  # LayerDrop
    assert select_layers(side, 13, constant=(0,), modality="image") == (2, 4, 6, 8, 10, 12)
    assert select_layers(side, 7, available=(0, 3, 6)) == (0, 6)  # among stored layers only
    with pytest.raises(ConfigError, match="stored only layers 0, 3, 6"):
        select_layers(SideNetworkConfig(text_layers=(2,)), 7, modality="text", available=(0, 3, 6))


def test_towers_heads_and_bottlenecks_follow_each_modality():
    shapes = {"text": (33, 256), "image": (13, 48)}  # a deep wide text encoder, a small image one
    side = SideNetworkConfig(text_steps=4, image_steps=3, head="compact", text_bottleneck=16, image_bottleneck=8,
                             dtl="per_step")
    tower = IISANItemEncoder(side, shapes, dim=24)
    assert tower.layers["text"] == (8, 16, 24, 32) and tower.layers["image"] == (4, 8, 12)
    assert len(tower.towers["text"].blocks) == 4 and len(tower.towers["image"].blocks) == 3
    assert tower.towers["text"].blocks[0].down.out_features == 16
    assert tower.towers["image"].blocks[0].down.out_features == 8
    assert tower.towers["inter"].blocks[0].down.out_features == side.bottleneck
    # compact head: D -> d -> d; the inter tower works at the smaller width (48)
    assert [m.weight.shape for m in tower.heads["text"]] == [torch.Size([24, 256]), torch.Size([24, 24])]
    assert tower.inter_inputs.steps == 3 and isinstance(tower.inter_inputs.dtl["text"], StepwiseLinear)
    assert tower.inter_inputs.dtl["text"].weight.shape == (3, 256, 48)
    features = ItemFeatures(ids=torch.arange(5), states={"text": torch.randn(5, 4, 256), "image": torch.randn(5, 3, 48)},
                            present={"text": torch.ones(5, dtype=torch.bool), "image": torch.ones(5, dtype=torch.bool)})
    assert tower(features).shape == (5, 24)

    wide = IISANItemEncoder(SideNetworkConfig(head="wide", text_steps=4, image_steps=3), shapes, dim=24)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    wide_head, compact_head = 256 * 256 + 256 + 24 * 256 + 24, 24 * 256 + 24 + 24 * 24 + 24
    assert count(wide.heads["text"]) - count(tower.heads["text"]) == wide_head - compact_head
    assert head_kind(SideNetworkConfig(), 384) == "wide" and head_kind(SideNetworkConfig(), 4096) == "compact"


def test_per_step_dtl_is_one_linear_map_per_step():
    stepwise = StepwiseLinear(3, 5, 2)
    states = torch.randn(4, 3, 5)
    expected = torch.stack([states[:, s] @ stepwise.weight[s] + stepwise.bias[s] for s in range(3)], dim=1)
    assert torch.allclose(stepwise(states), expected, atol=1e-6)
    assert not torch.allclose(stepwise.weight[0], stepwise.weight[1])  # steps start apart, as separate Linears


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_decoder_llm_as_text_encoder_end_to_end_from_the_cli(architecture, tiny_multimodal, tmp_path):
    """encode (a stored subset of layers, last-token pooling), train intra_inter with an
    image encoder and per-modality groups, evaluate, recommend, add an item."""
    dataset, _ = tiny_multimodal
    llm = build_tiny_decoder(tmp_path / architecture, architecture, hidden=48, layers=6, heads=4)
    cache = tmp_path / "cache"
    encoded = runner.invoke(app, ["encode", str(dataset), "--out", str(cache), "--text-encoder", str(llm),
                                  "--image-encoder", "tiny-random-image", "--image-size", "32",
                                  "--text-layers", "0,2,4", "--device", "cpu", "--json"])
    assert encoded.exit_code == 0, encoded.output
    opened = HiddenStateCache.open(cache)
    entry = opened.entry("text")
    assert entry.pooling == "last" and entry.num_layers == 6 and entry.stored_layers == (0, 2, 4, 6)
    assert opened.stored_layers("text") == (0, 2, 4, 6)  # the last layer is always stored
    assert opened.states("text").shape == (opened.num_items + 1, 4, 48)  # 4 of 7 states on disk

    run = tmp_path / "run"
    trained = runner.invoke(app, ["--threads", "1", "train", str(dataset), "--cache", str(cache), "--out", str(run),
                                  "--epochs", "2",
                                  "--train-batch-size", "32", "--text-steps", "2", "--image-steps", "2", "--dtl", "per_step",
                                  "--head", "compact", "--text-bottleneck", "8", "--device", "cpu", "--json"])
    assert trained.exit_code == 0, trained.output
    saved = json.loads((run / "config.json").read_text())
    # 2 groups of the stored layers, never a constant one (under last-token pooling layer 0
    # is the last token's embedding: constant when every title ends alike, as with Llama's
    # word-level tokenizer here), the last group ending at the final layer.
    text_layers = json.loads((run / "model.json").read_text())["layers"]["text"]
    assert len(text_layers) == 2 and text_layers[-1] == 6 and set(text_layers) <= {0, 2, 4, 6}
    assert not set(text_layers) & set(opened.constant_layers("text"))
    assert saved["train"]["side"]["dtl"] == "per_step" and saved["train"]["side"]["head"] == "compact"
    assert np.isfinite(json.loads(trained.stdout)["test"]["ndcg@10"])
    evaluated = runner.invoke(app, ["--threads", "1", "evaluate", str(run), "--json"])  # as trained: one thread
    result = json.loads(evaluated.stdout)
    assert evaluated.exit_code == 0 and {**result["metrics"], "slices": result["slices"]} == json.loads(trained.stdout)["test"]

    from iisan.data.dataset import PreparedDataset

    items = PreparedDataset.load(dataset).items
    answer = runner.invoke(app, ["recommend", str(run), "--history", ",".join(items["key"][:3].to_list()), "--json"])
    assert answer.exit_code == 0 and len(json.loads(answer.stdout)) == 10
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"key": "llm-new", "text": "a red lamp with a blue mug"}) + "\n")
    added = runner.invoke(app, ["items", "add", str(run), str(new), "--json"])
    assert added.exit_code == 0, added.output
    again = runner.invoke(app, ["recommend", str(run), "--history", "llm-new", "--json"])
    assert again.exit_code == 0 and len(json.loads(again.stdout)) == 10

    missing = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(tmp_path / "bad"),
                                  "--text-layers", "3", "--epochs", "1"])
    assert missing.exit_code == 2 and "stored only layers 0, 2, 4, 6" in missing.output


def test_uncached_mode_runs_a_bf16_cache_encoder_in_bf16(tiny_multimodal, tmp_path):
    from iisan.features.live import load_encoders

    dataset, _ = tiny_multimodal
    llm = build_tiny_decoder(tmp_path / "llama", "llama")
    from iisan.cache.store import EncoderEntry
    from iisan.encoders.layer_states import FrozenEncoder

    loaded = FrozenEncoder.load(str(llm), "text")
    entry = EncoderEntry(name=str(llm), weight_hash=loaded.weight_hash, pooling="last", num_layers=loaded.num_layers,
                         hidden_size=loaded.hidden_size, settings={"max_text_tokens": 8}, precision="bf16")
    frozen = load_encoders({"text": entry}, ("text",), frozen=True)["text"]
    trained = load_encoders({"text": entry}, ("text",))["text"]
    assert next(frozen.model.parameters()).dtype == torch.bfloat16  # half the memory for a forward-only encoder
    assert next(trained.model.parameters()).dtype == torch.float32  # an encoder that trains stays float32


@pytest.mark.parametrize("method", ["lora", "adapter", "fft"])
def test_the_encoder_baselines_train_a_decoder_llm(method, tiny_multimodal, tmp_path):
    """fft, adapter and lora on a Llama-style decoder, so that they can be compared with
    IISAN on the encoders IISAN-Versa is for."""
    from iisan.assemble import assemble
    from iisan.cache.encode import encode
    from iisan.config import EncodeConfig, TrainConfig
    from iisan.training.step import build_optimizer, training_step
    from iisan.training.loss import log_popularity

    dataset, _ = tiny_multimodal
    llm = build_tiny_decoder(tmp_path / "llama", "llama", hidden=32, layers=2)
    cache = tmp_path / "cache"
    encode(dataset, cache, EncodeConfig(text_encoder=str(llm), image_encoder=None), device="cpu")
    parts = assemble(dataset, cache, TrainConfig.for_method(method, train_batch_size=8, side=SideNetworkConfig(modality="text")))
    trainable = {n for n, p in parts.model.item.named_parameters() if p.requires_grad and n.startswith("encoders.")}
    expected = {"lora": "lora_", "adapter": "adapter", "fft": "q_proj"}[method]
    assert trainable and any(expected in n for n in trainable)
    if method != "fft":
        assert not any(n.endswith("q_proj.weight") or "q_proj.base_layer" in n for n in trainable)  # frozen
    before = {n: p.detach().clone() for n, p in parts.model.item.named_parameters() if n in trainable}
    loss = training_step(parts, build_optimizer(parts), parts.splits.train[:8],
                         log_popularity(torch.from_numpy(parts.splits.popularity)))
    assert np.isfinite(loss)
    after = dict(parts.model.item.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the chosen parameters moved
