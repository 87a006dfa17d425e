"""The ``iisan`` command line: parse options, build a config, call one library function.

Library code raises :class:`~iisan.errors.IisanError`; here, and only here, it becomes a
one-line message on stderr and an exit code (2 for bad input or options, 1 for an
internal error, 130 for Ctrl-C). ``IISAN_DEBUG=1`` re-raises for a full traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from iisan import __version__
from iisan.config import (
    COMPACT_HEAD_FROM, DEVICES, DTL_KINDS, DTL_TARGETS, EVAL_KS, FORMATS, HEADS, INDEX_KINDS, INTER_LAYERS, LAYER_RULES,
    LOSSES, METHODS, MODALITIES, MODES, OFFSET_METHODS, PRECISIONS, SAMPLES, SCHEDULES, SPLITS, USER_ENCODERS,
    EncodeConfig, PrepareConfig, SideNetworkConfig, TrainConfig, UserEncoderConfig,
)
from iisan.efficiency import DEFAULT_METHODS as EFFICIENCY_METHODS
from iisan.errors import ConfigError, IisanError
from iisan.fileio import storage_failure
from iisan.methods import get_method
from iisan.threads import THREADS_ENV, use_threads

F = TypeVar("F", bound=Callable[..., Any])

stdout = Console()
stderr = Console(stderr=True)

app = typer.Typer(
    name="iisan",
    help="Multimodal sequential recommendation with IISAN's decoupled side network.\n\n"
    "Pipeline: [bold]prepare[/] a source → encode → train → evaluate → recommend / serve.\n\n"
    "Start with: [bold]iisan quickstart[/] (the whole pipeline on MovieLens-100K, about 40 seconds on 2 idle cores).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="Synthetic sources and dataset statistics.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(data_app, name="data")
encoders_app = typer.Typer(help="Frozen pretrained encoders.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(encoders_app, name="encoders")
bench_app = typer.Typer(help="Measured comparisons between methods.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(bench_app, name="bench")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum for typer from the config's tuple of allowed values (one source of truth)."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


Method = _choices("Method", METHODS)
METHOD_HELP = "; ".join(f"{name}: {get_method(name).summary}" for name in METHODS) + (
    ". Methods that train the encoders read their names from --cache's manifest and run them on raw content.")
Modality = _choices("Modality", MODALITIES)


def _per_method(field: str, general) -> str:
    """'Default: 10 for id, 5 otherwise.' from the method registry's defaults."""
    own = [f"{value:g} for {name}" if isinstance(value, float) else f"{value} for {name}"
           for name in METHODS if (value := get_method(name).defaults.get(field)) is not None]
    general = f"{general:g}" if isinstance(general, float) else general
    return f"Default: {', '.join(own)}, {general} otherwise." if own else f"Default: {general}."
