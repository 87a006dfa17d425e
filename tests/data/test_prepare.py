"""Split semantics, numbering and the dataset files, on hand-checked data and on Scientific."""

from __future__ import annotations

import json

import polars as pl
import pytest

from iisan.config import PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.errors import ConfigError, DatasetError
from tests.conftest import SCIENTIFIC


def test_keeps_every_interaction_by_default(small_source, tmp_path):
    meta, problems = prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    ds = PreparedDataset.load(tmp_path / "ds")

    assert not problems
    # u1's whole history, 8 items with repeats; u4 (2 items) is too short and dropped.
    assert ds.sequences["user_key"].to_list() == ["u1", "u2", "u3"]
    keys = dict(zip(ds.items["item_id"], ds.items["key"]))
    assert [keys[i] for i in ds.sequences["items"][0]] == ["i1", "i2", "i3", "i4", "i5", "i6", "i1", "i2"]
    assert ds.items["key"].to_list() == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert meta["counts"]["interactions"] == 18
    assert meta["keep_last"] == 0 and "older_than_keep_last" not in meta["filtered"]


def test_keep_last_is_the_reference_protocol(small_source, tmp_path):
    config = PrepareConfig(format="iisan-tsv", keep_last=6, min_seq_len=5)
    meta, problems = prepare(small_source, tmp_path / "ds", config)
    ds = PreparedDataset.load(tmp_path / "ds")

    assert not problems
    # u1 keeps its last 6 items; u4 (2 items) is dropped.
    assert ds.sequences["user_key"].to_list() == ["u1", "u2", "u3"]
    keys = dict(zip(ds.items["item_id"], ds.items["key"]))
    as_keys = [[keys[i] for i in seq] for seq in ds.sequences["items"].to_list()]
    assert as_keys == [
        ["i3", "i4", "i5", "i6", "i1", "i2"],
        ["i3", "i3", "i4", "i5", "i6"],
        ["i6", "i5", "i4", "i3", "i2"],
    ]
    # ids follow first appearance in the kept sequences: i3 first, then i4, ...
    assert ds.items["key"].to_list() == ["i3", "i4", "i5", "i6", "i1", "i2"]
    assert ds.items["item_id"].to_list() == [1, 2, 3, 4, 5, 6]
    assert meta["counts"] == {
        "users": 3, "items": 6, "interactions": 16, "items_with_text": 6, "items_with_image": 0,
    }
    assert meta["filtered"]["short_users"] == 1
    assert meta["filtered"]["older_than_keep_last"] == 2
    assert meta["keep_last"] == 6


def test_text_is_cleaned(small_source, tmp_path):
    prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    ds = PreparedDataset.load(tmp_path / "ds")
    assert ds.items.filter(pl.col("key") == "i1")["text"][0] == "Item & number 1"


def test_dataset_json_has_required_fields(small_source, tmp_path):
    prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    for key in ("counts", "source", "format", "keep_last", "min_seq_len", "fingerprint", "version"):
        assert key in meta
    assert set(meta["counts"]) >= {"users", "items", "interactions"}
    assert meta["synthetic"] is False


def test_fingerprint_is_stable_and_content_sensitive(small_source, tmp_path):
    config = PrepareConfig(format="iisan-tsv")
    a, _ = prepare(small_source, tmp_path / "a", config)
    b, _ = prepare(small_source, tmp_path / "b", config)
    assert a["fingerprint"] == b["fingerprint"]
    items = (small_source / "items.tsv").read_text().replace("number  3", "number 33")
    (small_source / "items.tsv").write_text(items)
    c, _ = prepare(small_source, tmp_path / "c", config)
    assert c["fingerprint"] != a["fingerprint"]


def test_rerun_replaces_dataset_but_refuses_foreign_folder(small_source, tmp_path):
    out = tmp_path / "ds"
    prepare(small_source, out, PrepareConfig(format="iisan-tsv"))
    prepare(small_source, out, PrepareConfig(format="iisan-tsv", keep_last=5))
    assert PreparedDataset.load(out).meta["keep_last"] == 5
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--force"):
        prepare(small_source, foreign, PrepareConfig(format="iisan-tsv"))
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_sequence_arrays_round_trip(small_source, tmp_path):
    prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    ds = PreparedDataset.load(tmp_path / "ds")
    flat, offsets = ds.sequence_arrays()
    rebuilt = [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    assert rebuilt == ds.sequences["items"].to_list()


def test_load_refuses_other_version(small_source, tmp_path):
    prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    meta_path = tmp_path / "ds" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="version 999"):
        PreparedDataset.load(tmp_path / "ds")
    with pytest.raises(DatasetError, match="iisan prepare"):
        PreparedDataset.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"format": "xml"}, "format must be one of"),
        ({"format": "csv", "keep_last": -1}, "keep_last"),
        ({"format": "csv", "min_seq_len": 2}, "min_seq_len"),
        ({"format": "csv", "keep_last": 5, "min_seq_len": 9}, "cannot exceed"),
        ({"format": "csv", "kcore": -1}, "kcore"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PrepareConfig(**kwargs)


@pytest.mark.shared_data
def test_scientific_matches_reference_counts(tmp_path):
    """The reference preprocessing (each user's last 13) yields 12,076 users, 20,314 items,
    81,711 interactions; whole histories keep 3,500 more interactions of 565 longer users."""
    meta, problems = prepare(SCIENTIFIC, tmp_path / "sci", PrepareConfig(format="iisan-tsv", keep_last=13))
    assert meta["counts"]["users"] == 12_076
    assert meta["counts"]["items"] == 20_314
    assert meta["counts"]["interactions"] == 81_711
    assert not problems
    ds = PreparedDataset.load(tmp_path / "sci")
    lengths = ds.sequences["items"].list.len()
    assert lengths.min() == 5 and lengths.max() == 13
    whole, _ = prepare(SCIENTIFIC, tmp_path / "whole", PrepareConfig(format="iisan-tsv"))
    assert (whole["counts"]["users"], whole["counts"]["items"], whole["counts"]["interactions"]) == (
        12_076, 20_825, 85_211)
    assert meta["filtered"]["older_than_keep_last"] == 85_211 - 81_711
