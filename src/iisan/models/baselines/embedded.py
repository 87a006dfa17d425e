"""``fft``, ``adapter``, ``lora``, ``bitfit``: the encoders inside the item tower, trained.

These are the baselines IISAN is measured against. Each runs the pretrained encoders on
raw text and images at every step, with gradients, and differs only in what is trained:

- ``fft``: every encoder weight;
- ``adapter``: Houlsby bottleneck adapters inserted in every encoder layer, after the
  attention output projection and after the feed-forward output projection;
- ``lora``: LoRA on the attention's query, key and value projections, through ``peft``;
- ``bitfit``: the encoders' bias terms.

On top of the encoders the tower is the ``frozen`` baseline's: each modality's last-layer
state, pooled as in the cache (CLS or mean), through ``Linear(D, d)``, fused by
``Linear(k * d, d)``. Adapters start as the identity and LoRA's update at zero, so before
training these towers compute exactly what ``frozen`` computes on the same encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iisan.devices import autocast_to, compute_dtype
from iisan.encoders.layer_states import pool_tokens
from iisan.errors import ConfigError
from iisan.methods import method_names
from iisan.models.inputs import ItemFeatures
from iisan.models.fusion import heads_and_fusion

EMBEDDED_METHODS = method_names(reads="raw")


@dataclass(frozen=True)
class LayerParts:
    """Where adapters and LoRA go in one model type, as peft keeps target modules per model
    type. Names are relative to one transformer layer, with the spellings of transformers
    4.x and 5.x where they differ (the first that exists is used).

    Attributes:
        layers: the model's list of transformer layers.
        query_key_value: leaf names of the attention's input projections (LoRA's targets).
        attention_output: the attention's output projection (an adapter goes after it).
        feed_forward_output: the feed-forward block's output projection (an adapter after it).
    """

    layers: tuple[str, ...]
    query_key_value: tuple[str, ...]
    attention_output: tuple[str, ...]
    feed_forward_output: tuple[str, ...]


_BERT = LayerParts(("encoder.layer",), ("query", "key", "value"), ("attention.output.dense",),
                   ("output.dense",))
_VIT = LayerParts(("encoder.layer", "layers"), ("query", "key", "value", "q_proj", "k_proj", "v_proj"),
                  ("attention.output.dense", "attention.o_proj"), ("output.dense", "mlp.fc2"))
_LLAMA = LayerParts(("layers",), ("q_proj", "k_proj", "v_proj"), ("self_attn.o_proj",), ("mlp.down_proj",))
LAYER_PARTS = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT,
    "mpnet": LayerParts(("encoder.layer",), ("q", "k", "v"), ("attention.attn.o",), ("output.dense",)),
    "vit": _VIT, "dinov2": _VIT,
    "llama": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "mistral": _LLAMA, "gemma": _LLAMA, "gemma2": _LLAMA,
}
# After the last hidden state: BERT's and MPNet's pooler, DINOv2's final norm.
OFF_PATH_MODULES = ("pooler", "layernorm")
OFF_PATH_PARAMETERS = ("embeddings.mask_token",)  # DINOv2: used only for masked-image pretraining


class HoulsbyAdapter(nn.Module):
    """``x + up(gelu(down(x)))``; ``up`` starts at zero, so the adapter starts as the identity."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class Adapted(nn.Module):
    """A projection followed by an adapter (the adapter sees the projection's output)."""

    def __init__(self, projection: nn.Linear, bottleneck: int) -> None:
        super().__init__()
        self.projection = projection
        self.adapter = HoulsbyAdapter(projection.out_features, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.projection(x))


def layer_parts(model: nn.Module) -> tuple[str, LayerParts]:
    """The name of ``model``'s layer list and its :class:`LayerParts`: its model type's
    entry, or for a type not in :data:`LAYER_PARTS` the first entry that fits it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = model_type in LAYER_PARTS
    candidates = [LAYER_PARTS[model_type]] if known else list(dict.fromkeys(LAYER_PARTS.values()))
    for parts in candidates:
        for name in parts.layers:
            try:
                layers = model.get_submodule(name)
            except AttributeError:
                continue
            if isinstance(layers, nn.ModuleList) and len(layers) and all(
                    _find(layers[0], where) for where in (parts.attention_output, parts.feed_forward_output)):
                return name, parts
    raise ConfigError(f"{type(model).__name__} (model type {model_type}): the adapter and lora baselines "
                      f"know {', '.join(LAYER_PARTS)} and models laid out like them")


def _find(layer: nn.Module, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a linear layer inside ``layer``."""
    for name in names:
        try:
            if isinstance(layer.get_submodule(name), nn.Linear):
                return name
        except AttributeError:
            continue
    return None


def insert_adapters(model: nn.Module, bottleneck: int) -> None:
    """Houlsby adapters after the attention and feed-forward output projections of every layer."""
    name, parts = layer_parts(model)
    for layer in model.get_submodule(name):
        for where in (_find(layer, parts.attention_output), _find(layer, parts.feed_forward_output)):
            parent_name, _, child = where.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, child, Adapted(getattr(parent, child), bottleneck))


