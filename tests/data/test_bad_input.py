"""Every kind of bad input is counted (with file and line) or, in strict mode, stops the run."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from iisan.cli import app
from iisan.config import PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.errors import InputError
from tests.conftest import png_bytes, write_tsv_source

GOOD_ITEMS = {f"i{n}": f"Item {n}" for n in range(1, 7)}
GOOD_USERS = ["u1\ti1 i2 i3 i4 i5", "u2\ti2 i3 i4 i5 i6", "u3\ti6 i5 i4 i3 i2"]


def run(source, tmp_path, **kwargs):
    config = PrepareConfig(format=kwargs.pop("format", "iisan-tsv"), **kwargs)
    return prepare(source, tmp_path / "ds", config)


def examples(problems, kind):
    return problems.to_json()[kind]["examples"]


def test_wrong_column_count(tmp_path):
    items = [f"{k}\t{v}" for k, v in GOOD_ITEMS.items()] + ["i7\tTitle\textra", "i8"]
    meta, problems = run(write_tsv_source(tmp_path / "s", items, GOOD_USERS), tmp_path)
    assert problems.count("wrong_column_count") == 2
    assert [ex["line"] for ex in examples(problems, "wrong_column_count")] == [7, 8]
    assert meta["problems"]["wrong_column_count"]["count"] == 2


def test_malformed_lines(tmp_path):
    users = GOOD_USERS + ["u4\t   ", "\ti1 i2 i3 i4 i5"]
    _, problems = run(write_tsv_source(tmp_path / "s", GOOD_ITEMS, users), tmp_path)
    assert problems.count("malformed_line") == 2
    assert sorted(ex["line"] for ex in examples(problems, "malformed_line")) == [4, 5]


def test_unknown_item_is_dropped_and_counted(tmp_path):
    users = ["u1\ti1 i2 nope i3 i4 i5"] + GOOD_USERS[1:]
    meta, problems = run(write_tsv_source(tmp_path / "s", GOOD_ITEMS, users), tmp_path)
    assert problems.count("unknown_item") == 1
    ex = examples(problems, "unknown_item")[0]
    assert ex["file"] == "users.tsv" and ex["line"] == 1 and "nope" in ex["detail"]
    assert meta["counts"]["interactions"] == 15


def test_item_without_text_is_kept_and_reported(tmp_path):
    items = dict(GOOD_ITEMS, i3="   &nbsp;  ")  # blank after unescaping and stripping
    meta, problems = run(write_tsv_source(tmp_path / "s", items, GOOD_USERS), tmp_path)
    assert problems.count("empty_text") == 1
    ds = PreparedDataset.load(tmp_path / "ds")
    assert ds.items.filter(ds.items["key"] == "i3")["text"][0] is None
    assert meta["counts"]["items_with_text"] == meta["counts"]["items"] - 1


def test_non_utf8_line_is_kept_with_replacement(tmp_path):
    src = write_tsv_source(tmp_path / "s", GOOD_ITEMS, GOOD_USERS)
    (src / "items.tsv").write_bytes(b"i1\tCaf\xe9 cr\xe8me\n" + "\n".join(
        f"{k}\t{v}" for k, v in list(GOOD_ITEMS.items())[1:]).encode() + b"\n")
    _, problems = run(src, tmp_path)
    assert problems.count("non_utf8") == 1
    assert examples(problems, "non_utf8")[0]["line"] == 1
    ds = PreparedDataset.load(tmp_path / "ds")
    assert ds.items.filter(ds.items["key"] == "i1")["text"][0] == "Caf\ufffd cr\ufffdme"


def test_duplicate_user_keeps_first(tmp_path):
    users = GOOD_USERS + ["u1\ti6 i6 i6 i6 i6"]
    meta, problems = run(write_tsv_source(tmp_path / "s", GOOD_ITEMS, users), tmp_path)
    assert problems.count("duplicate_user") == 1
    assert examples(problems, "duplicate_user")[0]["line"] == 4
    assert meta["counts"]["users"] == 3


def test_duplicate_item_keeps_first(tmp_path):
    items = [f"{k}\t{v}" for k, v in GOOD_ITEMS.items()] + ["i2\tImpostor"]
    _, problems = run(write_tsv_source(tmp_path / "s", items, GOOD_USERS), tmp_path)
    assert problems.count("duplicate_item") == 1
    ds = PreparedDataset.load(tmp_path / "ds")
    assert ds.items.filter(ds.items["key"] == "i2")["text"][0] == "Item 2"


def test_empty_file_is_reported_then_fails_cleanly(tmp_path):
    src = write_tsv_source(tmp_path / "s", GOOD_ITEMS, GOOD_USERS)
    (src / "users.tsv").write_bytes(b"")
    with pytest.raises(InputError, match="empty_file: 1"):
        run(src, tmp_path)


def test_missing_and_unreadable_images(tmp_path):
    src = write_tsv_source(tmp_path / "s", GOOD_ITEMS, GOOD_USERS)
    images = tmp_path / "img"
    images.mkdir()
    for key in ("i1", "i2", "i3", "i4"):
        (images / f"{key}.png").write_bytes(png_bytes())
    (images / "i5.jpg").write_bytes(b"not an image at all")
    meta, problems = run(src, tmp_path, images=images)
    assert problems.count("missing_image") == 1  # i6
    assert problems.count("unreadable_image") == 1  # i5
    assert meta["counts"]["items_with_image"] == 4


def test_missing_column_names_the_option(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "interactions.csv").write_text("uid,item,timestamp\na,i1,1\n")
    (src / "items.csv").write_text("item,text\ni1,One\n")
    with pytest.raises(InputError, match="no column 'user'.*--user-col"):
        run(src, tmp_path, format="csv")


def test_csv_ragged_rows_and_bad_timestamps(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    rows = ["user,item,timestamp"]
    for u in range(3):
        rows += [f"u{u},i{n},{n}" for n in range(1, 6)]
    rows.insert(3, "u0,i9,1,extra")  # line 4: too many fields
    rows.append("u1,i1,yesterday-ish")  # not a number or date
    rows.append(",i1,5")  # no user
    (src / "interactions.csv").write_text("\n".join(rows) + "\n")
    (src / "items.csv").write_text("item,text\n" + "".join(f"i{n},Item {n}\n" for n in range(1, 6)))
    meta, problems = run(src, tmp_path, format="csv")
    assert problems.count("wrong_column_count") == 1
    assert examples(problems, "wrong_column_count")[0]["line"] == 4
    assert problems.count("invalid_timestamp") == 1
    assert examples(problems, "invalid_timestamp")[0]["line"] == 18
    assert problems.count("missing_field") == 1
    assert meta["counts"]["interactions"] == 15


def test_amazon_bad_json_and_missing_fields(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    reviews = [json.dumps({"user_id": f"u{u}", "parent_asin": f"p{n}", "timestamp": 1000 * n + u})
               for u in range(5) for n in range(5)]
    reviews.insert(2, "{not json")
    reviews.insert(4, json.dumps({"user_id": "u9", "timestamp": 5}))
    reviews.insert(6, json.dumps({"user_id": "u9", "parent_asin": "p1", "timestamp": "soon"}))
    (src / "reviews.jsonl").write_text("\n".join(reviews) + "\n")
    meta_lines = [json.dumps({"parent_asin": f"p{n}", "title": f"Product {n}"}) for n in range(5)]
    meta_lines.append("[1, 2]")
    (src / "meta.jsonl").write_text("\n".join(meta_lines) + "\n")
    meta, problems = run(src, tmp_path, format="amazon2023")
    assert problems.count("malformed_line") == 2
    assert examples(problems, "malformed_line")[0]["line"] == 3
    assert problems.count("missing_field") == 1
    assert problems.count("invalid_timestamp") == 1
    assert meta["counts"]["interactions"] == 25


def test_strict_stops_at_first_problem(tmp_path):
    users = GOOD_USERS + ["u1\ti1 i1 i1 i1 i1"]
    src = write_tsv_source(tmp_path / "s", GOOD_ITEMS, users)
    with pytest.raises(InputError, match=r"^users.tsv:4: duplicate_user: user u1"):
        run(src, tmp_path, strict=True)
    assert not (tmp_path / "ds").exists()


def test_strict_cli_exits_2_with_one_line(tmp_path):
    users = ["u1\ti1 i2 ghost i3 i4 i5"] + GOOD_USERS[1:]
    src = write_tsv_source(tmp_path / "s", GOOD_ITEMS, users)
    result = CliRunner().invoke(app, ["prepare", str(src), "-f", "iisan-tsv", "-o", str(tmp_path / "ds"), "--strict"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("error: users.tsv:1: unknown_item") and "ghost" in errors[0]
    assert result.stdout == ""


def _corpus(tmp_path):
    """(name, source, format, extra CLI args) for inputs that must never crash."""
    cases = []

    def tsv(name, items, users):
        cases.append((name, write_tsv_source(tmp_path / name, items, users), "iisan-tsv", []))

    tsv("binary-garbage", ["\x00\x01\x02"], ["\x00\t\x00"])
    tsv("only-tabs", ["\t\t\t"], ["\t\t"])
    tsv("no-users", GOOD_ITEMS, [""])
    tsv("all-unknown", GOOD_ITEMS, ["u1\tx y z w v"])
    tsv("all-short", GOOD_ITEMS, ["u1\ti1 i2"])
    tsv("huge-line", GOOD_ITEMS, ["u1\t" + " ".join(["i1"] * 100_000)])
    gz = tmp_path / "bad-gz"
    gz.mkdir()
    (gz / "reviews.jsonl.gz").write_bytes(b"not gzip")
    (gz / "meta.jsonl.gz").write_bytes(gzip.compress(b"{}"))
    cases.append(("bad-gzip", gz, "amazon2023", []))
    empty = tmp_path / "empty-csv"
    empty.mkdir()
    (empty / "interactions.csv").write_text("")
    (empty / "items.csv").write_text("")
    cases.append(("empty-csv", empty, "csv", []))
    bad_parquet = tmp_path / "bad-parquet"
    bad_parquet.mkdir()
    (bad_parquet / "interactions.parquet").write_bytes(b"PAR1garbage")
    (bad_parquet / "items.csv").write_text("item,text\n")
    cases.append(("bad-parquet", bad_parquet, "csv", []))
    cases.append(("missing-dir", tmp_path / "absent", "iisan-tsv", []))
    cases.append(("missing-images", write_tsv_source(tmp_path / "mi", GOOD_ITEMS, GOOD_USERS), "iisan-tsv",
                  ["--images", str(tmp_path / "nope")]))
    cases.append(("bad-lmdb", write_tsv_source(tmp_path / "bl", GOOD_ITEMS, GOOD_USERS), "iisan-tsv",
                  ["--images-lmdb", str(tmp_path / "bl" / "items.tsv")]))
    return cases


def test_no_input_produces_a_traceback(tmp_path):
    runner = CliRunner()
    for name, source, fmt, extra in _corpus(tmp_path):
        result = runner.invoke(app, ["prepare", str(source), "-f", fmt, "-o", str(tmp_path / f"out-{name}"), *extra])
        assert result.exit_code in (0, 2), (name, result.output, result.exception)
        assert "Traceback" not in result.output, name
        if result.exit_code == 2:
            assert "error:" in result.output, name
