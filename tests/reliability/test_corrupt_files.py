"""Every file iisan reads, damaged or mismatched: one clear line naming the file and the fix."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from tests.reliability.conftest import cli, one_line_error


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_truncated_weights(scratch):
    truncate(scratch.run / "model.safetensors")
    one_line_error(cli("evaluate", scratch.run), "model.safetensors", "damaged or truncated", "retrain")
    one_line_error(cli("recommend", scratch.run, "--history", "x"), "model.safetensors", "damaged or truncated")


@pytest.mark.parametrize("content, what", [("{\"version\": 1, \"tra", "not valid JSON"),
                                           ("[1, 2]", "holds a JSON list"),
                                           ("", "not valid JSON")])
def test_damaged_run_config(scratch, content, what):
    (scratch.run / "config.json").write_text(content)
    one_line_error(cli("evaluate", scratch.run), "config.json", what)


def test_run_config_missing_a_field(scratch):
    edit_json(scratch.run / "config.json", lambda c: c.pop("num_items"))
    one_line_error(cli("evaluate", scratch.run), "config.json", "lacks the field 'num_items'")


@pytest.mark.parametrize("command", ["evaluate", "recommend"])
def test_model_config_missing_a_field_or_gone(scratch, command):
    arguments = (command, scratch.run, *(("--history", "x") if command == "recommend" else ()))
    edit_json(scratch.run / "model.json", lambda c: c.pop("layers"))
    one_line_error(cli(*arguments), "model.json", "lacks the field 'layers'")
    (scratch.run / "model.json").unlink()
    one_line_error(cli(*arguments), "no model.json")


def test_model_config_whose_width_does_not_match_the_weights(scratch):
    """model.json, not the options in config.json, says what the weights are."""
    edit_json(scratch.run / "model.json", lambda c: c["model"]["user"].update(dim=c["model"]["user"]["dim"] * 2))
    one_line_error(cli("evaluate", scratch.run), "model.safetensors does not match", "has shape")
    one_line_error(cli("recommend", scratch.run, "--history", "x"), "model.safetensors does not match", "has shape")


@pytest.mark.parametrize("field", ["hidden_size", "num_layers", "pooling"])
def test_manifest_missing_a_field(scratch, field):
    edit_json(scratch.cache / "manifest.json", lambda m: m["encoders"]["text"].pop(field))
    one_line_error(cli("evaluate", scratch.run), "manifest.json", repr(field), "iisan encode --force")


def test_manifest_hidden_size_that_does_not_match_the_arrays(scratch):
    edit_json(scratch.cache / "manifest.json", lambda m: m["encoders"]["text"].update(hidden_size=64))
    one_line_error(cli("train", scratch.dataset, "--cache", scratch.cache, "--out", scratch.run.parent / "new"),
                   "text.npy", "the manifest describes", "iisan encode --force")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_cache_array(scratch, damage):
    path = scratch.cache / "image.npy"
    truncate(path, 0.3) if damage == "truncated" else path.write_bytes(b"")
    one_line_error(cli("evaluate", scratch.run), "image.npy", "damaged or truncated", "iisan encode --force")


def test_edited_item_keys_are_detected(scratch):
    path = scratch.dataset / "items.parquet"
    items = pl.read_parquet(path)
    items.with_columns(pl.col("key").str.replace("^", "x")).write_parquet(path)
    one_line_error(cli("evaluate", scratch.run), "items.parquet", "changed after", "iisan prepare")
    one_line_error(cli("data", "stats", scratch.dataset), "items.parquet", "changed after")


def test_dataset_meta_that_is_not_an_object(scratch):
    (scratch.dataset / "dataset.json").write_text("\"hello\"")
    one_line_error(cli("evaluate", scratch.run), "dataset.json", "not an object", "iisan prepare")


def test_damaged_resume_state(scratch):
    edit_json(scratch.run / "resume" / "state.json", lambda s: s.pop("best"))
    one_line_error(cli("train", scratch.dataset, "--cache", scratch.cache, "--out", scratch.run, "--resume",
                       "--epochs", "3", "--train-batch-size", "32", "--seed", "1"),
                   "state.json", "'best'", "--force")


def test_damaged_index_is_rebuilt_by_index_build(scratch):
    assert cli("recommend", scratch.run, "--history", first_key(scratch)).exit_code == 0  # stores the index
    for name in ("index.json",):
        (scratch.run / "index" / name).write_text("{")
    one_line_error(cli("recommend", scratch.run, "--history", first_key(scratch)), "index", "iisan index build")
    assert cli("index", "build", scratch.run).exit_code == 0
    assert cli("recommend", scratch.run, "--history", first_key(scratch)).exit_code == 0


def first_key(scratch) -> str:
    return pl.read_parquet(scratch.dataset / "items.parquet")["key"][0]


def test_weights_with_flipped_exponent_bits(scratch):
    from safetensors.numpy import load_file, save_file

    path = scratch.run / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(n for n, t in tensors.items() if t.dtype == np.float32 and t.size > 4)[0]
    bits = tensors[name].view(np.uint32)
    bits.flat[3] |= np.uint32(0x7F800000)  # all exponent bits set: infinity or NaN
    save_file(tensors, str(path))
    one_line_error(cli("evaluate", scratch.run), "model.safetensors", name, "non-finite")
    one_line_error(cli("recommend", scratch.run, "--history", first_key(scratch)), "non-finite")


def test_damaged_metrics_file(scratch):
    (scratch.run / "metrics.json").write_text("{\"test\": ")
    one_line_error(cli("evaluate", scratch.run), "metrics.json", "not valid JSON", "evaluate again")


@pytest.mark.parametrize(("change", "needle"), [
    (lambda meta: meta["hnsw"].update(ef_search=-5), "ef_search must be an integer in 1..16,384, got -5"),
    (lambda meta: meta["hnsw"].update(ef_search=400_000_000), "got 400000000"),
    (lambda meta: meta["hnsw"].update(m="32"), "m must be an integer"),
    (lambda meta: meta["hnsw"].update(surprise=1), "invalid hnsw settings"),
    (lambda meta: meta.update(hnsw=None), "invalid hnsw settings"),
    (lambda meta: meta.update(items=meta["items"] + 1), "is inconsistent"),
    (lambda meta: meta.update(dim=3), "is inconsistent"),
])
def test_index_values_are_checked_not_trusted(scratch, change, needle):
    """issue 28, point 8: ef_search -5 answered one item for k=3; 4e8 took 3.5 GB for a query."""
    assert cli("index", "build", scratch.run, "--index", "hnsw").exit_code == 0
    edit_json(scratch.run / "index" / "index.json", change)
    one_line_error(cli("recommend", scratch.run, "--history", first_key(scratch), "-k", "3"), needle, "iisan index build")
    assert cli("index", "build", scratch.run, "--index", "hnsw").exit_code == 0
    result = cli("recommend", scratch.run, "--history", first_key(scratch), "-k", "3", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 3


@pytest.mark.parametrize("scale", [np.zeros(1, np.float32), None, "nan"])
def test_hnsw_scale_is_checked_not_trusted(scratch, scale):
    """The scale an HNSW graph was shaped by (iisan.search) is read back from disk: a wrong
    shape, no tensor or a non-finite value is a one-line error naming the fix."""
    from safetensors.numpy import load_file, save_file

    assert cli("index", "build", scratch.run, "--index", "hnsw").exit_code == 0
    generation = json.loads((scratch.run / "index" / "index.json").read_text())["generation"]
    path = scratch.run / "index" / generation / "hnsw_scale.safetensors"
    saved = load_file(str(path))["scale"]  # the build shaped the graph by the run's own queries
    assert saved.shape[0] > 1 and (saved > 0).all()
    if isinstance(scale, str):
        saved[0] = np.nan
        save_file({"scale": saved}, str(path))
    else:
        save_file({"other" if scale is None else "scale": np.zeros(1, np.float32) if scale is None else scale},
                  str(path))
    one_line_error(cli("recommend", scratch.run, "--history", first_key(scratch), "-k", "3"),
                   "hnsw_scale.safetensors", "iisan index build")


def test_hnsw_options_out_of_range_are_one_line(scratch):
    one_line_error(cli("index", "build", scratch.run, "--index", "hnsw", "--ef-search", "0"), "ef_search must be")
