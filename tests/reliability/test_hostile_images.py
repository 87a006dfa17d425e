"""Small files, huge images (issue 28, point 4): every bound is checked from the header,
before a pixel is decoded, with one line naming it; the formats accepted are the ones the
message names; and queries keep flowing while new items are embedded."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from iisan.data.images import FORMATS_READ, MAX_IMAGE_SIDE, ImageRefused, open_image
from iisan.serving.recommender import Recommender
from iisan.serving.service import create_app
from tests.conftest import png_bytes
from tests.reliability.conftest import cli, one_line_error


def encoded(width: int, height: int, fmt: str = "PNG", mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, fmt)
    return buffer.getvalue()


HOSTILE = {  # name: (bytes, what the one line says)
    "40,000,000 x 1 strip": (lambda: encoded(40_000_000, 1), "limit on a side"),
    "10,000,000 x 4": (lambda: encoded(10_000_000, 4), "limit on a side"),
    "1,250,000 x 32": (lambda: encoded(1_250_000, 32), "limit on a side"),
    "6,000 x 6,000 canvas": (lambda: encoded(6_000, 6_000), "25,000,000-pixel limit"),
    "9,000 x 300 banner": (lambda: encoded(9_000, 300), "longer than 25:1"),
    "TIFF": (lambda: encoded(8, 8, "TIFF", "RGB"), FORMATS_READ),
    "SVG": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', FORMATS_READ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_images_are_refused_from_the_header(name):
    data, needle = HOSTILE[name][0](), HOSTILE[name][1]
    assert len(data) < 200_000  # small files all
    with pytest.raises(ImageRefused, match=needle.replace("(", r"\(").replace(")", r"\)")):
        with open_image(data):
            pass


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_the_formats_the_message_names_are_read(fmt):
    assert fmt.replace("WEBP", "WebP") in FORMATS_READ
    with open_image(encoded(16, 16, fmt, "RGB")) as image:
        image.load()
        assert image.size == (16, 16)
    assert MAX_IMAGE_SIDE >= 4_000  # a normal camera photo fits


def test_items_add_and_the_service_refuse_them_in_one_line(scratch, tmp_path):
    for number, (name, (make, needle)) in enumerate(HOSTILE.items()):
        (tmp_path / f"{number}.img").write_bytes(make())
        line = json.dumps({"key": f"bomb-{number}", "text": "a small file", "image": f"{number}.img"})
        (tmp_path / f"{number}.jsonl").write_text(line + "\n")
        one_line_error(cli("items", "add", scratch.run, tmp_path / f"{number}.jsonl"), needle)
    client = TestClient(create_app(Recommender.load(scratch.run)), raise_server_exceptions=False)
    for number, (name, (make, needle)) in enumerate(HOSTILE.items()):
        body = {"items": [{"key": f"bomb-{number}", "text": "x", "image": base64.b64encode(make()).decode()}]}
        response = client.post("/items", json=body)
        assert response.status_code == 422 and needle in response.json()["error"], (name, response.text)
    assert not any(key.startswith("bomb-") for key in Recommender.load(scratch.run).ids)


def test_queries_flow_while_new_items_are_embedded(scratch, monkeypatch):
    recommender = Recommender.load(scratch.run)
    history = recommender.keys[1:3]
    embedding, release = threading.Event(), threading.Event()
    slow = recommender._embedder.embed

    def blocked(texts, images):
        embedding.set()
        release.wait(30)  # an add that takes as long as its images do to decode
        return slow(texts, images)

    monkeypatch.setattr(recommender._embedder, "embed", blocked)
    adder = threading.Thread(target=recommender.add_items,
                             args=([{"key": "slow", "text": "x", "image": png_bytes(size=64)}],))
    adder.start()
    try:
        assert embedding.wait(30)
        start = time.monotonic()
        answers = [recommender.recommend(history, k=3) for _ in range(20)]
        assert time.monotonic() - start < 10 and all(len(a) == 3 for a in answers)
        assert "slow" not in recommender.ids
    finally:
        release.set()
        adder.join()
    assert "slow" in recommender.ids
