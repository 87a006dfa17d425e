"""A synthetic multimodal source where text and images each carry part of the signal.

Every item is a (category, colour) pair. Its title names the category and never the
colour; its image shows the colour and never the category. Each user prefers one
(category, colour) pair: most of their items match both, some only the category, some
only the colour. So a text-only model can learn the user's category, an image-only model
their colour, and only a model that reads both can find the exact pair: the set on which
``intra_inter`` should beat ``text`` and ``image`` alone.

The output is an ``iisan-tsv`` source folder (``items.tsv``, ``users.tsv``,
``images/<key>.png``) plus ``synth.json``, which marks every dataset prepared from it
as synthetic.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from iisan.data.sources.tsv import SYNTH_INFO_FILE
from iisan.errors import ConfigError
from iisan.fileio import atomic_directory, check_replaceable, write_json_atomic
from iisan.options import check_options, option
from iisan.progress import progress

log = logging.getLogger(__name__)

ADJECTIVES = (
    "compact", "deluxe", "classic", "portable", "premium", "everyday", "vintage",
    "modern", "lightweight", "sturdy", "foldable", "professional",
)

# What the source draws from: titles name a category, images show a colour.
CATEGORIES = (
    "lamp", "kettle", "backpack", "headphones", "notebook", "sneaker", "mug", "clock",
    "umbrella", "camera", "guitar", "bicycle", "chair", "scarf", "watch", "blender",
    "tent", "keyboard", "telescope", "vase",
)
COLOURS = {
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (238, 210, 2),
    "green": (44, 160, 44), "teal": (23, 190, 207), "blue": (31, 119, 180),
    "purple": (148, 103, 189), "pink": (247, 129, 191), "brown": (140, 86, 75),
    "olive": (128, 128, 0), "navy": (0, 0, 128), "black": (20, 20, 20),
}


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic source (fields: ``iisan data synth --help``);
    everything is a deterministic function of it."""

    items: int = option(2000, minimum=1, help="Number of items (at least categories x colours).")
    users: int = option(1000, minimum=1, help="Number of users.")
    categories: int = option(10, minimum=1, help="Categories (named in titles only).")
    colours: int = option(8, minimum=1, help="Colours (shown in images only).")
    min_len: int = option(5, minimum=1, help="Shortest sequence.")
    max_len: int = option(20, minimum=1, help="Longest sequence.")
    p_both: float = option(0.6, minimum=0, help="Probability that an interaction matches the user's category "
                                                "and colour.")
    p_category: float = option(0.2, minimum=0, help="Probability that it matches only their category (the "
                                                    "rest match only their colour).")
    image_size: int = option(64, minimum=0, help="PNG side in pixels; 0 for a text-only source.")
    missing_image_rate: float = option(0.0, minimum=0, help="Share of items without an image.")
    seed: int = option(0, help="Random seed; the output is deterministic given it.")

    def __post_init__(self) -> None:
        check_options(self)
        if not 1 <= self.categories <= len(CATEGORIES):
            raise ConfigError(f"categories must be in 1..{len(CATEGORIES)}, got {self.categories}")
        if not 1 <= self.colours <= len(COLOURS):
            raise ConfigError(f"colours must be in 1..{len(COLOURS)}, got {self.colours}")
        if self.items < self.categories * self.colours:
            raise ConfigError(
                f"--items {self.items} cannot cover {self.categories} categories x {self.colours} colours; "
                f"use at least {self.categories * self.colours} items"
            )
        if not self.min_len <= self.max_len:
            raise ConfigError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.p_both + self.p_category > 1:
            raise ConfigError("p_both and p_category must sum to at most 1")
        if self.missing_image_rate > 1:
            raise ConfigError(f"missing_image_rate must be in [0, 1], got {self.missing_image_rate}")


