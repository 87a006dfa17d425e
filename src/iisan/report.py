"""``iisan report``: one self-contained HTML page comparing trained runs.

Sections: training curves (loss and validation NDCG@10 per epoch, every run on the same
axes, embedded as PNG), final metrics, the efficiency table when a run folder holds an
``efficiency.json``, and each run's configuration (options that differ between runs
first, the whole tree folded below). No external files, scripts or fonts.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iisan.checkpoint import read_run_config
from iisan.errors import DatasetError
from iisan.fileio import write_bytes_atomic

METRIC_COLUMNS = ("hr@10", "ndcg@10", "mrr")
SPLIT_ORDER = ("valid", "test", "test_with_history", "valid_with_history")


@dataclass
class RunRecord:
    name: str
    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    efficiency: Any | None


def load_run(path: Path) -> RunRecord:
    """Read what a report shows from a run folder.

    Raises:
        DatasetError: not a run folder, or a damaged metrics file.
    """
    config = read_run_config(path)
    try:
        log = path / "metrics.jsonl"
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
        efficiency = (json.loads((path / "efficiency.json").read_text())
                      if (path / "efficiency.json").is_file() else None)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read its metrics ({err})") from err
    return RunRecord(path.name or str(path), path, config, epochs, metrics, efficiency)


def build_report(runs: list[Path]) -> str:
    """The report's HTML for ``runs`` (names made unique if two folders share one)."""
    if not runs:
        raise DatasetError("give at least one run folder")
    records = [load_run(Path(run)) for run in runs]
    names = [r.name for r in records]
    for record in records:
        if names.count(record.name) > 1:
            record.name = str(record.path)
    sections = [
        _section("curves", "Training curves", _curves(records)),
        _section("metrics", "Final metrics", _metrics_table(records)),
    ]
    if any(r.efficiency is not None for r in records):
        sections.append(_section("efficiency", "Efficiency", _efficiency(records)))
    sections.append(_section("configuration", "Configuration", _configuration(records)))
    title = f"iisan report: {', '.join(r.name for r in records)}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(runs: list[Path], out: Path) -> Path:
    write_bytes_atomic(out, build_report(runs).encode("utf-8"))
    return out


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}"
    "img{max-width:100%}pre{background:#f7f7f7;padding:.6em;overflow:auto}.same{color:#888}"
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _curves(records: list[RunRecord]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    from matplotlib import pyplot as plt

    figure, (loss_axes, ndcg_axes) = plt.subplots(1, 2, figsize=(11, 3.8))
    plotted = False
    for record in records:
        epochs = [e["epoch"] for e in record.epochs]
        if not epochs:
            continue
        plotted = True
        loss_axes.plot(epochs, [e["loss"] for e in record.epochs], marker=".", label=record.name)
        ndcg_axes.plot(epochs, [e.get("valid", {}).get("ndcg@10", float("nan")) for e in record.epochs],
                       marker=".", label=record.name)
        best = [e["epoch"] for e in record.epochs if e.get("best")]
        if best:
            ndcg_axes.axvline(best[-1], color=ndcg_axes.lines[-1].get_color(), alpha=0.3, linestyle="--")
    loss_axes.set(title="training loss", xlabel="epoch")
    ndcg_axes.set(title="validation NDCG@10 (dashed: best epoch)", xlabel="epoch")
    for axes in (loss_axes, ndcg_axes):
        axes.grid(alpha=0.3)
    if plotted:
        ndcg_axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    note = "" if plotted else "<p>No epoch has been logged yet.</p>"
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'{note}<img alt="training curves" src="data:image/png;base64,{data}">'


def _metrics_table(records: list[RunRecord]) -> str:
    splits = [s for s in SPLIT_ORDER if any(s in r.metrics for r in records)]
    splits += sorted({s for r in records for s in r.metrics} - set(splits))
    if not splits:
        return "<p>No run has been evaluated yet.</p>"
    header = ["run", "method", "epochs", "best epoch"] + [f"{s} {m}" for s in splits for m in METRIC_COLUMNS]
    rows = []
    for record in records:
        best = [e["epoch"] for e in record.epochs if e.get("best")]
        cells = [_e(record.name), _e(record.config["train"].get("method", "")), str(len(record.epochs)),
                 str(best[-1]) if best else "-"]
        for split in splits:
            values = record.metrics.get(split, {})
            cells += [f"{values[m]:.4f}" if m in values else "-" for m in METRIC_COLUMNS]
        rows.append(cells)
    return _table(header, rows)


def _efficiency(records: list[RunRecord]) -> str:
    parts = []
    for record in records:
        if record.efficiency is None:
            continue
        rows = record.efficiency if isinstance(record.efficiency, list) else record.efficiency.get("methods", [])
        if not rows or not isinstance(rows[0], dict):
            parts.append(f"<h3>{_e(record.name)}</h3><pre>{_e(json.dumps(record.efficiency, indent=2))}</pre>")
            continue
        header = list(rows[0])
        parts.append(f"<h3>{_e(record.name)}</h3>" + _table(header, [[_e(row.get(h, "")) for h in header] for row in rows]))
    return "\n".join(parts)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _configuration(records: list[RunRecord]) -> str:
    flat = [_flatten({"train": r.config.get("train", {}), "dataset": r.config.get("dataset"),
                      "cache": r.config.get("cache"), "num_items": r.config.get("num_items")}) for r in records]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    same = [k for k in keys if k not in differing]
    header = ["option"] + [r.name for r in records]
    rows = [[_e(k)] + [_e(json.dumps(f.get(k))) for f in flat] for k in differing]
    rows += [[f'<span class="same">{_e(k)}</span>'] + [f'<span class="same">{_e(json.dumps(f.get(k)))}</span>'
                                                       for f in flat] for k in same]
    verb = "option differs" if len(differing) == 1 else "options differ"
    lead = (f"<p>{len(differing)} {verb} between the runs (listed first); the rest are grey.</p>"
            if len(records) > 1 else "")
    full = "".join(f"<details><summary>{_e(r.name)}: config.json</summary><pre>{_e(json.dumps(r.config, indent=2))}"
                   "</pre></details>" for r in records)
    return lead + _table(header, rows) + full
