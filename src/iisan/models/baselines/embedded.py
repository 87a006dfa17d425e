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

import torch
from torch import nn

from iisan.devices import autocast_to, compute_dtype
from iisan.encoders.frozen import pool_tokens
from iisan.errors import ConfigError
from iisan.methods import method_names
from iisan.models.inputs import ItemFeatures
from iisan.models.fusion import heads_and_fusion

EMBEDDED_METHODS = method_names(reads="raw")

# Where, inside one transformer layer of each supported architecture, the attention and
# feed-forward outputs are projected back to the hidden width (BERT/MiniLM, DINOv2, MPNet,
# and the decoder LLMs: Llama, Qwen2, Mistral, Gemma).
ATTENTION_OUTPUTS = ("attention.output.dense", "attention.o_proj", "attention.attn.o", "self_attn.o_proj")
FEED_FORWARD_OUTPUTS = ("output.dense", "mlp.fc2", "mlp.down_proj")
# The layer list: encoders keep it at encoder.layer, decoder LLMs at layers.
LAYER_LISTS = ("encoder.layer", "layers")
ATTENTION_MODULES = ("attention", "self_attn")
OFF_PATH_MODULES = ("pooler", "layernorm")  # after the last hidden state (BERT/MPNet pooler, DINOv2 final norm)
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


def layer_list(model: nn.Module) -> str:
    """The name of the model's list of transformer layers."""
    for name in LAYER_LISTS:
        try:
            if isinstance(model.get_submodule(name), nn.ModuleList):
                return name
        except AttributeError:
            continue
    raise ConfigError(f"{type(model).__name__}: no {' or '.join(LAYER_LISTS)} layer list; the adapter and lora "
                      "baselines support BERT-, MPNet- and DINOv2-style encoders and Llama-style decoders")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layer_list(model))


def _find(layer: nn.Module, names: tuple[str, ...], what: str) -> str:
    for name in names:
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            return name
    raise ConfigError(f"{type(layer).__name__}: cannot find the {what} projection (looked for {', '.join(names)})")


def insert_adapters(model: nn.Module, bottleneck: int) -> None:
    """Houlsby adapters after the attention and feed-forward output projections of every layer."""
    for layer in encoder_layers(model):
        for name in (_find(layer, ATTENTION_OUTPUTS, "attention output"),
                     _find(layer, FEED_FORWARD_OUTPUTS, "feed-forward output")):
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, child, Adapted(getattr(parent, child), bottleneck))


def attention_projections(model: nn.Module) -> list[str]:
    """Full names of every layer's query, key and value projections: the attention's
    linear layers other than its output projection."""
    names = []
    prefix = layer_list(model)
    for index, layer in enumerate(model.get_submodule(prefix)):
        output = _find(layer, ATTENTION_OUTPUTS, "attention output")
        attention = next(a for a in ATTENTION_MODULES if hasattr(layer, a))
        for name, module in getattr(layer, attention).named_modules():
            if isinstance(module, nn.Linear) and f"{attention}.{name}" != output:
                names.append(f"{prefix}.{index}.{attention}.{name}")
    return names


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """LoRA (``peft``) on the query, key and value projections; ``alpha = 2 * rank``, no dropout."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=attention_projections(model))
    return inject_adapter_in_model(config, model)


def _full(model: nn.Module, _bottleneck: int, _rank: int) -> nn.Module:
    return model.requires_grad_(True)


def _adapters(model: nn.Module, bottleneck: int, _rank: int) -> nn.Module:
    model.requires_grad_(False)
    insert_adapters(model, bottleneck)  # new modules: trainable
    return model


def _lora(model: nn.Module, _bottleneck: int, rank: int) -> nn.Module:
    model = add_lora(model.requires_grad_(False), rank)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def _biases(model: nn.Module, _bottleneck: int, _rank: int) -> nn.Module:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias"))
    return model


# What each encoder baseline trains: the method's name -> how it adapts a pretrained encoder
# (model, adapter bottleneck, LoRA rank) -> the model, exactly its trained parameters trainable.
ADAPTATIONS = {"fft": _full, "adapter": _adapters, "lora": _lora, "bitfit": _biases}


def prepare_encoder(model: nn.Module, method: str, adapter_bottleneck: int = 64, lora_rank: int = 8) -> nn.Module:
    """Apply ``method`` to a pretrained encoder and leave trainable exactly what it trains."""
    adapt = ADAPTATIONS.get(method)
    if adapt is None:
        raise ConfigError(f"method must be one of {', '.join(ADAPTATIONS)}, got {method!r}")
    model = adapt(model, adapter_bottleneck, lora_rank)
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
    """Encoders on raw content (adapted by ``method``), last-layer pooling, linear heads and fusion.

    Args:
        method: one of :data:`EMBEDDED_METHODS`.
        models: modality -> the pretrained Hugging Face model (modified in place).
        poolings: modality -> ``cls`` or ``mean``, as the cache was built.
        dim: the item embedding width ``d``.
    """

    def __init__(self, method: str, models: dict[str, nn.Module], poolings: dict[str, str], dim: int,
                 adapter_bottleneck: int = 64, lora_rank: int = 8, precision: str = "fp32") -> None:
        super().__init__()
        self.method = method
        self.precision = precision
        self.poolings = dict(poolings)
        self.encoders = nn.ModuleDict({m: prepare_encoder(model, method, adapter_bottleneck, lora_rank)
                                       for m, model in models.items()})
        self.widths = {m: int(model.config.hidden_size) for m, model in models.items()}
        self.layers = {m: (int(model.config.num_hidden_layers),) for m, model in models.items()}
        self.heads = nn.ModuleDict({m: nn.Linear(width, dim) for m, width in self.widths.items()})
        self.fusion = nn.Linear(len(models) * dim, dim)

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


def build_tower(config, context) -> EmbeddedEncoderItemEncoder:
    """The ``fft``, ``adapter``, ``lora`` and ``bitfit`` entries of the method registry
    (:mod:`iisan.methods`): the encoders in ``context.encoders``, prepared for ``config.method``."""
    return EmbeddedEncoderItemEncoder(config.method, {m: e.model for m, e in context.encoders.items()},
                                      context.poolings, config.user.dim,
                                      adapter_bottleneck=config.side.bottleneck, lora_rank=config.lora_rank,
                                      precision=config.precision)
