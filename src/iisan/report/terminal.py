"""Each command's result drawn as rich tables: what ``iisan`` prints without ``--json``.

Every function takes the result a library call returns (the same dict ``--json`` prints)
and returns a renderable; ``rich.print(trained(summary, run))`` shows it in a notebook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from iisan.config import SPLITS
from iisan.data.problems import Problems


def lines(*parts: RenderableType | None) -> Group:
    """The parts one under another, leaving out the empty ones; text shown as it is (a key or a
    title may hold ``[bold]``: it is data, not markup)."""
    return Group(*(Text(part) if isinstance(part, str) else part for part in parts if part))


def table(title: str | None, columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> Table:
    """A left-titled table whose long cells fold instead of truncating; ``right``-aligned columns."""
    out = Table(title=None if title is None else Text(title), title_justify="left")
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        out.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))  # data, never markup
    return out


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


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


def prepared(meta: dict[str, Any], problems: Problems, out: Path) -> Group:
    """``iisan prepare``: the dataset's counts, every problem found, where it went."""
    return lines(prepare_summary(meta), problems and problems_table(problems), f"wrote {out}")


def problems_table(problems: Problems) -> Table:
    """Kind, count and the first examples with their file and line."""
    table = Table(title=f"Input problems: {problems.total}", title_justify="left")
    table.add_column("kind", overflow="fold")
    table.add_column("count", justify="right", overflow="fold")
    table.add_column("first examples", overflow="fold")
    for kind, entry in problems.to_json().items():
        examples = "\n".join(
            f"{ex['file']}{':' + str(ex['line']) if ex['line'] is not None else ''}  {ex['detail']}"
            for ex in entry["examples"]
        )
        table.add_row(Text(kind), f"{entry['count']:,}", Text(examples))
    return table


def prepare_summary(meta: dict[str, Any]) -> Table:
    counts, filtered = meta["counts"], meta["filtered"]
    table = Table(title="Prepared dataset", title_justify="left", show_header=False)
    table.add_column(style="bold", overflow="fold")
    table.add_column(justify="right", overflow="fold")
    for name in ("users", "items", "interactions", "items_with_text", "items_with_image"):
        table.add_row(name.replace("_", " "), f"{counts[name]:,}")
    for name, value in filtered.items():
        table.add_row(f"filtered: {name.replace('_', ' ')}", f"{value:,}")
    table.add_row("fingerprint", meta["fingerprint"])
    return table


def stats_tables(stats: dict[str, Any], bar_width: int = 40) -> Group:
    counts, lengths = stats["counts"], stats["sequence_length"]
    pop, mod = stats["popularity"], stats["modalities"]
    overview = Table(title=Text(f"{stats['dataset']}" + (" (synthetic)" if stats["synthetic"] else "")),
                     title_justify="left", show_header=False)
    overview.add_column(style="bold", overflow="fold")
    overview.add_column(justify="right", overflow="fold")
    for name, value in counts.items():
        overview.add_row(name, f"{value:,}")
    overview.add_row("density", f"{stats['density']:.5f}")
    overview.add_row("sequence length min / mean / max",
                     f"{lengths['min']} / {lengths['mean']:.2f} / {lengths['max']}")
    overview.add_row("items with text", f"{mod['share_with_text']:.1%}")
    overview.add_row("items with image", f"{mod['share_with_image']:.1%}")
    overview.add_row("interactions on top 1% / 10% of items",
                     f"{pop['share_top_1pct']:.1%} / {pop['share_top_10pct']:.1%}")
    overview.add_row("items seen once", f"{pop['items_seen_once']:,}")

    histogram = Table(title="Sequence lengths", title_justify="left")
    histogram.add_column("length", justify="right", overflow="fold")
    histogram.add_column("users", justify="right", overflow="fold")
    histogram.add_column("", overflow="fold")
    peak = max(lengths["histogram"].values())
    for length, users in lengths["histogram"].items():
        histogram.add_row(str(length), f"{users:,}", "█" * max(1, round(bar_width * users / peak)))

    head = Table(title="Most popular items", title_justify="left")
    head.add_column("item_id", justify="right", no_wrap=True, min_width=7, overflow="fold")
    head.add_column("key", no_wrap=True, min_width=10, overflow="fold")
    head.add_column("count", justify="right", no_wrap=True, min_width=5, overflow="fold")
    head.add_column("text", overflow="ellipsis", no_wrap=True, max_width=40)
    for row in pop["head"]:
        head.add_row(str(row["item_id"]), Text(str(row["key"])), f"{row['count']:,}", Text(row["text"] or ""))
    return Group(overview, histogram, head)


def synthesized(out: Path, info: dict[str, Any]) -> str:
    return f"wrote synthetic source {out} ({info['items']:,} items, {info['users']:,} users)"


