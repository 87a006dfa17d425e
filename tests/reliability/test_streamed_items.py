"""``items add`` streams its file (issue 28, point 5: 10,000 items took 7.5 GB): items are
read and embedded a fixed batch at a time and committed together; and text files in UTF-16
or UTF-32 (with a byte-order mark) are read, not an internal error (point 8)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from iisan.config import PrepareConfig
from iisan.data.prepare import prepare
from iisan.errors import InputError
from iisan.run.index_store import committed_generation
from iisan.serving.intake import iter_new_items
from iisan.serving.recommender import Recommender
from tests.conftest import png_bytes
from tests.reliability.conftest import cli, one_line_error


def write_items(path, count: int, bad_at: int | None = None, encoding: str = "utf-8") -> None:
    lines = []
    for n in range(count):
        item = {"key": f"s{n}", "text": f"streamed item {n}", "image": "pic.png"}
        lines.append("not json" if n == bad_at else json.dumps(item))
    (path.parent / "pic.png").write_bytes(png_bytes(size=16))
    path.write_text("\n".join(lines) + "\n", encoding=encoding)


def test_items_are_embedded_in_fixed_batches_and_committed_once(scratch, tmp_path, monkeypatch):
    recommender = Recommender.load(scratch.run)
    file = tmp_path / "many.jsonl"
    write_items(file, 70)
    sizes = []
    embed = recommender._embedder.embed
    monkeypatch.setattr(recommender._embedder, "embed", lambda texts, images: sizes.append(len(images)) or
                        embed(texts, images))
    before = committed_generation(recommender.store.index_dir)
    read = []
    items = (read.append(item["key"]) or item for item in iter_new_items(file))
    keys = recommender.add_items(items, batch_size=32)
    assert sizes == [32, 32, 6] and keys == [f"s{n}" for n in range(70)] == read
    generation = committed_generation(recommender.store.index_dir)
    assert int(generation[4:]) == int(before[4:]) + 1  # one commit for the whole file
    assert {f"s{n}" for n in range(70)} <= set(Recommender.load(scratch.run).ids)


def test_a_bad_line_late_in_the_file_adds_nothing(scratch, tmp_path):
    file = tmp_path / "late.jsonl"
    write_items(file, 300, bad_at=290)
    one_line_error(cli("items", "add", scratch.run, file), "late.jsonl:291", "not valid JSON")
    assert not any(key.startswith("s") and key[1:].isdigit() for key in Recommender.load(scratch.run).ids)


def test_a_key_repeated_across_batches_adds_nothing(scratch):
    recommender = Recommender.load(scratch.run)
    items = [{"key": f"r{n % 40}", "text": "again"} for n in range(41)]
    with pytest.raises(InputError, match="keys given twice: 'r0'"):
        recommender.add_items(items, batch_size=16)
    assert "r1" not in Recommender.load(scratch.run).ids


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_items_files_with_a_byte_order_mark_are_read(scratch, tmp_path, encoding):
    file = tmp_path / "bom.jsonl"
    write_items(file, 3, encoding=encoding)
    result = cli("items", "add", scratch.run, file, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["keys"] == ["s0", "s1", "s2"]


def test_a_file_that_is_not_text_is_one_line(scratch, tmp_path):
    file = tmp_path / "latin1.jsonl"
    file.write_bytes('{"key": "caf\xe9", "text": "x"}\n'.encode("latin-1"))
    one_line_error(cli("items", "add", scratch.run, file), "latin1.jsonl:1", "not UTF-8 text")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_csv_source_in_utf16_or_utf32_is_prepared(tmp_path, encoding):
    source = tmp_path / "src"
    source.mkdir()
    interactions = ["user,item,timestamp"] + [f"u{u},i{(u + k) % 7},{k}" for u in range(6) for k in range(5)]
    items = ["item,text"] + [f"i{n},Caf\u00e9 n\u00ba {n}" for n in range(7)]
    (source / "interactions.csv").write_text("\n".join(interactions) + "\n", encoding=encoding)
    (source / "items.csv").write_text("\n".join(items) + "\n", encoding=encoding)
    meta, _ = prepare(source, tmp_path / "ds", PrepareConfig(format="csv"))
    items = pl.read_parquet(tmp_path / "ds" / "items.parquet")
    assert len(items) == 7 and any("Café" in text for text in items["text"].to_list())


def test_new_items_go_through_the_encoders_a_bounded_chunk_at_a_time(scratch, monkeypatch):
    """An encoder pass holds every layer's states for every item in it: new items are
    embedded ENCODE_CHUNK at a time, whatever the batch read from the file."""
    from iisan.features.live import LiveSource
    from iisan.serving import intake

    monkeypatch.setattr(intake, "ENCODE_CHUNK", 8)
    passes = []
    original = LiveSource.content_features
    monkeypatch.setattr(LiveSource, "content_features",
                        lambda self, ids, texts, images: passes.append(len(ids)) or original(self, ids, texts, images))
    recommender = Recommender.load(scratch.run)
    recommender.add_items([{"key": f"c{n}", "text": f"chunked {n}", "image": png_bytes(size=16)} for n in range(20)],
                          batch_size=16)
    assert passes == [8, 8, 4] and max(passes) <= 8
    assert {f"c{n}" for n in range(20)} <= set(Recommender.load(scratch.run).ids)
