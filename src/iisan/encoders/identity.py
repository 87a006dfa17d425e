"""What identifies an encoder's weights: the numbers, never a library's version stamp.

A cache and a run record, for each encoder, a hash that later readers compare with the
encoder they find (a changed folder must be noticed). That hash covers what decides the
hidden states:

- the architecture: ``config.json`` read as JSON, without the fields that only say which
  library wrote it (``transformers_version``, ``_name_or_path``, ``_commit_hash``), with
  keys sorted (so a reordered file is the same model) and ``torch_dtype`` read as ``dtype``
  (transformers renamed it in 4.56);
- the weights: every tensor of every ``*.safetensors`` file, by name, with its dtype,
  shape and bytes (so a re-sharded or re-headed file is the same model).

Identities of this kind carry the prefix ``w2-``. Before it, iisan hashed the bytes of
``config.json`` and of the weight files (a *legacy* identity): ``save_pretrained`` stamps
``transformers_version`` into ``config.json``, so an encoder folder that iisan builds
itself (the converted dinov2-small, the tiny test encoders) changed identity with every
transformers release. A legacy identity still matches: :func:`canonical_identity` checks
it against the folder with the stamps that transformers releases could have written, and
once one matches it remembers, in ``$IISAN_HOME/identities.json``, that the legacy hash
names that content (a verified fact about bytes, so it never goes stale). Nothing in a
cache or run folder is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iisan.encoders.packaged import iisan_home
from iisan.encoders.registry import EncoderLoadError, resolve
from iisan.errors import IisanError
from iisan.fileio import write_json_atomic

log = logging.getLogger(__name__)

PREFIX = "w2-"
# Written by the library that saved the folder, not part of the model.
STAMPS = ("transformers_version", "_name_or_path", "_commit_hash")
MEMO_FILE = "identities.json"
_STAMP = re.compile(rb'("transformers_version"\s*:\s*")([^"]*)(")')
_BLOCK = 1 << 22
LAST_MINOR = 60  # of a major before the installed one (4.x ended at 4.57); a margin costs only a miss


def weights_identity(folder: Path) -> str:
    """The identity of the encoder in ``folder``: ``w2-`` and 32 hex digits.

    Raises:
        EncoderLoadError: no ``*.safetensors`` file, or one that is damaged.
    """
    digest = hashlib.sha256(_architecture(folder))
    for path, name, meta, start, end in _tensors(folder):
        digest.update(json.dumps([name, meta["dtype"], meta["shape"]]).encode())
        with open(path, "rb") as handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                block = handle.read(min(_BLOCK, remaining))
                if not block:
                    raise EncoderLoadError(f"{path}: tensor {name} is cut short; reinstall or rebuild the encoder")
                digest.update(block)
                remaining -= len(block)
    return PREFIX + digest.hexdigest()[:32]


def is_legacy(identity: str) -> bool:
    """Whether ``identity`` was recorded by an iisan that hashed the files' bytes."""
    return not identity.startswith(PREFIX)


def canonical_identity(recorded: str, folder: Path) -> str:
    """``recorded`` as today's identity: itself when it is one; for a legacy identity, the
    folder's identity when the legacy hash is that folder's under some transformers stamp,
    else ``recorded`` unchanged (it names other weights, or weights no longer here).

    Raises:
        EncoderLoadError: the folder's weights cannot be read.
    """
    if not is_legacy(recorded):
        return recorded
    memo = _read_memo()
    if recorded in memo:
        return memo[recorded]
    if not _legacy_matches(recorded, folder):
        return recorded
    current = weights_identity(folder)
    _remember(recorded, current)
    return current


def same_weights(recorded: str, found: str, name: str, modality: str) -> bool:
    """Whether two recorded identities of the encoder ``name`` name the same weights.

    Equal strings agree; a legacy identity is first checked against the encoder's folder as
    installed here (when it cannot be located or read, only equal strings agree)."""
    memo = _read_memo()
    recorded, found = memo.get(recorded, recorded), memo.get(found, found)
    if recorded == found:
        return True
    if not (is_legacy(recorded) or is_legacy(found)):
        return False
    try:
        _, folder = resolve(name, modality)  # type: ignore[arg-type]
        return canonical_identity(recorded, folder) == canonical_identity(found, folder)
    except IisanError as err:
        log.debug("cannot check %s's recorded identity against its folder: %s", name, err)
        return False


