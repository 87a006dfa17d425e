import json

import pytest

from iisan.errors import ConfigError
from iisan.fileio import atomic_directory, check_replaceable, write_json_atomic


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_directory_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as work:
        (work / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as work:
            (work / "f").write_text("new")
            raise RuntimeError("killed half way")
    assert (target / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_replaceable(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        check_replaceable(tmp_path / "mine", "dataset.json", force=False)
    check_replaceable(tmp_path / "mine", "dataset.json", force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_replaceable(tmp_path / "file", "dataset.json", force=True)
