"""Learning-rate schedules (warm-up, cosine) and the two user-encoder variants."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from iisan.config import TrainConfig, UserEncoderConfig
from iisan.errors import ConfigError
from iisan.models.baselines.id import build_tower
from iisan.models.user import UserEncoder
from iisan.run.files import resume_folder
from iisan.training import loop
from iisan.training.loop import train
from iisan.training.schedule import lr_factor

FAST = TrainConfig(epochs=2, train_batch_size=32, patience=5, seed=1, eval_user_chunk=64)


def test_warm_up_rises_linearly_then_holds_or_follows_a_cosine():
    steps = 10  # per epoch
    constant = TrainConfig(epochs=4, schedule="constant", warmup_epochs=1)
    assert [lr_factor(constant, s, steps) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(constant, 10, steps) == lr_factor(constant, 39, steps) == 1.0

    cosine = TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cosine, 10, steps) == 1.0  # the first step after warm-up: the full rate
    assert lr_factor(cosine, 25, steps) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(cosine, 39, steps) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert lr_factor(cosine, 60, steps) == 0.0  # past the end (a run resumed with fewer epochs)
    decay = [lr_factor(cosine, s, steps) for s in range(10, 40)]
    assert all(a > b for a, b in zip(decay, decay[1:]))

    no_warmup = TrainConfig(epochs=2, schedule="cosine", warmup_epochs=0)
    assert lr_factor(no_warmup, 0, 5) == 1.0 and lr_factor(no_warmup, 5, 5) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(epochs=2, warmup_epochs=0.5), 1, 4) == 1.0  # fractional: 2 steps


def test_schedule_options_are_checked():
    with pytest.raises(ConfigError, match="schedule must be one of constant, cosine"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=3)
    with pytest.raises(ConfigError, match="variant must be one of reference, recbole"):
        UserEncoderConfig(variant="bert4rec")


def test_a_run_follows_the_schedule_and_a_killed_one_resumes_on_it(tiny_multimodal, tmp_path, monkeypatch):
    dataset, cache = tiny_multimodal
    config = dataclasses.replace(FAST, schedule="cosine", warmup_epochs=0.5)
    train(dataset, tmp_path / "straight", config, cache_dir=cache)
    groups = json.loads((resume_folder(tmp_path / "straight") / "optimizer.json").read_text())["param_groups"]
    assert sorted(g["base_lr"] for g in groups) == sorted([config.lr, config.side_lr, config.content.id_offset_lr])
    factors = [g["lr"] / g["base_lr"] for g in groups]  # the last step's: near the end of the cosine
    assert 0 < factors[0] < 0.05 and factors == pytest.approx([factors[0]] * len(groups))

    # Killed after epoch 1, then resumed: the factor is a function of the step, so the same weights.
    save = loop.save_resume_state

    def save_then_die(run_dir, model, optimizer, state):
        save(run_dir, model, optimizer, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_resume_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "resumed", config, cache_dir=cache)
    monkeypatch.undo()
    train(dataset, tmp_path / "resumed", config, cache_dir=cache, resume=True)
    a = load_file(str(resume_folder(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(resume_folder(tmp_path / "resumed") / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("variant", ["reference", "recbole"])
def test_user_encoder_variants(variant):
    torch.manual_seed(0)
    encoder = UserEncoder(UserEncoderConfig(dim=64, blocks=2, heads=2, variant=variant))
    block = encoder.blocks[0]
    recbole = variant == "recbole"
    assert (block.qkv.bias is not None) == recbole and (block.out.bias is not None) == recbole
    assert isinstance(block.feed_forward[1], nn.GELU if recbole else nn.ReLU)
    assert block.attention_norm.eps == (1e-12 if recbole else 1e-6)
    # normal(0, 0.02) against xavier-normal (std sqrt(2 / (fan_in + fan_out)): 0.088 for 64 x 192)
    std = float(block.qkv.weight.detach().std())
    assert std == pytest.approx(0.02 if recbole else math.sqrt(2 / (64 + 192)), rel=0.05)
    out = encoder(torch.randn(3, 5, 64), torch.ones(3, 5, dtype=torch.bool))
    assert out.shape == (3, 5, 64) and torch.isfinite(out).all()


def test_id_embeddings_start_as_the_user_encoders_variant():
    class Context:
        num_items = 5000

    torch.manual_seed(0)
    config = TrainConfig.for_method("id", variant="recbole")
    assert config.user.dropout == 0.5  # id's own default kept beside the change
    table = build_tower(config, Context()).embedding.weight.detach()
    assert float(table[1:].std()) == pytest.approx(0.02, rel=0.05) and not table[0].any()
    reference = build_tower(TrainConfig.for_method("id"), Context()).embedding.weight.detach()
    assert float(reference[1:].std()) == pytest.approx(math.sqrt(2 / (5001 + 64)), rel=0.05)
