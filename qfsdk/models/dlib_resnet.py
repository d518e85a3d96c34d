"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

:class:`DlibResNet` is the ``anet_type`` network of dlib's ``dnn_face_recognition_ex.cpp``
and :func:`read_dlib_dat` reads dlib's own binary serialization of it into a state dict.
Both follow dlib's definitions exactly (default paddings, affine layers, zero-padded
residual adds), so the model returns dlib's 128-d descriptors (not L2-normalised).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfsdk.errors import CheckpointError
from qfsdk.models.card import CardedModel
from qfsdk.models.layers import ResidualAdd
from qfsdk.packaged_weights import dlib_resnet_weights
from qfsdk.runtime.contract import FaceContract

# dlib's input_rgb_image_sized<150>: each channel is (pixel - mean) / 256.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_STD = 256.0
INPUT_SIZE = 150
DESCRIPTOR_SIZE = 128
# What :func:`preprocess` does; the zoo's contract adds the alignment and the comparison to it.
INPUT_CONTRACT = FaceContract(input_size=(INPUT_SIZE, INPUT_SIZE), embedding_size=DESCRIPTOR_SIZE, mean=DLIB_MEAN_RGB,
                              std=(DLIB_STD,) * 3)
STEM_CHANNELS = 32

# (out_channels, stride) of the 14 residual blocks from input to output: dlib's
# alevel4 (ares 32 x3), alevel3 (ares_down 64, ares 64 x3), alevel2 (ares_down 128,
# ares 128 x2), alevel1 (ares_down 256, ares 256 x2), alevel0 (ares_down 256).
BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 1), (32, 1), (32, 1),
    (64, 2), (64, 1), (64, 1), (64, 1),
    (128, 2), (128, 1), (128, 1),
    (256, 2), (256, 1), (256, 1),
    (256, 2),
)  # fmt: skip


def default_weights_path() -> Path:
    """The ``.dat`` shipped by the installed ``face-recognition-models`` package (not imported)."""
    return dlib_resnet_weights()


def dlib_padding(kernel: int, stride: int) -> int:
    """dlib's default padding for con_, max_pool_ and avg_pool_: kernel/2 at stride 1, else 0."""
    return kernel // 2 if stride == 1 else 0


def _pooled_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * dlib_padding(kernel, stride) - kernel) // stride + 1


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