Mode = _choices("Mode", MODES)
InterLayers = _choices("InterLayers", INTER_LAYERS)
DtlTo = _choices("DtlTo", DTL_TARGETS)
Device = _choices("Device", DEVICES)
Loss = _choices("Loss", LOSSES)
Samples = _choices("Samples", SAMPLES)
Precision = _choices("Precision", PRECISIONS)
Dtl = _choices("Dtl", DTL_KINDS)
Schedule = _choices("Schedule", SCHEDULES)
UserVariant = _choices("UserVariant", USER_ENCODERS)
Head = _choices("Head", HEADS)
def _config_file(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config FILE``: the file's values become this command's defaults (flags still win)."""
    if value is None:
        return None
    from iisan.configfile import as_defaults, read_config_file

    try:
        options = read_config_file(value)
        ctx.default_map = {**(ctx.default_map or {}),
                           **as_defaults(options, {p.name for p in ctx.command.params}, f"`iisan {ctx.info_name}`")}
    except IisanError as err:
        raise typer.BadParameter(str(err)) from None
    return value


ConfigOption = Annotated[Path | None, typer.Option(
    "--config", callback=_config_file, is_eager=True, show_default=False,
    help="TOML, YAML or JSON file of option values (flag names with underscores, flat or in \\[train], \\[side], "
         "\\[user], \\[encode], \\[bench] sections; a run's config.json for train); flags given here override it.")]
# The same --device on every command that runs a model.
DeviceOption = Annotated[Device, typer.Option(help="auto: this process's GPU if there is one (under torchrun, the one of its LOCAL_RANK), else the CPU.")]


Split = _choices("Split", SPLITS)
SourceFormat = _choices("SourceFormat", FORMATS)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"iisan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings only, and hide progress bars.")] = False,
    threads: Annotated[str | None, typer.Option(
        help=f"CPU threads for torch: a number, or auto (the cores this process may use, less those other "
             f"processes keep busy at the start: with a busy neighbour one thread beat two, idle two beat "
             f"one; see bench/threads.py). Default: the {THREADS_ENV} environment variable, else OMP_NUM_THREADS, "
             f"else auto.", show_default=False)] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    # Only iisan's own messages: other libraries keep Python's default (warnings and up).
    logger = logging.getLogger("iisan")
    logger.handlers = [RichHandler(console=stderr, show_path=False, rich_tracebacks=False)]
    logger.handlers[0].setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        use_threads(threads)
    except IisanError as err:
        stderr.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def handles_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("IISAN_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except IisanError as err:
            if debug:
                raise
            stderr.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:  # last resort: never show a user a traceback
            if debug:
                raise
            failure = storage_failure(err, getattr(err, "filename", None) or "the output")
            if failure is not None:  # a full disk where no write site named its path
                stderr.print(f"[bold red]error:[/] {escape(str(failure))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            stderr.print(
                f"[bold red]internal error:[/] {type(err).__name__}: {escape(str(err))}\n"
                "This is a bug in iisan; rerun with IISAN_DEBUG=1 for the traceback and report it.",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n")


@app.command()
@handles_errors
def prepare(
    source: Annotated[
        str,
        typer.Argument(
            help="Source folder or file. For --format movielens, 'builtin' reads the copy "
            "inside the recbole wheel.",
            show_default=False,
        ),
    ],
    format: Annotated[SourceFormat, typer.Option("--format", "-f", help="Source format.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.", show_default=False)],
    max_seq_len: Annotated[int, typer.Option(help="Model input length; each user keeps the last max-seq-len + 3 items.")] = PrepareConfig.max_seq_len,
    min_seq_len: Annotated[int, typer.Option(help="Drop users with fewer kept items.")] = PrepareConfig.min_seq_len,
    kcore: Annotated[int | None, typer.Option(help="k-core filter; default 5 for amazon2023, off otherwise.", show_default=False)] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of <key>.jpg|.jpeg|.png|.webp images.", show_default=False)] = None,
    images_lmdb: Annotated[Path | None, typer.Option(help="LMDB of item key -> encoded image bytes.", show_default=False)] = None,
    items: Annotated[Path | None, typer.Option(help="csv: items table, when SOURCE is the interactions file.", show_default=False)] = None,
    user_col: Annotated[str, typer.Option(help="csv: user column (default user); recbole: user field (default user_id).", show_default=False)] = "user",
    item_col: Annotated[str, typer.Option(help="csv: item column of the interactions (default item); recbole: item field (default item_id).", show_default=False)] = "item",
    time_col: Annotated[str, typer.Option(help="csv: timestamp column, a number or a date (default timestamp); recbole: time field (default timestamp).", show_default=False)] = "timestamp",
    item_key_col: Annotated[str, typer.Option(help="csv: item key column of the items table.")] = "item",
    text_col: Annotated[str, typer.Option(help="csv: item text column (default text); recbole: .item fields joined into the text, comma-separated (default: the title-like fields).", show_default=False)] = "text",
    image_col: Annotated[str, typer.Option(help="csv: image path column (optional).")] = "image",
    strict: Annotated[bool, typer.Option(help="Stop with exit code 2 at the first input problem.")] = False,
    cold_items: Annotated[float, typer.Option(help="Item cold-start protocol: hold this fraction of the items (the newest) out of training entirely; `iisan evaluate RUN --cold-start` adds them after training and ranks them for the users whose next item they were.")] = PrepareConfig.cold_items,
    allow_outside_paths: Annotated[bool, typer.Option("--allow-outside-paths", help="Read image paths that are absolute, contain .., or are symlinks leading out of the source (by default refused and counted as refused_image).")] = False,
    force: Annotated[bool, typer.Option(help="Replace --out even if it is not a dataset folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print dataset.json instead of tables.")] = False,
) -> None:
    """Read a source, validate and split it, and write a prepared dataset folder.

    Each user keeps their last max-seq-len + 3 items; items are numbered 1..N by first
    appearance (0 is padding). Every input problem is counted and reported, never
    silently dropped; --strict stops at the first one.

    [bold]Examples[/]

      iisan prepare builtin --format movielens --out data/ml-100k

      iisan prepare ../shared/datasets/amazon-scientific --format iisan-tsv --out data/scientific

      iisan prepare interactions.csv --format csv --items items.csv --user-col uid --out data/shop

      iisan prepare dataset/Amazon_Scientific --format recbole --out data/sci-recbole
    """
    from iisan.config import CsvColumns, PrepareConfig
    from iisan.data.prepare import prepare as run_prepare
    from iisan.data.report import prepare_summary, problems_table

    config = PrepareConfig(
        format=format.value, max_seq_len=max_seq_len, min_seq_len=min_seq_len, kcore=kcore,
        strict=strict, images=images, images_lmdb=images_lmdb, items=items, allow_outside_paths=allow_outside_paths,
        cold_items=cold_items,
        columns=CsvColumns(user=user_col, item=item_col, timestamp=time_col,
                           item_key=item_key_col, text=text_col, image=image_col),
    )
    meta, problems = run_prepare(source, out, config, force=force)
    if as_json:
        _print_json(meta)
        return
    stdout.print(prepare_summary(meta))
    if problems:
        stdout.print(problems_table(problems))
    stdout.print(f"wrote {out}")


@data_app.command("synth")
@handles_errors
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Source folder to write (iisan-tsv layout).", show_default=False)],
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    categories: Annotated[int, typer.Option(help="Categories (named in titles only).")] = 10,
    colours: Annotated[int, typer.Option(help="Colours (shown in images only).")] = 8,
    min_len: Annotated[int, typer.Option(help="Shortest sequence.")] = 5,
    max_len: Annotated[int, typer.Option(help="Longest sequence.")] = 20,
    image_size: Annotated[int, typer.Option(help="PNG side in pixels; 0 for a text-only source.")] = 64,
    missing_image_rate: Annotated[float, typer.Option(help="Share of items without an image.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed; output is deterministic given it.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace --out even if it is not a synthetic source.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print synth.json.")] = False,
) -> None:
    """Write a synthetic multimodal source where text and images each carry part of the signal.

    Items are (category, colour) pairs: titles name the category, images show the colour,
    and users prefer one pair. Prepare it with --format iisan-tsv (its images/ folder is
    picked up); the dataset is labelled synthetic.

    [bold]Example[/]

      iisan data synth --items 2000 --users 1000 --out data/synth-src
      iisan prepare data/synth-src --format iisan-tsv --out data/synth
    """
    from iisan.data.synth import SynthConfig, synthesize

    config = SynthConfig(
        items=items, users=users, categories=categories, colours=colours, min_len=min_len,
        max_len=max_len, image_size=image_size, missing_image_rate=missing_image_rate, seed=seed,
    )
    info = synthesize(out, config, force=force)
    if as_json:
        _print_json(info)
    else:
        stdout.print(f"wrote synthetic source {out} ({items:,} items, {users:,} users)")


@data_app.command("stats")
@handles_errors
def data_stats(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Counts, sequence-length histogram, item popularity head and tail, modality coverage.

    [bold]Example[/]

      iisan data stats data/ml-100k
    """
    from iisan.data.dataset import PreparedDataset
    from iisan.data.report import stats_tables
    from iisan.data.stats import dataset_stats

    stats = dataset_stats(PreparedDataset.load(dataset))
    if as_json:
        _print_json(stats)
    else:
        stdout.print(stats_tables(stats))


def _encoder_option(value: str) -> str | None:
    return None if value.lower() in ("", "none") else value


@app.command()
@handles_errors
def encode(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write or resume.", show_default=False)],
    text_encoder: Annotated[str, typer.Option(help="Registry name or local Hugging Face folder; 'none' to skip.")] = EncodeConfig.text_encoder,
    image_encoder: Annotated[str, typer.Option(help="Registry name or local folder; 'none' to skip (skipped anyway without images).")] = EncodeConfig.image_encoder,
    pooling: Annotated[str, typer.Option(help="Per-layer pooling for both encoders: auto (the pooling each encoder was trained for: mean for sentence-transformers folders such as minilm and mpnet, last token for decoder LLMs, else cls), cls (first token, as in the paper), mean (over real tokens) or last (last real token).")] = "auto",
    text_pooling: Annotated[str | None, typer.Option(help="Override --pooling for the text encoder.", show_default=False)] = None,
    image_pooling: Annotated[str | None, typer.Option(help="Override --pooling for the image encoder.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = EncodeConfig.batch_size,
    max_text_tokens: Annotated[int, typer.Option(help="Truncate text to this many tokens.")] = EncodeConfig.max_text_tokens,
    image_size: Annotated[int, typer.Option(help="Resize and centre-crop images to this side.")] = EncodeConfig.image_size,
    workers: Annotated[int, typer.Option(help="Image-decoding threads.")] = EncodeConfig.workers,
    force: Annotated[bool, typer.Option(help="Delete and rebuild the cache (another dataset or encoder).")] = False,
    shard: Annotated[str | None, typer.Option(help="K/N: encode only the K-th of N item ranges, into OUT/shard-K-of-N (run N of these, on one machine or several sharing OUT); auto: K and N from torchrun's RANK and WORLD_SIZE.", show_default=False)] = None,
    device: DeviceOption = Device.auto,
    precision: Annotated[Precision, typer.Option(help="The encoders' compute precision: auto (bf16 autocast on a GPU that supports it, else fp32), fp32 or bf16. Recorded in the manifest; a resume must use the same.")] = Precision(EncodeConfig.precision),
    text_layers: Annotated[str | None, typer.Option(help="Store only these text layers (0 = embedding output; the last is always stored), e.g. 0,16,32,48,64,80 for an 80-layer LLM; default every layer.", show_default=False)] = None,
    image_layers: Annotated[str | None, typer.Option(help="Store only these image layers.", show_default=False)] = None,
    merge_check: Annotated[bool, typer.Option(help="After sharded runs: check that every row of every shard is done, then assemble the cache in OUT.")] = False,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run each frozen encoder over every item once and cache every layer's pooled state.

    The cache holds one float16 array per encoder, \\[items + 1, layers + 1, width], memory-mapped.
    Killing encode loses at most the batch in flight: rerun the same command to resume.
    A cache built for another dataset or encoder setting is refused unless --force.

    [bold]Examples[/]

      iisan encode data/scientific --out cache/scientific --image-encoder none

      iisan encode data/synth --out cache/synth --text-encoder minilm --image-encoder dinov2-small --image-size 112

      iisan encode data/big --out /shared/cache --shard 1/4   (and 2/4, 3/4, 4/4 elsewhere; same options)

      torchrun --nnodes 4 --nproc-per-node 1 --rdzv-endpoint node0:29400 -m iisan encode data/big --out /shared/cache --shard auto

      iisan encode data/big --out /shared/cache --merge-check
    """
    from iisan.cache.encode import encode as run_encode
    from iisan.cache.encode import merge_shards
    from iisan.config import EncodeConfig

    if merge_check:
        if shard is not None:
            raise ConfigError("--merge-check assembles finished shards; run it without --shard")
        merged = merge_shards(dataset, out)
        if as_json:
            _print_json(merged)
        else:
            stdout.print(f"merged {merged['shards']} shards into {out}: every row of "
                         f"{', '.join(merged['modalities'])} is complete ({merged['items']:,} items)")
        return
    shard_spec = None
    if shard == "auto":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError("--shard auto takes K/N from torchrun's RANK and WORLD_SIZE; outside torchrun give K/N")
        shard = f"{int(os.environ['RANK']) + 1}/{os.environ['WORLD_SIZE']}"
    if shard is not None:
        index, _, count = shard.partition("/")
        if not (index.strip().isdigit() and count.strip().isdigit()):
            raise ConfigError(f"--shard takes K/N, e.g. 1/4, got {shard!r}")
        shard_spec = (int(index), int(count))

    config = EncodeConfig(
        text_encoder=_encoder_option(text_encoder), image_encoder=_encoder_option(image_encoder),
        pooling=pooling, text_pooling=text_pooling, image_pooling=image_pooling,
        batch_size=batch_size, max_text_tokens=max_text_tokens,
        image_size=image_size, workers=workers, precision=precision.value,
        text_layers=_int_list(text_layers, "--text-layers"),
        image_layers=_int_list(image_layers, "--image-layers"),
    )
    summary = run_encode(dataset, out, config, force=force, shard=shard_spec, device=device.value)
    if as_json:
        _print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"Hidden-state cache {out}", title_justify="left")
    for column in ("modality", "encoder", "layers", "width", "encoded now", "already done", "items/s"):
        table.add_column(column, justify="left" if column in ("modality", "encoder") else "right", overflow="fold")
    for modality, row in summary["modalities"].items():
        table.add_row(modality, row["encoder"], str(row["layers"]), str(row["hidden_size"]),
                      f"{row['rows_encoded']:,}", f"{row['rows_already_done']:,}",
                      f"{row['items_per_second']:,.1f}" if row["items_per_second"] else "-")
    stdout.print(table)
    if summary["problems"]:
        stdout.print(f"problems: {summary['problems']}")


@encoders_app.command("list")
@handles_errors
def encoders_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The registered encoder names, what they are, and how to install their weights.

    [bold]Example[/]

      iisan encoders list
    """
    from iisan.encoders.registry import REGISTRY

    rows = [{"name": s.name, "modality": s.modality, "installed": s.installed, "description": s.description,
             "install": s.install} for s in REGISTRY.values()]
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(title="Encoders (any local Hugging Face folder works too)", title_justify="left")
    for column in ("name", "modality", "installed", "description", "install"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(("yes" if value else "no") if key == "installed" else value for key, value in row.items()))
    stdout.print(table)


def _int_list(value: str | None, option: str) -> tuple[int, ...] | None:
    """Comma-separated integers; ``None`` (the option not given) stays ``None``."""
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {value!r}") from None


def _layer_choice(value: str) -> dict:
    """``--layers``: a rule name or an explicit list, as SideNetworkConfig fields."""
    rule = value.strip().replace("-", "_")
    if rule in LAYER_RULES:
        return {"layer_rule": rule, "layers": None}
    return {"layers": _int_list(value, "--layers")}


@app.command()
@handles_errors
def train(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.", show_default=False)],
    cache: Annotated[Path | None, typer.Option(help="Hidden-state cache from `iisan encode` (not needed for --method id).", show_default=False)] = None,
    method: Annotated[Method, typer.Option(help=METHOD_HELP)] = Method.iisan,
    modality: Annotated[Modality, typer.Option(help="Towers feeding the item embedding; auto: text+image (intra_inter) when the cache holds both, else the one it holds.")] = Modality(SideNetworkConfig.modality),
    mode: Annotated[Mode, typer.Option(help="cached: read the cache; uncached: run the frozen encoders in the graph (same results, slower).")] = Mode(TrainConfig.mode),
    epochs: Annotated[int, typer.Option(help="Maximum epochs (--schedule cosine reaches zero at the last).")] = TrainConfig.epochs,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch (with --loss in_batch the negatives come from them). " + _per_method("batch_size", TrainConfig.batch_size), show_default=False)] = None,
    samples: Annotated[Samples | None, typer.Option(help="What one training sample is: sequences (a user's last items, a target at every position; SASRec's paper, the reference) or prefixes (every prefix on its own, its next item the target; RecBole's SASRec). " + _per_method("samples", TrainConfig.samples), show_default=False)] = None,
    loss: Annotated[Loss | None, typer.Option(help="Candidates of the next-item softmax: full (every item of the catalogue, RecBole's cross-entropy; the default for id), sampled (the batch's items plus --negatives drawn by popularity, log-popularity corrected), in_batch (the reference's: the batch's item slots, log-popularity corrected; the default for content methods).", show_default=False)] = None,
    negatives: Annotated[int, typer.Option(help="Extra negatives per step for --loss sampled.")] = TrainConfig.negatives,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = TrainConfig.weight_decay,
    id_offset: Annotated[bool | None, typer.Option("--id-offset/--no-id-offset", help="iisan, frozen: add a learned per-item vector (zero at the start) to each training item's content embedding; items added later stay content only. Default: on for iisan and frozen.", show_default=False)] = None,
    blend: Annotated[bool, typer.Option("--blend/--no-blend", help="iisan, frozen: after training, blend the score with the content floor's (knn) and add priors for cold and tail items, weighed on the validation split; what lets a trained content model reach new and rare items. Recorded under 'blend' in metrics.json.")] = TrainConfig.blend,
    id_offset_lr: Annotated[float, typer.Option(help="Learning rate of the id offsets (10x below --lr: at --lr they memorise the training items within a few epochs).")] = TrainConfig.id_offset_lr,
    lr: Annotated[float, typer.Option(help="Learning rate of the user encoder, heads and fusion (the reference used 2e-4).")] = TrainConfig.lr,
    side_lr: Annotated[float | None, typer.Option(help="Learning rate of the side network's blocks and gates (the reference used 1e-4), or of the trained encoder parameters for fft, adapter, lora, bitfit. " + _per_method("side_lr", TrainConfig.side_lr), show_default=False)] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank for --method lora (alpha = 2 x rank).")] = TrainConfig.lora_rank,
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without a better validation NDCG@10. " + _per_method("patience", TrainConfig.patience), show_default=False)] = None,
    schedule: Annotated[Schedule, typer.Option(help="Learning rates over the run: constant, or cosine (down to zero at --epochs; early stopping may end the run before).")] = Schedule(TrainConfig.schedule),
    warmup_epochs: Annotated[float, typer.Option(help="Raise every learning rate linearly from zero over this many epochs first (may be fractional, e.g. 0.5).")] = TrainConfig.warmup_epochs,
    layers: Annotated[str, typer.Option(help="Encoder layers the side network reads: all, every-other (the paper's LayerDrop: every other layer counting back from the last), or a list such as 0,2,4,6. The two rules skip a layer whose state is the same for every item (layer 0 under CLS pooling).")] = "all",
    bottleneck: Annotated[int, typer.Option(help="Side-block bottleneck width.")] = SideNetworkConfig.bottleneck,
    inter_layers: Annotated[InterLayers, typer.Option(help="Encoders of different depth (IISAN-Versa): the inter-modal tower reads the deeper encoder's layers in contiguous groups, one per layer of the shallower: the group's last layer, or its mean; truncate drops the extra layers instead (a naive control).")] = InterLayers(SideNetworkConfig.inter_layers),
    dtl_to: Annotated[DtlTo, typer.Option(help="Encoders of different width (IISAN-Versa): a linear layer maps the wider encoder's states to the smaller width, or the narrower one's to the larger, before inter-modal fusion.")] = DtlTo(SideNetworkConfig.dtl_to),
    dtl: Annotated[Dtl, typer.Option(help="That dimension transformation: shared (one linear map for every inter step) or per_step (one per step, as the reference's Versa scripts).")] = Dtl(SideNetworkConfig.dtl),
    text_layers: Annotated[str | None, typer.Option(help="The text encoder's layers, for its intra tower and the inter tower (overrides --layers), e.g. 4,19,34,49,64,79.", show_default=False)] = None,
    image_layers: Annotated[str | None, typer.Option(help="The image encoder's layers (overrides --layers).", show_default=False)] = None,
    text_steps: Annotated[int | None, typer.Option(help="IISAN-Versa group layer-dropping for the text encoder: split its layers into this many contiguous groups and read the last of each (e.g. 6 for an 80-layer LLM), never a constant state.", show_default=False)] = None,
    image_steps: Annotated[int | None, typer.Option(help="The same for the image encoder.", show_default=False)] = None,
    head: Annotated[Head, typer.Option(help=f"Tower heads: wide (D -> D -> d, the paper's), compact (D -> d -> d, the reference's Versa draft: for an 8192-wide LLM 67M parameters fewer) or auto (compact from {COMPACT_HEAD_FROM} wide).")] = Head(SideNetworkConfig.head),
    text_bottleneck: Annotated[int | None, typer.Option(help="SANB width of the text tower (default: --bottleneck).", show_default=False)] = None,
    image_bottleneck: Annotated[int | None, typer.Option(help="SANB width of the image tower (default: --bottleneck).", show_default=False)] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout of the user encoder. " + _per_method("dropout", UserEncoderConfig.dropout), show_default=False)] = None,
    user_encoder: Annotated[UserVariant | None, typer.Option(help="The user encoder's details: reference (IISAN's reference code: ReLU, xavier init, bias-free attention projections) or recbole (RecBole's SASRec: GELU, normal(0, 0.02) init, biased projections). " + _per_method("variant", UserEncoderConfig.variant), show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed (initialisation, batch order, dropout).")] = TrainConfig.seed,
    include_history: Annotated[bool, typer.Option(help="Rank the user's own history too when validating and testing (RecBole's protocol); by default it is excluded, as in the paper.")] = TrainConfig.include_history,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out after its last finished epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also log to OUT/tensorboard (needs the tensorboard package).")] = False,
    distributed: Annotated[bool, typer.Option(help="Spread the run over the processes torchrun started (also turned on by torchrun's environment); --batch-size is then the global batch.")] = False,
    device: DeviceOption = Device.auto,
    precision: Annotated[Precision, typer.Option(help="Compute precision of the encoders fft, adapter, lora and bitfit run and train: auto (bf16 autocast on a GPU that supports it, else fp32), fp32 or bf16. The side network and the user encoder stay fp32.")] = Precision(TrainConfig.precision),
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a recommender, keep the epoch with the best validation NDCG@10, test it.

    The run folder holds config.json (the whole configuration), model.safetensors
    (best weights), metrics.jsonl (one line per epoch) and metrics.json.
    A killed run continues with --resume (its saved options are used).

    [bold]Examples[/]

      iisan train data/scientific --cache cache/scientific --modality text --out runs/sci-iisan

      iisan train data/scientific --method id --out runs/sci-id

      iisan train data/scientific --cache cache/scientific --method lora --modality text --out runs/sci-lora

      iisan train data/synth --cache cache/synth --out runs/synth --epochs 20 --tensorboard

    Encoders of different depth or width (e.g. a cache built with --text-encoder minilm,
    6 layers, and --image-encoder dinov2-small, 12) need nothing more: IISAN-Versa's
    group layer-dropping and dimension transformation are applied automatically.

    Several processes or machines (DistributedDataParallel; gloo on CPU, NCCL on GPUs):

      torchrun --nproc-per-node 2 -m iisan train data/synth --cache cache/synth --out runs/ddp

    Each rank takes its share of every global batch and of every evaluation; the result
    matches one process with the same --batch-size. Only rank 0 writes to --out.
    """
    import dataclasses

    from iisan.config import SideNetworkConfig, TrainConfig
    from iisan.distributed import is_main_process
    from iisan.training.loop import train as run_train

    if resume:
        from iisan.run.files import read_run_config

        saved = read_run_config(out)  # the run's own options; only --epochs may extend it
        config = dataclasses.replace(TrainConfig.from_json(saved["train"]), epochs=epochs)
        cache = cache or (Path(saved["cache"]) if saved.get("cache") else None)
    else:
        if id_offset and method.value not in OFFSET_METHODS:
            raise ConfigError(f"--id-offset applies to {' and '.join(OFFSET_METHODS)}, not {method.value}")
        given = {"side_lr": side_lr, "patience": patience, "loss": loss.value if loss else None, "id_offset": id_offset,
                 "batch_size": batch_size, "samples": samples.value if samples else None}
        user = {"dropout": dropout, "variant": user_encoder.value if user_encoder else None}
        config = TrainConfig.for_method(
            method.value, user_changes={k: v for k, v in user.items() if v is not None},
            schedule=schedule.value, warmup_epochs=warmup_epochs,
            mode=mode.value, epochs=epochs, lr=lr, lora_rank=lora_rank,
            seed=seed, include_history=include_history, negatives=negatives, weight_decay=weight_decay,
            id_offset_lr=id_offset_lr, blend=blend, precision=precision.value, **{k: v for k, v in given.items() if v is not None},
            side=SideNetworkConfig(bottleneck=bottleneck, modality=modality.value,
                                   **_layer_choice(layers),
                                   inter_layers=inter_layers.value, dtl_to=dtl_to.value, dtl=dtl.value,
                                   text_layers=_int_list(text_layers, "--text-layers"),
                                   image_layers=_int_list(image_layers, "--image-layers"),
                                   text_steps=text_steps, image_steps=image_steps, head=head.value,
                                   text_bottleneck=text_bottleneck, image_bottleneck=image_bottleneck),
        )
    summary = run_train(dataset, out, config, cache_dir=cache, resume=resume, force=force, tensorboard=tensorboard,
                        distributed=distributed, device=device.value)
    if not is_main_process():
        return
    if as_json:
        _print_json(summary)
        return
    stdout.print(f"{summary['method']} ({summary['mode']}): {summary['epochs']} epochs, best {summary['best_epoch']}, "
                 f"{summary['seconds_per_epoch']} s/epoch, {summary['trainable_parameters']:,} trainable of "
                 f"{summary['total_parameters']:,} parameters")
    stdout.print(_metrics_table({split: summary[split] for split in ("valid", "test")}, f"Run {out}"))


def _metrics_table(results: dict[str, dict[str, Any]], title: str):
    from rich.table import Table

    # One row per metric, one column per split (or slice): narrow at any number of cut-offs.
    names = [name for name, value in next(iter(results.values())).items() if isinstance(value, float)]
    table = Table()  # the title goes above, full width: a narrow table would wrap it into its own width
    table.add_column("metric", overflow="fold")
    for split in results:
        table.add_column(split, justify="right", overflow="fold")
    from iisan.evaluation.metrics import metric_label

    for name in names:
        table.add_row(metric_label(name), *(f"{metrics[name]:.4f}" if name in metrics else "-"
                                            for metrics in results.values()))
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="italic"), table)


def _slice_columns(metrics: dict[str, Any], slices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``all`` and one column per popularity slice, each headed with its user count."""
    total = sum(s["users"] for s in slices.values())
    return {f"all ({total:,})": metrics, **{f"{name} ({s['users']:,})": s for name, s in slices.items()}}


@app.command()
@handles_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    split: Annotated[Split, typer.Option(help="Which held-out item to predict.")] = Split("test"),
    k: Annotated[str, typer.Option("--k", help="Cut-offs for HR@K and NDCG@K, comma-separated.")] = ",".join(map(str, EVAL_KS)),
    include_history: Annotated[bool, typer.Option(help="Rank the user's own history too (by default it is excluded, as in the paper); stored as SPLIT_with_history.")] = False,
    cold_start: Annotated[bool, typer.Option("--cold-start", help="The item cold-start protocol instead of a split: add the items the dataset held out (prepare --cold-items) to a copy of the run, as `iisan items add` does, and rank them for the users whose next item they were. Stored under cold_start.")] = False,
    unblended: Annotated[bool, typer.Option("--unblended", help="Score a blended run (train --blend, the default for iisan and frozen) with its trained model alone, to see what the blend adds; stored as SPLIT_unblended.")] = False,
    slices: Annotated[bool, typer.Option("--slices", help="Also print every metric per popularity slice of the target: cold (0 occurrences in the training part), tail (1-4), head (5+), with user counts. Always in --json and metrics.json.")] = False,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Full-ranking HR@K, NDCG@K and MRR of a run's best weights on all items.

    Ties count against the model. The result is merged into RUN/metrics.json, with the
    same metrics per popularity slice (--slices shows them).

    [bold]Examples[/]

      iisan evaluate runs/sci-iisan

      iisan evaluate runs/sci-iisan --slices

      iisan evaluate runs/sci-cold --cold-start   (prepared with --cold-items 0.1)

      iisan evaluate runs/sci-iisan --split valid --k 1,10,50 --json
    """
    from iisan.evaluation.evaluate import evaluate_run, metrics_key

    if cold_start:
        from iisan.new_items import evaluate_cold_start

        result = evaluate_cold_start(run, ks=_int_list(k, "--k"), device=device.value)
        if as_json:
            _print_json(result)
            return
        stdout.print(f"{run}: {result['users']:,} users whose next item was one of {result['new_items']:,} "
                     f"added after training; full ranking over {result['items']:,} items "
                     f"({result['seconds']:.1f} s)")
        stdout.print(_metrics_table({"cold start": result["metrics"]}, "Item cold start"))
        return
    result = evaluate_run(run, split=split.value, ks=_int_list(k, "--k"), include_history=include_history,
                          device=device.value, unblended=unblended)
    if as_json:
        _print_json(result)
        return
    columns = ({metrics_key(split.value, include_history, unblended): result["metrics"]} if not slices
               else _slice_columns(result["metrics"], result["slices"]))
    stdout.print(_metrics_table(columns,
                                f"{run}: {result['users']:,} users x {result['items']:,} items, full ranking "
                                f"({result['seconds']:.1f} s on {result['device']})"))


@app.command()
@handles_errors
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the dataset, cache and run.")] = Path("iisan-quickstart"),
    epochs: Annotated[int, typer.Option(help="Maximum training epochs (the cosine schedule ends there).")] = TrainConfig.epochs,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    text_encoder: Annotated[str, typer.Option(help="Text encoder: registry name or local Hugging Face folder.")] = EncodeConfig.text_encoder,
    force: Annotated[bool, typer.Option(help="Use --out even if it is a folder quickstart did not write.")] = False,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The whole pipeline on MovieLens-100K, then top-10 for one user.

    prepare → encode → train (and evaluate on test) → recommend. MovieLens-100K has no
    images, so the run is text only (minilm over titles and genres, IISAN
    --modality text). About 40 seconds on 2 idle CPU cores (41-43 s measured; longer
    when other work shares the cores); --out is rebuilt each time.

    [bold]Example[/]

      iisan quickstart --out iisan-quickstart
    """
    from rich.table import Table

    from iisan.quickstart import quickstart as run_quickstart

    result = run_quickstart(out, epochs=epochs, seed=seed, force=force, text_encoder=text_encoder,
                            device=device.value)
    if as_json:
        _print_json(result)
        return
    stdout.print(f"{result['dataset']}: {result['counts']['users']:,} users, {result['counts']['items']:,} items "
                 f"(text only: no images). Trained {result['epochs']} epochs, best {result['best_epoch']}.")
    stdout.print(_metrics_table({"test": result["test"]}, "Test, full ranking"))
    stdout.print(f"User {result['user']} recently watched:")
    for item in result["history"]:
        stdout.print(f"  {item['title']}", highlight=False)
    table = Table(title=f"Top {len(result['recommendations'])} next items for user {result['user']}", title_justify="left")
    for column in ("#", "key", "title", "score"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left", overflow="fold")
    for rank, item in enumerate(result["recommendations"], 1):
        table.add_row(str(rank), item["key"], item["title"] or "", f"{item['score']:.3f}")
    stdout.print(table)
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result["seconds"].items())
    stdout.print(f"Everything is in {out} ({steps}). Next: iisan serve {Path(out) / 'run'}")


IndexKind = _choices("IndexKind", INDEX_KINDS)


index_app = typer.Typer(help="The item-embedding index of a trained run.", no_args_is_help=True,
                        rich_markup_mode="rich")
app.add_typer(index_app, name="index")
items_app = typer.Typer(help="Add items to a trained run's catalogue without retraining.", no_args_is_help=True,
                        rich_markup_mode="rich")
app.add_typer(items_app, name="items")


@app.command()
@handles_errors
def recommend(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    history: Annotated[str | None, typer.Option(help="The user's item keys, oldest first, comma-separated.", show_default=False)] = None,
    user: Annotated[str | None, typer.Option(help="Or a user of the run's dataset: their whole history there.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many items to recommend.")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Allow items of the history in the answer.")] = False,
    skip_unknown: Annotated[bool, typer.Option(help="Ignore keys the catalogue does not hold instead of failing.")] = False,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Top-k next items for a history of item keys, with titles and scores.

    The first call builds the run's exact item index (RUN/index) and stores it.

    [bold]Examples[/]

      iisan recommend runs/sci-iisan --history B0098MLBAO,B00E8JOCOE -k 5

      iisan recommend iisan-quickstart/run --history 50,172,181 --json

      iisan recommend iisan-quickstart/run --user 196
    """
    from iisan.serving.recommender import Recommender

    if (history is None) == (user is None):
        raise ConfigError("give --history KEYS or --user USER (one of them)")
    keys = [key.strip() for key in history.split(",") if key.strip()] if history is not None else []
    if history is not None and not keys:
        raise ConfigError("--history needs at least one item key")
    recommender = Recommender.load(run, device=device.value)
    if user is not None:
        keys = recommender.history_of(user)
    answer = recommender.recommend(keys, k=k, exclude_seen=not include_seen,
                                   on_unknown="skip" if skip_unknown else "raise")
    rows = [{"key": key, "title": recommender.title(key), "score": round(score, 4)} for key, score in answer]
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"Top {len(rows)} after {len(keys)} item{'s' if len(keys) > 1 else ''}", title_justify="left")
    for column, justify in (("#", "right"), ("key", "left"), ("title", "left"), ("score", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for rank, row in enumerate(rows, start=1):
        table.add_row(str(rank), row["key"], row["title"] or "", f"{row['score']:.3f}")
    stdout.print(table)


@index_app.command("build")
@handles_errors
def index_build(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    index: Annotated[IndexKind, typer.Option(help="flat: exact inner-product search; hnsw: approximate, for catalogues past a million items.")] = IndexKind("flat"),
    hnsw_m: Annotated[int, typer.Option(help="HNSW links per node.")] = 32,
    ef_search: Annotated[int, typer.Option(help="HNSW candidate list size at query time (higher: better recall, slower).")] = 512,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """(Re)build the run's item index from the trained model, whatever state it is in.

    Items added with `iisan items add` are kept when the stored index can still be read
    (a damaged one is replaced without them: add them again).

    [bold]Examples[/]

      iisan index build runs/big --index hnsw && iisan index check runs/big
    """
    import time

    from iisan.search import HnswSettings
    from iisan.serving.recommender import Recommender

    start = time.perf_counter()
    recommender = Recommender.load(run, rebuild=index.value, hnsw=HnswSettings(m=hnsw_m, ef_search=ef_search),
                                  device=device.value)
    result = {"index": index.value, "items": recommender.num_items, "added_items": len(recommender.added),
              "seconds": round(time.perf_counter() - start, 2), "folder": str(recommender.index_dir)}
    if as_json:
        _print_json(result)
        return
    stdout.print(f"{result['index']} index over {result['items']:,} items in {result['seconds']} s: {result['folder']}")


@index_app.command("check")
@handles_errors
def index_check(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    queries: Annotated[int, typer.Option(help="Test users whose histories serve as queries.")] = 1000,
    k: Annotated[int, typer.Option("-k", "--k", help="Cut-off for recall@k.")] = 10,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recall@k of the run's index against exact search (1.0 for a flat index), over test
    users' histories.

    [bold]Example[/]

      iisan index check runs/big --queries 2000 --json
    """
    from iisan.serving.recommender import Recommender

    if queries < 1 or k < 1:
        raise ConfigError("--queries and -k must be positive")
    result = Recommender.load(run, device=device.value).index_recall(queries=queries, k=k)
    if as_json:
        _print_json(result)
        return
    stdout.print(f"{result['index']} index, {result['items']:,} items: recall@{k} = {result[f'recall@{k}']:.4f} "
                 f"over {result['queries']:,} queries")


@items_app.command("add")
@handles_errors
def items_add(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    file: Annotated[Path, typer.Argument(help='JSON Lines, one item per line: {"key": ..., "text": ..., "image": "path/relative/to/FILE"}.', show_default=False)],
    allow_outside_paths: Annotated[bool, typer.Option("--allow-outside-paths", help="Read image paths that are absolute, contain .., or are symlinks leading out of FILE's folder (refused by default).")] = False,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Embed new items with the frozen encoders and the trained side network, and add them
    to the run's index: they can be recommended at once, no retraining.

    All or nothing: a malformed line, a key already in the catalogue or an unreadable
    image stops the command before anything is added.

    [bold]Example[/]

      echo '{"key": "N1", "text": "Digital caliper, 150 mm", "image": "n1.jpg"}' > new.jsonl

      iisan items add runs/sci-iisan new.jsonl
    """
    from iisan.serving.intake import iter_new_items
    from iisan.serving.recommender import Recommender

    recommender = Recommender.load(run, device=device.value)
    keys = recommender.add_items(iter_new_items(file, allow_outside_paths))  # streamed, committed at the end
    result = {"added": len(keys), "items": recommender.num_items, "keys": keys}
    if as_json:
        _print_json(result)
        return
    stdout.print(f"added {len(keys):,} item{'s' if len(keys) != 1 else ''}; the catalogue now holds "
                 f"{recommender.num_items:,}")


@app.command()
@handles_errors
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token that POST /items requires.", show_default=False)] = None,
    access_log: Annotated[bool, typer.Option(help="One line per request on stderr: client, method, path, status, milliseconds.")] = True,
    device: DeviceOption = Device.auto,
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); OpenAPI docs at /docs.

    POST /recommend {"history": [...], "k": 10, "exclude_seen": true}; POST /items (new items,
    token required when --token-file is given); GET /items/{key}; GET /health; GET /metrics.

    [bold]Examples[/]

      iisan serve iisan-quickstart/run

      curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["50", "172"], "k": 5}'

      iisan serve runs/sci-iisan --host 0.0.0.0 --token-file secrets/iisan-token
    """
    import uvicorn

    from iisan.serving.recommender import Recommender
    from iisan.serving.service import create_app, is_loopback, read_token

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    token = read_token(token_file) if token_file is not None else None
    if token is None and not is_loopback(host):
        stderr.print(f"[bold yellow]warning:[/] binding {host} without --token-file: anyone who can reach it "
                     "can add items", highlight=False)
    recommender = Recommender.load(run, device=device.value)
    stderr.print(f"serving {recommender.num_items:,} items ({recommender.index.kind} index, model on {recommender.device}) on http://{host}:{port} "
                 f"(docs: /docs)", highlight=False)
    if access_log:
        _log_requests_to_stderr()
    uvicorn.run(create_app(recommender, token, access_log=access_log), host=host, port=port, log_level="warning",
                access_log=False)


def _log_requests_to_stderr(flush_seconds: float = 1.0) -> None:
    """The service's request log: plain lines on stderr, written in blocks and flushed at
    least every ``flush_seconds`` (a line per write, or a rich-rendered one, cost 5-10% of
    the throughput under load, side by side in bench/serve.py)."""
    import io
    import threading

    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # stderr is not a file (captured): as it is
        descriptor = None
    stream = sys.stderr if descriptor is None else io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(descriptor, "w", closefd=False), 1 << 16), encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    requests_log = logging.getLogger("iisan.access")
    requests_log.handlers, requests_log.propagate = [handler], False
    requests_log.setLevel(logging.INFO)
    handler.flush = lambda: None  # StreamHandler flushes after every record; the timer does it instead

    def flush_now_and_then() -> None:
        while True:
            threading.Event().wait(flush_seconds)
            with handler.lock:
                stream.flush()

    threading.Thread(target=flush_now_and_then, name="iisan-access-log", daemon=True).start()


@app.command()
@handles_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `iisan train`, and/or output folders of `iisan bench efficiency`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page comparing runs: training curves, final metrics (every
    cut-off), efficiency tables of benchmark folders, and the configuration (differences first).

    [bold]Example[/]

      iisan report runs/sci-iisan runs/sci-frozen runs/sci-id bench/out/efficiency --out sci.html
    """
    from iisan.report import write_report

    path = write_report(runs, out)
    stdout.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(runs)} run{'s' if len(runs) > 1 else ''})")


@bench_app.command("efficiency")
@handles_errors
def bench_efficiency(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for efficiency.csv/.json/.md/.png (and the cache it builds).")] = Path("efficiency"),
    methods: Annotated[str, typer.Option(help="Comma-separated, from: fft, adapter, lora, bitfit, frozen, iisan-uncached, iisan-cached.")] = ",".join(EFFICIENCY_METHODS),
    steps: Annotated[int, typer.Option(help="Timed training steps per method (after 3 warm-up steps).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Users per step.")] = 16,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (224 as in the paper; 112 keeps a CPU run to minutes).")] = 224,
    text_encoder: Annotated[str, typer.Option(help="Text encoder (registry name or folder).")] = EncodeConfig.text_encoder,
    image_encoder: Annotated[str, typer.Option(help="Image encoder (used when the dataset has images).")] = EncodeConfig.image_encoder,
    cache: Annotated[Path | None, typer.Option(help="Use this cache instead of building one (its build time is then not reported).", show_default=False)] = None,
    typical_epochs: Annotated[int, typer.Option(help="Epochs of a typical run, to amortise the cache's one-off cost over.")] = 20,
    config: ConfigOption = None,
    device: Annotated[Device, typer.Option(help="auto: the GPU if there is one (memory is then CUDA max_memory_allocated).")] = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Time, parameters and memory of every training method, side by side, and TPME.

    Builds the hidden-state cache first (timed: the one-off cost the cached method pays),
    then trains each method in a fresh subprocess on the same batches: seconds per step,
    trainable and total parameters, peak memory (CUDA max_memory_allocated on a GPU; on
    CPU peak RSS and the training footprint, peak RSS minus the RSS after imports), and
    TPME = 0.45 time + 0.1 parameters + 0.45 memory, each min-max normalised (lower is
    better). Ratios are relative to fft. A method that fails (out of memory, say) is a
    row with its error; the others are still compared and the files written; the exit
    status is then 1.

    [bold]Examples[/]

      iisan bench efficiency data/synth --image-size 112 --out bench/out/efficiency

      iisan bench efficiency data/scientific --methods fft,lora,iisan-cached --steps 10
    """
    from iisan.efficiency import EfficiencyConfig, run_efficiency

    config = EfficiencyConfig(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()), steps=steps, batch_size=batch_size,
        image_size=image_size, text_encoder=text_encoder, image_encoder=image_encoder,
        typical_epochs=typical_epochs, device=device.value,
    )
    report = run_efficiency(dataset, out, config, cache=cache,
                            progress=(lambda line: None) if as_json else (lambda line: stderr.print(line, highlight=False)))
    if as_json:
        _print_json(report)
    else:
        _print_efficiency(report, out)
    if report["failed"]:
        stderr.print(f"[bold red]error:[/] {', '.join(report['failed'])} failed (their rows say why); "
                     f"the others were measured", highlight=False)
        raise typer.Exit(1)


def _print_efficiency(report: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from iisan.efficiency import TERMINAL_COLUMNS, memory_label, report_device, table_rows

    header, rows = table_rows(report, TERMINAL_COLUMNS)
    table = Table(title=f"Training efficiency ({report_device(report)}; memory: {memory_label(report)}); "
                        "every column is in efficiency.csv", title_justify="left")
    measured = [row for row in rows if not row[1].startswith("failed:")]  # an error may wrap
    for n, column in enumerate(header):
        # Cells never break (a column is as wide as its widest value); headers stack their words.
        width = max((len(row[n]) for row in measured), default=len(column))
        table.add_column(column.replace(" ", "\n"), justify="left" if n == 0 else "right", min_width=width)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    if report["cache_build_seconds"] is not None:
        stdout.print(f"cache build (one-off): {report['cache_build_seconds']:.1f} s = "
                     f"{report['cache_build_seconds_per_epoch']:.1f} s per epoch over "
                     f"{report['settings']['typical_epochs']} epochs")
    stdout.print(f"wrote {out}/efficiency.csv, .json, .md, .png")


def _unwrap_prose(doc: str | None) -> str | None:
    """Docstring paragraphs of prose as single lines, so the terminal wraps them evenly (rich
    help keeps every line break); indented lines (examples) stay as written."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split("\n")) if not any(line.startswith(" ") for line in p.split("\n")) else p
                       for p in paragraphs)


def _tidy_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None:
            command.callback.__doc__ = _unwrap_prose(command.callback.__doc__)
    for group in typer_app.registered_groups:
        _tidy_help(group.typer_instance)


def _flag_without_type(display_type_rich):
    """typer prints a type column for every option, ``<bool>`` for on/off flags too, which
    reads as if they took a value: a flag shows none."""

    def display(self, ctx):
        return None if getattr(self, "is_flag", False) and self.metavar is None else display_type_rich(self, ctx)

    return display


_tidy_help(app)
if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _flag_without_type(typer.core.TyperOption.display_type_rich)


def main() -> None:
    app()
