"""Run folders saved by earlier code keep loading (issue 29: the run folder's owner moved;
what it reads must not). ``tests/fixtures/config-0.1-d657f23.json`` is the ``config.json``
the code at d657f23 wrote for the tiny run's settings (text only: the repository carries no
weights); ``config-0.2-methods-options.json`` the one written once methods had their own
options (``content``, ``tuning``). Each replaces today's in a copy of the tiny run, whose
weights it describes (in the layout of the code that wrote it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from iisan.run.files import read_run_config
from iisan.serving.recommender import Recommender
from tests.reliability.conftest import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_CONFIGS = ("config-0.1-d657f23.json", "config-0.2-methods-options.json")


@pytest.fixture(params=OLD_CONFIGS)
def old_run(tiny_run, tmp_path, request) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    today = read_run_config(run)
    old = json.loads((FIXTURES / request.param).read_text())
    # Where this machine's tiny dataset and cache are: provenance, the only paths in the file.
    old.update(dataset=today["dataset"], cache=today["cache"], dataset_fingerprint=today["dataset_fingerprint"])
    (run / "config.json").write_text(json.dumps(old))
    (run / "model.json").unlink()  # those runs' config.json described the model
    # The blend's weights inside the model's, as that code kept them (before the scorer had files)
    weights = load_file(run / "model.safetensors")
    [blend_file] = (run / "scorer").glob("gen-*/blend.safetensors")
    weights.update({f"blend.{name}": tensor for name, tensor in load_file(blend_file).items()})
    weights["blend.active"] = torch.tensor(True)
    shutil.rmtree(run / "scorer")
    if request.param == OLD_CONFIGS[0]:  # and as 0.1 laid them out: one alpha, one row of priors, no bounds
        weights["blend.alpha"] = weights["blend.alpha"].reshape(())
        weights["blend.priors"] = weights["blend.priors"].reshape(-1)
        del weights["blend.group_bounds"]
    save_file(weights, run / "model.safetensors")
    shutil.rmtree(run / "index", ignore_errors=True)  # built from today's files: built again on load
    return run


def test_a_config_written_by_earlier_code_loads_and_answers_as_today(tiny_run, old_run):
    today, old = Recommender.load(tiny_run), Recommender.load(old_run)
    for history in (today.keys[1:3], today.keys[5:9], [today.keys[20]]):
        assert old.recommend(history, k=5) == today.recommend(history, k=5)
    evaluated = cli("evaluate", old_run, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    recorded = json.loads((tiny_run / "metrics.json").read_text())["test"]["ndcg@10"]
    assert json.loads(evaluated.stdout)["metrics"]["ndcg@10"] == pytest.approx(recorded)


def test_a_run_with_an_earlier_config_takes_new_items_and_reports(old_run):
    Recommender.load(old_run).add_items([{"key": "new-in-an-old-run", "text": "a new item"}])
    assert "new-in-an-old-run" in Recommender.load(old_run).ids
    assert cli("report", old_run, "--out", old_run.parent / "report.md").exit_code == 0


def test_a_run_on_a_machine_whose_transformers_restamped_its_encoders_takes_new_items(scratch, tmp_path,
                                                                                       monkeypatch):
    """The same encoders written by another transformers release (a new ``transformers_version``
    in ``config.json``, as a move to another machine rebuilds them) are the same weights: the
    run still embeds new items with images (issue 46: it refused, "the weights changed")."""
    from iisan.encoders.registry import resolve
    from tests.conftest import png_bytes

    home = tmp_path / "other-machine"
    for modality in ("text", "image"):
        _, folder = resolve(f"tiny-random-{modality}", modality)
        copy = shutil.copytree(folder, home / "models" / folder.name)
        config = (copy / "config.json").read_text()
        assert '"transformers_version"' in config
        (copy / "config.json").write_text(re.sub(r'"transformers_version": "[^"]*"',
                                                 '"transformers_version": "9.0.0"', config))
    monkeypatch.setenv("IISAN_HOME", str(home))
    Recommender.load(scratch.run).add_items([{"key": "moved", "text": "a red lamp", "image": png_bytes()}])
    assert "moved" in Recommender.load(scratch.run).ids
    assert not (home / "identities.json").exists()  # nothing to migrate: the cache's identity is today's


def test_a_run_saved_before_its_folder_held_the_catalogue_reads_it_from_its_dataset(tiny_run, old_run):
    """Older still: no ``items.parquet``; the catalogue comes from the dataset (iisan.run.migrate)."""
    (old_run / "items.parquet").unlink()
    today, old = Recommender.load(tiny_run), Recommender.load(old_run)
    assert old.keys == today.keys
    for history in (today.keys[1:3], [today.keys[20]]):
        assert old.recommend(history, k=5) == today.recommend(history, k=5)


def test_an_earlier_run_resumed_with_a_new_recipe_gets_its_model_json(old_run):
    """Resuming writes today's config.json (the new recipe) and, first, the model.json that
    format needs, from what the old config.json said of the model."""
    import dataclasses

    from iisan.config import TrainConfig
    from iisan.training.loop import train

    saved = read_run_config(old_run)
    config = TrainConfig.from_json(saved["train"])
    config = dataclasses.replace(config, epochs=config.epochs + 1, lr=config.lr / 2)
    train(saved["dataset"], old_run, config, cache_dir=saved["cache"], resume=True)
    rewritten = json.loads((old_run / "config.json").read_text())
    assert rewritten["version"] == 3 and rewritten["train"]["lr"] == config.lr and "layers" not in rewritten
    assert json.loads((old_run / "model.json").read_text())["layers"] == saved["model"]["layers"]
    resumed = Recommender.load(old_run)
    assert len(resumed.recommend([resumed.keys[1]], k=3)) == 3
