"""Read QuantFace's released quantized checkpoints (whole pickled modules) without running them.

The file is opened with torch's restricted ``weights_only`` unpickler. Exactly the globals such a
file uses are allowed, each mapped onto an inert stand-in that only records its state; any other
global (``os.system``, a class from elsewhere) stops the load before anything runs. The recorded
module tree is then mapped onto qfsdk's own model built with the ``quantface`` scheme, which
computes the same function with the same tensors.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from qfsdk.errors import CheckpointError
from qfsdk.quant.config import LayerOverride, QuantConfig

log = logging.getLogger(__name__)

QUANT_MODULES = "quantization_utils.quant_modules"
QUANT_FUNCTION = "quantization_utils.quant_utils.AsymmetricQuantFunction"

# The reference classes a QuantFace checkpoint may name, with torch.nn classes it pickles by path.
REFERENCE_CLASSES = (
    "backbones.iresnet.IResNet",
    "backbones.iresnet.IBasicBlock",
    "backbones.mobilefacenet.MobileFaceNet",
    "backbones.mobilefacenet.Conv_block",
    "backbones.mobilefacenet.Linear_block",
    "backbones.mobilefacenet.Depth_Wise",
    "backbones.mobilefacenet.Residual",
    "backbones.mobilefacenet.GDC",
    "backbones.mobilefacenet.Flatten",
    f"{QUANT_MODULES}.Quant_Conv2d",
    f"{QUANT_MODULES}.Quant_Linear",
    f"{QUANT_MODULES}.QuantAct",
    f"{QUANT_MODULES}.QuantActPreLu",
    QUANT_FUNCTION,
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.batchnorm.BatchNorm1d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.PReLU",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.flatten.Flatten",
)


class PickledModule:
    """An inert record of one pickled module: its class path and its ``__dict__``."""

    reference: str = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def kind(self) -> str:
        return self.reference.rsplit(".", 1)[-1]

    def children(self) -> dict[str, "PickledModule"]:
        return dict(self.__dict__.get("_modules") or {})

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for group in ("_parameters", "_buffers"):
            for name, value in (self.__dict__.get(group) or {}).items():
                if value is not None:
                    yield name, value


STAND_INS: dict[str, type] = {path: type(path.rsplit(".", 1)[-1], (PickledModule,), {"reference": path}) for path in REFERENCE_CLASSES}
APPLY_MARKER = "AsymmetricQuantFunction.apply"


def _safe_getattr(obj: Any, name: str) -> str:
    """``builtins.getattr`` as these files use it: only ``AsymmetricQuantFunction.apply``."""
    if obj is STAND_INS[QUANT_FUNCTION] and name == "apply":
        return APPLY_MARKER
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not something a QuantFace checkpoint stores")


def read_quantface_pickle(path: str | Path) -> PickledModule:
    """The recorded module tree of a QuantFace checkpoint; refuses any other global without running it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not _looks_like_torch_checkpoint(path):
        raise CheckpointError(
            f"{path}: not a checkpoint `qfsdk convert` reads; give a qfsdk quantized .safetensors, a QuantFace "
            "quantized .pth, or a zoo name / float checkpoint with --fp32"
        )
    allowed = [(cls, reference) for reference, cls in STAND_INS.items()] + [(_safe_getattr, "builtins.getattr")]
    try:
        with torch.serialization.safe_globals(allowed):
            root = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|got (<class [^>]+>)", str(exc))
        what = next((g for g in found.groups() if g), "") if found else str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refused without running anything: it references {what}, which a QuantFace checkpoint never does"
        ) from None
    except Exception as exc:  # zip/pickle corruption surfaces as several exception types
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(root, PickledModule):
        raise CheckpointError(f"{path}: holds a {type(root).__name__}, not a pickled QuantFace model")
    return root


def _looks_like_torch_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (or, before 1.6, a raw pickle starting with PROTO)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


@dataclass(frozen=True)
class ImportedQuantFace:
    """A QuantFace checkpoint as a qfsdk ``quantface``-scheme model plus what was read."""

    model: nn.Module
    architecture: str
    weight_bits: int
    act_bits: int


IRESNET_DEPTHS = {(2, 2, 2, 2): "iresnet18", (3, 4, 6, 3): "iresnet34", (3, 4, 14, 3): "iresnet50", (3, 13, 30, 3): "iresnet100"}


def _architecture(root: PickledModule, path: Path) -> str:
    if root.reference == "backbones.iresnet.IResNet":
        depths = tuple(len(root.children()[f"layer{i}"].children()) for i in range(1, 5))
        if depths not in IRESNET_DEPTHS:
            raise CheckpointError(f"{path}: an IResNet with stage depths {depths}; qfsdk knows {sorted(IRESNET_DEPTHS)}")
        return IRESNET_DEPTHS[depths]
    if root.reference == "backbones.mobilefacenet.MobileFaceNet":
        return "mobilefacenet"
    raise CheckpointError(f"{path}: the pickled model is a {root.reference}; qfsdk imports QuantFace IResNet and MobileFaceNet checkpoints")


