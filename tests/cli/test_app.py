"""One CLI run per command, and help that teaches."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from iisan.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["prepare"], ["data", "synth"], ["data", "stats"], ["encode"], ["encoders", "list"],
                                     ["train"], ["evaluate"], ["quickstart"], ["recommend"], ["index", "build"],
                                     ["index", "check"], ["items", "add"], ["serve"], ["report"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "iisan " in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("iisan ")


def test_synth_prepare_stats_pipeline(tmp_path):
    src, ds = tmp_path / "src", tmp_path / "ds"
    result = runner.invoke(app, ["data", "synth", "--items", "100", "--users", "40", "--categories", "4",
                                 "--colours", "3", "--image-size", "8", "--out", str(src)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prepare", str(src), "--format", "iisan-tsv", "--out", str(ds), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["synthetic"] and meta["counts"]["items_with_image"] == meta["counts"]["items"]
    result = runner.invoke(app, ["data", "stats", str(ds), "--json"])
    stats = json.loads(result.stdout)
    assert stats["counts"]["users"] == meta["counts"]["users"]
    assert stats["modalities"]["share_with_image"] == 1.0
    result = runner.invoke(app, ["data", "stats", str(ds)])
    assert result.exit_code == 0 and "Sequence lengths" in result.output and "(synthetic)" in result.output


def test_prepare_prints_problem_table(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.tsv").write_text("".join(f"i{n}\tItem {n}\n" for n in range(5)))
    (src / "users.tsv").write_text("u1\ti0 i1 i2 i3 i4 zz\n")
    result = runner.invoke(app, ["prepare", str(src), "-f", "iisan-tsv", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 0
    assert "unknown_item" in result.stdout and "users.tsv:1" in result.stdout


def test_stats_on_missing_dataset_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and "iisan prepare" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_option_value_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--items", "3", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "cannot cover" in result.stderr


def test_encode_command_and_encoders_list(tmp_path):
    src, ds, cache = tmp_path / "src", tmp_path / "ds", tmp_path / "cache"
    runner.invoke(app, ["data", "synth", "--items", "60", "--users", "40", "--categories", "3",
                        "--colours", "2", "--image-size", "16", "--out", str(src)])
    runner.invoke(app, ["prepare", str(src), "-f", "iisan-tsv", "-o", str(ds)])
    args = ["encode", str(ds), "--out", str(cache), "--text-encoder", "tiny-random-text",
            "--image-encoder", "tiny-random-image", "--image-size", "32", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["modalities"]) == {"text", "image"}
    assert summary["modalities"]["text"]["rows_encoded"] == summary["modalities"]["image"]["rows_encoded"] > 0
    mismatch = runner.invoke(app, [*args[:-1], "--pooling", "mean"])
    assert mismatch.exit_code == 2 and "--force" in mismatch.stderr
    listed = json.loads(runner.invoke(app, ["encoders", "list", "--json"]).stdout)
    assert {"minilm", "mpnet", "dinov2-small"} <= {row["name"] for row in listed}
    assert "Example" in runner.invoke(app, ["encode", "--help"]).output


def test_encode_pooling_per_encoder_is_recorded(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["encode", str(dataset), "--out", str(cache), "--text-encoder", "tiny-random-text",
                                 "--image-encoder", "tiny-random-image", "--image-size", "32",
                                 "--text-pooling", "last", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["encoders"]["text"]["pooling"] == "last"
    assert manifest["encoders"]["image"]["pooling"] == "cls"  # auto: a DINOv2 folder without a pooling config
    bad = runner.invoke(app, ["encode", str(dataset), "--out", str(tmp_path / "c2"), "--pooling", "max"])
    assert bad.exit_code == 2 and "'max' is not one of auto, cls, mean, last" in bad.stderr
    assert "Value error" not in bad.stderr


def test_train_loss_layer_rule_and_id_offset_options(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(run), "--epochs", "1",
                                 "--train-batch-size", "32", "--modality", "text", "--loss", "sampled", "--negatives", "8",
                                 "--layer-rule", "all", "--id-offset", "--weight-decay", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["loss"] == "sampled" and saved["train"]["negatives"] == 8 and saved["train"]["method_options"]["id_offset"]
    assert json.loads((run / "model.json").read_text())["layers"] == {"text": [0, 1, 2]}
    assert saved["train"]["side"]["layer_rule"] == "all"
    reloaded = runner.invoke(app, ["evaluate", str(run), "--split", "test", "--json"])  # the run reloads as trained
    assert reloaded.exit_code == 0 and json.loads(reloaded.stdout)["metrics"]["ndcg@10"] == pytest.approx(
        json.loads(result.stdout)["test"]["ndcg@10"], abs=1e-6)
    bad = runner.invoke(app, ["train", str(dataset), "--method", "id", "--id-offset", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--id-offset is an option of iisan and frozen: --method id never reads it" in bad.stderr


def test_train_evaluate_and_resume_from_the_cli(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    run = tmp_path / "run"
    args = ["train", str(dataset), "--cache", str(cache), "--out", str(run), "--epochs", "1", "--train-batch-size", "32",
            "--modality", "intra", "--layers", "0,1", "--bottleneck", "8"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 1 and set(summary["test"]) >= {"hr@10", "ndcg@10", "mrr"}
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["side"] == {"bottleneck": 8, "layers": [0, 1], "layer_rule": "all", "modality": "intra",
                                      "gate_temperature": 0.1, "inter_layers": "last", "dtl_to": "smaller",
                                      "dtl": "shared", "head": "auto", "text_layers": None, "image_layers": None,
                                      "text_steps": None, "image_steps": None, "text_bottleneck": None,
                                      "image_bottleneck": None}

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, ["train", str(dataset), "--out", str(run), "--epochs", "2", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    table = runner.invoke(app, ["evaluate", str(run), "--split", "valid", "--k", "1,10"])
    assert table.exit_code == 0 and "NDCG@10" in table.stdout and "valid" in table.stdout
    as_json = json.loads(runner.invoke(app, ["evaluate", str(run), "--include-history", "--json"]).stdout)
    assert set(as_json["metrics"]) == {"hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20",
                                       "mrr@20", "mrr"}
    assert set(json.loads((run / "metrics.json").read_text())) == {"valid", "test", "test_with_history", "blend"}
    assert set(as_json["slices"]) == {"cold", "tail", "head"}
    assert sum(s["users"] for s in as_json["slices"].values()) == as_json["users"]
    reach = as_json["exposure"]  # what the top-10 lists hold, also in metrics.json
    assert reach["k"] == 10 and 0 < reach["reached"] <= 1
    assert sum(reach[name]["places"] for name in ("cold", "tail", "head")) == pytest.approx(1, abs=1e-3)
    recorded = json.loads((run / "metrics.json").read_text())["test_with_history"]
    assert recorded["exposure@10"] == reach
    by_slice = runner.invoke(app, ["evaluate", str(run), "--slices"], env={"COLUMNS": "160"})
    assert by_slice.exit_code == 0
    for name, part in as_json["slices"].items():
        assert f"{name} ({part['users']:,})" in by_slice.stdout
    assert "Top-10 lists: they reach" in " ".join(by_slice.stdout.split())


def test_train_asymmetric_encoders_from_the_cli(tiny_asymmetric, tmp_path):
    dataset, cache = tiny_asymmetric
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(run), "--epochs", "1",
                                 "--train-batch-size", "32", "--inter-layers", "truncate", "--dtl-to", "larger", "--json"])
    assert result.exit_code == 0, result.output
    side = json.loads((run / "config.json").read_text())["train"]["side"]
    assert (side["modality"], side["inter_layers"], side["dtl_to"]) == ("intra_inter", "truncate", "larger")
    bad = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(tmp_path / "b"),
                              "--inter-layers", "first"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize("args, message", [
    (["--method", "frozen"], "pass --cache"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--layers", "0,x"], "comma-separated integers"),
])
def test_train_option_errors_are_one_line(tiny_multimodal, tmp_path, args, message):
    dataset, _ = tiny_multimodal
    result = runner.invoke(app, ["train", str(dataset), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_evaluate_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_quickstart_end_to_end_with_a_tiny_encoder(tmp_path):
    out = tmp_path / "qs"
    result = runner.invoke(app, ["quickstart", "--out", str(out), "--epochs", "1", "--text-encoder", "tiny-random-text"])
    assert result.exit_code == 0, result.output
    assert "MovieLens-100K" in result.stdout and "Top 10 next items" in result.stdout
    summary = json.loads((out / "quickstart.json").read_text())
    assert len(summary["recommendations"]) == 10
    seen = {item["key"] for item in summary["history"]}
    assert not seen & {item["key"] for item in summary["recommendations"]}
    # A folder quickstart did not write is left alone.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = runner.invoke(app, ["quickstart", "--out", str(foreign)])
    assert refused.exit_code == 2 and (foreign / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_quickstart_with_minilm_learns(tmp_path):
    # three epochs of the default 30 (early stopping ends it near 17): half a minute
    result = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--epochs", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["interactions"] == 100_000  # every rating: whole histories
    # Popularity alone gives 0.084 HR@10 here (history excluded); three epochs reached 0.17.
    assert summary["test"]["hr@10"] > 0.12


def test_recommend_index_and_items_from_the_cli(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    from iisan.data.dataset import PreparedDataset

    items = PreparedDataset.load(json.loads((run / "config.json").read_text())["dataset"]).items
    history = ",".join(items["key"][:3].to_list())
    answer = runner.invoke(app, ["recommend", str(run), "--history", history, "-k", "4", "--json"])
    assert answer.exit_code == 0, answer.output
    rows = json.loads(answer.stdout)
    assert len(rows) == 4 and set(rows[0]) == {"key", "title", "score", "added"}
    assert not any(r["added"] for r in rows)
    assert not {r["key"] for r in rows} & set(history.split(","))
    table = runner.invoke(app, ["recommend", str(run), "--history", history])
    assert table.exit_code == 0 and "Top 10" in table.stdout
    unknown = runner.invoke(app, ["recommend", str(run), "--history", f"{history},zzz"])
    assert unknown.exit_code == 2 and "unknown item key: 'zzz' (--skip-unknown leaves" in unknown.output
    assert runner.invoke(app, ["recommend", str(run), "--history", f"{history},zzz", "--skip-unknown"]).exit_code == 0

    built = runner.invoke(app, ["index", "build", str(run), "--index", "hnsw", "--json"])
    assert built.exit_code == 0, built.output
    built = json.loads(built.stdout)
    assert built["index"] == "hnsw" and 0.9 <= built["recall@10"] <= 1.0  # the build says how exact it is
    check = json.loads(runner.invoke(app, ["index", "check", str(run), "--queries", "50", "--json"]).stdout)
    assert check["index"] == "hnsw" and 0.9 <= check["recall@10"] <= 1.0
    said = runner.invoke(app, ["index", "build", str(run), "--index", "hnsw"], env={"COLUMNS": "200"})
    assert "recall@10" in said.stdout and "against exact search" in said.stdout

    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"key": "brand-new", "text": items["text"][0]}) + "\n")
    added = runner.invoke(app, ["items", "add", str(run), str(new), "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["keys"] == ["brand-new"]
    again = runner.invoke(app, ["items", "add", str(run), str(new)])
    assert again.exit_code == 2 and "already in the catalogue" in again.output
    with_new = runner.invoke(app, ["recommend", str(run), "--history", "brand-new", "--json"])
    assert with_new.exit_code == 0 and len(json.loads(with_new.stdout)) == 10
    # Every item, the new one among them, marked as added after training.
    everything = json.loads(runner.invoke(app, ["recommend", str(run), "--history", history, "-k", "1000",
                                                "--json"]).stdout)
    assert [r["key"] for r in everything if r["added"]] == ["brand-new"]
    marked = runner.invoke(app, ["recommend", str(run), "--history", history, "-k", "1000"], env={"COLUMNS": "200"})
    assert marked.exit_code == 0 and "added" in marked.stdout
    flat = json.loads(runner.invoke(app, ["index", "build", str(run), "--json"]).stdout)
    assert flat["index"] == "flat" and "recall@10" not in flat  # exact: nothing to report


def test_serve_starts_uvicorn_and_warns_when_exposed(tiny_run, tmp_path, monkeypatch):
    import shutil

    import uvicorn

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    import socket

    calls = []

    def run_server(server, sockets=None):  # instead of serving forever: what it would serve on
        calls.append(sockets[0].getsockname())
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run_server)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exposed = runner.invoke(app, ["serve", str(run), "--host", "0.0.0.0", "--port", str(port)])
    assert exposed.exit_code == 0, exposed.output
    assert "warning" in exposed.output.lower() and "without --token-file" in exposed.output
    assert calls[0] == ("0.0.0.0", port)
    (tmp_path / "token").write_text("abc\n")
    local = runner.invoke(app, ["serve", str(run), "--token-file", str(tmp_path / "token"), "--port", str(port)])
    assert local.exit_code == 0 and "warning" not in local.output.lower()
    (tmp_path / "empty").write_text("")
    empty = runner.invoke(app, ["serve", str(run), "--token-file", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "is empty" in empty.output
    assert runner.invoke(app, ["serve", str(run), "--port", "0"]).exit_code == 2


def test_report_from_the_cli(tiny_run, tmp_path):
    result = runner.invoke(app, ["report", str(tiny_run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    missing = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_quiet_hides_progress_bars_and_only_iisan_logs(tmp_path, tiny_run):
    args = ["data", "synth", "--items", "60", "--users", "30", "--categories", "4", "--colours", "3", "--image-size", "8", "--out"]
    loud = runner.invoke(app, [*args, str(tmp_path / "a")])
    assert loud.exit_code == 0 and "img/s" in loud.stderr  # the image progress bar
    quiet = runner.invoke(app, ["-q", *args, str(tmp_path / "b")])
    assert quiet.exit_code == 0 and quiet.stderr.strip() == ""
    import polars as pl

    key = pl.read_parquet(json.loads((tiny_run / "config.json").read_text())["dataset"] + "/items.parquet")["key"][0]
    result = runner.invoke(app, ["recommend", str(tiny_run), "--history", key])
    assert result.exit_code == 0, result.output
    assert "faiss" not in result.stderr.lower()  # third-party INFO logs stay out
    import logging

    logging.getLogger("iisan").setLevel(logging.NOTSET)  # leave the process as other tests expect


def test_train_on_a_text_only_cache_needs_no_modality(tiny_multimodal, tmp_path):
    """issue 30: encode skips images by itself, so train must not then ask for them."""
    dataset, _ = tiny_multimodal
    cache = tmp_path / "text-cache"
    encoded = runner.invoke(app, ["encode", str(dataset), "--out", str(cache), "--text-encoder", "tiny-random-text",
                                  "--image-encoder", "none", "--pooling", "mean"])
    assert encoded.exit_code == 0, encoded.output
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(run), "--epochs", "1",
                                 "--train-batch-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train"]["side"]["modality"] == "text"
    both = runner.invoke(app, ["train", str(dataset), "--cache", str(cache), "--out", str(tmp_path / "r2"),
                               "--modality", "intra_inter"])  # asked for explicitly: still one clear line
    assert both.exit_code == 2 and "needs image states" in both.stderr


def test_encoders_list_says_which_are_installed(monkeypatch):
    """issue 30: `encoders list` names what a user must install; installed is read from the
    package metadata, so an encoder whose package is missing shows as not installed."""
    from iisan.encoders import registry

    listed = {row["name"]: row for row in json.loads(runner.invoke(app, ["encoders", "list", "--json"]).stdout)}
    assert listed["tiny-random-text"]["installed"] is True  # needs no package
    spec = registry.EncoderSpec("ghost", "text", "not a real package", "pip install ghost", lambda: None,
                                ("iisan-no-such-package",))
    monkeypatch.setitem(registry.REGISTRY, "ghost", spec)
    listed = {row["name"]: row for row in json.loads(runner.invoke(app, ["encoders", "list", "--json"]).stdout)}
    assert listed["ghost"]["installed"] is False
    table = runner.invoke(app, ["encoders", "list"]).stdout
    assert "installed" in table and "no" in table
