"""iisan report: a self-contained HTML page with curves, metrics and configuration."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

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
    (second / "efficiency.json").write_text(json.dumps([{"method": "iisan-cached", "step_s": 0.02}]))
    return first, second


def test_report_has_every_section_and_embedded_curves(two_runs, tmp_path):
    out = write_report(list(two_runs), tmp_path / "report.html")
    page = Collector()
    page.feed(out.read_text())
    assert page.sections == ["curves", "metrics", "efficiency", "configuration"]
    assert not page.external  # self-contained
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((two_runs[0] / "metrics.json").read_text())
    assert f"{metrics['test']['ndcg@10']:.4f}" in page.cells and "run-a" in page.cells and "run-b" in page.cells
    assert "train.lr" in page.cells and "iisan-cached" in page.cells
    assert "1 option differs" in out.read_text()


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
