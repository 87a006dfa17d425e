"""A run knows what it was trained on (issue 28, point 2): a cache re-encoded in place with
other settings, or another cache given to ``--resume``, is refused in one line naming both
sides, instead of evaluating (and overwriting ``metrics.json``) with other numbers."""

from __future__ import annotations

import dataclasses
import json

from iisan.cache.encode import encode
from tests.multimodal_data import TINY_ENCODE
from tests.reliability.conftest import cli, one_line_error


def test_a_cache_re_encoded_in_place_is_refused_by_evaluate_and_index_build(scratch):
    metrics = (scratch.run / "metrics.json").read_bytes()
    encode(scratch.dataset, scratch.cache, dataclasses.replace(TINY_ENCODE, pooling="last"), force=True)
    one_line_error(cli("evaluate", scratch.run), "is not the cache", "pooling mean -> last", "re-encode")
    assert (scratch.run / "metrics.json").read_bytes() == metrics
    one_line_error(cli("index", "build", scratch.run), "pooling mean -> last")
    # The run folder alone still answers queries: they never read the cache.
    keys = json.loads(cli("recommend", scratch.run, "--history", "i1", "--json", "-k", "2").stdout or "[]")
    assert isinstance(keys, list)


def test_resume_with_another_cache_names_the_difference(scratch, tmp_path):
    other = tmp_path / "other-cache"
    encode(scratch.dataset, other, dataclasses.replace(TINY_ENCODE, max_text_tokens=4))
    result = cli("train", scratch.dataset, "--cache", other, "--out", scratch.run, "--resume", "--epochs", "3",
                 "--train-batch-size", "32", "--seed", "1")
    error = one_line_error(result, "is not the cache", "max_text_tokens", "resume with the cache it was trained on")
    assert "damaged" not in error
    # The cache it was trained on resumes.
    result = cli("train", scratch.dataset, "--cache", scratch.cache, "--out", scratch.run, "--resume", "--epochs", "3",
                 "--train-batch-size", "32", "--seed", "1")
    assert result.exit_code == 0, result.output
