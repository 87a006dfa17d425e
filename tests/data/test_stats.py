from __future__ import annotations

from iisan.config import PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.data.stats import dataset_stats


def test_stats_on_hand_checked_data(small_source, tmp_path):
    prepare(small_source, tmp_path / "ds", PrepareConfig(format="iisan-tsv", keep_last=6))
    stats = dataset_stats(PreparedDataset.load(tmp_path / "ds"))
    assert stats["counts"] == {"users": 3, "items": 6, "interactions": 16}
    assert stats["sequence_length"]["histogram"] == {5: 2, 6: 1}
    # i3 occurs 4 times (u1 once, u2 twice, u3 once): the most popular item.
    assert stats["popularity"]["max"] == 4
    assert stats["popularity"]["head"][0]["key"] == "i3"
    assert stats["popularity"]["items_seen_once"] == 1  # i1 only in u1
    assert stats["modalities"] == {"share_with_text": 1.0, "share_with_image": 0.0}
    assert abs(stats["density"] - 16 / 18) < 1e-12
