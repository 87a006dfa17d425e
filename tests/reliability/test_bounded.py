"""Bounded under load (issue 46, point 4): one new item cannot hold gigabytes, whichever door
it comes through."""

from __future__ import annotations

import json

from tests.reliability.conftest import cli, one_line_error


def test_items_add_refuses_a_text_or_a_key_over_the_bounds_the_service_has(scratch, tmp_path):
    items = tmp_path / "big.jsonl"
    items.write_text(json.dumps({"key": "big", "text": "word " * 4_000}) + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "big.jsonl:1", "20,000 characters, more than 10,000")
    items.write_text(json.dumps({"key": "k" * 300, "text": "fine"}) + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "key is 300 characters")
