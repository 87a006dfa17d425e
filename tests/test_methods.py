"""The method registry: every choice derives from it, and a new method is one module plus
one registration line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iisan import methods
from iisan.config import TrainConfig
from iisan.errors import ConfigError
from iisan.method_options import KnnConfig
from iisan.methods import Method, get_method, method_names, register_method
from iisan.options import option_specs


class MeanOfLastLayer(nn.Module):
    """A toy tower: the mean over modalities of a linear map of the last read layer."""

    def __init__(self, shapes: dict[str, tuple[int, int]], dim: int) -> None:
        super().__init__()
        self.layers = {m: (shape[0] - 1,) for m, shape in shapes.items()}
        self.heads = nn.ModuleDict({m: nn.Linear(shape[1], dim) for m, shape in shapes.items()})

    def side_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, features) -> torch.Tensor:
        return torch.stack([self.heads[m](features.states[m][:, -1]) for m in self.heads]).mean(0)


def build_tower(config, context) -> MeanOfLastLayer:
    return MeanOfLastLayer(context.shapes, config.user.dim)


@pytest.fixture
def registered():
    method = register_method(Method("mean-last", "a toy tower", reads="states", tower=f"{__name__}:build_tower",
                                    defaults={"patience": 2}))
    yield method
    methods._REGISTRY.pop(method.name)


def test_the_choices_come_from_the_registry():
    assert "iisan" in method_names(reads="states")
    assert method_names(reads="raw") == ("fft", "adapter", "lora", "bitfit")
    assert TrainConfig.for_method("id").loss == "full" and TrainConfig.for_method("fft").side_lr == 1e-4
    with pytest.raises(ConfigError, match="method must be one of iisan, frozen, id"):
        TrainConfig(method="nope")
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("iisan"))


def test_a_method_registered_after_import_is_a_choice_with_its_help(registered):
    spec = next(spec for spec in option_specs(TrainConfig) if spec.name == "method")
    assert "mean-last" in spec.choices and "mean-last: a toy tower" in spec.help
    assert TrainConfig(method="mean-last").method_options is None  # no options of its own


def test_an_option_the_method_never_reads_is_one_line():
    with pytest.raises(ConfigError, match="--knn-terms is an option of knn: --method iisan never reads it"):
        TrainConfig.from_options({"method": "iisan", "knn_terms": 64})
    with pytest.raises(ConfigError, match="--lora-rank is an option of fft and adapter and lora and bitfit"):
        TrainConfig.from_options({"method": "id", "lora_rank": 4})
    with pytest.raises(ConfigError, match="--method id does not read KnnConfig's options"):
        TrainConfig(method="id", method_options=KnnConfig())
    assert TrainConfig.from_options({"method": "knn", "knn_terms": 64}).method_options == KnnConfig(knn_terms=64)


def test_a_registered_method_trains_and_reloads(registered, tiny_multimodal, tmp_path):
    from iisan.serving.recommender import Recommender
    from iisan.training.loop import train

    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("mean-last", epochs=2, train_batch_size=32)
    assert config.patience == 2 and not config.content.id_offset  # its defaults; offsets only where declared
    summary = train(dataset, tmp_path / "run", config, cache_dir=cache)
    assert summary["method"] == "mean-last" and 0 <= summary["test"]["ndcg@10"] <= 1
    recommender = Recommender.load(tmp_path / "run")
    assert isinstance(recommender.trained.model.item, MeanOfLastLayer)
    assert len(recommender.recommend(recommender.keys[1:3], k=3)) == 3


def test_every_registered_builder_can_be_found():
    """Each method's tower, user side and feature source are named as "module:function"
    strings, imported when first built: a typo would otherwise surface only when someone
    trains that method."""
    from iisan.methods import SOURCES, _REGISTRY, _function

    for method in _REGISTRY.values():
        for path in (method.tower, method.user, method.source or SOURCES[method.reads]):
            if path is not None:
                assert callable(_function(path)), f"{method.name}: {path}"
