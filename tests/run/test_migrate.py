"""Run folders of earlier formats read as they trained (:mod:`iisan.run.migrate`); whole run
folders of earlier releases are loaded and queried in ``tests/reliability/test_old_runs.py``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from iisan.config import ModelConfig, TrainConfig
from iisan.errors import ConfigError
from iisan.method_options import ContentConfig, EncoderTuningConfig, KnnConfig
from iisan.run.migrate import (
    RUN_FORMAT, model_tensors, scorer_in_model_file, upgrade_optimizer_groups, upgrade_run_config, upgrade_weights,
)

GROUPS = {ContentConfig: "content", KnnConfig: "knn", EncoderTuningConfig: "tuning"}


def as_version_1(config: TrainConfig) -> dict:
    """``config``'s ``train`` entry as version 1 wrote it: a group for every family of method
    options, the other families' at what a method without them recorded."""
    train = json.loads(json.dumps(config.to_json()))
    train.pop("method_options")
    groups = {"content": dataclasses.asdict(ContentConfig.unused()), "knn": dataclasses.asdict(KnnConfig()),
              "tuning": dataclasses.asdict(EncoderTuningConfig())}
    if config.method_options is not None:
        groups[GROUPS[type(config.method_options)]] = dataclasses.asdict(config.method_options)
    return {**train, **groups}


def read_version_1(train: dict) -> TrainConfig:
    return TrainConfig.from_json(upgrade_run_config(version_1_file(train))["train"])


def version_1_file(train: dict, **more) -> dict:
    return {"version": 1, "train": train, "layers": {}, "num_items": 3, **more}


@pytest.mark.parametrize("method", ["iisan", "id", "knn", "lora"])
def test_a_version_1_config_reads_as_the_same_config(method):
    config = TrainConfig.for_method(method, epochs=3)
    assert read_version_1(as_version_1(config)) == config


def test_runs_saved_before_schedules_and_variants_read_as_before():
    saved = as_version_1(TrainConfig())
    for key in ("schedule", "warmup_epochs", "samples"):
        saved.pop(key)
    saved["user"].pop("variant")
    config = read_version_1(saved)
    assert (config.schedule, config.warmup_epochs, config.samples, config.user.variant) == (
        "constant", 0.0, "sequences", "reference")


def test_names_renamed_since_keep_their_values():
    old = read_version_1({"method": "iisan", "batch_size": 7, "eval_batch_size": 9})
    assert (old.train_batch_size, old.eval_user_chunk) == (7, 9)


def test_encoder_baselines_saved_before_their_own_options():
    saved = as_version_1(TrainConfig.for_method("adapter"))
    del saved["tuning"]
    saved["side"]["bottleneck"] = 24
    config = read_version_1(saved)
    assert config.method_options.adapter_bottleneck == 24  # adapters took the side network's width
    assert config.method_options.precision == "fp32"  # before the option: encoders in float32


def test_the_blend_and_its_options_as_runs_saved_before():
    saved = as_version_1(TrainConfig())
    del saved["content"]["blend"]
    assert read_version_1(saved).content.blend is False  # runs saved before blends: as they trained
    saved = as_version_1(TrainConfig())
    del saved["score"]["blend_whiten"]
    assert read_version_1(saved).score.blend_whiten == "off"  # saved before whitening
    for was, now in ((True, "on"), (False, "off")):  # saved while the option was on or off
        saved["score"]["blend_whiten"] = was
        assert read_version_1(saved).score.blend_whiten == now
    # saved while the blend's options were content's: they move to the scorer's
    earlier = as_version_1(TrainConfig())
    earlier["content"].update(earlier.pop("score"), blend_groups=2, blend_terms=64)
    assert read_version_1(earlier).score == TrainConfig.for_method("iisan", blend_groups=2, blend_terms=64).score


def test_the_oldest_flat_options_find_their_groups():
    flat = {"method": "knn", "knn_whiten": True, "lora_rank": 4, "id_offset": True}
    config = read_version_1(flat)
    assert config.method_options == KnnConfig(knn_whiten="on")  # the others' options were never read
    assert config.content.id_offset is False


def test_a_newer_format_is_one_line():
    with pytest.raises(ConfigError, match=f"version {RUN_FORMAT + 1} was written by a newer iisan"):
        upgrade_run_config({"version": RUN_FORMAT + 1, "train": {}})


