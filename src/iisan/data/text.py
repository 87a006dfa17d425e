"""Item text cleaning, vectorised over a column."""

from __future__ import annotations

import html

import polars as pl


def clean_text(texts: pl.Series) -> pl.Series:
    """Unescape HTML entities, collapse whitespace, strip; empty results become null.

    Only the (usually few) strings that contain ``&`` go through Python's
    ``html.unescape``; everything else stays in polars.
    """
    texts = texts.cast(pl.String)
    has_entity = texts.str.contains("&", literal=True).fill_null(False)
    if has_entity.any():
        unescaped = texts.filter(has_entity).map_elements(html.unescape, return_dtype=pl.String)
        texts = texts.scatter(has_entity.arg_true(), unescaped)
    texts = texts.str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.select(pl.when(texts.str.len_bytes() > 0).then(texts)).to_series().alias(texts.name)
