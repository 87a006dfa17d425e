"""The item index in a run folder: ``RUN/index``, one generation per change.

Every change (a build, items added) is committed as one unit: a new generation folder
holding every file of the index, then one atomic rewrite of ``index.json``, which names
the current generation. A crash at any point leaves the old or the new index, never a
mix; unreferenced generations are removed by the next commit. ::

    RUN/index/index.json                   kind, sizes, the weights it was built from, the first stage
                                           it serves (a blended run's narrow vectors), the generation
    RUN/index/gen-000007/embeddings.safetensors   the trained catalogue (hard-linked between generations)
    RUN/index/gen-000007/first_stage.safetensors   a two-stage flat index's int8 codes of the trained
                                           catalogue (iisan.two_stage; hard-linked too)
    RUN/index/gen-000007/added-000000-000512.safetensors, .parquet   items added later, in segments of
                                           consecutive rows (their vectors, their codes; their keys and
                                           texts), hard-linked between generations
    RUN/index/gen-000007/hnsw.faiss        for ``hnsw``: faiss's own binary format, not a pickle (over
                                           the first stage's narrow vectors when there are two stages)

Items are added a few at a time, so a commit writes a new segment for its own rows and links
the earlier ones; when the last segment grows as large as the one before, the two are
written again as one (a binary counter: a row is written again at most log2(added) times,
and a generation holds at most that many segments). One item added to a run holding 100,000
added items writes that item, not the 100,000. Generations of index version 2 (one
``added.safetensors`` / ``added.parquet`` pair, every code in ``first_stage.safetensors``)
are read as they are.

The search structures themselves are :mod:`iisan.search`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iisan.data.dataset import file_sha256
from iisan.errors import ConfigError, DatasetError, StorageError
from iisan.fileio import (
    GENERATION, commit_generation, crash_point, current_generation, load_tensors, read_json_object,
    require_fields,
)
from iisan.item_rows import ItemRows, map_safetensors
from iisan.search import KINDS, HnswSettings, ItemIndex
from iisan.two_stage import CodedRows, FirstStage, TwoStageIndex

INDEX_DIR = "index"
POINTER = "index.json"
FIRST_STAGE_FILE = "first_stage.safetensors"  # a two-stage flat index's int8 codes
INDEX_VERSION = 3
READS_VERSIONS = (1, 2, 3)  # 1 kept its files in the index folder itself; 2 its added items in one file
SEGMENT = "added-{start:09d}-{end:09d}"  # the added items' rows start..end (0 = the first added)
REBUILD = "rebuild it with `iisan index build`"


def weights_digest(weights_file: Path, scorer_file: Path | None = None) -> str:
    """SHA-256 of the weights an index was built from (a few MB: milliseconds): the model's,
    and the scorer's when the run has one of its own (``model+scorer``); any retraining or
    calibration changes it, copying the run folder does not."""
    digest = file_sha256(weights_file)
    return digest if scorer_file is None else f"{digest}+{file_sha256(scorer_file)}"


@dataclass
class StoredIndex:
    index: ItemIndex | TwoStageIndex
    embeddings: ItemRows  # [N + 1 + added, width] full vectors, row 0 padding (the trained ones on disk)
    added: object  # polars DataFrame: item_id, key, text
    generation: str | None = None  # the folder it was read from (None: not stored yet)
    base_generation: str | None = None  # a committed generation with the same trained catalogue
    segments: tuple[tuple[int, int], ...] = ()  # the added rows' segments on disk there: (start, end)

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, ItemRows):  # every row in one array
            self.embeddings = ItemRows(np.asarray(self.embeddings, dtype=np.float32))


def save_index(folder: Path, stored: StoredIndex, trained_items: int, weights: str) -> str:
    """Commit ``stored`` as a new generation and return its name.

    ``embeddings.base`` is the trained catalogue (``trained_items + 1`` rows); its ``extra``
    rows, with ``added``, the items added since. When the current generation holds the same
    trained catalogue (items were added), its file is hard-linked instead of written again.
    A two-stage index also saves its first stage's narrow vectors (``first_stage.safetensors``),
    so loading it reads no full vector.

    Raises:
        StorageError: a file could not be written (disk full, permissions); the index on
            disk is still the previous one.
    """
    from safetensors.numpy import save_file

    index, base, extra = stored.index, stored.embeddings.base, stored.embeddings.extra
    if len(base) > trained_items + 1:  # rows given in one array: the added ones follow the trained
        base, extra = base[: trained_items + 1], np.concatenate([base[trained_items + 1 :], extra])

    coded = isinstance(index, TwoStageIndex) and isinstance(index.first, CodedRows)
    codes = index.first.item_codes.numpy() if coded else None
    # The writer holds the run's lock: the generation committed now is the one commit_generation
    # hands write(), and when it holds the same trained catalogue its files are linked, not written.
    current = current_generation(folder, POINTER)
    reuse = current is not None and current == stored.base_generation
    segments = added_segments(stored.segments if reuse else (), len(extra))

    def write(work: Path, _current: str | None) -> None:
        if not (reuse and _link(folder / current / "embeddings.safetensors", work / "embeddings.safetensors")):
            save_file({"embeddings": np.ascontiguousarray(base)}, str(work / "embeddings.safetensors"))
        crash_point()
        if coded and not (reuse and _link(folder / current / FIRST_STAGE_FILE, work / FIRST_STAGE_FILE)):
            save_file({"codes": np.ascontiguousarray(codes[: len(base)])}, str(work / FIRST_STAGE_FILE))
            crash_point()
        for start, end in segments:
            name = SEGMENT.format(start=start, end=end)
            files = [(folder / str(current) / f"{name}.{ext}", work / f"{name}.{ext}") for ext in ("safetensors", "parquet")]
            if reuse and all(_link(source, target) for source, target in files):
                continue
            for _, target in files:  # a link made before one failed: never write through it into the committed file
                target.unlink(missing_ok=True)
            tensors = {"embeddings": np.ascontiguousarray(extra[start:end])}
            if coded:
                tensors["codes"] = np.ascontiguousarray(codes[len(base) + start : len(base) + end])
            save_file(tensors, str(work / f"{name}.safetensors"))
            stored.added.slice(start, end - start).write_parquet(work / f"{name}.parquet")
            crash_point()
        if index.kind == "hnsw":
            import faiss

            faiss.write_index(index.faiss, str(work / "hnsw.faiss"))
            crash_point()
            if index.scale is not None:  # what the graph's distances were shaped by (iisan.search)
                save_file({"scale": index.scale}, str(work / "hnsw_scale.safetensors"))

    try:
        name = commit_generation(folder, POINTER, write, {
            "version": INDEX_VERSION, "kind": index.kind, "dim": index.dim, "items": trained_items,
            "added": len(extra), "hnsw": vars(index.hnsw) if index.kind == "hnsw" else None, "weights": weights,
            "first_stage": ({"width": index.stage.width, "candidates": index.stage.candidates}
                            if isinstance(index, TwoStageIndex) else None),
            "segments": [list(segment) for segment in segments],
        })
        stored.segments = tuple(segments)
        return name
    except StorageError as err:
        raise StorageError(f"{err}; the index still holds the previous items") from err
    except OSError as err:  # permissions and the like
        raise StorageError(f"cannot write the index in {folder} ({err.strerror or err}); "
                           "nothing changed: it still holds the previous items") from err


def added_segments(saved: tuple[tuple[int, int], ...], added: int) -> list[tuple[int, int]]:
    """The segments ``(start, end)`` that hold rows ``0..added`` of the added items: the
    ``saved`` ones still whole below ``added``, one for the rows after them, then the last two
    merged while the last is as large as the one before (see the module)."""
    segments = [(start, end) for start, end in saved if end <= added]
    covered = segments[-1][1] if segments else 0
    if covered < added:
        segments.append((covered, added))
    while len(segments) > 1 and segments[-1][1] - segments[-1][0] >= segments[-2][1] - segments[-2][0]:
        (start, _), (_, end) = segments[-2], segments[-1]
        segments[-2:] = [(start, end)]
    return segments


def all_finite(rows: np.ndarray, chunk: int = 1 << 16) -> bool:
    """Whether every value of ``rows`` is finite, read in chunks: a memory map is checked
    without being made resident (its pages are handed back as the check passes them)."""
    from iisan.cache.store import release_resident_pages

    for start in range(0, len(rows), chunk):
        if not np.isfinite(rows[start : start + chunk]).all():
            return False
        release_resident_pages(rows)
    return True


def _link(source: Path, target: Path) -> bool:
    """Hard-link ``source`` to ``target`` (committed files never change)."""
    try:
        os.link(source, target)
        return True
    except OSError:
        return False


def committed_generation(folder: Path) -> str | None:
    """The generation ``folder/index.json`` names (one small read), ``None`` if there is none."""
    return current_generation(folder, POINTER)


def load_index(folder: Path, weights_file: Path, digest: str | None = None,
               stage: FirstStage | None = None) -> StoredIndex | None:
    """The stored index, or ``None`` when there is none. ``digest``: the weights' hash, when the
    caller has it already (hashing them again costs a read of the file). ``stage``: the
    scorer's served first stage, for an index of two stages (:class:`~iisan.search.TwoStageIndex`).

    Raises:
        DatasetError: it was built from other weights or is damaged (one line, with the fix).
    """
    import faiss

    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    meta = read_json_object(pointer, {"version": int}, REBUILD)
    if meta["version"] not in READS_VERSIONS:
        raise DatasetError(f"{folder} has index version {meta['version']}; {REBUILD}")
    require_fields(meta, {"kind": str, "weights": str, "hnsw": (dict, type(None))}, str(pointer), REBUILD)
    if meta["kind"] not in KINDS:
        raise DatasetError(f"{pointer}: unknown index kind {meta['kind']!r}; {REBUILD}")
    try:
        hnsw = HnswSettings(**meta["hnsw"]) if meta["kind"] == "hnsw" else HnswSettings()
    except (TypeError, ConfigError) as err:
        raise DatasetError(f"{pointer}: invalid hnsw settings ({err}); {REBUILD}") from None
    if meta["weights"] != (digest or weights_digest(weights_file)):
        raise DatasetError(f"{folder} was built from other weights than {weights_file.name}; "
                           "rebuild it with `iisan index build` (items added since must be added again)")
    generation = meta.get("generation", ".") if meta["version"] > 1 else "."
    if not isinstance(generation, str) or not (generation == "." or GENERATION.fullmatch(generation)):
        raise DatasetError(f"{pointer}: invalid generation {generation!r}; {REBUILD}")
    files = folder / generation
    base = map_safetensors(files / "embeddings.safetensors", "embeddings", REBUILD)  # read row by row
    extra, table, segments, added_codes = _read_added(files, meta, pointer, base.shape[1])
    if not (all_finite(base) and np.isfinite(extra).all()):
        raise DatasetError(f"{files} holds non-finite embeddings; the index is damaged: {REBUILD}")
    embeddings = ItemRows(base, extra)
    try:
        built = faiss.read_index(str(files / "hnsw.faiss")) if meta["kind"] == "hnsw" else None
    except (TypeError, RuntimeError) as err:
        raise DatasetError(f"{files}: the HNSW graph is damaged ({str(err).splitlines()[0]}); {REBUILD}") from None
    recorded = meta.get("first_stage")
    if (recorded is None) != (stage is None) or (stage is not None and recorded != {
            "width": stage.width, "candidates": stage.candidates}):
        raise DatasetError(f"{pointer}: built for another first stage than the run's scorer serves; {REBUILD}")
    searched = stage.width if stage is not None else base.shape[1]  # what the first stage holds per item
    scale = None
    if built is not None and (files / "hnsw_scale.safetensors").is_file():
        scale = load_tensors(files / "hnsw_scale.safetensors", REBUILD).get("scale")
        if scale is None or scale.shape != (searched,) or not bool(((scale > 0) & scale.isfinite()).all()):
            raise DatasetError(f"{files / 'hnsw_scale.safetensors'} holds no scale for this index; {REBUILD}")
        scale = scale.float().numpy()
    if stage is not None:
        codes = None
        if meta["kind"] == "flat":
            codes = load_tensors(files / FIRST_STAGE_FILE, REBUILD).get("codes")
            # version 3: the trained catalogue's codes there, the added items' in their segments
            rows = len(base) if meta["version"] >= 3 else len(embeddings)
            if codes is None or codes.dtype != torch.int8 or tuple(codes.shape) != (rows, stage.width) \
                    or (meta["version"] >= 3 and len(extra) and (added_codes is None or added_codes.shape[1] != stage.width)):
                raise DatasetError(f"{files / FIRST_STAGE_FILE} does not hold the first stage's codes; {REBUILD}")
            codes = codes.numpy() if rows == len(embeddings) else np.concatenate([codes.numpy(), added_codes])
        index = stage.index(embeddings, meta["kind"], hnsw, built=built, scale=scale, codes=codes)
    else:  # one stage over the full vectors, exact: its rows in memory, as it searches them
        index = ItemIndex(embeddings.array(), meta["kind"], hnsw, built=built, scale=scale)
    claimed = (meta.get("items", len(base) - 1), meta.get("added", len(extra)), meta.get("dim", base.shape[1]))
    if index.size != len(embeddings) - 1 or (built is not None and built.d != index.graph_dim) \
            or claimed != (len(base) - 1, len(extra), base.shape[1]):
        raise DatasetError(f"{folder} is inconsistent; {REBUILD}")
    return StoredIndex(index, embeddings, table, generation, segments=segments)


def _read_added(files: Path, meta: dict, pointer: Path, width: int):
    """The added items of a generation: their vectors, table, segments (version 3) and codes
    (version 3, a two-stage flat index; else ``None``)."""
    import polars as pl

    segments: tuple[tuple[int, int], ...] = ()
    added_codes = None  # version 3 keeps the added items' codes with them
    if meta["version"] >= 3:
        segments = _recorded_segments(meta, pointer)
        parts = [_read_segment(files / SEGMENT.format(start=start, end=end), end - start, width)
                 for start, end in segments]
        extra = np.concatenate([rows for rows, _, _ in parts]) if parts else np.zeros((0, width), np.float32)
        table = pl.concat([table for _, table, _ in parts]) if parts else empty_added_table()
        if parts and all(codes is not None for _, _, codes in parts):
            added_codes = np.concatenate([codes for _, _, codes in parts])
    elif (files / "added.safetensors").is_file() or meta["version"] > 1:  # version 2: one segment of them all
        extra, table, _ = _read_segment(files / "added", None, width)
    else:
        extra = np.zeros((0, width), dtype=np.float32)
        table = empty_added_table()
    return extra, table, segments, added_codes


def empty_added_table():
    """The table of added items (``item_id``, ``key``, ``text``) when there are none."""
    import polars as pl

    return pl.DataFrame(schema={"item_id": pl.Int64, "key": pl.String, "text": pl.String})


def _recorded_segments(meta: dict, pointer: Path) -> tuple[tuple[int, int], ...]:
    """``index.json``'s segments, checked: consecutive ranges covering every added row."""
    segments, added = meta.get("segments"), meta.get("added")
    if not isinstance(segments, list) or not isinstance(added, int) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            for pair in segments):
        raise DatasetError(f"{pointer}: no valid list of added segments; {REBUILD}")
    ends = [0, *(end for _, end in segments)]
    if [start for start, _ in segments] != ends[:-1] or ends[-1] != added or any(b <= a for a, b in zip(ends, ends[1:])):
        raise DatasetError(f"{pointer}: its added segments do not cover the {added} added items; {REBUILD}")
    return tuple((start, end) for start, end in segments)


def _read_segment(path: Path, rows: int | None, width: int):
    """One segment's vectors, table and codes (``None``: saved without), checked (``rows``:
    how many it must hold; ``None``: as many as its vectors)."""
    import polars as pl

    tensors = load_tensors(path.with_suffix(".safetensors"), REBUILD)
    vectors, codes = tensors.get("embeddings"), tensors.get("codes")
    try:
        table = pl.read_parquet(path.with_suffix(".parquet"))
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DatasetError(f"{path.with_suffix('.parquet')} is damaged ({err}); {REBUILD}") from None
    rows = len(vectors) if rows is None and vectors is not None else rows
    if vectors is None or vectors.ndim != 2 or tuple(vectors.shape) != (rows, width) or len(table) != rows \
            or set(table.columns) != {"item_id", "key", "text"} \
            or (codes is not None and (codes.dtype != torch.int8 or codes.ndim != 2 or len(codes) != rows)):
        raise DatasetError(f"{path.with_suffix('.safetensors')} holds added items that do not match their table; "
                           f"{REBUILD}")
    return vectors.float().numpy(), table, None if codes is None else codes.numpy()