def test_the_current_format_passes_unchanged():
    saved = {"version": RUN_FORMAT, "train": TrainConfig().to_json()}
    assert upgrade_run_config(saved) is saved


# Weight files: each rule against today's modules, which must load what it makes.

def test_the_floor_saved_before_whitening_reads_its_states_as_they_are():
    from iisan.models.baselines.knn import FrozenContentItems

    floor = FrozenContentItems(("text",), {"text": (3, 4)})
    today = floor.state_dict()
    old = {k: v for k, v in today.items() if not k.startswith(("mean_", "whiten_"))}
    upgraded = upgrade_weights(old, today)
    floor.load_state_dict(upgraded)
    assert torch.equal(floor.mean_text, torch.zeros(4)) and torch.equal(floor.whiten_text, torch.eye(4))


def test_the_word_table_saved_with_the_weights_is_dropped():
    from iisan.models.terms import TermVectors

    terms = TermVectors(3, 8)
    terms.fit(["a pen", "a gap gauge", None])
    old = {**terms.state_dict(), "table": terms.table}
    assert set(upgrade_weights(old, terms.state_dict())) == {"df", "documents"}


def test_the_blend_saved_before_groups_of_users_is_one_group():
    from iisan.scoring.blend import ScoreBlend

    blend = ScoreBlend({"text": (3, 4)}, dim=4, counts=torch.tensor([0, 2, 1]))
    today = blend.state_dict()
    old = {k: v for k, v in today.items() if k != "group_bounds"}
    old["alpha"], old["priors"] = torch.tensor(0.3), torch.arange(float(blend.priors.shape[1]))
    blend.load_state_dict(upgrade_weights(old, today))
    assert blend.alpha.tolist() == [pytest.approx(0.3)] and blend.priors.shape == (1, len(old["priors"]))
    assert blend.group_bounds.numel() == 0


def test_an_unknown_tensor_is_left_for_the_callers_check():
    today = {"weight": torch.zeros(2)}
    assert upgrade_weights({"weight": torch.ones(2), "stray": torch.ones(1)}, today).keys() == {"weight", "stray"}


def test_optimizer_groups_saved_before_schedules_take_their_rate_as_the_base():
    groups = upgrade_optimizer_groups([{"lr": 0.01, "params": [0]}, {"lr": 0.002, "base_lr": 0.004, "params": [1]}])
    assert [g["base_lr"] for g in groups] == [0.01, 0.004]


def test_a_scorer_kept_in_the_model_file_is_found_only_where_it_was_fitted(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"item.w": torch.zeros(1), "blend.alpha": torch.ones(1), "blend.active": torch.tensor(True)}, weights)
    train = as_version_1(TrainConfig.for_method("iisan", epochs=3))
    saved = upgrade_run_config(version_1_file(train))
    options, tensors = scorer_in_model_file(saved, weights)
    assert set(tensors) == {"alpha"} and options == TrainConfig.from_json(saved["train"]).score
    assert set(model_tensors({"item.w": 1, "blend.alpha": 2})) == {"item.w"}
    unfitted = {"item.w": torch.zeros(1), "blend.alpha": torch.ones(1), "blend.active": torch.tensor(False)}
    save_file(unfitted, weights)
    assert scorer_in_model_file(saved, weights) is None
    no_blend = upgrade_run_config(version_1_file(as_version_1(TrainConfig.for_method("id", epochs=3))))
    assert scorer_in_model_file(no_blend, weights) is None


def test_a_version_2_run_keeps_its_model_description_for_model_json():
    train = TrainConfig.for_method("iisan", epochs=3).to_json()
    encoder = {"name": "minilm", "num_layers": 2, "hidden_size": 4}
    saved = upgrade_run_config({"version": 2, "train": train, "layers": {"text": [1, 2]}, "num_items": 7,
                                "encoders": {"text": encoder}})
    assert "layers" not in saved and "encoders" not in saved
    model = saved["model"]
    assert model["layers"] == {"text": [1, 2]} and model["num_items"] == 7 and model["encoders"] == {"text": encoder}
    assert ModelConfig.from_json(model["model"]) == TrainConfig.from_json(train).model