def synthesize(out_dir: str | Path, config: SynthConfig, force: bool = False) -> dict:
    """Write a synthetic ``iisan-tsv`` source to ``out_dir``; returns its ``synth.json``."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, SYNTH_INFO_FILE, force)
    rng = np.random.default_rng(config.seed)
    n_pairs = config.categories * config.colours

    # Items: every (category, colour) pair is used; within a pair, items get a random
    # popularity rank so that some are picked far more often than others.
    pair = rng.permutation(np.arange(config.items) % n_pairs)
    category, colour = pair // config.colours, pair % config.colours
    keys = [f"S{i:07d}" for i in range(config.items)]
    titles = _titles(rng, category, config.items)

    # Sequences, vectorised: for every step pick the (category, colour) it must match,
    # then an item of that pair, skewed towards the pair's popular items.
    order = np.argsort(pair, kind="stable")
    pair_start = np.searchsorted(pair[order], np.arange(n_pairs))
    pair_size = np.bincount(pair, minlength=n_pairs)
    lengths = rng.integers(config.min_len, config.max_len + 1, size=config.users)
    step_user = np.repeat(np.arange(config.users), lengths)
    user_cat = rng.integers(config.categories, size=config.users)[step_user]
    user_col = rng.integers(config.colours, size=config.users)[step_user]
    mode = rng.random(step_user.size)
    keep_cat = mode < config.p_both + config.p_category
    keep_col = (mode < config.p_both) | (mode >= config.p_both + config.p_category)
    step_cat = np.where(keep_cat, user_cat, rng.integers(config.categories, size=step_user.size))
    step_col = np.where(keep_col, user_col, rng.integers(config.colours, size=step_user.size))
    step_pair = step_cat * config.colours + step_col
    within = np.floor(pair_size[step_pair] * rng.random(step_user.size) ** 2).astype(np.int64)
    step_item = order[pair_start[step_pair] + within]

    has_image = np.zeros(config.items, dtype=bool)
    if config.image_size > 0:
        has_image = rng.random(config.items) >= config.missing_image_rate

    info = {
        "synthetic": True,
        "generator": "iisan data synth",
        **asdict(config),
        "category_names": list(CATEGORIES[: config.categories]),
        "colour_names": list(COLOURS)[: config.colours],
    }
    with atomic_directory(out_dir) as work:
        pl.DataFrame({"key": keys, "title": titles}).write_csv(
            work / "items.tsv", separator="\t", include_header=False, quote_style="never"
        )
        steps = pl.DataFrame({"user": step_user, "item": pl.Series(keys).gather(step_item)})
        users = steps.group_by("user", maintain_order=True).agg(pl.col("item").str.join(" "))
        users.with_columns(pl.format("U{}", pl.col("user").cast(pl.String).str.zfill(7))).write_csv(
            work / "users.tsv", separator="\t", include_header=False, quote_style="never"
        )
        if config.image_size > 0:
            _write_images(work / "images", keys, colour, has_image, config, rng)
        write_json_atomic(work / SYNTH_INFO_FILE, info)
    log.info("wrote %d items, %d users, %d interactions to %s", config.items, config.users, len(step_item), out_dir)
    return info


def _titles(rng: np.random.Generator, category: np.ndarray, n: int) -> list[str]:
    adjective = rng.integers(len(ADJECTIVES), size=n)
    model = rng.integers(100, 10000, size=n)
    return [
        f"{ADJECTIVES[a].capitalize()} {CATEGORIES[c]} model {m}"
        for a, c, m in zip(adjective, category, model)
    ]


def _write_images(
    folder: Path, keys: list[str], colour: np.ndarray, has_image: np.ndarray,
    config: SynthConfig, rng: np.random.Generator,
) -> None:
    """One PNG per item: its colour as background, grain, and a grey shape at random.

    The shape and grain vary per item so images are not identical, but they carry no
    information about the category.
    """
    folder.mkdir()
    size = config.image_size
    palette = np.array(list(COLOURS.values()), dtype=np.int16)
    for index in progress(np.flatnonzero(has_image), desc="images", unit="img", leave=False, mininterval=1):
        grain = rng.integers(-18, 19, size=(size, size, 1), dtype=np.int16)
        pixels = np.clip(palette[colour[index]] + grain, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        x0, y0 = rng.integers(0, size // 2 + 1, size=2)
        width, height = rng.integers(size // 4, size // 2 + 1, size=2)
        box = (int(x0), int(y0), int(x0 + width), int(y0 + height))
        grey = int(rng.integers(90, 200))
        draw = ImageDraw.Draw(image)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=(grey, grey, grey))
        else:
            draw.rectangle(box, fill=(grey, grey, grey))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        (folder / f"{keys[index]}.png").write_bytes(buffer.getvalue())
