import polars as pl

from iisan.data.text import clean_text


def test_clean_text():
    raw = pl.Series("text", ["A &amp; B", "  many\t\n spaces  ", "", "   ", None, "&lt;b&gt;", "plain"])
    assert clean_text(raw).to_list() == ["A & B", "many spaces", None, None, None, "<b>", "plain"]
