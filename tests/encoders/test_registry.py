"""Resolving encoder names, packaged weights, and the frozen wrapper on tiny random models."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from iisan.encoders.layer_states import FrozenEncoder, default_pooling, pool_tokens
from iisan.encoders.packaged import package_dir, unpack_split_zip
from iisan.encoders.identity import weights_identity
from iisan.encoders.registry import EncoderLoadError, resolve
from iisan.errors import ConfigError, MissingDependencyError


def test_unknown_name_lists_choices_and_local_folder_option():
    with pytest.raises(ConfigError, match="minilm.*local Hugging Face folder"):
        resolve("bert-huge", "text")


def test_modality_mismatch():
    with pytest.raises(ConfigError, match="is a image encoder"):
        resolve("dinov2-small", "text")


def test_local_folder_needs_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        resolve(str(tmp_path), "text")


def test_missing_package_names_the_pip_command():
    with pytest.raises(MissingDependencyError, match="pip install --no-deps not-here==1"):
        package_dir("surely_not_an_installed_package", "not-here==1")


def test_weights_must_be_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(EncoderLoadError, match="safetensors"):
        weights_identity(tmp_path)


def _split_zip(tmp_path, files: dict[str, bytes], parts: int = 3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"m.zip.{i:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths, hashlib.sha256(data).hexdigest()


def test_unpack_split_zip(tmp_path):
    parts, sha = _split_zip(tmp_path, {"m/config.json": b"{}", "m/w.bin": b"x" * 1000, "m/desktop.ini": b"",
                                       "m/../../escape.txt": b"no"})
    dest = unpack_split_zip(parts, sha, tmp_path / "out" / "m", "m")
    assert (dest / "config.json").read_bytes() == b"{}" and (dest / "w.bin").read_bytes() == b"x" * 1000
    assert not (dest / "desktop.ini").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()
    assert unpack_split_zip([], "ignored", dest, "m") == dest  # done once


def test_unpack_split_zip_checks_checksum(tmp_path):
    parts, _ = _split_zip(tmp_path, {"m/config.json": b"{}"})
    with pytest.raises(MissingDependencyError, match="checksum"):
        unpack_split_zip(parts, "0" * 64, tmp_path / "out" / "m", "m")
    assert not (tmp_path / "out" / "m").exists()


@pytest.fixture(scope="module")
def tiny_text():
    return FrozenEncoder.load("tiny-random-text", "text")


@pytest.fixture(scope="module")
def tiny_image():
    return FrozenEncoder.load("tiny-random-image", "image")


def test_encoders_are_frozen(tiny_text, tiny_image):
    for encoder in (tiny_text, tiny_image):
        assert not encoder.model.training
        assert not any(p.requires_grad for p in encoder.model.parameters())


def test_text_pooling_shapes_and_semantics(tiny_text):
    tokens = tiny_text.tokenize(["a red lamp with a long description here", "mug"], max_tokens=8)
    assert len(tokens[0]) == 8 and tokens[1][0] == tiny_text.tokenizer.cls_token_id
    inputs = tiny_text.collate_tokens(tokens)
    cls = tiny_text.pooled_hidden_states(inputs, "cls")
    mean = tiny_text.pooled_hidden_states(inputs, "mean")
    assert cls.shape == (2, tiny_text.num_layers + 1, tiny_text.hidden_size)
    with torch.inference_mode():
        states = tiny_text.model(**inputs, output_hidden_states=True).hidden_states
    assert torch.equal(cls[:, 0], states[0][:, 0]) and torch.equal(cls[:, -1], states[-1][:, 0])
    short = len(tokens[1])  # mean pooling ignores padding
    assert torch.allclose(mean[1, -1], states[-1][1, :short].mean(dim=0), atol=1e-6)


def test_padding_does_not_change_text_states(tiny_text):
    tokens = tiny_text.tokenize(["lamp", "a much longer title for the second item"], max_tokens=30)
    alone = tiny_text.pooled_hidden_states(tiny_text.collate_tokens(tokens[:1]), "cls")
    padded = tiny_text.pooled_hidden_states(tiny_text.collate_tokens(tokens), "cls")
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_image_preprocessing_and_states(tiny_image):
    buffer = io.BytesIO()
    Image.new("RGB", (50, 30), (255, 0, 0)).save(buffer, format="PNG")
    pixels = tiny_image.preprocess_image(buffer.getvalue(), image_size=32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    expected_red = (1.0 - tiny_image.image_mean[0]) / tiny_image.image_std[0]
    assert np.allclose(pixels[0], expected_red, atol=1e-5)
    states = tiny_image.pooled_hidden_states({"pixel_values": torch.from_numpy(pixels[None])}, "cls")
    assert states.shape == (1, tiny_image.num_layers + 1, tiny_image.hidden_size)
    with pytest.raises(ValueError, match="not an image in a format iisan reads"):
        tiny_image.preprocess_image(b"not an image", 32)


def test_mean_and_last_pooling_match_a_loop_over_rows():
    """Masked mean over each row's real tokens, and its last real token, with right padding."""
    torch.manual_seed(0)
    states = torch.randn(3, 4, 6, 5)  # [batch, layers, tokens, hidden]
    lengths = [6, 2, 4]
    mask = torch.zeros(3, 6, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    mean, last = pool_tokens(states, mask, "mean"), pool_tokens(states, mask, "last")
    for row, length in enumerate(lengths):
        for layer in range(4):
            assert torch.allclose(mean[row, layer], states[row, layer, :length].mean(dim=0), atol=1e-6)
            assert torch.equal(last[row, layer], states[row, layer, length - 1])
    assert torch.equal(pool_tokens(states, mask, "cls"), states[:, :, 0])
    assert torch.equal(pool_tokens(states, None, "last"), states[:, :, -1])


def test_default_pooling_is_the_one_the_encoder_was_trained_for(tmp_path):
    from transformers import BertConfig, LlamaConfig

    assert default_pooling(tmp_path, BertConfig()) == "cls"  # a plain BERT folder: its CLS token
    assert default_pooling(tmp_path, LlamaConfig()) == "last"  # a causal LM: the last token has read the text
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert default_pooling(tmp_path, BertConfig()) == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert default_pooling(tmp_path, BertConfig()) == "cls"


def test_hub_ids_resolve_to_the_packaged_encoders_or_the_local_cache_never_the_network(tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from iisan.encoders.tiny import build_tiny_encoder

    assert resolve("sentence-transformers/all-MiniLM-L6-v2", "text")[0] == "minilm"  # the same weights, packaged
    # A model in the Hugging Face cache layout: models--org--name/snapshots/<revision>, refs/main names it.
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-bert" / "snapshots" / "0123abcd"
    build_tiny_encoder(tmp_path / "built", "text")
    shutil.copytree(tmp_path / "built", snapshot)
    (cache / "models--acme--tiny-bert" / "refs").mkdir()
    (cache / "models--acme--tiny-bert" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    name, folder = resolve("acme/tiny-bert", "text")
    assert name == "acme/tiny-bert" and folder == snapshot  # the id is what a cache manifest records
    encoder = FrozenEncoder.load("acme/tiny-bert", "text")
    assert encoder.name == "acme/tiny-bert" and encoder.num_layers == 2
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache .*huggingface-cli download acme/other"):
        resolve("acme/other", "text")
