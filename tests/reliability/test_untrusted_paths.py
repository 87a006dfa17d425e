"""Hostile image paths: symlinks to devices and outside files, dangling links, FIFOs, absolute
and ``..`` paths. Each is refused and counted (or a one-line error), never followed blindly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from iisan.config import PrepareConfig
from iisan.data import prepare
from iisan.errors import InputError
from iisan.serving.intake import read_new_items
from tests.conftest import png_bytes, write_tsv_source

USERS = ["u1\ti1 i2 i3 i4 i5 i6", "u2\ti6 i5 i4 i3 i2 i1"]


@pytest.fixture
def hostile_source(tmp_path) -> Path:
    src = write_tsv_source(tmp_path / "src", {f"i{n}": f"item {n}" for n in range(1, 7)}, USERS)
    images = src / "images"
    images.mkdir()
    (images / "i1.png").write_bytes(png_bytes())  # an ordinary image
    (images / "i2.png").symlink_to("/dev/zero")  # endless: once exhausted memory
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes((0, 0, 255)))
    (images / "i3.png").symlink_to(outside)  # a file outside the source
    (images / "i4.png").symlink_to("../nothing-here.png")  # dangling
    os.mkfifo(images / "i5.png")  # would block a plain open()
    (images / "real6.png").write_bytes(png_bytes((0, 255, 0)))
    (images / "i6.png").symlink_to("real6.png")  # a link within the source: fine
    return src


def image_column(dataset: Path) -> dict[str, str | None]:
    items = pl.read_parquet(dataset / "items.parquet")
    return dict(zip(items["key"], items["image"]))


def test_prepare_refuses_and_counts_hostile_image_files(hostile_source, tmp_path):
    meta, problems = prepare(hostile_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv", min_seq_len=3))
    counts = meta["problems"]
    assert counts["refused_image"]["count"] == 3 and counts["missing_image"]["count"] == 1
    images = image_column(tmp_path / "ds")
    assert images["i1"] and images["i6"] and not any(images[k] for k in ("i2", "i3", "i4", "i5"))
    assert meta["counts"]["items_with_image"] == 2
    for path in (tmp_path / "ds" / "images").iterdir():  # copies: self-contained, no links
        assert path.is_file() and not path.is_symlink() and os.stat(path).st_nlink == 1


def test_allow_outside_paths_reads_the_outside_file_but_never_a_device(hostile_source, tmp_path):
    config = PrepareConfig(format="iisan-tsv", min_seq_len=3, allow_outside_paths=True)
    meta, _ = prepare(hostile_source, tmp_path / "ds", config)
    assert meta["problems"]["refused_image"]["count"] == 2  # /dev/zero and the FIFO
    assert image_column(tmp_path / "ds")["i3"]


def write_csv_source(tmp_path: Path, paths: list[str]) -> Path:
    src = tmp_path / "csv"
    src.mkdir()
    (src / "ok.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes((1, 2, 3)))
    rows = [f"u{u},{n},{t}" for u in range(2) for t, n in enumerate(range(1, len(paths) + 1))]
    (src / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    (src / "items.csv").write_text("item,text,image\n" + "".join(f"{n},Item {n},{p}\n" for n, p in enumerate(paths, 1)))
    return src


def test_csv_image_paths_stay_under_the_items_folder(tmp_path):
    src = write_csv_source(tmp_path, ["ok.png", str(tmp_path / "secret.png"), "../secret.png", "ok.png", "ok.png"])
    meta, _ = prepare(src, tmp_path / "ds", PrepareConfig(format="csv", min_seq_len=3))
    assert meta["problems"]["refused_image"]["count"] == 2
    assert meta["counts"]["items_with_image"] == 3
    meta, _ = prepare(src, tmp_path / "ds2", PrepareConfig(format="csv", min_seq_len=3, allow_outside_paths=True))
    assert "refused_image" not in meta["problems"] and meta["counts"]["items_with_image"] == 5


@pytest.mark.parametrize("image, message", [("/etc/hostname", "absolute"), ("../x.png", "outside its folder"),
                                            ("zero.png", "to /dev/zero"), ("out.png", "leads outside"),
                                            ("fifo.png", "not a regular file")])
def test_items_add_refuses_paths_outside_the_jsonl_folder(tmp_path, image, message):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "x.png").write_bytes(png_bytes())
    (folder / "out.png").symlink_to(tmp_path / "x.png")
    os.mkfifo(folder / "fifo.png")
    path = folder / "items.jsonl"
    path.write_text(json.dumps({"key": "k", "text": "t", "image": image}) + "\n")
    with pytest.raises(InputError, match=rf"items.jsonl:1: .*{message}"):
        read_new_items(path)
