"""Each source format read end to end on small files written by the test."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import lmdb
import polars as pl
import pytest

from iisan.config import CsvColumns, PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.data.sources.movielens import builtin_dir
from iisan.errors import InputError
from tests.conftest import png_bytes, write_tsv_source


def load(tmp_path: Path) -> PreparedDataset:
    return PreparedDataset.load(tmp_path / "ds")


def sequences_as_keys(ds: PreparedDataset) -> dict[str, list[str]]:
    keys = dict(zip(ds.items["item_id"], ds.items["key"]))
    return {u: [keys[i] for i in seq] for u, seq in zip(ds.sequences["user_key"], ds.sequences["items"])}


# ---- csv ----------------------------------------------------------------------------

def _write_csv_source(folder: Path, sep: str = ",") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # Rows out of time order: prepare must sort by timestamp within each user.
    rows = [("bob", "007", 30), ("ann", "010", 5), ("bob", "008", 10), ("ann", "011", 1)]
    rows += [("bob", f"0{n:02d}", 40 + n) for n in range(1, 4)]
    rows += [("ann", f"0{n:02d}", 10 + n) for n in range(1, 4)]
    lines = [sep.join(["who", "what", "when"])] + [sep.join(map(str, r)) for r in rows]
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    keys = sorted({r[1] for r in rows})
    (folder / "catalog.csv").write_text(
        "sku,title,picture\n" + "".join(f"{k},Thing {k},{'pics/' + k + '.png' if k != '003' else ''}\n" for k in keys)
    )
    (folder / "pics").mkdir()
    for k in keys:
        if k != "003":
            (folder / "pics" / f"{k}.png").write_bytes(png_bytes())
    return folder


def test_csv_with_custom_columns_sorts_by_time_and_keeps_string_keys(tmp_path):
    src = _write_csv_source(tmp_path / "src")
    config = PrepareConfig(
        format="csv", items=src / "catalog.csv",
        columns=CsvColumns(user="who", item="what", timestamp="when", item_key="sku", text="title", image="picture"),
    )
    meta, problems = prepare(src / "events.csv", tmp_path / "ds", config)
    ds = load(tmp_path)
    assert sequences_as_keys(ds) == {
        "bob": ["008", "007", "001", "002", "003"],
        "ann": ["011", "010", "001", "002", "003"],
    }
    assert not problems
    assert meta["counts"]["items_with_image"] == meta["counts"]["items"] - 1
    image = ds.items.filter(pl.col("key") == "007")["image"][0]
    assert (tmp_path / "ds" / image).read_bytes() == png_bytes()
    assert ds.items.filter(pl.col("key") == "003")["image"][0] is None


def test_csv_folder_form_with_parquet_and_dates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pl.DataFrame({
        "user": ["a"] * 5 + ["b"] * 5,
        "item": [1, 2, 3, 4, 5, 5, 4, 3, 2, 1],
        "timestamp": [f"2024-01-0{d}" for d in (5, 4, 3, 2, 1)] * 2,
    }).write_parquet(src / "interactions.parquet")
    (src / "items.csv").write_text("item,text\n" + "".join(f"{n},Item {n}\n" for n in range(1, 6)))
    meta, problems = prepare(src, tmp_path / "ds", PrepareConfig(format="csv"))
    assert not problems
    assert sequences_as_keys(load(tmp_path)) == {"a": ["5", "4", "3", "2", "1"], "b": ["1", "2", "3", "4", "5"]}


# ---- amazon2023 -----------------------------------------------------------------------

def _amazon_records(n_users: int = 6, n_items: int = 6):
    reviews = []
    for u in range(n_users):
        for n in range(n_items):
            # Timestamps descend in file order for odd users: sorting must fix that.
            ts = 1_600_000_000_000 + (n if u % 2 == 0 else n_items - n) * 1000
            reviews.append({"user_id": f"U{u}", "parent_asin": f"P{n}", "timestamp": ts, "rating": 5.0})
    reviews.append({"user_id": "loner", "parent_asin": "P0", "timestamp": 1})  # removed by 5-core
    meta = [{"parent_asin": f"P{n}", "title": f"Product {n}",
             "images": [{"thumb": "t", "large": f"https://img/{n}.jpg"}]} for n in range(n_items)]
    meta.append({"parent_asin": "P99", "title": "Never bought", "images": []})
    return reviews, meta


def _write_jsonl(path: Path, records) -> None:
    data = ("\n".join(json.dumps(r) for r in records) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_amazon2023_published_names_gz_kcore_and_image_urls(tmp_path):
    reviews, meta = _amazon_records()
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "Industrial_and_Scientific.jsonl.gz", reviews)
    _write_jsonl(src / "meta_Industrial_and_Scientific.jsonl.gz", meta)
    out, problems = prepare(src, tmp_path / "ds", PrepareConfig(format="amazon2023"))
    ds = load(tmp_path)
    assert out["kcore"] == 5 and out["filtered"]["kcore_removed_interactions"] == 1
    seqs = sequences_as_keys(ds)
    assert "loner" not in seqs
    assert seqs["U0"] == [f"P{n}" for n in range(6)]
    assert seqs["U1"] == [f"P{n}" for n in reversed(range(6))]
    assert ds.items.filter(pl.col("key") == "P3")["image_url"][0] == "https://img/3.jpg"
    assert not problems


def test_amazon2023_local_images(tmp_path):
    reviews, meta = _amazon_records()
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "reviews.jsonl", reviews)
    _write_jsonl(src / "meta.jsonl", meta)
    images = tmp_path / "images"
    images.mkdir()
    (images / "P1.webp").write_bytes(png_bytes())  # extension and content may differ
    out, problems = prepare(src, tmp_path / "ds", PrepareConfig(format="amazon2023", images=images))
    assert out["counts"]["items_with_image"] == 1
    assert problems.count("missing_image") == 5


# ---- images from LMDB -------------------------------------------------------------------

def test_tsv_images_from_lmdb(tmp_path):
    items = {f"i{n}": f"Item {n}" for n in range(1, 6)}
    src = write_tsv_source(tmp_path / "src", items, ["u1\ti1 i2 i3 i4 i5", "u2\ti5 i4 i3 i2 i1"])
    env = lmdb.open(str(tmp_path / "images.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for n in (1, 2, 3):
            txn.put(f"i{n}".encode(), png_bytes((10 * n, 0, 0)))
        txn.put(b"i4", b"\x80\x04pickled-object")  # never unpickled: reported instead
    env.close()
    meta, problems = prepare(src, tmp_path / "ds", PrepareConfig(format="iisan-tsv", images_lmdb=tmp_path / "images.lmdb"))
    ds = load(tmp_path)
    assert meta["counts"]["items_with_image"] == 3
    assert problems.count("unreadable_image") == 1 and problems.count("missing_image") == 1
    assert "pickled" in problems.to_json()["unreadable_image"]["examples"][0]["detail"]
    path = ds.items.filter(pl.col("key") == "i2")["image"][0]
    assert (tmp_path / "ds" / path).read_bytes() == png_bytes((20, 0, 0))


def test_image_content_changes_fingerprint(tmp_path):
    items = {f"i{n}": f"Item {n}" for n in range(1, 6)}
    src = write_tsv_source(tmp_path / "src", items, ["u1\ti1 i2 i3 i4 i5"])
    (src / "images").mkdir()
    for n in range(1, 6):
        (src / "images" / f"i{n}.png").write_bytes(png_bytes())
    a, _ = prepare(src, tmp_path / "a", PrepareConfig(format="iisan-tsv"))
    (src / "images" / "i3.png").write_bytes(png_bytes((0, 0, 255)))
    b, _ = prepare(src, tmp_path / "b", PrepareConfig(format="iisan-tsv"))
    assert a["counts"]["items_with_image"] == 5  # the source's images/ folder is picked up
    assert a["fingerprint"] != b["fingerprint"]


# ---- movielens --------------------------------------------------------------------------

def test_movielens_builtin(tmp_path):
    meta, problems = prepare("builtin", tmp_path / "ds", PrepareConfig(format="movielens"))
    ds = load(tmp_path)
    assert meta["counts"]["users"] == 943
    assert meta["counts"]["interactions"] == 100_000  # every rating
    assert not problems
    # All 943 ML-100K users rated at least 20 movies, so with the reference protocol each keeps 13.
    cut, _ = prepare("builtin", tmp_path / "cut", PrepareConfig(format="movielens", keep_last=13))
    assert cut["counts"]["interactions"] == 943 * 13
    assert cut["filtered"]["older_than_keep_last"] == 100_000 - 943 * 13
    toy_story = ds.items.filter(pl.col("key") == "1")["text"]
    assert toy_story.to_list() in ([], ["Toy Story (1995). Genres: Animation, Children's, Comedy"])
    texts = ds.items["text"].to_list()
    assert all(t and ". Genres: " in t for t in texts)
    # Files are read from the installed wheel, never shipped with this project.
    assert "recbole" in str(builtin_dir())


def test_movielens_folder_source_is_sorted_by_time(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += [f"7\t{n}\t4\t{100 - n}" for n in range(1, 6)]
    (src / "ml-100k.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{n}\tFilm {n}\t199{n}\tDrama Sci-Fi" for n in range(1, 6)]
    (src / "ml-100k.item").write_text("\n".join(items) + "\n")
    prepare(src, tmp_path / "ds", PrepareConfig(format="movielens"))
    ds = load(tmp_path)
    assert sequences_as_keys(ds) == {"7": ["5", "4", "3", "2", "1"]}
    assert ds.items.filter(pl.col("key") == "2")["text"][0] == "Film 2 (1992). Genres: Drama, Sci-Fi"


# ---- recbole atomic files -----------------------------------------------------------


def test_recbole_reads_the_atomic_files_recbole_itself_ships(tmp_path):
    """ml-100k.inter/.item inside the recbole wheel are RecBole's own atomic files: read
    generically, they give the same users and sequences as the dedicated MovieLens reader."""
    prepare(builtin_dir(), tmp_path / "ds", PrepareConfig(format="recbole"))
    prepare("builtin", tmp_path / "ml", PrepareConfig(format="movielens"))
    generic, dedicated = load(tmp_path), PreparedDataset.load(tmp_path / "ml")
    assert sequences_as_keys(generic) == sequences_as_keys(dedicated)
    toy_story = generic.items.filter(pl.col("key") == "1")["text"].to_list()
    # the title-like field, then the others with their names (issue 30: it was the title alone)
    assert toy_story in ([], ["Toy Story. release year: 1995. class: Animation Children's Comedy"])
    assert generic.meta["dataset"] == "ml-100k"


def _write_recbole(folder: Path, with_time: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\trating:float" + ("\ttimestamp:float" if with_time else "")
    rows = [("u1", f"i{n}", 5, 100 - n) for n in range(1, 7)] + [("u2", f"i{n}", 4, n) for n in range(2, 8)]
    rows.append(("u2", "i99", 3, 50))  # an item the .item file does not know
    lines = [header] + ["\t".join(map(str, r if with_time else r[:3])) for r in rows] + ["u3\ti1"]  # one short line
    (folder / "Shop.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tcategories:token_seq\tprice:float"]
    items += [f"i{n}\tWidget {n}\tTools Hardware\t{n}.5" for n in range(1, 8)]
    (folder / "Shop.item").write_text("\n".join(items) + "\n")
    return folder


def test_recbole_orders_by_timestamp_counts_problems_and_builds_text(tmp_path):
    src = _write_recbole(tmp_path / "src")
    meta, problems = prepare(src, tmp_path / "ds", PrepareConfig(format="recbole", min_seq_len=3))
    ds = load(tmp_path)
    sequences = sequences_as_keys(ds)
    assert sequences["u1"] == ["i6", "i5", "i4", "i3", "i2", "i1"]  # by timestamp, not file order
    assert sequences["u2"] == [f"i{n}" for n in range(2, 8)]
    assert problems.count("wrong_column_count") == 1 and problems.count("unknown_item") == 1
    assert ds.items.filter(pl.col("key") == "i3")["text"][0] == "Widget 3. categories: Tools Hardware"

    config = PrepareConfig(format="recbole", min_seq_len=3, columns=CsvColumns(text="title,categories"))
    prepare(src / "Shop.inter", tmp_path / "ds2", config)
    assert PreparedDataset.load(tmp_path / "ds2").items.filter(pl.col("key") == "i3")["text"][0] == \
        "Widget 3. Tools Hardware"


def test_recbole_without_time_keeps_file_order_and_refuses_a_bad_header(tmp_path):
    src = _write_recbole(tmp_path / "src", with_time=False)
    prepare(src, tmp_path / "ds", PrepareConfig(format="recbole", min_seq_len=3))
    assert sequences_as_keys(load(tmp_path))["u1"] == [f"i{n}" for n in range(1, 7)]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.inter").write_text("user\titem\nu1\ti1\n")
    with pytest.raises(InputError, match="not a RecBole atomic header"):
        prepare(tmp_path / "bad", tmp_path / "ds3", PrepareConfig(format="recbole"))


@pytest.mark.parametrize("fmt", ["movielens", "recbole"])
def test_a_timestamp_that_is_not_a_number_is_dropped_and_counted(tmp_path, fmt):
    """Every reader reports an unreadable timestamp the same way (one helper,
    sources.common.drop_bad_timestamps): counted, an example line, the row dropped."""
    src = tmp_path / "src"
    src.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += [f"7\t{n}\t4\t{n}" for n in range(1, 6)] + ["7\t3\t4\tsoon"]  # line 7
    name = "ml-100k" if fmt == "movielens" else "Shop"
    (src / f"{name}.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{n}\tFilm {n}\t199{n}\tDrama" for n in range(1, 6)]
    (src / f"{name}.item").write_text("\n".join(items) + "\n")
    meta, problems = prepare(src, tmp_path / "ds", PrepareConfig(format=fmt, min_seq_len=3))
    assert problems.count("invalid_timestamp") == 1
    [example] = problems.to_json()["invalid_timestamp"]["examples"]
    assert example["line"] == 7 and "not a number" in example["detail"]
    assert sequences_as_keys(load(tmp_path)) == {"7": ["1", "2", "3", "4", "5"]}
