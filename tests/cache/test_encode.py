"""Building, reading, refusing and resuming the hidden-state cache (tiny random encoders)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from iisan.cache import HiddenStateCache
from iisan.cache.encode import encode
from iisan.cache.store import done_path, read_manifest
from iisan.config import EncodeConfig, PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.data.synth import SynthConfig, synthesize
from iisan.encoders.layer_states import FrozenEncoder
from iisan.errors import CacheMismatchError, DatasetError
from tests.conftest import write_tsv_source

TINY = EncodeConfig(text_encoder="tiny-random-text", image_encoder="tiny-random-image",
                    image_size=32, encode_batch_size=16, workers=2)


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory) -> Path:
    """A synthetic dataset where a quarter of the items have no image."""
    root = tmp_path_factory.mktemp("mm")
    synthesize(root / "src", SynthConfig(items=150, users=120, categories=4, colours=3, image_size=24,
                                         missing_image_rate=0.25, seed=3))
    prepare(root / "src", root / "ds", PrepareConfig(format="iisan-tsv"))
    return root / "ds"


@pytest.fixture(scope="module")
def built(multimodal, tmp_path_factory) -> HiddenStateCache:
    out = tmp_path_factory.mktemp("cache") / "c"
    encode(multimodal, out, TINY)
    return HiddenStateCache.open(out, PreparedDataset.load(multimodal).fingerprint)


def test_layout_and_padding_row(built, multimodal):
    ds = PreparedDataset.load(multimodal)
    for modality in ("text", "image"):
        states = built.states(modality)
        assert states.shape == (ds.num_items + 1, 3, 32) and states.dtype == np.float16
        assert not states[0].any()  # row 0 is padding
        assert built.num_layers(modality) == 3 and built.hidden_size(modality) == 32


def test_missing_images_are_zero_rows_with_mask(built, multimodal):
    ds = PreparedDataset.load(multimodal)
    has_image = np.concatenate([[False], ds.items["image"].is_not_null().to_numpy()])
    present = built.present("image")
    assert 0 < has_image.sum() < ds.num_items
    assert np.array_equal(present, has_image)
    states = built.states("image")
    assert not states[~present].any() and states[present][:, -1].any(axis=-1).all()
    assert built.present("text")[1:].all()


def test_cached_rows_equal_a_direct_forward_pass(built, multimodal):
    ds = PreparedDataset.load(multimodal)
    ids = np.array([1, 7, ds.num_items])
    text_encoder = FrozenEncoder.load("tiny-random-text", "text")
    texts = ds.items["text"].to_list()
    direct = text_encoder.pooled_hidden_states(
        text_encoder.collate_tokens(text_encoder.tokenize([texts[i - 1] for i in ids], 30)), "cls")
    cached = torch.from_numpy(built.gather("text", ids).astype(np.float32))
    assert torch.allclose(cached, direct, atol=2e-3, rtol=2e-3)  # float16 storage

    image_encoder = FrozenEncoder.load("tiny-random-image", "image")
    with_image = np.flatnonzero(built.present("image"))[:3]
    pixels = np.stack([image_encoder.preprocess_image((ds.root / ds.items["image"][int(i) - 1]).read_bytes(), 32)
                       for i in with_image])
    direct = image_encoder.pooled_hidden_states({"pixel_values": torch.from_numpy(pixels)}, "cls")
    cached = torch.from_numpy(built.gather("image", with_image).astype(np.float32))
    assert torch.allclose(cached, direct, atol=2e-3, rtol=2e-3)


def test_cls_layer_zero_is_detected_as_constant_and_never_selected(built, multimodal, tmp_path):
    """Under CLS pooling layer 0 is the CLS token's embedding, the same for every item: the
    cache says so, and the default layer rules never spend a side-network step on it."""
    from iisan.config import SideNetworkConfig, TrainConfig
    from iisan.assemble import assemble

    assert built.manifest["encoders"]["text"]["pooling"] == "cls"  # auto: a plain BERT folder
    assert built.constant_layers("text") == (0,)
    states = built.states("text")[1:].astype(np.float32)
    assert np.ptp(states[:, 0], axis=0).max() == 0 and np.ptp(states[:, 2], axis=0).max() > 0
    for rule in ("every_other", "all"):
        config = TrainConfig(side=SideNetworkConfig(modality="text", layer_rule=rule))
        assert 0 not in assemble(multimodal, built.root, config).model.layers["text"]
    explicit = TrainConfig(side=SideNetworkConfig(modality="text", layers=(0, 2)))
    assert assemble(multimodal, built.root, explicit).model.layers["text"] == (0, 2)  # asked for: kept

    mean = tmp_path / "mean"
    encode(multimodal, mean, EncodeConfig(**{**TINY.__dict__, "image_encoder": None, "pooling": "mean"}))
    assert HiddenStateCache.open(mean).constant_layers("text") == ()


def test_gather_keeps_the_shape_of_the_ids(built):
    ids = np.array([[3, 0, 3], [1, 2, 5]])
    rows = built.gather("text", ids)
    assert rows.shape == (2, 3, 3, 32)
    assert np.array_equal(rows[0, 0], rows[0, 2]) and not rows[0, 1].any()
    assert np.array_equal(rows[1, 2], built.states("text")[5])


def test_refuses_other_dataset_and_other_encoder_settings(built, multimodal, tmp_path):
    other = write_tsv_source(tmp_path / "src", {f"i{n}": f"Item {n}" for n in range(6)},
                             ["u1\ti0 i1 i2 i3 i4 i5"])
    prepare(other, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    with pytest.raises(CacheMismatchError, match="fingerprint.*--force"):
        encode(tmp_path / "ds", built.root, TINY)
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        HiddenStateCache.open(built.root, PreparedDataset.load(tmp_path / "ds").fingerprint)
    with pytest.raises(CacheMismatchError, match="pooling.*--force"):
        encode(multimodal, built.root, EncodeConfig(**{**TINY.__dict__, "pooling": "mean"}))
    with pytest.raises(CacheMismatchError, match="settings"):
        encode(multimodal, built.root, EncodeConfig(**{**TINY.__dict__, "max_text_tokens": 12}))


def test_force_rebuilds_for_another_dataset(tmp_path, multimodal):
    out = tmp_path / "c"
    encode(multimodal, out, EncodeConfig(**{**TINY.__dict__, "image_encoder": None}))
    other = write_tsv_source(tmp_path / "src", {f"i{n}": f"Item {n}" for n in range(6)}, ["u1\ti0 i1 i2 i3 i4 i5"])
    prepare(other, tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    encode(tmp_path / "ds", out, EncodeConfig(**{**TINY.__dict__, "image_encoder": None}), force=True)
    assert HiddenStateCache.open(out).num_items == 6


def test_rerun_of_finished_cache_encodes_nothing(built, multimodal):
    summary = encode(multimodal, built.root, TINY)
    assert all(m["rows_encoded"] == 0 for m in summary["modalities"].values())


def test_unreadable_image_at_encode_time_is_reported(tmp_path):
    synthesize(tmp_path / "src", SynthConfig(items=40, users=40, categories=2, colours=2, image_size=16, seed=1))
    prepare(tmp_path / "src", tmp_path / "ds", PrepareConfig(format="iisan-tsv"))
    ds = PreparedDataset.load(tmp_path / "ds")
    (tmp_path / "ds" / ds.items["image"][4]).write_bytes(b"corrupted after prepare")
    summary = encode(tmp_path / "ds", tmp_path / "c", TINY)
    assert summary["problems"]["unreadable_image"]["count"] == 1
    cache = HiddenStateCache.open(tmp_path / "c")
    assert not cache.present("image")[5] and not cache.states("image")[5].any()
    assert cache.present("image").sum() == ds.num_items - 1
    assert read_manifest(tmp_path / "c")["problems"]["unreadable_image"]["count"] == 1


def test_open_refuses_missing_and_unfinished(tmp_path):
    with pytest.raises(DatasetError, match="iisan encode"):
        HiddenStateCache.open(tmp_path)


@pytest.fixture(scope="module")
def many_items(tmp_path_factory) -> Path:
    """6,000 items with text, encoded 4 at a time: long enough to be killed part way (the
    test stops it past 5%), short enough that encoding them twice more stays quick."""
    root = tmp_path_factory.mktemp("many")
    n = 6_000
    items = {f"k{i}": f"item number {i} with title words {i % 97}" for i in range(n)}
    users = [f"u{u}\t" + " ".join(f"k{(5 * u + j) % n}" for j in range(5)) for u in range(n // 5)]
    write_tsv_source(root / "src", items, users)
    prepare(root / "src", root / "ds", PrepareConfig(format="iisan-tsv"))
    return root / "ds"


def test_a_crash_at_a_checkpoint_then_resume_is_bit_identical(multimodal, tmp_path, monkeypatch):
    """The fast variant of the kill -9 test below: the crash hook stops encode at its third
    checkpoint (IISAN_CRASH_MODE=raise, in-process), part way through the text states."""
    from iisan import fileio
    from iisan.cache import encode as encode_module

    config = EncodeConfig(text_encoder="tiny-random-text", image_encoder=None, encode_batch_size=4)
    monkeypatch.setattr(encode_module, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every batch
    monkeypatch.setenv(fileio.CRASH_ENV, "9")
    monkeypatch.setenv("IISAN_CRASH_MODE", "raise")
    monkeypatch.setattr(fileio, "crash_points_passed", 0)
    with pytest.raises(fileio.SimulatedCrash):
        encode(multimodal, tmp_path / "crashed", config)
    monkeypatch.delenv(fileio.CRASH_ENV)
    resumed = encode(multimodal, tmp_path / "crashed", config)
    assert 0 < resumed["modalities"]["text"]["rows_already_done"] < PreparedDataset.load(multimodal).num_items
    encode(multimodal, tmp_path / "clean", config)
    for name in ("text.npy", "text.done.npy", "text.present.npy"):
        assert (tmp_path / "crashed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(many_items, tmp_path):
    args = ["--text-encoder", "tiny-random-text", "--image-encoder", "none", "--encode-batch-size", "4"]
    command = [sys.executable, "-m", "iisan", "-q", "encode", str(many_items), "--out", str(tmp_path / "killed"), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    flags = done_path(tmp_path / "killed", "text")
    total = 6_001
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        if flags.exists():
            try:
                done = int(np.load(flags, mmap_mode="r").sum())
            except ValueError:  # header being written
                done = 0
            if done > total // 20:
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 < done < total, f"could not catch encode part way (done={done})"

    manifest = read_manifest(tmp_path / "killed")
    flagged = np.load(flags).astype(bool)
    assert manifest["encoders"]["text"]["completed_rows"] <= flagged.sum()  # never claims more
    states = np.load(tmp_path / "killed" / "text.npy", mmap_mode="r")
    assert states[flagged][1:, -1].any(axis=-1).all()  # every flagged row was written

    config = EncodeConfig(text_encoder="tiny-random-text", image_encoder=None, encode_batch_size=4)
    resumed = encode(many_items, tmp_path / "killed", config)
    assert 0 < resumed["modalities"]["text"]["rows_already_done"] < total - 1
    encode(many_items, tmp_path / "clean", config)
    for name in ("text.npy", "text.done.npy", "text.present.npy"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_a_manifest_entry_is_typed_and_round_trips():
    """issue 29: the per-encoder manifest entry is an EncoderEntry, not a dict passed around;
    entries written before precision and stored_layers existed read with their meaning then."""
    from iisan.cache.store import EncoderEntry

    old = {"name": "minilm", "weight_hash": "abc", "pooling": "mean", "num_layers": 6, "hidden_size": 384,
           "settings": {"max_text_tokens": 30}, "completed_rows": 11, "file": "text.npy"}
    entry = EncoderEntry.from_json(old, "test")
    assert (entry.precision, entry.stored_layers, entry.shape) == ("fp32", None, (7, 384))
    again = EncoderEntry.from_json(entry.to_json(), "test")
    assert again == entry
    changed = EncoderEntry.from_json({**old, "pooling": "cls", "stored_layers": [0, 6]}, "test")
    assert entry.changes(changed, "text") == ["pooling mean -> cls", "stored_layers None -> [0, 6]"]
    with pytest.raises(CacheMismatchError, match="hidden_size"):
        EncoderEntry.from_json({k: v for k, v in old.items() if k != "hidden_size"}, "test")