def encoded(summary: dict[str, Any], out: Path) -> Group:
    """``iisan encode``: per modality, rows encoded now and already done, and the speed."""
    rows = [[modality, row["encoder"], str(row["layers"]), str(row["hidden_size"]),
             f"{row['rows_encoded']:,}", f"{row['rows_already_done']:,}",
             f"{row['items_per_second']:,.1f}" if row["items_per_second"] else "-"]
            for modality, row in summary["modalities"].items()]
    numbers = ("layers", "width", "encoded now", "already done", "items/s")
    return lines(table(f"Hidden-state cache {out}", ["modality", "encoder", *numbers], rows, right=numbers),
                 summary["problems"] and f"problems: {summary['problems']}")


def merged(summary: dict[str, Any], out: Path) -> str:
    """``iisan encode --merge-check``."""
    return (f"merged {summary['shards']} shards into {out}: every row of "
            f"{', '.join(summary['modalities'])} is complete ({summary['items']:,} items)")


def encoders(rows: list[dict[str, Any]]) -> Table:
    cells = [[r["name"], r["modality"], "yes" if r["installed"] else "no", r["description"], r["install"]]
             for r in rows]
    return table("Encoders (any local Hugging Face folder works too)",
                 ["name", "modality", "installed", "description", "install"], cells)


def trained(summary: dict[str, Any], out: Path) -> Group:
    """``iisan train``: what ran, and the best epoch's metrics on each split."""
    seconds = summary["seconds_per_epoch"]
    trained = (f"{summary['epochs']} epochs, best {summary['best_epoch']}, {seconds} s/epoch" if seconds is not None
               else "nothing to train (evaluated as it is)")  # knn: no epoch ran
    return lines(f"{summary['method']} ({summary['mode']}): {trained}, "
                 f"{summary['trainable_parameters']:,} trainable of {summary['total_parameters']:,} "
                 f"parameters",
                 metrics_table({split: summary[split] for split in SPLITS}, f"Run {out}"))


def calibrated(result: dict[str, Any], run: Path) -> Group:
    """``iisan calibrate``: the weights per group of users, and the metrics with them."""
    blend = result["blend"]
    weights = ", ".join(f"{name} {values}" for name, values in {"floor": blend["alpha"], **blend["priors"]}.items())
    return lines(f"{run}: scorer fitted on {blend['users']:,} validation users in {result['seconds']:.1f} s "
                 f"({blend['select']}; whitened content {'kept' if blend['whitened'] else 'not kept'}); "
                 f"valid NDCG@10 {blend['valid_before']:.4f} without it, {blend['valid_after']:.4f} with it",
                 f"weights per group of users: {weights}",
                 metrics_table({split: result[split] for split in SPLITS}, f"Run {run}, calibrated"))


def evaluated(result: dict[str, Any], run: Path, config: Any, slices: bool) -> Group:
    from iisan.run_metrics import metrics_key
    from iisan.evaluation.slices import SLICE_NAMES as SLICES

    columns = (slice_columns(result["metrics"], result["slices"]) if slices
               else {metrics_key(config.split, config.include_history, config.unblended): result["metrics"]})
    reach = result["exposure"]
    shares = {part: " / ".join(f"{reach[name][part]:.1%}" for name in SLICES)
              for part in ("places", "catalogue")}
    return lines(metrics_table(columns, f"{run}: {result['users']:,} users x {result['items']:,} items, full "
                                        f"ranking ({result['seconds']:.1f} s on {result['device']})"),
                 f"Top-{reach['k']} lists: they reach {reach['reached']:.1%} of the catalogue; their places "
                 f"go to {' / '.join(SLICES)} items {shares['places']} "
                 f"(the catalogue: {shares['catalogue']})")


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


def recommended(rows: list[dict[str, Any]], history_length: int) -> Table:
    """``iisan recommend``: the ranked items, with titles and scores."""
    return ranked_items(f"Top {len(rows)} after {plural(history_length, 'item')}", rows)


def index_built(result: dict[str, Any]) -> str:
    recall = f"; recall@10 {result['recall@10']:.4f} against exact search" if "recall@10" in result else ""
    return (f"{result['index']} index over {result['items']:,} items in {result['seconds']} s: "
            f"{result['folder']}{recall}")


def index_recall(result: dict[str, Any]) -> str:
    recall = f"recall@{result['k']}"
    return (f"{result['index']} index, {result['items']:,} items: {recall} = {result[recall]:.4f} over "
            f"{result['queries']:,} queries")


def items_added(result: dict[str, Any]) -> str:
    return f"added {plural(result['added'], 'item')}; the catalogue now holds {result['items']:,}"


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