def attention_projections(model: nn.Module) -> list[str]:
    """Full names of every layer's query, key and value projections."""
    name, parts = layer_parts(model)
    return [f"{name}.{index}.{path}" for index, layer in enumerate(model.get_submodule(name))
            for path, module in layer.named_modules()
            if isinstance(module, nn.Linear) and path.rpartition(".")[2] in parts.query_key_value]


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """LoRA (``peft``) on the query, key and value projections; ``alpha = 2 * rank``, no dropout."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules=attention_projections(model))
    return inject_adapter_in_model(config, model)


def train_everything(model: nn.Module, config) -> nn.Module:
    """``fft``: every encoder weight."""
    return model.requires_grad_(True)


def train_adapters(model: nn.Module, config) -> nn.Module:
    """``adapter``: new Houlsby adapters only."""
    model.requires_grad_(False)
    insert_adapters(model, config.method_options.adapter_bottleneck)  # new modules: trainable
    return model


def train_lora(model: nn.Module, config) -> nn.Module:
    """``lora``: the LoRA update of the attention's input projections only."""
    model = add_lora(model.requires_grad_(False), config.method_options.lora_rank)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def train_biases(model: nn.Module, config) -> nn.Module:
    """``bitfit``: the bias terms only."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias"))
    return model


def prepare_encoder(model: nn.Module, adapt: Callable[[nn.Module, Any], nn.Module], config) -> nn.Module:
    """Adapt a pretrained encoder with ``adapt`` and leave trainable exactly what it trains."""
    model = adapt(model, config)
    for name in OFF_PATH_MODULES:
        # The tower reads the last layer's hidden states: a pooler or a final norm after it
        # gets no gradient, so it is neither trained nor counted as trainable.
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module.requires_grad_(False)
    for name, parameter in model.named_parameters():
        if name.endswith(OFF_PATH_PARAMETERS):
            parameter.requires_grad_(False)
    return model


class EmbeddedEncoderItemEncoder(nn.Module):
    """Encoders on raw content (adapted by ``adapt``), last-layer pooling, linear heads and fusion.

    Args:
        models: modality -> the pretrained Hugging Face model (modified in place).
        poolings: modality -> ``cls`` or ``mean``, as the cache was built.
        adapt: what the method trains (e.g. :func:`train_lora`), given the model and ``config``.
        config: the run's ``TrainConfig`` (``user.dim``: the item embedding width; ``tuning``).
    """

    def __init__(self, models: dict[str, nn.Module], poolings: dict[str, str],
                 adapt: Callable[[nn.Module, Any], nn.Module], config) -> None:
        super().__init__()
        self.precision = config.method_options.precision
        self.poolings = dict(poolings)
        self.encoders = nn.ModuleDict({m: prepare_encoder(model, adapt, config)
                                       for m, model in models.items()})
        self.widths = {m: int(model.config.hidden_size) for m, model in models.items()}
        self.layers = {m: (int(model.config.num_hidden_layers),) for m, model in models.items()}
        self.heads = nn.ModuleDict({m: nn.Linear(width, config.user.dim) for m, width in self.widths.items()})
        self.fusion = nn.Linear(len(models) * config.user.dim, config.user.dim)

    def side_parameters(self) -> list[nn.Parameter]:
        """The trainable encoder parameters (trained at ``side_lr``)."""
        return [p for p in self.encoders.parameters() if p.requires_grad]

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        states = {}
        device = self.fusion.weight.device
        compute = compute_dtype(self.precision, device)
        for name, encoder in self.encoders.items():
            present = features.present[name]
            pooled = self.heads[name].weight.new_zeros(len(features.ids), self.widths[name])
            if name in features.inputs:
                inputs = features.inputs[name]
                with autocast_to(device, compute):
                    last = encoder(**inputs, output_hidden_states=True).hidden_states[-1]  # as cached: before any final norm
                pooled = pooled.index_put((present.nonzero().squeeze(1),),
                                          pool_tokens(last.float(), inputs.get("attention_mask"), self.poolings[name]))
            states[name] = pooled
        return heads_and_fusion(self.heads, self.fusion, states, features.present)


def _tower_builder(adapt: Callable[[nn.Module, Any], nn.Module]) -> Callable:
    def build_tower(config, context) -> EmbeddedEncoderItemEncoder:
        return EmbeddedEncoderItemEncoder({m: e.model for m, e in context.encoders.items()}, context.poolings,
                                          adapt, config)

    build_tower.__doc__ = f"The item tower of the method that trains what :func:`{adapt.__name__}` trains."
    return build_tower


# The registry entries of fft, adapter, lora, bitfit (iisan.methods) name these.
fft_tower = _tower_builder(train_everything)
adapter_tower = _tower_builder(train_adapters)
lora_tower = _tower_builder(train_lora)
bitfit_tower = _tower_builder(train_biases)
