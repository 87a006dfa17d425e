"""``iisan calibrate``: the scorer is a stage of its own (issue 45). It fits again on a trained
run without retraining, with its files apart from the model's, and what the run serves
follows it."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from iisan.config import TrainConfig
from iisan.errors import ConfigError
from iisan.run.files import WEIGHTS_FILE
from iisan.serving.recommender import Recommender
from iisan.training.recalibrate import calibrate_run
from iisan.training.loop import train
from tests.reliability.conftest import cli, one_line_error


@pytest.fixture
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def scorer_record(run):
    return json.loads((run / "scorer" / "scorer.json").read_text())


def test_the_model_holds_no_scorer_and_the_scorer_its_own_files(run):
    assert not [name for name in load_file(run / WEIGHTS_FILE) if name.startswith("blend")]
    record = scorer_record(run)
    assert record["kind"] == "blend" and record["options"]["blend_groups"] == 1
    assert (run / "scorer" / record["generation"] / "blend.safetensors").is_file()


def test_calibrating_again_with_the_same_options_reproduces_training(run):
    trained = json.loads((run / "metrics.json").read_text())
    model = (run / WEIGHTS_FILE).read_bytes()
    result = calibrate_run(run)
    assert result["options"] == scorer_record(run)["options"] and scorer_record(run)["generation"] == "gen-000002"
    assert result["test"]["ndcg@10"] == trained["test"]["ndcg@10"]
    assert result["blend"]["alpha"] == trained["blend"]["alpha"]
    assert (run / WEIGHTS_FILE).read_bytes() == model  # the model is not touched


def test_other_options_change_the_scorer_the_metrics_and_what_is_served(run):
    before = Recommender.load(run)
    history = before.keys[1:6]
    result = calibrate_run(run, {"blend_select": "balanced", "blend_terms": 16})
    assert scorer_record(run)["options"]["blend_select"] == "balanced"
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["test"] == result["test"] and recorded["blend"]["select"] == "balanced"
    after = Recommender.load(run)  # the index was built again from the new scorer
    width = after.embeddings.shape[1]
    assert width == before.embeddings.shape[1] + 16  # the floor now reads 16 columns of words
    from iisan.evaluation.ranking import item_embeddings

    exact = item_embeddings(after.parts.scorer, after.parts.source, after.trained_items)
    assert after.embeddings.shape == exact.shape and bool((after.embeddings == exact).all())
    assert len(after.recommend(history, k=5)) == 5


def test_results_the_scorer_does_not_change_are_kept_the_others_dropped(run):
    from iisan.run_metrics import evaluate_run

    evaluate_run(run, split="test", unblended=True)
    evaluate_run(run, split="test", include_history=True)
    calibrate_run(run, {"blend_whiten": "off"})
    assert set(json.loads((run / "metrics.json").read_text())) == {"valid", "test", "blend", "test_unblended"}


def test_a_run_with_added_items_or_without_content_is_refused(run, tiny_multimodal, tmp_path):
    Recommender.load(run).add_items([{"key": "added", "text": "a red lamp"}])
    record = scorer_record(run)
    with pytest.raises(ConfigError, match="1 item added since training"):
        calibrate_run(run)
    assert scorer_record(run) == record  # nothing written
    dataset, _ = tiny_multimodal
    train(dataset, tmp_path / "id", TrainConfig.for_method("id", epochs=1, train_batch_size=32))
    with pytest.raises(ConfigError, match="only the content methods"):
        calibrate_run(tmp_path / "id")
    with pytest.raises(ConfigError, match="blend_colour: not an option"):
        calibrate_run(run, {"blend_colour": 1})


def test_a_run_trained_without_a_blend_gets_one(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=2, blend=False)
    train(dataset, tmp_path / "run", config, cache_dir=cache)
    assert not (tmp_path / "run" / "scorer").exists()
    result = calibrate_run(tmp_path / "run", {"blend_groups": 1})
    assert result["blend"]["valid_after"] >= result["blend"]["valid_before"]
    assert Recommender.load(tmp_path / "run").embeddings.shape[1] > config.user.dim


def test_the_command_line(run):
    result = cli("calibrate", run, "--blend-groups", "1", "--blend-whiten", "off", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["options"]["blend_whiten"] == "off"
    refused = cli("calibrate", run, "--blend-whiten", "sideways")
    assert refused.exit_code == 2 and "'sideways' is not one of auto, on, off" in refused.output
    one_line_error(cli("calibrate", run.parent / "nothing-here"), "not a run directory")
