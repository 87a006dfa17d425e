"""--config FILE for train, encode and bench efficiency; a run's config.json reproduces it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from iisan.cli import app

runner = CliRunner()


def test_a_runs_config_json_trains_the_same_run_again(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    first = tmp_path / "first"
    # One thread for both runs: `auto` follows the machine's load, and another thread count
    # may round differently.
    trained = runner.invoke(app, ["--threads", "1", "train", str(dataset), "--cache", str(cache), "--out", str(first),
                                  "--epochs", "2",
                                  "--train-batch-size", "32", "--modality", "intra", "--layer-rule", "every_other",
                                  "--bottleneck", "8", "--seed", "7", "--lr", "0.002", "--no-id-offset",
                                  "--schedule", "cosine", "--warmup-epochs", "0.5", "--user-encoder", "recbole",
                                  "--json"])
    assert trained.exit_code == 0, trained.output
    options = json.loads((first / "config.json").read_text())["train"]
    assert (options["schedule"], options["warmup_epochs"], options["user"]["variant"]) == ("cosine", 0.5, "recbole")
    again = runner.invoke(app, ["--threads", "1", "train", "--config", str(first / "config.json"),
                                "--out", str(tmp_path / "again"),
                                "--json"])
    assert again.exit_code == 0, again.output
    saved = [json.loads((run / "config.json").read_text()) for run in (first, tmp_path / "again")]
    models = [json.loads((run / "model.json").read_text()) for run in (first, tmp_path / "again")]
    assert saved[0]["train"] == saved[1]["train"] and models[0] == models[1]
    assert json.loads(again.stdout)["test"] == json.loads(trained.stdout)["test"]  # same seed: the same run

    changed = runner.invoke(app, ["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "changed"),
                                  "--epochs", "1", "--json"])  # a flag overrides the file
    assert changed.exit_code == 0, changed.output
    assert json.loads((tmp_path / "changed" / "config.json").read_text())["train"]["epochs"] == 1


def test_yaml_and_toml_files_with_sections_and_flags_over_them(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    (tmp_path / "exp.yaml").write_text(
        f"dataset: {dataset}\ncache: {cache}\ntrain:\n  epochs: 1\n  batch_size: 32\n  seed: 3\n"
        "side:\n  modality: text\n  bottleneck: 4\n  layers: [0, 2]\nuser:\n  dropout: 0.2\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "exp.yaml"), "--out", str(run), "--seed", "5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["epochs"], saved["seed"], saved["side"]["bottleneck"], saved["side"]["layers"]) == (1, 5, 4, [0, 2])
    assert saved["side"]["modality"] == "text" and saved["user"]["dropout"] == 0.2

    (tmp_path / "encode.toml").write_text('[encode]\ntext_encoder = "tiny-random-text"\nimage_encoder = "none"\n'
                                          'pooling = "mean"\nmax_text_tokens = 12\n')
    encoded = runner.invoke(app, ["encode", str(dataset), "--out", str(tmp_path / "cache"), "--config",
                                  str(tmp_path / "encode.toml"), "--json"])
    assert encoded.exit_code == 0, encoded.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert list(manifest["encoders"]) == ["text"] and manifest["encoders"]["text"]["settings"]["max_text_tokens"] == 12


def _flat(output: str) -> str:
    """The error box's text on one line (rich wraps it to the terminal)."""
    return " ".join(output.replace("│", " ").split())


def test_config_file_mistakes_are_one_line_errors(tmp_path):
    (tmp_path / "typo.toml").write_text("epochz = 3\n")
    typo = runner.invoke(app, ["train", "data", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "typo.toml")])
    assert typo.exit_code == 2 and "has no option epochz" in _flat(typo.output) and "Traceback" not in typo.output
    # The keys it lists are the ones a file may use: the flags' spellings, not Python's names.
    assert "train_batch_size" in _flat(typo.output) and " json" in _flat(typo.output)
    assert "as_json" not in _flat(typo.output)
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    broken = runner.invoke(app, ["train", "data", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "broken.yaml")])
    assert broken.exit_code == 2 and "is not valid YAML" in _flat(broken.output)
    (tmp_path / "x.ini").write_text("")
    other = runner.invoke(app, ["encode", "data", "--out", "c", "--config", str(tmp_path / "x.ini")])
    assert other.exit_code == 2 and "use a .toml, .yaml, .yml or .json file" in _flat(other.output)


def test_a_config_value_of_the_wrong_type_is_named_by_its_key_in_the_file(tmp_path):
    # Checked as the file is read: the error names the file's key and value, not the flag
    # the value would have become.
    for text, entry in (('epochs = "ten"\n', "epochs = 'ten'"), ("[train]\nlr = [1, 2]\n", "lr = [1, 2]"),
                        ('method = "nope"\n', "method = 'nope'")):
        (tmp_path / "bad.toml").write_text(text)
        result = runner.invoke(app, ["train", "data", "--out", str(tmp_path / "r"), "--config",
                                     str(tmp_path / "bad.toml")])
        assert result.exit_code == 2, result.output
        assert f"--config': {entry}:" in _flat(result.output) and "Traceback" not in result.output
    (tmp_path / "good.toml").write_text('epochs = 3\nmethod = "id"\n')
    help_after = runner.invoke(app, ["train", "--config", str(tmp_path / "good.toml"), "--help"])
    assert help_after.exit_code == 0, help_after.output
