"""An encoder's identity is its architecture and tensors, never the version stamp that
``save_pretrained`` writes (issue 46, point 1); identities recorded by earlier iisan, which
hashed the files' bytes, still match the same weights."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from iisan.encoders import identity
from iisan.encoders.identity import canonical_identity, same_weights, weights_identity
from iisan.encoders.tiny import build_tiny_encoder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("identity") / "text", "text")


@pytest.fixture
def folder(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "encoder"))


def stamp(folder: Path, version: str) -> None:
    path = folder / "config.json"
    path.write_text(re.sub(r'"transformers_version": "[^"]*"', f'"transformers_version": "{version}"',
                           path.read_text()))


def legacy_hash(folder: Path) -> str:
    """What iisan recorded before: config.json's bytes, then each weight file's."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def test_the_version_stamp_key_order_and_dtype_name_do_not_change_the_identity(folder):
    before = weights_identity(folder)
    assert before.startswith("w2-") and '"transformers_version"' in (folder / "config.json").read_text()
    stamp(folder, "9.99.0")
    assert weights_identity(folder) == before
    config = json.loads((folder / "config.json").read_text())
    dtype = config.pop("dtype", "float32")
    reordered = {"torch_dtype": dtype, **dict(reversed(list(config.items())))}
    (folder / "config.json").write_text(json.dumps(reordered, indent=4))
    assert weights_identity(folder) == before


def test_the_file_layout_does_not_change_the_identity_but_the_numbers_do(folder):
    before = weights_identity(folder)
    [weights] = folder.glob("*.safetensors")
    tensors = load_file(weights)
    save_file(dict(reversed(list(tensors.items()))), weights, metadata={"format": "pt", "written": "elsewhere"})
    assert weights_identity(folder) == before
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights_identity(folder) != before


def test_an_architecture_field_changes_the_identity(folder):
    before = weights_identity(folder)
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    assert weights_identity(folder) != before


def test_a_legacy_identity_stamped_by_another_release_matches_its_weights_once_checked(folder):
    stamp(folder, "5.3.1")
    recorded = legacy_hash(folder)
    stamp(folder, "5.25.0")  # the folder rebuilt by a later transformers: same numbers, new stamp
    today = weights_identity(folder)
    assert recorded != legacy_hash(folder)
    assert canonical_identity(recorded, folder) == today
    assert same_weights(recorded, today, str(folder), "text")
    # remembered: the next reader need not hash again, and knows it without the folder
    assert json.loads((identity._memo_path()).read_text())[recorded] == today
    shutil.rmtree(folder)
    assert same_weights(recorded, today, str(folder), "text")


def test_a_legacy_identity_of_other_weights_does_not_match(folder):
    recorded = legacy_hash(folder)
    [weights] = folder.glob("*.safetensors")
    tensors = load_file(weights)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    assert canonical_identity(recorded, folder) == recorded
    assert not same_weights(recorded, weights_identity(folder), str(folder), "text")
    assert recorded not in json.loads(identity._memo_path().read_text() if identity._memo_path().is_file() else "{}")


def test_a_damaged_weights_file_is_one_clear_error(folder):
    from iisan.encoders.registry import EncoderLoadError

    [weights] = folder.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(EncoderLoadError, match="safetensors|cut short"):
        weights_identity(folder)