# ---- today's identity ------------------------------------------------------------------

def _architecture(folder: Path) -> bytes:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise EncoderLoadError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(config, dict):
        raise EncoderLoadError(f"{path} does not hold a JSON object")
    config = {key: value for key, value in config.items() if key not in STAMPS}
    if "torch_dtype" in config:
        config.setdefault("dtype", config.pop("torch_dtype"))
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _tensors(folder: Path) -> list[tuple[Path, str, dict[str, Any], int, int]]:
    """Every tensor of the folder's safetensors files as ``(file, name, header entry, start,
    end)``, sorted by name; offsets are absolute positions in the file."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EncoderLoadError(f"{folder} has no *.safetensors weights (other formats are not loaded: they can run code)")
    found = []
    for path in files:
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > 100 << 20:
                    raise ValueError(f"a header of {length} bytes")
                header = json.loads(handle.read(length))
            base = 8 + length
            for name, meta in header.items():
                if name != "__metadata__":
                    start, end = meta["data_offsets"]
                    found.append((path, name, meta, base + int(start), base + int(end)))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
            raise EncoderLoadError(f"{path} is not a readable safetensors file ({err}); "
                                         "reinstall or rebuild the encoder") from None
    return sorted(found, key=lambda entry: entry[1])


# ---- legacy identities -----------------------------------------------------------------

def _legacy_matches(recorded: str, folder: Path) -> bool:
    """Whether ``recorded`` is the legacy hash (config.json's bytes, then each weight file's)
    of ``folder`` as it is, or with ``transformers_version`` as another release wrote it.

    Each candidate hashes the weights again, nearest releases first; the tiny and converted
    folders this is for are small, and a match is remembered."""
    config = (folder / "config.json").read_bytes()
    weights = sorted(folder.glob("*.safetensors"))
    stamp = _STAMP.search(config)
    candidates = [config]
    if stamp is not None:
        here = stamp.group(2).decode(errors="replace")
        candidates += [_STAMP.sub(lambda m: m.group(1) + version.encode() + m.group(3), config, count=1)
                       for version in _releases_near(here) if version != here]
    if len(candidates) > 1:
        log.info("checking the %s identity an earlier iisan recorded against %s (once)", recorded[:8], folder)
    for candidate in candidates:
        digest = hashlib.sha256(candidate)
        for path in weights:
            with open(path, "rb") as handle:
                while block := handle.read(_BLOCK):
                    digest.update(block)
        if digest.hexdigest()[:32] == recorded:
            return True
    return False


def _releases_near(version: str) -> Iterator[str]:
    """transformers versions that could have stamped a folder iisan read (iisan needs 4.45
    or newer), nearest to ``version`` first: its own minor's patches, then earlier minors."""
    match = re.match(r"(\d+)\.(\d+)", version)
    major, minor = (int(match.group(1)), int(match.group(2))) if match else (5, 99)
    minors = [(m, n) for m in range(major, 3, -1)
              for n in range(minor if m == major else LAST_MINOR, 44 if m == 4 else -1, -1)]
    for m, n in minors:
        for patch in range(9, -1, -1):
            yield f"{m}.{n}.{patch}"
        yield f"{m}.{n}.0.dev0"


def _memo_path() -> Path:
    return iisan_home() / MEMO_FILE


def _read_memo() -> dict[str, str]:
    path = _memo_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and not is_legacy(v)}


def _remember(legacy: str, identity: str) -> None:
    """Record that ``legacy`` names the weights of ``identity``; a folder we cannot write to
    costs the check again next time, nothing else."""
    memo = _read_memo()
    memo[legacy] = identity
    try:
        _memo_path().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_memo_path(), memo)
    except OSError as err:
        log.debug("could not remember an encoder identity in %s: %s", _memo_path(), err)