def _is_block_wrapper(node: PickledModule) -> bool:
    """``Sequential(block, QuantAct)``: how QuantFace quantizes a residual block's output."""
    children = node.children()
    return (
        node.kind == "Sequential"
        and list(children) == ["0", "1"]
        and children["1"].reference == f"{QUANT_MODULES}.QuantAct"
        and children["0"].kind in ("IBasicBlock", "Depth_Wise")
    )


MAX_DEPTH = 32  # QuantFace's models nest 5 deep; a deeper record is not one of them


def _walk(node: PickledModule, prefix: str, ancestors: tuple[int, ...] = ()) -> Iterator[tuple[str, PickledModule, str]]:
    """(qfsdk module name, recorded module, role) for every module, mapping QuantFace's wrappers."""
    if id(node) in ancestors:
        raise CheckpointError(f"module '{prefix}' contains itself (a module cycle): not a QuantFace model")
    if len(ancestors) > MAX_DEPTH:
        raise CheckpointError(f"modules nested deeper than {MAX_DEPTH} at '{prefix}': not a QuantFace model")
    ancestors = (*ancestors, id(node))
    if _is_block_wrapper(node):
        children = node.children()
        yield from _walk(children["0"], prefix, ancestors)
        yield f"{prefix}.add.output_quantizer", children["1"], "act"
        return
    if node.reference == f"{QUANT_MODULES}.QuantActPreLu":
        yield prefix, node, "prelu"
        yield f"{prefix}.output_quantizer", node.children()["quantAct"], "act"
        return
    if node.reference == f"{QUANT_MODULES}.QuantAct":
        raise CheckpointError(f"an activation quantizer at '{prefix}' that QuantFace's models never place there")
    yield prefix, node, "module"
    for name, child in node.children().items():
        if child is not None:
            yield from _walk(child, f"{prefix}.{name}" if prefix else name, ancestors)


def _state_and_bits(root: PickledModule) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """qfsdk state dict entries and (weight_bits, act_bits) per quantized layer name."""
    state: dict[str, torch.Tensor] = {}
    weight_bits: dict[str, int] = {}
    act_bits: dict[str, int] = {}
    for name, node, role in _walk(root, ""):
        if node.__dict__.get("full_precision_flag"):
            raise CheckpointError(f"layer '{name}' is marked full precision; mixed float layers are not imported yet")
        if role == "act":
            layer = name.rsplit(".", 1)[0]
            act_bits[layer] = int(node.activation_bit)
            state[f"{name}.x_min"] = node.__dict__["_buffers"]["x_min"].reshape(())
            state[f"{name}.x_max"] = node.__dict__["_buffers"]["x_max"].reshape(())
            state[f"{name}.has_range"] = torch.tensor(True)
            continue
        if "weight_bit" in node.__dict__:
            weight_bits[name] = int(node.weight_bit)
        for key, tensor in node.tensors():
            state[f"{name}.{key}" if name else key] = tensor.detach()
    layers = weight_bits.keys() | act_bits.keys()
    bits = {layer: (weight_bits.get(layer, 0), act_bits.get(layer, 0)) for layer in layers}
    return state, bits


def _config(bits: dict[str, tuple[int, int]]) -> QuantConfig:
    """The uniform setting most layers use, plus one override per layer that differs."""
    weight = Counter(w for w, _ in bits.values() if w).most_common(1)
    act = Counter(a for _, a in bits.values() if a).most_common(1)
    if not weight or not act:
        raise CheckpointError("the checkpoint has no quantized convolution or activation layers")
    config = QuantConfig(weight_bits=weight[0][0], act_bits=act[0][0], scheme="quantface")
    overrides = [
        LayerOverride(layer, weight_bits=w or None, act_bits=a or None)
        for layer, (w, a) in sorted(bits.items())
        if (w and w != config.weight_bits) or (a and a != config.act_bits)
    ]
    return config.with_overrides(*overrides) if overrides else config


def import_quantface(path: str | Path) -> ImportedQuantFace:
    """Rebuild a QuantFace quantized checkpoint as a qfsdk model (eval mode, ranges fixed)."""
    import qfsdk
    from qfsdk.models.weights import describe_mismatch
    from qfsdk.models import card_of, create

    path = Path(path)
    root = read_quantface_pickle(path)
    architecture = _architecture(root, path)
    try:
        state, bits = _state_and_bits(root)
        config = _config(bits)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = qfsdk.quantize(create(architecture, pretrained=False), config)
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path}: does not map onto qfsdk's {architecture}: {problems}")
    model.load_state_dict(state)
    card_of(model).calibration = {"method": "quantface-checkpoint", "source": path.name}
    log.info("imported %s from %s (%s)", architecture, path, config.to_json())
    return ImportedQuantFace(model.eval(), architecture, config.weight_bits, config.act_bits)
