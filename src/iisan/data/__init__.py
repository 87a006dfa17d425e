"""Preparing datasets: reading sources, validating, splitting, writing the dataset dir."""

from iisan.data.dataset import PreparedDataset
from iisan.data.prepare import prepare

__all__ = ["PreparedDataset", "prepare"]
