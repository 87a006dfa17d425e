"""Shared fixtures: tiny sources written on the fly, and the shared real data set."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCIENTIFIC = SHARED / "datasets" / "amazon-scientific"


def write_tsv_source(
    folder: Path,
    items: dict[str, str] | list[str],
    users: list[str],
) -> Path:
    """Write ``items.tsv`` / ``users.tsv``; lines are given raw (``items`` may be a dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    item_lines = [f"{k}\t{v}" for k, v in items.items()] if isinstance(items, dict) else items
    (folder / "items.tsv").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    (folder / "users.tsv").write_text("\n".join(users) + "\n", encoding="utf-8")
    return folder


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def scientific_minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Scientific set prepared (the reference protocol, --keep-last 13) and encoded
    with minilm through the command line, once per session: ``work/scientific`` and
    ``work/cache-minilm``, the layout the Scientific benches build (so they find it complete
    and do not encode again). Encoding 20,000 titles is most of the slow tests' time; every
    test that reads this cache shares one."""
    from typer.testing import CliRunner

    from iisan.cli import app

    work = tmp_path_factory.mktemp("scientific-minilm")
    data, cache = work / "scientific", work / "cache-minilm"
    prepared = CliRunner().invoke(app, ["prepare", str(SCIENTIFIC), "-f", "iisan-tsv", "--keep-last", "13",
                                        "-o", str(data)])
    assert prepared.exit_code == 0, prepared.output
    encoded = CliRunner().invoke(app, ["encode", str(data), "--out", str(cache), "--image-encoder", "none"])
    assert encoded.exit_code == 0, encoded.output
    return work


@pytest.fixture(scope="session", autouse=True)
def iisan_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Derived model files (unzipped, converted, tiny random) go to a per-session folder."""
    home = tmp_path_factory.mktemp("iisan-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("IISAN_HOME", str(home))
    yield home
    patcher.undo()


@pytest.fixture
def small_source(tmp_path: Path) -> Path:
    """Six items, four users; user u4 is too short, u1 is longer than the others (8 items)."""
    items = {f"i{n}": f"Item &amp; number  {n}" for n in range(1, 7)}
    users = [
        "u1\ti1 i2 i3 i4 i5 i6 i1 i2",  # 8 items: --keep-last 6 keeps i3 .. i2
        "u2\ti3 i3 i4 i5 i6",
        "u3\ti6 i5 i4 i3 i2",
        "u4\ti1 i2",  # shorter than min_seq_len: dropped
    ]
    return write_tsv_source(tmp_path / "src", items, users)


@pytest.fixture(scope="session")
def tiny_multimodal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset dir, cache dir) of a small synthetic multimodal set encoded with tiny encoders."""
    from tests.multimodal_data import build_tiny_multimodal

    return build_tiny_multimodal(tmp_path_factory.mktemp("tiny-mm"))


@pytest.fixture(scope="session")
def tiny_run(tiny_multimodal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch IISAN run on ``tiny_multimodal`` (one set of blend weights for
    every user, no words in the floor, the full vectors served: the layout runs saved before
    groups of users, term vectors and the compact first stage can be converted to)."""
    from iisan.config import TrainConfig
    from iisan.training.loop import train

    dataset, cache = tiny_multimodal
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    config = TrainConfig.for_method("iisan", epochs=2, train_batch_size=32, seed=1, eval_user_chunk=64,
                                    blend_groups=1, blend_terms=0, serve_width=0)
    # an input of 5, as the runs the old config files in tests/fixtures describe
    config = dataclasses.replace(config, user=dataclasses.replace(config.user, max_seq_len=5))
    train(dataset, run, config, cache_dir=cache)
    return run


@pytest.fixture(scope="session")
def tiny_asymmetric(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset dir, cache dir) like ``tiny_multimodal`` but with encoders of different shape:
    text 2 layers x 32, image 4 layers x 48 (selected layers: 2 vs 3)."""
    from tests.multimodal_data import build_tiny_multimodal

    return build_tiny_multimodal(tmp_path_factory.mktemp("tiny-asym"), image_layers=4, image_hidden=48)
