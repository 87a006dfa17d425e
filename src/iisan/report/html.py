"""``iisan report``: one self-contained HTML page comparing trained runs and benchmarks.

Sections: training curves (loss and validation NDCG@10 per epoch, every run on the same
axes, embedded as PNG), final metrics (every computed cut-off, one table per split), the
efficiency tables of ``iisan bench efficiency`` output folders (or of an
``efficiency.json`` inside a run folder), and each run's configuration (options that differ
between runs first, paths shortened to the part that differs, the whole tree folded
below). No external files, scripts or fonts.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iisan.config import ScoreConfig, TrainConfig
from iisan.errors import ConfigError, DatasetError
from iisan.evaluation.metrics import metric_label
from iisan.fileio import write_bytes_atomic
from iisan.methods import get_method
from iisan.run.files import read_run_config

SPLIT_ORDER = ("valid", "test", "test_with_history", "valid_with_history")


@dataclass
class RunRecord:
    name: str
    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    efficiency: Any | None


@dataclass
class BenchRecord:
    name: str
    path: Path
    report: Any


def load_bench(path: Path) -> BenchRecord:
    """An ``iisan bench efficiency`` output folder (its ``efficiency.json``).

    Raises:
        DatasetError: the file cannot be read.
    """
    try:
        report = json.loads((path / "efficiency.json").read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path / 'efficiency.json'}: cannot read it ({err})") from err
    return BenchRecord(path.name or str(path), path, report)


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


def build_report(folders: list[Path]) -> str:
    """The report's HTML for run folders and benchmark folders, in any mix (names made
    unique if two folders share one).

    Raises:
        DatasetError: a folder that is neither a run nor a benchmark's output.
    """
    if not folders:
        raise DatasetError("give at least one run folder")
    records: list[RunRecord] = []
    benches: list[BenchRecord] = []
    for folder in map(Path, folders):
        if not (folder / "config.json").is_file() and (folder / "efficiency.json").is_file():
            benches.append(load_bench(folder))
        else:
            records.append(load_run(folder))
    everything = [*records, *benches]
    names = [r.name for r in everything]
    for record in everything:
        if names.count(record.name) > 1:
            record.name = str(record.path)
    sections = []
    if records:
        sections += [_section("curves", "Training curves", _curves(records)),
                     _section("metrics", "Final metrics", _metrics_tables(records))]
    benches += [BenchRecord(r.name, r.path, r.efficiency) for r in records if r.efficiency is not None]
    if benches:
        sections.append(_section("efficiency", "Efficiency", _efficiency(benches)))
    if records:
        sections.append(_section("configuration", "Configuration", _configuration(records)))
    title = f"iisan report: {', '.join(r.name for r in everything)}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(runs: list[Path], out: Path) -> Path:
    write_bytes_atomic(out, build_report(runs).encode("utf-8"))
    return out


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}"
    ".scroll{max-width:100%;overflow-x:auto}"
    "table{border-collapse:collapse;margin:.5em 0;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}"
    "td{white-space:nowrap}td.wrap{white-space:normal;overflow-wrap:anywhere}"
    "th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}"
    "img{max-width:100%}pre{background:#f7f7f7;padding:.6em;overflow:auto;white-space:pre-wrap}.same{color:#888}"
    ".note{color:#555;font-size:90%}"
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _table(header: list[str], rows: list[list[str]], wrap: bool = False) -> str:
    """Numbers never break inside; with ``wrap`` (long values such as paths) cells may, anywhere."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    td = '<td class="wrap">' if wrap else "<td>"
    body = "".join("<tr>" + "".join(f"{td}{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


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
        # Relative to the run's first epoch: an in-batch and a full-catalogue softmax have losses
        # of different scales, which one absolute axis would make look comparable.
        first = record.epochs[0]["loss"] or 1.0
        loss_axes.plot(epochs, [e["loss"] / first for e in record.epochs], marker=".", label=record.name)
        ndcg_axes.plot(epochs, [e.get("valid", {}).get("ndcg@10", float("nan")) for e in record.epochs],
                       marker=".", label=record.name)
        best = [e["epoch"] for e in record.epochs if e.get("best")]
        if best:
            ndcg_axes.axvline(best[-1], color=ndcg_axes.lines[-1].get_color(), alpha=0.3, linestyle="--")
    from matplotlib.ticker import MaxNLocator

    loss_axes.set(title="training loss, relative to the first epoch", xlabel="epoch", ylabel="loss / epoch-1 loss")
    ndcg_axes.set(title="validation NDCG@10 (dashed: best epoch)", xlabel="epoch", ylabel="NDCG@10")
    for axes in (loss_axes, ndcg_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if plotted:
        ndcg_axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    note = "" if plotted else "<p>No epoch has been logged yet.</p>"
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'{note}<img alt="training curves" src="data:image/png;base64,{data}">'


def _metrics_tables(records: list[RunRecord]) -> str:
    """One table per split: a row per metric (every cut-off computed), a column per run."""
    splits = [s for s in SPLIT_ORDER if any(s in r.metrics for r in records)]
    # Other keys that hold metrics (a split evaluated later); not the blend's weights.
    splits += sorted({s for r in records for s, v in r.metrics.items() if isinstance(v, dict) and "mrr" in v}
                     - set(splits))
    if not splits:
        return "<p>No run has been evaluated yet.</p>"
    runs = ["", *[r.name for r in records]]
    overview = [["method", *[_e(r.config["train"].get("method", "")) for r in records]],
                ["epochs run", *[str(len(r.epochs)) for r in records]],
                ["best epoch", *[next((str(e["epoch"]) for e in reversed(r.epochs) if e.get("best")), "-")
                                 for r in records]]]
    parts = [_table(runs, overview)]
    for split in splits:
        names = sorted(dict.fromkeys(m for r in records for m, v in r.metrics.get(split, {}).items()
                                     if isinstance(v, float)), key=_metric_order)
        rows = [[_e(metric_label(name)), *[f"{r.metrics[split][name]:.4f}" if name in r.metrics.get(split, {})
                                            else "-" for r in records]] for name in names]
        parts.append(f"<h3>{_e(split.replace('_', ' '))}</h3>" + _table(["metric", *runs[1:]], rows))
        slice_rows = _slice_rows(records, split)
        if slice_rows:
            parts.append(f"<h4>{_e(split.replace('_', ' '))}, by slice of the target</h4>"
                         + _table(["slice", *runs[1:]], slice_rows))
        exposure_rows = _exposure_rows(records, split)
        if exposure_rows:
            parts.append(f"<h4>{_e(split.replace('_', ' '))}, what the top-10 lists reach</h4>"
                         + _table(["share", *runs[1:]], exposure_rows))
    note = ('<p class="note">Full ranking over every item; the history is excluded unless the split says '
            '"with history"; ties count against the model. Slices: how often the target occurs in the '
            'training part, cold 0 times, tail 1-4, head 5 or more; an item\'s slice for the top-10 lists '
            'by its own count (<code>iisan evaluate</code> records them).</p>')
    return note + "\n".join(parts)


def _slice_rows(records: list[RunRecord], split: str) -> list[list[str]]:
    """Users, NDCG@10 and HR@10 of each popularity slice (runs saved before slices: "-")."""
    from iisan.evaluation.slices import SLICE_NAMES

    def cell(record: RunRecord, name: str, key: str) -> str:
        value = record.metrics.get(split, {}).get("slices", {}).get(name, {}).get(key)
        return "-" if value is None else f"{value:,}" if key == "users" else f"{value:.4f}"

    if not any("slices" in r.metrics.get(split, {}) for r in records):
        return []
    return [[_e(f"{name} {label}"), *[cell(r, name, key) for r in records]]
            for name in SLICE_NAMES for key, label in (("users", "users"), ("ndcg@10", "NDCG@10"), ("hr@10", "HR@10"))]


def _exposure_rows(records: list[RunRecord], split: str) -> list[list[str]]:
    """The catalogue's share in the top-10 lists, and each item slice's share of their places
    and of the catalogue (runs not scored by ``iisan evaluate`` since it records them: "-")."""
    from iisan.evaluation.exposure import EXPOSURE_K
    from iisan.evaluation.slices import SLICE_NAMES

    key = f"exposure@{EXPOSURE_K}"
    if not any(key in r.metrics.get(split, {}) for r in records):
        return []

    def cell(record: RunRecord, *path: str) -> str:
        value = record.metrics.get(split, {}).get(key)
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        return "-" if value is None else f"{value:.1%}"

    rows = [["catalogue reached", *[cell(r, "reached") for r in records]]]
    rows += [[f"{name} items: {part}", *[cell(r, name, field) for r in records]]
             for name in SLICE_NAMES for part, field in (("share of the places", "places"),
                                                         ("share of the catalogue", "catalogue"))]
    return rows


def _metric_order(name: str) -> tuple[int, int]:
    """By cut-off, then HR, NDCG, MRR; MRR over the whole ranking last."""
    kind, _, cut = name.partition("@")
    order = ("hr", "ndcg", "mrr")
    return (int(cut) if cut.isdigit() else 10**9, order.index(kind) if kind in order else len(order))


def _efficiency(benches: list[BenchRecord]) -> str:
    """Each benchmark's table formatted as the bench prints it (units in the headers)."""
    from iisan.efficiency import report_notes, table_rows

    parts = []
    for bench in benches:
        try:
            header, rows = table_rows(bench.report)
            notes = report_notes(bench.report)
        except (KeyError, TypeError, ValueError, AttributeError):  # an older or hand-made file: as it is
            parts.append(f"<h3>{_e(bench.name)}</h3><pre>{_e(json.dumps(bench.report, indent=2))}</pre>")
            continue
        parts.append(f"<h3>{_e(bench.name)}</h3>" + _table(header, [[_e(c) for c in row] for row in rows])
                     + "".join(f'<p class="note">{_e(n)}</p>' for n in notes))
    return "\n".join(parts)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _shortened(paths: list[str | None]) -> list[str | None]:
    """Paths without the folders they all share (``…`` marks the cut); unchanged for one."""
    real = [Path(p).parts for p in paths if p]
    if len(real) < 2:
        return paths
    shared = 0
    while all(len(p) > shared + 1 for p in real) and len({p[shared] for p in real}) == 1:
        shared += 1
    return [str(Path("…", *Path(p).parts[shared:])) if p and shared else p for p in paths]


NOT_APPLICABLE = "n/a"


def _train_config(train: dict[str, Any]) -> TrainConfig | None:
    """A run's training configuration as this version reads it (runs of any version compare
    key by key), or ``None`` for one it cannot read."""
    try:
        return TrainConfig.from_json(train)
    except (ConfigError, TypeError):
        return None


def _unused_options(config: TrainConfig | None, flat: dict[str, Any]) -> list[str]:
    """The flattened option keys that the run's method and loss never read."""
    if config is None:  # a run this version cannot read: show everything
        return []
    method = get_method(config.method)
    unused = [k for k in flat if k.startswith("train.side.")] if not method.needs_cache else []
    if config.loss != "sampled":
        unused.append("train.negatives")
    if not config.content.id_offset:
        unused.append("train.method_options.id_offset_lr")
    if not config.content.blend:
        unused += [f"train.score.{f.name}" for f in dataclasses.fields(ScoreConfig)]
    return [k for k in unused if k in flat]


def _configuration(records: list[RunRecord]) -> str:
    configs = [_train_config(r.config.get("train", {})) for r in records]
    flat = [_flatten({"train": c.to_json() if c else r.config.get("train", {}), **{
        key: r.config.get(key) for key in ("dataset", "cache", "num_items")}}) for c, r in zip(configs, records)]
    for key in ("dataset", "cache"):
        for f, short in zip(flat, _shortened([f.get(key) for f in flat])):
            f[key] = short
    keys = sorted({k for f in flat for k in f} - {"train.method_options"})  # None: a method without options
    for config, f in zip(configs, flat):  # options the run's method never reads: not a difference
        for key in [*_unused_options(config, f), *(k for k in keys if k not in f)]:
            f[key] = NOT_APPLICABLE
    differing = [k for k in keys
                 if len({json.dumps(f.get(k)) for f in flat if f.get(k) != NOT_APPLICABLE}) > 1]
    same = [k for k in keys if k not in differing]
    header = ["option"] + [r.name for r in records]
    def cell(value: Any) -> str:
        return _e(value) if value == NOT_APPLICABLE else _e(json.dumps(value, ensure_ascii=False))

    rows = [[_e(k)] + [cell(f.get(k)) for f in flat] for k in differing]
    rows += [[f'<span class="same">{_e(k)}</span>'] + [f'<span class="same">{cell(f.get(k))}</span>' for f in flat]
             for k in same]
    verb = "option differs" if len(differing) == 1 else "options differ"
    lead = (f"<p>{len(differing)} {verb} between the runs (listed first); the rest are grey.</p>"
            if len(records) > 1 else "")
    full = "".join(f"<details><summary>{_e(r.name)}: config.json</summary><pre>{_e(json.dumps(r.config, indent=2))}"
                   "</pre></details>" for r in records)
    return lead + _table(header, rows, wrap=True) + full
