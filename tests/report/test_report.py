"""iisan report: a self-contained HTML page with curves, metrics and configuration."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from iisan.errors import DatasetError
from iisan.report import build_report, write_report


class Collector(HTMLParser):
    """Section ids, image sources, table cells and external references of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.images, self.cells, self.external = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("script", "link") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.external.append(tag)
        if tag == "td":
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cells.append(self._cell)
            self._cell = None


@pytest.fixture
def two_runs(tiny_run, tmp_path):
    first, second = tmp_path / "run-a", tmp_path / "run-b"
    shutil.copytree(tiny_run, first)
    shutil.copytree(tiny_run, second)
    config = json.loads((second / "config.json").read_text())
    config["train"]["lr"] = 0.005  # a difference the configuration section must show
    (second / "config.json").write_text(json.dumps(config))
    (second / "efficiency.json").write_text(json.dumps(EFFICIENCY))
    return first, second


def _row(method: str, step: float, trainable: int, footprint: float) -> dict:
    return {"method": method, "device": "cpu", "seconds_per_step": step, "seconds_per_epoch": step * 63,
            "trainable_parameters": trainable, "total_parameters": trainable * 3, "peak_rss_mb": footprint + 400,
            "footprint_mb": footprint, "tpme": 0.5, "speedup_vs_fft": 5.439112342000044 / step,
            "memory_reduction_vs_fft": 5462.0 / footprint}


# What `iisan bench efficiency` writes (raw floats: the report formats them).
EFFICIENCY = {"dataset": "/data/synth", "cache": "/data/synth/cache", "memory_measure": "footprint_mb",
              "settings": {"batch_size": 16, "steps": 20, "modality": "intra_inter", "image_size": 112,
                           "typical_epochs": 20, "device": "cpu"},
              "cache_build_seconds": 36.4, "cache_build_seconds_per_epoch": 1.82, "failed": [],
              "methods": [_row("fft", 5.439112342000044, 44778560, 5462.0),
                          _row("iisan-cached", 0.0225, 1374031, 120.3)]}


def test_report_has_every_section_and_embedded_curves(two_runs, tmp_path):
    out = write_report(list(two_runs), tmp_path / "report.html")
    page = Collector()
    page.feed(out.read_text())
    assert page.sections == ["curves", "metrics", "efficiency", "configuration"]
    assert not page.external  # self-contained
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((two_runs[0] / "metrics.json").read_text())
    assert f"{metrics['test']['ndcg@10']:.4f}" in page.cells and "<th>run-a</th>" in out.read_text()
    assert "train.lr" in page.cells and "iisan-cached" in page.cells
    assert "1 option differs" in out.read_text()
    # Every computed cut-off, by name; efficiency numbers formatted, never raw floats.
    assert {"HR@5", "NDCG@20", "MRR@10", "MRR"} <= set(page.cells)
    assert "5.4391" in page.cells and "44,778,560" in page.cells and "5439112342" not in out.read_text()
    # Per-slice rows: user counts and NDCG@10 of each popularity slice, as training recorded them.
    cold = metrics["test"]["slices"]["cold"]
    assert {"cold users", "tail NDCG@10", "head HR@10"} <= set(page.cells)
    assert f"{cold['users']:,}" in page.cells
    assert "s/step" in out.read_text() and "Cache build (one-off): 36.4 s" in out.read_text()


def test_what_the_top_lists_reach_is_shown_for_runs_that_evaluate_scored(two_runs, tmp_path):
    from iisan.run_metrics import evaluate_run

    first, second = two_runs
    reach = evaluate_run(first)["exposure"]  # the second run keeps training's metrics: "-"
    page = Collector()
    page.feed(write_report([first, second], tmp_path / "report.html").read_text())
    assert "catalogue reached" in page.cells and f"{reach['reached']:.1%}" in page.cells
    assert {"cold items: share of the places", "head items: share of the catalogue"} <= set(page.cells)
    assert f"{reach['tail']['places']:.1%}" in page.cells and "-" in page.cells


def test_benchmark_folders_and_runs_in_one_report_with_paths_shortened(two_runs, tmp_path):
    bench = tmp_path / "eff"
    bench.mkdir()
    (bench / "efficiency.json").write_text(json.dumps(EFFICIENCY))
    page = Collector()
    page.feed(build_report([*two_runs, bench]))
    assert page.sections == ["curves", "metrics", "efficiency", "configuration"]
    assert "22.4" in "".join(page.cells) or "241.7x" in page.cells  # fft's step / iisan's, formatted
    only_bench = Collector()
    only_bench.feed(build_report([bench]))
    assert only_bench.sections == ["efficiency"]
    # Two runs on datasets in different folders: only the differing tail of each path is shown.
    config = json.loads((two_runs[1] / "config.json").read_text())
    dataset = config["dataset"]
    config["dataset"] = str(Path(dataset).parent / "other-data")
    (two_runs[1] / "config.json").write_text(json.dumps(config))
    cells = Collector()
    cells.feed(build_report(list(two_runs)))
    shown = [c for c in cells.cells if c.endswith('/other-data"') or c.endswith(f'/{Path(dataset).name}"')]
    assert len(shown) == 2 and all(c.startswith('"…/') for c in shown), shown


def test_a_single_unevaluated_run_still_renders(tiny_run, tmp_path):
    run = tmp_path / "fresh"
    shutil.copytree(tiny_run, run)
    (run / "metrics.json").unlink()
    (run / "metrics.jsonl").write_text("")
    html = build_report([run])
    assert "No run has been evaluated yet" in html and "No epoch has been logged yet" in html
    assert 'id="efficiency"' not in html


def test_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not a run directory"):
        build_report([tmp_path])


def test_options_a_method_never_reads_are_not_differences(two_runs, tmp_path):
    """issue 30: an id run's side-network options showed up as differences from an IISAN run."""
    first, second = two_runs
    config = json.loads((second / "config.json").read_text())
    config["train"].update(method="id", lr=config["train"]["lr"])
    config["train"]["side"]["modality"] = "text"  # what an id run may carry, never reads
    config["train"]["negatives"] = 7  # read only by the sampled loss
    (second / "config.json").write_text(json.dumps(config))
    page = write_report([first, second], tmp_path / "report.html").read_text()
    assert "2 options differ" in page  # train.method and train.lr, not side.* nor negatives
    assert page.count("n/a") >= 2
