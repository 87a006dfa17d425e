"""A trained model composed with the score blend: what evaluation and serving rank with.

:class:`BlendScorer` offers what ranking reads of a model (:meth:`catalogue_vectors`,
:meth:`user_vectors`, :attr:`layers`, :attr:`catalogue_width`, :attr:`device`), so the
evaluation and the index take either: the model alone (its own scores) or the model with
its scorer. Its files in the run folder::

    RUN/scorer/scorer.json               format version, the options it was fitted with, the
                                         shapes it is rebuilt from, calibration's report, and
                                         the generation holding its weights
    RUN/scorer/gen-000003/blend.safetensors   the blend's weights (the floor's whitening and
                                         document frequencies, the covariances, the weights
                                         per group of users, the items' training counts)

Written as one generation (a crash leaves the previous scorer or the new one). Runs saved
before the scorer had its own files kept its weights inside ``model.safetensors``
(``blend.*``) and its options in ``config.json``; they are read from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from iisan.errors import ConfigError, DatasetError
from iisan.fileio import commit_generation, current_generation, load_tensors, read_json_object
from iisan.models.inputs import ItemFeatures
from iisan.models.sequential import SequentialRecommender
from iisan.run.files import SCORER_DIR, WEIGHTS_FILE
from iisan.run.files import SCORER_POINTER as POINTER
from iisan.run.files import SCORER_WEIGHTS as WEIGHTS
from iisan.scoring.blend import PRIORS, ScoreBlend
from iisan.scoring.compact import CompactStage, served_scores
from iisan.two_stage import FirstStage
from iisan.config import ScoreConfig
from iisan.run.migrate import scorer_in_model_file, upgrade_score_options, upgrade_weights
from iisan.run.model_file import SavedModel

SCORER_VERSION = 1
FIX = "calibrate the run again with `iisan calibrate`"
COMPACT = "compact."  # the first stage's tensors, beside the blend's in one file
FIELDS = {"version": int, "kind": str, "options": dict, "shapes": dict, "dim": int, "num_items": int}


def blend_modalities(model: SequentialRecommender, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """The modalities the blend's floor reads: those the model's item tower reads."""
    return [m for m in ("text", "image") if m in shapes and m in model.layers]


def build_blend(model: SequentialRecommender, shapes: dict[str, tuple[int, int]], num_items: int,
                config: ScoreConfig) -> ScoreBlend | None:
    """An unfitted blend over the modalities ``model``'s tower reads (``shapes``: modality ->
    ``(L + 1, D)``), its floor adding the texts' term vectors (``config.blend_terms``
    columns) when it reads text; ``None`` for a model that reads no content."""
    modalities = blend_modalities(model, shapes)
    if not modalities:
        return None
    return ScoreBlend({m: shapes[m] for m in modalities}, model.dim, torch.zeros(num_items + 1),
                      groups=config.blend_groups, terms=config.blend_terms if "text" in modalities else 0)


def scoring_layers(model: SequentialRecommender, shapes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    """The layers a feature source must hold for ``model`` and its blend: the tower's, and
    the last layer of each modality it reads (the floor's content)."""
    layers = {m: set(v) for m, v in model.layers.items()}
    for modality in blend_modalities(model, shapes):
        layers[modality].add(shapes[modality][0] - 1)
    return {m: tuple(sorted(v)) for m, v in layers.items()}


class BlendScorer:
    """``model``'s scores blended with the content floor's and the priors (:mod:`iisan.scoring.blend`).

    Args:
        model: the trained model.
        blend: its fitted (or being fitted) blend.
        options: what it was fitted with.
        calibration: calibration's report (weights, validation criteria), for the run's files.
    """

    def __init__(self, model: SequentialRecommender, blend: ScoreBlend, options: ScoreConfig = ScoreConfig(),
                 calibration: dict[str, Any] | None = None, compact: CompactStage | None = None) -> None:
        self.model = model
        self.blend = blend.to(model.device)
        self.options = options
        self.calibration = calibration or {}
        self.compact = compact.to(model.device) if compact is not None else None  # the served first stage
        self._compact_items: tuple[torch.Tensor, torch.Tensor] | None = None  # (full rows, their map)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """modality -> the layers the tower and the floor read together."""
        wanted = {**self.blend.layers, **self.model.layers}
        return {m: tuple(sorted(set(self.model.layers.get(m, ())) | set(self.blend.layers.get(m, ()))))
                for m in wanted}

    @property
    def catalogue_width(self) -> int:
        return self.blend.width

    def eval(self) -> BlendScorer:
        self.model.eval()
        self.blend.eval()
        return self

    def to(self, device: torch.device | str) -> BlendScorer:
        self.model.to(device)
        self.blend.to(device)
        if self.compact is not None:
            self.compact.to(device)
        return self

    @property
    def first_stage(self) -> FirstStage | None:
        """The served first stage for the index, ``None`` when it serves the full vectors."""
        return self.compact.first_stage() if self.compact is not None and self.compact.fitted else None

    @torch.no_grad()
    def served(self, queries: torch.Tensor, items: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores [U, N + 1]`` of ``queries`` against ``items`` as a served query ranks them:
        with a compact first stage, only its candidates keep their scores (-inf elsewhere);
        without one, all of them."""
        if self.compact is None or not self.compact.fitted:
            return scores
        if self._compact_items is None or self._compact_items[0] is not items:
            self._compact_items = (items, self.compact.codes(items))
        return served_scores(scores, self.compact.query_codes(queries), self._compact_items[1],
                             int(self.compact.candidates))

    @torch.no_grad()
    def catalogue_vectors(self, features: ItemFeatures) -> torch.Tensor:
        """The blend's item vectors: the trained embedding, the floor's content, the priors."""
        return self.blend.item_vectors(self.model.embed_items(features), features)

    @torch.no_grad()
    def user_vectors(self, items: torch.Tensor, inputs) -> torch.Tensor:
        """One query per user ``[U, width]`` for left-padded item ids ``inputs [U, L]``, reading
        the catalogue ``items [N + 1, width]`` of :meth:`catalogue_vectors`: the trained user
        vector and the floor's, each standardised, weighted by the user's group's weights."""
        self.model.eval()
        ids = torch.as_tensor(inputs).to(items.device)
        rows = items[ids]  # [U, L, width]: the histories' rows only (``items`` may be read row by row)
        user = self.model.user(self.blend.split(rows)[0], ids != 0)[:, -1]
        content = self.blend.content_query(rows, ids != 0)
        return self.blend.query(user, content, self.blend.user_groups(ids))

    def fill_terms(self, texts: Sequence[str | None]) -> None:
        """Make the floor's table of the catalogue's word vectors from its texts (item ids
        1..N in order): what embedding the catalogue reads; the saved weights hold only the
        document frequencies."""
        terms = self.blend.terms
        if terms is not None and terms.table is None:
            terms.fill(texts)


def save_scorer(run_dir: Path, scorer: BlendScorer, shapes: dict[str, tuple[int, int]], num_items: int) -> None:
    """Commit the scorer's files in ``run_dir`` as a new generation (see the module)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in scorer.blend.state_dict().items()}
    if scorer.compact is not None:
        tensors.update({f"{COMPACT}{name}": t.detach().cpu().contiguous().clone()
                        for name, t in scorer.compact.state_dict().items()})

    def write(folder: Path, _current: str | None) -> None:
        save_file(tensors, str(folder / WEIGHTS))

    commit_generation(run_dir / SCORER_DIR, POINTER, write, {
        "version": SCORER_VERSION, "kind": "blend", "options": dataclasses.asdict(scorer.options),
        "shapes": {m: list(s) for m, s in shapes.items() if m in scorer.blend.layers},
        "dim": scorer.dim, "num_items": num_items, "calibration": scorer.calibration,
        "compact": None if scorer.compact is None else {"width": scorer.compact.width}})


def saved_options(run_dir: Path, saved: dict[str, Any]) -> ScoreConfig:
    """The options the run's scorer was fitted with: its own record's when it is readable, else
    the ones the run was trained with (``config.json``)."""
    from iisan.config import TrainConfig

    folder = run_dir / SCORER_DIR
    if current_generation(folder, POINTER) is not None:
        try:
            return ScoreConfig(**upgrade_score_options(read_json_object(folder / POINTER, {"options": dict}, FIX)["options"]))
        except (DatasetError, ConfigError, TypeError):
            pass  # a damaged record: the options the run was trained with
    return TrainConfig.from_json(saved["train"]).score


def load_scorer(run_dir: Path, saved: dict[str, Any], described: SavedModel,
                model: SequentialRecommender) -> BlendScorer | None:
    """The run's fitted scorer around ``model`` (its weights loaded), or ``None`` when the run
    has none (trained with ``--no-blend``, a method without a blend). ``saved``: the run's
    ``config.json``; ``described``: its ``model.json``.

    Raises:
        DatasetError: its files are damaged or do not fit the model (one line, with the fix).
    """
    folder = run_dir / SCORER_DIR
    generation = current_generation(folder, POINTER)
    if generation is not None:
        record = read_json_object(folder / POINTER, FIELDS, FIX)
        if record["version"] != SCORER_VERSION or record["kind"] != "blend":
            raise DatasetError(f"{folder / POINTER}: a {record['kind']} scorer of format {record['version']}, this "
                               f"iisan reads blend scorers of format {SCORER_VERSION}; {FIX}")
        options = ScoreConfig(**upgrade_score_options(record["options"]))
        shapes = _shapes(record["shapes"], folder / POINTER)
        tensors = load_tensors(folder / generation / WEIGHTS, FIX)
        calibration = record.get("calibration") or {}
        where = folder / generation / WEIGHTS
        compact = _compact_record(record.get("compact"), folder / POINTER)
    else:
        old = scorer_in_model_file(saved, run_dir / WEIGHTS_FILE)
        if old is None:
            return None
        (options, tensors), calibration, compact = old, {}, None
        shapes = described.shapes
        where = run_dir / WEIGHTS_FILE
    blend = build_blend(model, shapes, described.num_items, options)
    if blend is None:
        raise DatasetError(f"{where}: a blend for a model that reads no content; {FIX}")
    stage = None
    if compact is not None:
        stage = CompactStage(blend.width, compact - len(PRIORS), len(PRIORS))
        _load_module(stage, {n.removeprefix(COMPACT): tensors.pop(n) for n in list(tensors) if n.startswith(COMPACT)},
                     where, "first stage")
    _load_module(blend, tensors, where, "blend")
    return BlendScorer(model, blend, options, calibration, stage)


def _compact_record(raw: Any, where: Path) -> int | None:
    """The first stage's width a scorer record names (``None``: it serves the full vectors)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("width"), int) or raw["width"] <= len(PRIORS):
        raise DatasetError(f"{where}: compact must be null or name the first stage's width; {FIX}")
    return raw["width"]


def _shapes(raw: Any, where: Path) -> dict[str, tuple[int, int]]:
    if not isinstance(raw, dict) or not all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
                                            for v in raw.values()):
        raise DatasetError(f"{where}: shapes must map each modality to [layers, width]; {FIX}")
    return {m: (v[0], v[1]) for m, v in raw.items()}


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path, what: str) -> None:
    """A part's weights, upgraded from earlier layouts and checked like a model's."""
    expected = module.state_dict()
    tensors = upgrade_weights(tensors, expected)
    differ = sorted((expected.keys() ^ tensors.keys())
                    | {n for n in expected.keys() & tensors.keys() if expected[n].shape != tensors[n].shape})
    if differ:
        raise DatasetError(f"{where}: the {what}'s weights do not match its options ({differ[0]}"
                           f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}); {FIX}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DatasetError(f"{where}: {name} holds non-finite values; {FIX}")
    module.load_state_dict(tensors)
