"""Rich renderings of prepare's problem report and of dataset stats (the CLI prints them)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from iisan.data.problems import Problems


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
        table.add_row(kind, f"{entry['count']:,}", examples)
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
    counts, lengths, pop, mod = stats["counts"], stats["sequence_length"], stats["popularity"], stats["modalities"]
    overview = Table(title=f"{stats['dataset']}" + (" (synthetic)" if stats["synthetic"] else ""),
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
        head.add_row(str(row["item_id"]), str(row["key"]), f"{row['count']:,}", row["text"] or "")
    return Group(overview, histogram, head)
