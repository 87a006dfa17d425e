"""The synthetic source: deterministic, and each modality carries only its part of the signal."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iisan.config import PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.data.synth import CATEGORIES, COLOURS, SynthConfig, synthesize
from iisan.errors import ConfigError

SMALL = SynthConfig(items=120, users=60, categories=4, colours=3, image_size=16, seed=7)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_given_seed(tmp_path):
    synthesize(tmp_path / "a", SMALL)
    synthesize(tmp_path / "b", SMALL)
    synthesize(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 8}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def _item_attributes(folder: Path):
    titles = dict(line.split("\t") for line in (folder / "items.tsv").read_text().splitlines())
    names = list(COLOURS)
    palette = np.array(list(COLOURS.values()), dtype=float)
    category, colour = {}, {}
    for key, title in titles.items():
        category[key] = next(c for c in CATEGORIES if f" {c} " in title)
        pixels = np.asarray(Image.open(folder / "images" / f"{key}.png").convert("RGB"), dtype=float)
        median = np.median(pixels.reshape(-1, 3), axis=0)  # background colour under the grain
        colour[key] = names[int(np.argmin(((palette - median) ** 2).sum(axis=1)))]
    return titles, category, colour


def test_category_only_in_text_colour_only_in_image(tmp_path):
    synthesize(tmp_path / "s", SMALL)
    titles, category, colour = _item_attributes(tmp_path / "s")
    assert not any(name in title.lower() for title in titles.values() for name in COLOURS)
    assert len(set(category.values())) == SMALL.categories
    assert len(set(colour.values())) == SMALL.colours
    # Images of one colour look alike whatever the category: the colour is recoverable
    # from pixels, and every (category, colour) pair is present.
    assert len({(category[k], colour[k]) for k in titles}) == SMALL.categories * SMALL.colours


def test_users_prefer_one_category_and_colour(tmp_path):
    synthesize(tmp_path / "s", SynthConfig(**{**SMALL.__dict__, "users": 200}))
    _, category, colour = _item_attributes(tmp_path / "s")
    both, cat_only, col_only = [], [], []
    for line in (tmp_path / "s" / "users.tsv").read_text().splitlines():
        keys = line.split("\t")[1].split()
        top_cat = Counter(category[k] for k in keys).most_common(1)[0][0]
        top_col = Counter(colour[k] for k in keys).most_common(1)[0][0]
        both.append(np.mean([category[k] == top_cat and colour[k] == top_col for k in keys]))
        cat_only.append(np.mean([category[k] == top_cat for k in keys]))
        col_only.append(np.mean([colour[k] == top_col for k in keys]))
    # Default mix: 60% match both, 20% only the category, 20% only the colour.
    assert np.mean(both) > 0.55
    assert np.mean(cat_only) > np.mean(both) + 0.1
    assert np.mean(col_only) > np.mean(both) + 0.1


def test_prepared_dataset_is_labelled_synthetic_with_images(tmp_path):
    synthesize(tmp_path / "s", SynthConfig(**{**SMALL.__dict__, "missing_image_rate": 0.25}))
    meta, problems = prepare(tmp_path / "s", tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    assert meta["synthetic"] is True
    assert meta["synthetic_config"]["seed"] == 7
    ds = PreparedDataset.load(tmp_path / "ds")
    with_image = ds.items["image"].is_not_null().sum()
    assert 0 < with_image < ds.num_items
    assert problems.count("missing_image") == ds.num_items - with_image
    info = json.loads((tmp_path / "s" / "synth.json").read_text())
    assert info["synthetic"] is True


def test_text_only_source(tmp_path):
    synthesize(tmp_path / "s", SynthConfig(**{**SMALL.__dict__, "image_size": 0}))
    assert not (tmp_path / "s" / "images").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"items": 5}, "cannot cover"), ({"categories": 99}, "categories"), ({"min_len": 9, "max_len": 3}, "min_len"),
     ({"p_both": 0.9, "p_category": 0.5}, "sum")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**kwargs)
