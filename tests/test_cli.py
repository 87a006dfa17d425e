"""One CLI run per command, and help that teaches."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from iisan.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["prepare"], ["data", "synth"], ["data", "stats"]])
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
