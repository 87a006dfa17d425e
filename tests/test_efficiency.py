"""iisan bench efficiency: every method in its own process, same batches, files and chart."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from iisan.cli import app
from iisan.efficiency import EfficiencyConfig, tpme
from iisan.errors import ConfigError


def test_tpme_is_the_weighted_sum_of_min_max_normalised_columns():
    rows = [
        {"seconds_per_step": 1.0, "trainable_parameters": 100, "footprint_mb": 1000.0},
        {"seconds_per_step": 0.1, "trainable_parameters": 10, "footprint_mb": 100.0},
        {"seconds_per_step": 0.55, "trainable_parameters": 100, "footprint_mb": 100.0},
    ]
    scores = tpme(rows, "footprint_mb")
    assert scores[0] == pytest.approx(1.0)  # worst on everything
    assert scores[1] == pytest.approx(0.0)  # best on everything
    assert scores[2] == pytest.approx(0.45 * 0.5 + 0.1 * 1.0 + 0.45 * 0.0)


def test_unknown_methods_are_refused():
    with pytest.raises(ConfigError, match="methods must be one of .*, got .qlora."):
        EfficiencyConfig(methods=("fft", "qlora"))


# Slow: about 30 s, a subprocess per method; the failing-method test below keeps the bench
# in the default run.
@pytest.mark.slow
def test_bench_efficiency_writes_its_files(tiny_multimodal, tmp_path):
    dataset, _ = tiny_multimodal
    out = tmp_path / "eff"
    result = CliRunner().invoke(app, [
        "bench", "efficiency", str(dataset), "--out", str(out), "--methods", "fft,lora,iisan-cached",
        "--steps", "2", "--train-batch-size", "8", "--image-size", "32", "--text-encoder", "tiny-random-text",
        "--image-encoder", "tiny-random-image", "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cache_build_seconds"] > 0  # the cache was built, and timed
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == ["fft", "lora", "iisan-cached"]
    assert report["settings"]["modality"] == "intra_inter"  # the data has images
    # Counted from the models: fft trains (nearly) everything; the cached side network holds no encoder.
    assert rows["fft"]["trainable_parameters"] > 0.95 * rows["fft"]["total_parameters"]
    assert rows["fft"]["trainable_parameters"] > rows["lora"]["trainable_parameters"]
    assert rows["lora"]["trainable_parameters"] < rows["lora"]["total_parameters"]
    assert rows["iisan-cached"]["total_parameters"] < rows["fft"]["total_parameters"]
    for row in rows.values():
        assert row["seconds_per_step"] > 0 and row["peak_rss_mb"] > row["footprint_mb"] > 0
        assert 0.0 <= row["tpme"] <= 1.0
    assert rows["fft"]["speedup_vs_fft"] == pytest.approx(1.0)

    for name in ("efficiency.json", "efficiency.csv", "efficiency.md", "efficiency.png"):
        assert (out / name).is_file(), name
    with open(out / "efficiency.csv", encoding="utf-8") as handle:
        assert [r["method"] for r in csv.DictReader(handle)] == ["fft", "lora", "iisan-cached"]
    assert "| method |" in (out / "efficiency.md").read_text()
    with Image.open(out / "efficiency.png") as chart:
        assert chart.format == "PNG" and chart.width > 500


def test_a_failing_method_becomes_a_row_and_the_others_are_still_measured(tiny_multimodal, tmp_path):
    """fft loads its encoder from the folder the cache names; changed weights stop it
    (the cache no longer matches), while the cached side network needs no encoder."""

    from iisan.cache.encode import encode
    from iisan.config import EncodeConfig
    from iisan.encoders.tiny import build_tiny_encoder

    dataset, _ = tiny_multimodal
    folder = build_tiny_encoder(tmp_path / "encoder", "text", seed=1)
    cache = tmp_path / "cache"
    encode(dataset, cache, EncodeConfig(text_encoder=str(folder), image_encoder=None, pooling="mean"), device="cpu")
    build_tiny_encoder(folder, "text", seed=2)  # other weights in the same folder
    out = tmp_path / "eff"
    result = CliRunner().invoke(app, [
        "bench", "efficiency", str(dataset), "--out", str(out), "--cache", str(cache), "--methods", "fft,iisan-cached",
        "--steps", "2", "--train-batch-size", "8", "--device", "cpu",
    ])
    assert result.exit_code == 1, result.output
    assert "fft failed" in result.output and "Traceback" not in result.output
    report = json.loads((out / "efficiency.json").read_text())
    rows = {r["method"]: r for r in report["methods"]}
    assert report["failed"] == ["fft"]
    assert "weights changed" in rows["fft"]["error"] and "seconds_per_step" not in rows["fft"]
    assert rows["iisan-cached"]["seconds_per_step"] > 0 and rows["iisan-cached"]["tpme"] == 0.0
    for name in ("efficiency.csv", "efficiency.md", "efficiency.png"):
        assert (out / name).is_file(), name
    assert "failed: exit status" in (out / "efficiency.md").read_text()
