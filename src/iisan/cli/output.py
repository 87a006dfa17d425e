"""What the commands print: rich tables of results, and JSON for ``--json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

stdout = Console()
stderr = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n")


def show(result: Any, as_json: bool, render: Callable[[Any], RenderableType]) -> None:
    """``result`` as JSON (``--json``), or as ``render`` draws it for a person."""
    if as_json:
        print_json(result)
    else:
        stdout.print(render(result), highlight=False)


def lines(*parts: RenderableType | None) -> Group:
    """The parts one under another, leaving out the empty ones."""
    return Group(*(part for part in parts if part))


def table(title: str | None, columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> Table:
    """A left-titled table whose long cells fold instead of truncating; ``right``-aligned columns."""
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        out.add_row(*row)
    return out


def metrics_table(results: dict[str, dict[str, Any]], title: str) -> Group:
    """One row per metric, one column per split or slice: narrow at any number of cut-offs;
    the title above, full width (a narrow table would wrap it into its own width)."""
    from iisan.evaluation.metrics import metric_label

    names = [name for name, value in next(iter(results.values())).items() if isinstance(value, float)]
    rows = [[metric_label(name), *(f"{m[name]:.4f}" if name in m else "-" for m in results.values())]
            for name in names]
    return Group(Text(title, style="italic"), table(None, ["metric", *results], rows, right=tuple(results)))


def slice_columns(metrics: dict[str, Any], slices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``all`` and one column per popularity slice, each headed with its user count."""
    total = sum(s["users"] for s in slices.values())
    return {f"all ({total:,})": metrics, **{f"{name} ({s['users']:,})": s for name, s in slices.items()}}


def ranked_items(title: str, items: list[dict[str, Any]]) -> Table:
    """Ranked items; those added after training are marked (a column only when there are some)."""
    marked = any(item.get("added") for item in items)
    rows = [[str(rank), item["key"], item["title"] or "", f"{item['score']:.3f}",
             *(["yes" if item.get("added") else ""] if marked else [])]
            for rank, item in enumerate(items, start=1)]
    columns = ["#", "key", "title", "score", *(["added"] if marked else [])]
    return table(title, columns, rows, right=("#", "score"))


def encode_summary(summary: dict[str, Any], out: Path) -> Table:
    rows = [[modality, row["encoder"], str(row["layers"]), str(row["hidden_size"]),
             f"{row['rows_encoded']:,}",
             f"{row['rows_already_done']:,}",
             f"{row['items_per_second']:,.1f}" if row["items_per_second"] else "-"]
            for modality, row in summary["modalities"].items()]
    numbers = ("layers", "width", "encoded now", "already done", "items/s")
    return table(f"Hidden-state cache {out}", ["modality", "encoder", *numbers], rows, right=numbers)


def efficiency(report: dict[str, Any], out: Path) -> Group:
    from iisan.efficiency import TERMINAL_COLUMNS, memory_label, report_device, table_rows

    header, rows = table_rows(report, TERMINAL_COLUMNS)
    out_table = Table(title=f"Training efficiency ({report_device(report)}; memory: {memory_label(report)}); "
                            "every column is in efficiency.csv", title_justify="left")
    measured = [row for row in rows if not row[1].startswith("failed:")]  # an error may wrap
    for n, column in enumerate(header):
        # Cells never break (a column is as wide as its widest value); headers stack their words.
        width = max((len(row[n]) for row in measured), default=len(column))
        out_table.add_column(column.replace(" ", "\n"), justify="left" if n == 0 else "right",
                             min_width=width)
    for row in rows:
        out_table.add_row(*row)
    build = report["cache_build_seconds"] is not None and (
        f"cache build (one-off): {report['cache_build_seconds']:.1f} s = "
        f"{report['cache_build_seconds_per_epoch']:.1f} s per epoch over "
        f"{report['settings']['typical_epochs']} epochs")
    return lines(out_table, build, f"wrote {out}/efficiency.csv, .json, .md, .png")


def encoders(rows: list[dict[str, Any]]) -> Table:
    cells = [[r["name"], r["modality"], "yes" if r["installed"] else "no", r["description"], r["install"]]
             for r in rows]
    return table("Encoders (any local Hugging Face folder works too)",
                 ["name", "modality", "installed", "description", "install"], cells)


def trained(summary: dict[str, Any], out: Path, splits: tuple[str, ...]) -> Group:
    return lines(f"{summary['method']} ({summary['mode']}): {summary['epochs']} epochs, best "
                 f"{summary['best_epoch']}, {summary['seconds_per_epoch']} s/epoch, "
                 f"{summary['trainable_parameters']:,} trainable of {summary['total_parameters']:,} "
                 f"parameters",
                 metrics_table({split: summary[split] for split in splits}, f"Run {out}"))


def evaluated(result: dict[str, Any], run: Path, config: Any, slices: bool) -> Group:
    from iisan.evaluation.evaluate import metrics_key
    from iisan.evaluation.slices import SLICE_NAMES as SLICES

    columns = (slice_columns(result["metrics"], result["slices"]) if slices
               else {metrics_key(config.split, config.include_history, config.unblended): result["metrics"]})
    reach = result["exposure"]
    shares = {part: " / ".join(f"{reach[name][part]:.1%}" for name in SLICES)
              for part in ("places", "catalogue")}
    return lines(metrics_table(columns, f"{run}: {result['users']:,} users x {result['items']:,} items, full "
                                        f"ranking ({result['seconds']:.1f} s on {result['device']})"),
                 f"Top-{reach['k']} lists: they reach {reach['reached']:.1%} of the catalogue; their places "
                 f"go to {' / '.join(SLICES)} items {shares['places']} (the catalogue: {shares['catalogue']})")


def cold_start(result: dict[str, Any], run: Path) -> Group:
    reach = result["exposure"]
    return lines(f"{run}: {result['users']:,} users whose next item was one of {result['new_items']:,} added "
                 f"after training; full ranking over {result['items']:,} items ({result['seconds']:.1f} s)",
                 metrics_table({"cold start": result["metrics"]}, "Item cold start"),
                 f"Top-{reach['k']} lists: the added items take {reach['places']:.1%} of the places "
                 f"({reach['catalogue']:.1%} of the catalogue); {reach['users_shown_one']:.1%} of these "
                 f"users are shown at least one")


def quickstart(result: dict[str, Any], out: Path) -> Group:
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result["seconds"].items())
    counts = result["counts"]
    return lines(f"{result['dataset']}: {counts['users']:,} users, {counts['items']:,} items (text only: no "
                 f"images). Trained {result['epochs']} epochs, best {result['best_epoch']}.",
                 metrics_table({"test": result["test"]}, "Test, full ranking"),
                 f"User {result['user']} recently watched:",
                 *(Text(f"  {item['title']}") for item in result["history"]),
                 ranked_items(f"Top {len(result['recommendations'])} next items for user {result['user']}",
                              result["recommendations"]),
                 f"Everything is in {out} ({steps}). Next: iisan serve {Path(out) / 'run'}")


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"
