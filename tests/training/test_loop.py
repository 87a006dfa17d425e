"""Training end to end on a tiny multimodal set: files, learning, resume, baselines."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from iisan.assemble import assemble, assemble_run
from iisan.config import ModelConfig, SideNetworkConfig, TrainConfig, UserEncoderConfig
from iisan.errors import ConfigError
from iisan.run.files import resume_folder
from iisan.training.step import NextItemObjective, build_optimizer, training_step
from iisan.training.loop import train
from iisan.training.loss import log_popularity

FAST = TrainConfig(epochs=2, train_batch_size=32, patience=5, seed=1, eval_user_chunk=64)


def test_repeated_steps_reduce_the_loss(tiny_multimodal):
    dataset, cache = tiny_multimodal
    parts = assemble(dataset, cache, dataclasses.replace(FAST, lr=3e-3, side_lr=3e-3))
    parts.model.train()
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    batch = parts.splits.train[:32]
    losses = [training_step(parts, optimizer, batch, log_pop) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.8


def test_train_writes_a_complete_run(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "run", FAST, cache_dir=cache)
    run = tmp_path / "run"
    for name in ("config.json", "model.json", "model.safetensors", "metrics.jsonl", "metrics.json", "resume/state.json"):
        assert (run / name).is_file(), name
    assert (resume_folder(run) / "optimizer.safetensors").is_file() and resume_folder(run).name.startswith("gen-")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert 0 <= summary["test"]["ndcg@10"] <= summary["test"]["hr@10"] <= 1
    assert summary["trainable_parameters"] == summary["total_parameters"] > 0  # encoders are not in the model
    saved = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_json(saved["train"]) == dataclasses.replace(  # modality auto: what the cache holds
        FAST, side=dataclasses.replace(FAST.side, modality="intra_inter"))
    model = json.loads((run / "model.json").read_text())  # what the weights are the weights of
    assert model["layers"] == {"text": [0, 1, 2], "image": [0, 1, 2]}  # every layer, by default
    assert ModelConfig.from_json(model["model"]) == TrainConfig.from_json(saved["train"]).model
    assert set(model["encoders"]) == {"text", "image"} and model["num_items"] == saved["num_items"]
    # The run reloads to the same weights.
    reloaded = assemble_run(run)
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in reloaded.model.state_dict().items())


def test_resume_continues_to_the_same_result(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    train(dataset, tmp_path / "straight", FAST, cache_dir=cache)
    train(dataset, tmp_path / "resumed", dataclasses.replace(FAST, epochs=1), cache_dir=cache)
    train(dataset, tmp_path / "resumed", FAST, cache_dir=cache, resume=True)
    a = load_file(str(resume_folder(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(resume_folder(tmp_path / "resumed") / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2


def test_refuses_to_overwrite_a_run(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(ConfigError, match="--resume.*--force"):
        train(dataset, tmp_path / "run", FAST, cache_dir=cache)
    with pytest.raises(ConfigError, match="no run to continue"):
        train(dataset, tmp_path / "other", FAST, cache_dir=cache, resume=True)


@pytest.mark.parametrize("method, modality", [("id", "intra_inter"), ("frozen", "intra"), ("iisan", "text"), ("iisan", "image")])
def test_methods_and_modalities_train(tiny_multimodal, tmp_path, method, modality):
    dataset, cache = tiny_multimodal
    config = dataclasses.replace(FAST, epochs=1, method=method, method_options=None, side=SideNetworkConfig(modality=modality))
    summary = train(dataset, tmp_path / "run", config, cache_dir=None if method == "id" else cache)
    assert summary["epochs"] == 1 and np.isfinite(summary["test"]["mrr"])


def test_content_method_needs_a_cache(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    with pytest.raises(ConfigError, match="--cache"):
        train(dataset, tmp_path / "run", FAST)


def test_config_round_trip():
    config = TrainConfig(method="frozen", side=SideNetworkConfig(layers=(0, 3), modality="text"),
                         user=UserEncoderConfig(dim=32, heads=4))
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_resume_keeps_the_model_and_takes_a_new_recipe(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    run = tmp_path / "run"
    train(dataset, run, dataclasses.replace(FAST, epochs=1), cache_dir=cache)
    wider = dataclasses.replace(FAST, side=dataclasses.replace(FAST.side, bottleneck=16))
    with pytest.raises(ConfigError, match=r"model; these options change it: --bottleneck 16 \(the run has"):
        train(dataset, run, wider, cache_dir=cache, resume=True)
    summary = train(dataset, run, dataclasses.replace(FAST, lr=1e-2), cache_dir=cache, resume=True)
    assert summary["epochs"] == FAST.epochs
    assert TrainConfig.from_json(json.loads((run / "config.json").read_text())["train"]).lr == 1e-2  # recorded


def test_tensorboard_logs_every_epoch(tiny_multimodal, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset, cache = tiny_multimodal
    train(dataset, tmp_path / "run", FAST, cache_dir=cache, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("valid/ndcg@10")] == [1, 2]


@pytest.mark.parametrize("loss", ["full", "sampled"])
@pytest.mark.parametrize("method", ["iisan", "frozen", "id"])
def test_catalogue_and_sampled_losses_train_every_method(tiny_multimodal, tmp_path, method, loss):
    dataset, cache = tiny_multimodal
    config = dataclasses.replace(FAST, epochs=1, method=method, method_options=None, loss=loss, negatives=16)
    summary = train(dataset, tmp_path / "run", config, cache_dir=None if method == "id" else cache)
    assert summary["epochs"] == 1 and np.isfinite(summary["test"]["mrr"])


def test_the_model_declares_its_parameter_groups_and_the_recipe_their_rates(tiny_multimodal):
    dataset, cache = tiny_multimodal
    config = dataclasses.replace(FAST, lr=3e-3, side_lr=2e-3)
    parts = assemble(dataset, cache, config)
    groups = parts.model.parameter_groups()
    named = [id(p) for params in groups.values() for p in params]
    assert sorted(named) == sorted(id(p) for p in parts.model.parameters())  # each parameter once
    assert groups["side"] and groups["id_offsets"] and groups["rest"]
    optimizer = build_optimizer(parts)
    assert [g["base_lr"] for g in optimizer.param_groups] == [3e-3, 2e-3, config.content.id_offset_lr]


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_full_and_sampled_steps_reduce_the_loss(tiny_multimodal, loss):
    dataset, cache = tiny_multimodal
    parts = assemble(dataset, cache, dataclasses.replace(FAST, lr=3e-3, side_lr=3e-3, loss=loss))
    parts.model.train()
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    batch = parts.splits.train[:32]
    negatives = np.arange(1, 40)
    losses = [training_step(parts, optimizer, batch, log_pop, negatives=negatives) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.8


def test_in_memory_features_equal_the_ones_read_per_batch(tiny_multimodal):
    """A cache that fits is read once into memory; a batch gathers the same values the
    memory-mapped path reads (float16 -> float32 either way)."""
    from iisan.cache import HiddenStateCache
    from iisan.features import CachedSource

    _, cache_dir = tiny_multimodal
    cache = HiddenStateCache.open(cache_dir)
    layers = {"text": (0, 2), "image": (1, 2)}
    resident, streamed = CachedSource(cache, layers), CachedSource(cache, layers, in_memory_limit=0)
    assert resident._in_memory is not None and streamed._in_memory is None
    for ids in (np.array([5, 0, 3, 5, 9]), np.arange(cache.num_items + 1)):
        a, b = resident.features(ids), streamed.features(ids)
        assert torch.equal(a.ids, b.ids)
        for m in layers:
            assert torch.equal(a.states[m], b.states[m]) and torch.equal(a.present[m], b.present[m])


def test_a_prefix_batch_scores_only_each_rows_last_target(tiny_multimodal):
    """With samples="prefixes" the loss is the mean, over rows, of the cross-entropy of the
    last position's target over the whole catalogue (RecBole's SASRec), written out here."""
    dataset, cache = tiny_multimodal
    parts = assemble(dataset, cache, dataclasses.replace(FAST, samples="prefixes", loss="full"))
    parts.model.eval()  # no dropout: the same states in both computations
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    rows = parts.splits.prefixes[:: len(parts.splits.prefixes) // 40]  # prefixes long and short
    assert (rows[:, -3] == 0).any() and (rows[:, -3] != 0).any()
    objective = NextItemObjective.for_run(parts, log_pop)
    with torch.no_grad():
        features = parts.source.features(np.arange(parts.dataset.num_items + 1))
        ids = torch.from_numpy(rows)
        loss = objective(features, ids, ids)
        table = parts.model.embed_items(features)
        last = parts.model.user(table[ids[:, :-1]], ids[:, :-1] != 0)[:, -1]  # [P, d]
        logits = last @ table.T
        logits[:, 0] = -torch.inf  # padding is never a candidate
        expected = torch.nn.functional.cross_entropy(logits, ids[:, -1])
        every_position = NextItemObjective(parts.model, log_pop, loss="full")(features, ids, ids)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(every_position) != pytest.approx(float(expected), rel=1e-3)  # the mask matters


def test_prefix_samples_train(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    config = dataclasses.replace(FAST, epochs=1, method="id", method_options=None, loss="full", samples="prefixes")
    summary = train(dataset, tmp_path / "run", config)
    assert summary["epochs"] == 1 and np.isfinite(summary["test"]["mrr"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert TrainConfig.from_json(saved["train"]).samples == "prefixes"


def test_method_defaults_follow_the_measured_recipes():
    """id trains as RecBole's SASRec (full-catalogue loss, dropout 0.5, patience 10, one
    sample per prefix, 256 a batch); fft updates pretrained weights at 1e-4; explicit
    options still win."""
    id_config = TrainConfig.for_method("id")
    assert (id_config.loss, id_config.patience, id_config.user.dropout) == ("full", 10, 0.5)
    assert (id_config.samples, id_config.train_batch_size) == ("prefixes", 256)
    assert TrainConfig.for_method("fft").side_lr == 1e-4
    assert TrainConfig.for_method("iisan") == TrainConfig()
    assert TrainConfig.for_method("id", loss="in_batch", patience=3).loss == "in_batch"