class Affine(nn.Module):
    """dlib's ``affine_`` layer (an inference-mode batch norm): ``x * weight[c] + bias[c]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


class PaddedAdd(ResidualAdd):
    """dlib's ``add_prev_`` for inputs of different shapes, as in its down-sampling blocks.

    Each input is zero-padded, channels at the end and rows/columns at the bottom/right
    (top-left aligned), to the larger of the two shapes, then they are added. The pads
    are fixed at construction (dlib's network only takes 150x150 inputs), which keeps the
    module free of shape-dependent control flow for tracing and export.
    """

    def __init__(self, main_shape: tuple[int, int, int], skip_shape: tuple[int, int, int]):
        super().__init__()
        out_shape = tuple(max(m, s) for m, s in zip(main_shape, skip_shape))
        self.main_pad = _pad_spec(main_shape, out_shape)
        self.skip_pad = _pad_spec(skip_shape, out_shape)

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.pad(main, self.main_pad) + F.pad(skip, self.skip_pad)

    def extra_repr(self) -> str:
        return f"main_pad={self.main_pad}, skip_pad={self.skip_pad}"


def _pad_spec(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad's argument growing a (C, H, W) tensor to ``out_shape`` at the high end only."""
    (c, h, w), (oc, oh, ow) = shape, out_shape
    return (0, ow - w, 0, oh - h, 0, oc - c)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride, dlib_padding(kernel, stride))


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (stride 1) or ``ares_down`` (stride 2) block with affine layers.

    ``relu(add(affine2(conv2(relu1(affine1(conv1(x)))))), shortcut(x)))`` where the
    down-sampling shortcut is a 2x2/2 average pool and the add zero-pads (:class:`PaddedAdd`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, in_size: int):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride)
        self.affine1 = Affine(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(out_channels, out_channels, 3, 1)
        self.affine2 = Affine(out_channels)
        if stride == 1:
            self.shortcut: nn.Module = nn.Identity()
            self.add: nn.Module = ResidualAdd()
        else:
            self.shortcut = nn.AvgPool2d(2, 2, dlib_padding(2, 2))
            main = _pooled_size(in_size, 3, stride)
            skip = _pooled_size(in_size, 2, 2)
            self.add = PaddedAdd((out_channels, main, main), (in_channels, skip, skip))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        return self.relu2(self.add(out, self.shortcut(x)))


class DlibResNet(CardedModel):
    """dlib's face-recognition ResNet: (N, 3, 150, 150) preprocessed RGB -> (N, 128) descriptors.

    Feed it :func:`preprocess` output. Descriptors are raw (as dlib returns them); dlib
    compares them by Euclidean distance with a 0.6 same-person threshold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=_conv(3, STEM_CHANNELS, 7, 2),
                affine=Affine(STEM_CHANNELS),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(3, 2, dlib_padding(3, 2)),
            )
        )
        size = _pooled_size(_pooled_size(INPUT_SIZE, 7, 2), 3, 2)
        channels, blocks = STEM_CHANNELS, []
        for out_channels, stride in BLOCKS:
            blocks.append(ResidualBlock(channels, out_channels, stride, size))
            channels = out_channels
            if stride != 1:
                size = max(_pooled_size(size, 3, stride), _pooled_size(size, 2, 2))
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # dlib's avg_pool_everything
        self.fc = nn.Linear(channels, DESCRIPTOR_SIZE, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def preprocess(chips_uint8_rgb: np.ndarray) -> torch.Tensor:
    """(N,) 150x150x3 uint8 RGB face chips -> (N, 3, 150, 150) float32, as dlib's input layer
    (:data:`INPUT_CONTRACT`'s preprocessing as a tensor)."""
    return torch.from_numpy(INPUT_CONTRACT.preprocess(chips_uint8_rgb))


# ---------------------------------------------------------------------------------------
# The network as dlib serializes it
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One dlib layer of ``anet_type``; ``name`` is its module in :class:`DlibResNet`."""

    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    name: str = ""
    out_channels: int = 0
    in_channels: int = 0
    kernel: int = 0
    stride: int = 1

    @property
    def is_add_layer(self) -> bool:
        """True for computational layers (dlib add_layer), False for tag/skip."""
        return self.kind not in ("tag", "skip")

    @property
    def label(self) -> str:
        """How error messages name the layer."""
        return f"{self.kind} layer {self.name}" if self.name else f"{self.kind} layer"


def _block_layers(index: int, in_channels: int, out_channels: int, stride: int) -> list[_Layer]:
    """dlib's ares / ares_down from input to output (tag1, block, [tag2, skip1, avg_pool], add_prev, relu)."""
    prefix = f"layers.{index}."
    layers = [
        _Layer("tag"),
        _Layer("con", prefix + "conv1", out_channels, in_channels, 3, stride),
        _Layer("affine", prefix + "affine1", out_channels),
        _Layer("relu"),
        _Layer("con", prefix + "conv2", out_channels, out_channels, 3, 1),
        _Layer("affine", prefix + "affine2", out_channels),
    ]
    if stride != 1:
        layers += [_Layer("tag"), _Layer("skip"), _Layer("avg_pool", kernel=2, stride=2)]
    return layers + [_Layer("add_prev"), _Layer("relu")]


def _network_layers() -> list[_Layer]:
    """Every dlib layer above the input layer of ``anet_type``, from input to output."""
    layers = [
        _Layer("con", "stem.conv", STEM_CHANNELS, 3, 7, 2),
        _Layer("affine", "stem.affine", STEM_CHANNELS),
        _Layer("relu"),
        _Layer("max_pool", kernel=3, stride=2),
    ]
    channels = STEM_CHANNELS
    for index, (out_channels, stride) in enumerate(BLOCKS):
        layers += _block_layers(index, channels, out_channels, stride)
        channels = out_channels
    return layers + [_Layer("avg_pool", kernel=0, stride=1), _Layer("fc", "fc", DESCRIPTOR_SIZE, channels)]


_EXPECTED = "dlib_face_recognition_resnet_model_v1 network (dlib's anet_type)"
_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class _Reader:
    """dlib's serialize.h primitives over a byte buffer; every failure is a CheckpointError."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, message: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: not a readable {_EXPECTED}: {message} (at byte {self.pos})")

    def take(self, count: int, what: str) -> bytes:
        if count > len(self.data) - self.pos:
            self.fail(f"file is truncated: {what} needs {count} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def read_int(self, what: str, max_bytes: int = 8, signed: bool = True) -> int:
        """dlib's variable-length integer: control byte (0x80 = negative, low nibble = size), little-endian bytes."""
        control = self.take(1, what)[0]
        size, negative = control & 0x0F, bool(control & 0x80)
        if size == 0 or size > max_bytes or control & 0x70 or (negative and not signed):
            self.fail(f"{what}: invalid integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if negative else value

    def read_uint(self, what: str, max_bytes: int = 8) -> int:
        return self.read_int(what, max_bytes, signed=False)

    def read_float(self, what: str) -> float:
        """dlib's float_details: int64 mantissa and int16 exponent, value = mantissa * 2**exponent."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            self.fail(f"{what}: old text float encoding is not supported")
        mantissa = self.read_int(what)
        exponent = self.read_int(what, max_bytes=2)
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            self.fail(f"{what}: float {mantissa} * 2**{exponent} is out of range")

    def read_bool(self, what: str) -> bool:
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            self.fail(f"{what}: expected a bool ('0' or '1'), found byte 0x{char[0]:02x}")
        return char == b"1"

    def read_string(self, what: str, max_length: int = 64) -> str:
        length = self.read_uint(what)
        if length > max_length:
            self.fail(f"{what}: expected a short layer name, found a string of {length} bytes")
        return self.take(length, what).decode("latin-1")

    def expect_version(self, what: str, allowed: tuple[int, ...]) -> int:
        version = self.read_int(f"{what} version", max_bytes=4)
        if version not in allowed:
            self.fail(f"{what}: expected version {' or '.join(map(str, allowed))}, found {version}")
        return version

    def expect_string(self, what: str, allowed: tuple[str, ...]) -> str:
        found = self.read_string(what)
        if found not in allowed:
            self.fail(f"{what}: expected {' or '.join(map(repr, allowed))}, found {found!r}")
        return found

    def read_tensor(self, what: str) -> np.ndarray:
        """resizable_tensor: version 2, (num_samples, k, nr, nc), then little-endian float32 values."""
        self.expect_version(f"{what} tensor", (2,))
        shape = tuple(self.read_int(f"{what} tensor shape") for _ in range(4))
        if min(shape) < 0:
            self.fail(f"{what}: negative tensor shape {shape}")
        count = math.prod(shape)
        values = np.frombuffer(self.take(4 * count, f"{what} tensor data"), dtype="<f4")
        return values.astype(np.float32).reshape(shape)

    def read_alias(self, what: str) -> tuple[int, ...]:
        """alias_tensor: version 1 and a (num_samples, k, nr, nc) shape, no data."""
        self.expect_version(f"{what} alias", (1,))
        return tuple(self.read_int(f"{what} alias shape") for _ in range(4))

    def expect_int(self, what: str, expected: int, max_bytes: int = 8) -> None:
        found = self.read_int(what, max_bytes)
        if found != expected:
            self.fail(f"{what}: expected {expected}, found {found}")

    def expect_shape(self, what: str, found: tuple[int, ...], expected: tuple[int, ...]) -> None:
        if found != expected:
            self.fail(f"{what}: expected shape {expected}, found {found}")


def _read_loss(r: _Reader) -> None:
    r.expect_version("add_loss_layer", (1,))
    if r.expect_string("loss layer", ("loss_metric_2", "loss_metric_")) == "loss_metric_2":
        r.read_float("loss_metric margin")
        r.read_float("loss_metric distance threshold")


def _read_input(r: _Reader) -> None:
    r.expect_string("input layer", ("input_rgb_image_sized",))
    means = tuple(np.float32(r.read_float(f"input layer {c} mean")) for c in "RGB")
    if means != tuple(np.float32(DLIB_MEAN_RGB)):
        r.fail(f"input layer: expected channel means {DLIB_MEAN_RGB}, found {tuple(map(float, means))}")
    r.expect_int("input layer rows", INPUT_SIZE)
    r.expect_int("input layer columns", INPUT_SIZE)


def _read_window(r: _Reader, layer: _Layer) -> None:
    """Kernel size, stride and padding of a con_/pool layer (dlib's defaults)."""
    for field in ("rows", "columns"):
        r.expect_int(f"{layer.label} {field}", layer.kernel)
    for field in ("stride_y", "stride_x"):
        r.expect_int(f"{layer.label} {field}", layer.stride, 4)
    for field in ("padding_y", "padding_x"):
        r.expect_int(f"{layer.label} {field}", dlib_padding(layer.kernel, layer.stride), 4)


def _read_pool(r: _Reader, layer: _Layer) -> None:
    r.expect_string(layer.label, (f"{layer.kind}_2",))
    _read_window(r, layer)


def _read_con(r: _Reader, layer: _Layer) -> dict[str, torch.Tensor]:
    version = r.expect_string(layer.label, ("con_4", "con_5"))
    params = r.read_tensor(f"{layer.label} params")
    r.expect_int(f"{layer.label} num_filters", layer.out_channels)
    _read_window(r, layer)
    weight_shape = (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel)
    r.expect_shape(f"{layer.label} filters", r.read_alias(f"{layer.label} filters"), weight_shape)
    bias_shape = r.read_alias(f"{layer.label} biases")
    for field in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.read_float(f"{layer.label} {field} multiplier")
    use_bias = r.read_bool(f"{layer.label} use_bias") if version == "con_5" else True
    weight_size = math.prod(weight_shape)
    r.expect_shape(f"{layer.label} params", (params.size,), (weight_size + use_bias * layer.out_channels,))
    values = torch.from_numpy(params.reshape(-1))
    weight = values[:weight_size].reshape(weight_shape).clone()
    if not use_bias:
        return {"weight": weight, "bias": torch.zeros(layer.out_channels)}
    r.expect_shape(f"{layer.label} biases", bias_shape, (1, layer.out_channels, 1, 1))
    return {"weight": weight, "bias": values[weight_size:].clone()}


def _read_affine(r: _Reader, layer: _Layer) -> dict[str, torch.Tensor]:
    version = r.expect_string(layer.label, ("affine_", "affine_2"))
    channels = layer.out_channels
    params = r.read_tensor(f"{layer.label} params")
    for part in ("gamma", "beta"):
        r.expect_shape(f"{layer.label} {part}", r.read_alias(f"{layer.label} {part}"), (1, channels, 1, 1))
    r.expect_int(f"{layer.label} mode (0 = convolutional)", 0, 4)
    if version == "affine_2" and r.read_bool(f"{layer.label} disabled"):
        r.fail(f"{layer.label}: disabled affine layers are not supported")
    r.expect_shape(f"{layer.label} params", (params.size,), (2 * channels,))
    values = torch.from_numpy(params.reshape(-1))
    return {"weight": values[:channels].clone(), "bias": values[channels:].clone()}


def _read_fc(r: _Reader, layer: _Layer) -> dict[str, torch.Tensor]:
    version = r.expect_string(layer.label, ("fc_2", "fc_3"))
    r.expect_int(f"{layer.label} num_outputs", layer.out_channels)
    r.expect_int(f"{layer.label} num_inputs", layer.in_channels)
    params = r.read_tensor(f"{layer.label} params")
    shape = (layer.in_channels, layer.out_channels)
    r.expect_shape(f"{layer.label} params", params.shape, (*shape, 1, 1))
    r.expect_shape(f"{layer.label} weights", r.read_alias(f"{layer.label} weights"), (*shape, 1, 1))
    r.read_alias(f"{layer.label} biases")
    r.expect_int(f"{layer.label} bias mode (1 = no bias)", 1, 4)
    for field in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.read_float(f"{layer.label} {field} multiplier")
    if version == "fc_3":
        r.read_bool(f"{layer.label} use_bias")
    # dlib computes input (N, in) @ params (in, out); torch's Linear stores (out, in).
    return {"weight": torch.from_numpy(params.reshape(shape).T.copy())}


def _read_details(r: _Reader, layer: _Layer) -> dict[str, torch.Tensor]:
    if layer.kind == "con":
        return _read_con(r, layer)
    if layer.kind == "affine":
        return _read_affine(r, layer)
    if layer.kind == "fc":
        return _read_fc(r, layer)
    if layer.kind in ("max_pool", "avg_pool"):
        _read_pool(r, layer)
    else:
        r.expect_string(layer.label, (f"{layer.kind}_",))
    return {}


def _read_state_fields(r: _Reader, layer: _Layer, version: int, on_input: bool) -> None:
    """add_layer's training state after the layer details (flags and cached tensors)."""
    for field in ("setup_called", "gradient_input_is_stale", "output_disabled"):
        r.read_bool(f"{layer.label} {field}")
    r.read_tensor(f"{layer.label} x_grad")
    r.read_tensor(f"{layer.label} cached_output")
    if on_input:
        r.read_tensor(f"{layer.label} grad_final")
        if version >= 3:
            r.read_uint(f"{layer.label} sample_expansion_factor", 4)
    elif version >= 2:
        r.read_tensor(f"{layer.label} params_grad")


def _read_wrapper_versions(r: _Reader, layers: list[_Layer]) -> dict[int, int]:
    """Each layer wrapper's version, outermost first; returns the add_layer versions by index.

    The bottom add_layer (over the input layer) is dlib's input specialization, versions 2-3.
    """
    versions = {}
    for index in reversed(range(len(layers))):
        layer = layers[index]
        if not layer.is_add_layer:
            r.expect_version(f"{layer.kind} layer", (1,))
        else:
            allowed = (2, 3) if index == 0 else (1, 2)
            versions[index] = r.expect_version(f"add_layer of the {layer.label}", allowed)
    return versions


def read_dlib_dat(path: str | PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """Read dlib's serialized face-recognition ResNet into a :class:`DlibResNet` state dict.

    The layer stream is parsed as dlib's deserializer does for ``anet_type`` (each wrapper's
    version on the way down, the input layer, then each layer's details and state on the
    way up), validating every layer's type, sizes, strides and paddings. Raises
    :class:`CheckpointError` naming ``path`` for an unreadable, truncated or other file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    r = _Reader(data, str(path))
    layers = _network_layers()
    _read_loss(r)
    versions = _read_wrapper_versions(r, layers)
    _read_input(r)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for index, layer in enumerate(layers):
        if layer.is_add_layer:
            for key, value in _read_details(r, layer).items():
                state[f"{layer.name}.{key}"] = value
            _read_state_fields(r, layer, versions[index], on_input=index == 0)
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected bytes after the network")
    return state
