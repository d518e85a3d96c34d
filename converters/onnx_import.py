"""``qfsdk import``: bring a foreign ONNX face embedder into the SDK as a float ONNX with a contract.

The graph is normalised (initializers out of the input list, values known before run time folded
into initializers at the source's batch, opset >= 13, a dynamic batch axis, a hard-coded batch in
Reshape rewritten where the data's first axis is the batch, NHWC input transposed to NCHW, decomposed
PReLUs folded back into PRelu and cancelling Transposes removed (onnx_folds.py), one embedding
output), checked (one image input, a 2-D embedding, only op types the SDK can represent), verified
(its outputs equal the source model's, a batch equals the source's runs, and the PyTorch form
computes the same) and written atomically with the contract in its metadata.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference, version_converter
from onnx.external_data_helper import load_external_data_for_model

from qfsdk.errors import QfsdkError
from qfsdk.eval.metrics import cosine_similarities
from qfsdk.runtime.align import TEMPLATES
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output
from qfsdk.runtime.metadata import IMPORTED_PREFIX

from .graph_tools import remove_unused_initializers
from .onnx_folds import cancel_transposes, fold_constants, fold_prelus, hoist_prelus
from .onnx_export import add_metadata

MIN_OPSET = 13  # per-axis DequantizeLinear
BATCH = "batch"
VERIFY_BATCH = 8
MIN_COSINE = 0.99999
# Template name -> (landmarks in the template's own pixel size, that size, fit direction, alignment name).
IMPORT_TEMPLATES = {
    "arcface": (TEMPLATES["arcface"], (112, 112), "landmarks_to_template", "arcface_5pt"),
    "dlib": (TEMPLATES["dlib"], (150, 150), "template_to_landmarks", "dlib_chip_150_pad0.25"),
    "none": (None, None, "landmarks_to_template", "none"),
}


@dataclass(frozen=True)
class ImportOptions:
    """The contract of the source model (insightface ArcFace defaults)."""

    input_size: tuple[int, int] | None = None  # None: read from the graph
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channel_order: str = "RGB"
    layout: str = "nchw"
    output: str | None = None
    distance: str = "cosine"
    threshold: float | None = None
    template: str = "arcface"


@dataclass(frozen=True)
class ImportReport:
    path: Path
    architecture: str
    contract: FaceContract
    source_opset: int
    opset: int
    rewritten_reshapes: list[str]
    max_abs_diff: float
    min_cosine: float
    source_batch: int = 1
    folds: tuple[str, ...] = ()

    def summary(self) -> str:
        c = self.contract
        lines = [
            f"imported {self.architecture} -> {self.path}",
            f"  input {c.input_size[0]}x{c.input_size[1]} {c.channel_order} NCHW, (x - {_fmt(c.mean)}) / {_fmt(c.std)}; "
            f"{c.embedding_size}-d embedding compared by {c.distance}; template {c.alignment}",
            f"  opset {self.source_opset} -> {self.opset}; dynamic batch" + (
                f" (Reshape {', '.join(self.rewritten_reshapes)} rewritten from a hard-coded batch)" if self.rewritten_reshapes else ""),
            *([f"  folded: {', '.join(self.folds)}"] if self.folds else []),
            f"  verified: vs the source model max |diff| {self.max_abs_diff:.2e}, min cosine {self.min_cosine:.7f}; "
            f"batch of {VERIFY_BATCH} equals " + ("single runs" if self.source_batch == 1 else f"the source's runs of {self.source_batch}")
            + "; PyTorch form equal",
        ]
        return "\n".join(lines)


def _fmt(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else ",".join(f"{v:g}" for v in values)


def _refuse(path: Path, why: str) -> QfsdkError:
    return QfsdkError(f"{path}: {why}; no file written")


def _load(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model and the sha256 of its file, read once."""
    if not path.is_file():
        raise _refuse(path, "no such file")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
        load_external_data_for_model(proto, str(path.parent))  # weights stored beside the file, if any
        return proto, hashlib.sha256(data).hexdigest()
    except Exception as exc:  # noqa: BLE001 -- onnx raises DecodeError, ValueError, OSError...
        raise _refuse(path, f"not an ONNX model ({type(exc).__name__}); pass the .onnx file of a face embedder") from None


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _image_input(proto: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        shapes = ", ".join(f"{i.name} {_dims(i)}" for i in inputs) or "none"
        raise _refuse(path, f"not a face embedder: expected one image input (N, C, H, W) or (N, H, W, C), got {shapes}")
    return inputs[0]


def _dims(info: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param or "?" for d in info.type.tensor_type.shape.dim]


def _embedding_output(proto: onnx.ModelProto, name: str | None, path: Path) -> onnx.ValueInfoProto:
    outputs = list(proto.graph.output)
    if name is not None:
        chosen = [o for o in outputs if o.name == name]
        if not chosen:
            raise _refuse(path, f"no output {name!r} (outputs: {', '.join(o.name for o in outputs)})")
    else:
        chosen = [o for o in outputs if len(o.type.tensor_type.shape.dim) == 2]
        if len(chosen) != 1:
            listed = ", ".join(f"{o.name} {_dims(o)}" for o in outputs)
            raise _refuse(path, f"not a face embedder: expected one 2-D (N, D) output, got {listed}; name it with --output")
    del proto.graph.output[:]
    proto.graph.output.extend(chosen)
    return chosen[0]


def _upgrade(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    if _opset(proto) >= MIN_OPSET:
        return proto
    try:
        return version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 -- the converter raises bare RuntimeErrors per op
        raise _refuse(path, f"cannot upgrade opset {_opset(proto)} to {MIN_OPSET} ({str(exc).splitlines()[0]})") from None


def _to_nchw(proto: onnx.ModelProto) -> None:
    """Put a Transpose in front so the graph takes NCHW like every qfsdk model."""
    info = proto.graph.input[0]
    n, h, w, c = info.type.tensor_type.shape.dim
    original = info.name
    nchw = onnx.helper.make_tensor_value_info(original + "_nchw", info.type.tensor_type.elem_type, [n.dim_value or None, c.dim_value, h.dim_value, w.dim_value])
    for node in proto.graph.node:
        node.input[:] = [original + "_nhwc" if name == original else name for name in node.input]
    proto.graph.node.insert(0, onnx.helper.make_node("Transpose", [nchw.name], [original + "_nhwc"], perm=[0, 2, 3, 1], name="qfsdk_nchw_to_nhwc"))
    del proto.graph.input[:]
    proto.graph.input.append(nchw)


def _dynamic_batch(proto: onnx.ModelProto) -> None:
    for info in (proto.graph.input[0], proto.graph.output[0]):
        dim = info.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH
    del proto.graph.value_info[:]  # shapes inferred for batch 1 would contradict the dynamic batch


def _source_batch(proto: onnx.ModelProto) -> int:
    """The batch the source runs at (its fixed one, else 1), set on the input so that shapes fold."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_value:
        dim.Clear()
        dim.dim_value = 1
        del proto.graph.value_info[:]  # shapes exported for the symbolic batch
    return dim.dim_value


def _batch_reshapes(proto: onnx.ModelProto, path: Path, batch: int) -> list[str]:
    """Rewrite Reshape targets whose first entry hard-codes the source's ``batch`` (the data's first axis
    is the symbolic batch) to 0 (copy it); a shape computed at run time is left alone."""
    inferred = shape_inference.infer_shapes(proto)
    first_dim = {i.name: i.type.tensor_type.shape.dim[0] for i in list(inferred.graph.value_info) + list(inferred.graph.input)
                 if i.type.tensor_type.shape.dim}
    constants = {i.name: i for i in proto.graph.initializer}
    rewritten = []
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
        dim = first_dim.get(node.input[0])
        if dim is None or dim.dim_param != BATCH or shape.ndim != 1 or shape[0] in (0, -1):
            continue
        if shape[0] != batch:
            raise _refuse(path, f"Reshape {node.name or node.output[0]} fixes the batch axis to {shape[0]}")
        fixed = shape.copy()
        fixed[0] = 0
        name = f"{node.input[1]}_dynamic_batch"
        proto.graph.initializer.append(numpy_helper.from_array(fixed, name))
        node.input[1] = name
        rewritten.append(node.name or node.output[0])
    return rewritten


def _fold_decompositions(proto: onnx.ModelProto) -> list[str]:
    """Decomposed PReLUs back to PRelu, then NHWC Transposes that cancel removed; what was done, in words."""
    done = [f"{what}: {count}" for what, count in (("decomposed PReLUs -> PRelu", fold_prelus(proto)),
                                                 ("PRelus moved ahead of a Transpose", hoist_prelus(proto)),
                                                 ("cancelling Transpose pairs removed", cancel_transposes(proto))) if count]
    return done


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _verify(source: onnx.ModelProto, imported: onnx.ModelProto, options: ImportOptions, output: str, path: Path,
            source_batch: int) -> tuple[float, float]:
    """(max |diff|, min cosine) of the imported graph vs the source on random pixels normalised as the
    contract says, the source run at its batch (one image, or its fixed batch: the last run padded with
    zeros); the imported graph's batch must equal those runs and the PyTorch form the ONNX one."""
    import torch

    from qfsdk.models.onnx_graph import to_torch

    _, height, width = [d.dim_value for d in imported.graph.input[0].type.tensor_type.shape.dim[1:]]
    pixels = np.random.default_rng(0).integers(0, 256, size=(VERIFY_BATCH, 3, height, width)).astype(np.float32)
    noise = FaceContract(input_size=(height, width), embedding_size=1, mean=options.mean, std=options.std)
    batch = noise.normalise(pixels)  # random pixels, taken as already in the model's channel order
    layout = options.layout
    source_session, session = _session(source), _session(imported)
    src_input = source_session.get_inputs()[0].name
    runs = []
    for start in range(0, VERIFY_BATCH, source_batch):
        images = batch[start:start + source_batch]
        fed = np.concatenate([images, np.zeros((source_batch - len(images), *images.shape[1:]), np.float32)])
        fed = fed.transpose(0, 2, 3, 1) if layout == "nhwc" else fed
        runs.append(source_session.run([output], {src_input: np.ascontiguousarray(fed)})[0][:len(images)])
    expected = np.concatenate(runs)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure below is reported as a refusal, not logged too
    try:
        got = session.run(None, {session.get_inputs()[0].name: batch}, quiet)[0]
    except Exception as exc:  # noqa: BLE001 -- ONNX Runtime raises Fail, RuntimeException, InvalidArgument...
        why = str(exc).split("Status Message: ")[-1].splitlines()[0]
        raise _refuse(path, f"a batch of {VERIFY_BATCH} fails ({why}): the graph fixes the batch where the import cannot "
                            "rewrite it") from None
    if got.shape != expected.shape:
        raise _refuse(path, f"a batch of {VERIFY_BATCH} gives outputs of shape {got.shape}, single runs {expected.shape}: "
                            "the graph mixes the batch axis (a hard-coded batch the import cannot rewrite)")
    cosine = float(cosine_similarities(got, expected).min())
    diff = float(np.abs(got - expected).max())
    if cosine < MIN_COSINE:
        raise _refuse(path, f"the normalised graph differs from the source (min cosine {cosine:.6f}, batch vs single runs)")
    module = to_torch(imported)
    with torch.no_grad():
        torch_out = module(torch.from_numpy(batch)).numpy()
    if float(cosine_similarities(torch_out, got).min()) < MIN_COSINE:
        raise _refuse(path, "its PyTorch form computes something else (an op converted wrongly): please report the model")
    return diff, cosine


def _contract(options: ImportOptions, input_size: tuple[int, int], embedding_size: int) -> FaceContract:
    points, size, fit, alignment = IMPORT_TEMPLATES[options.template]
    template = None
    if points is not None:
        sy, sx = input_size[0] / size[0], input_size[1] / size[1]
        template = tuple((round(x * sx, 4), round(y * sy, 4)) for x, y in points)
    return FaceContract(input_size=input_size, embedding_size=embedding_size, mean=options.mean, std=options.std,
                        channel_order=options.channel_order, alignment=alignment, distance=options.distance,
                        threshold=options.threshold, template=template, template_fit=fit)


def import_onnx(source: str | Path, output: str | Path, options: ImportOptions = ImportOptions()) -> ImportReport:
    """Normalise, verify and write ``source`` as a qfsdk float model at ``output`` (see the module docstring)."""
    from qfsdk.models.onnx_graph import unsupported_ops

    path, output = Path(source), Path(output)
    if options.template not in IMPORT_TEMPLATES:
        raise QfsdkError(f"unknown template {options.template!r}; choose {', '.join(IMPORT_TEMPLATES)}")
    original, source_sha256 = _load(path)
    source_opset = _opset(original)
    proto = onnx.ModelProto()
    proto.CopyFrom(original)
    image = _image_input(proto, path)
    embedding = _embedding_output(proto, options.output, path)
    batch = _source_batch(proto)
    fold_constants(proto)  # at the source's batch: shapes computed from it fold too
    unsupported = unsupported_ops(proto)
    if unsupported:
        raise _refuse(path, f"op types the SDK cannot represent: {', '.join(unsupported)}")
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim]
    channels, height, width = (dims[3], dims[1], dims[2]) if options.layout == "nhwc" else dims[1:]
    if channels != 3 or not height or not width:
        raise _refuse(path, f"expected a 3-channel image input of fixed size ({options.layout}), got {_dims(image)}; "
                            "check --layout")
    if options.input_size is not None and tuple(options.input_size) != (height, width):
        raise _refuse(path, f"--input-size {options.input_size[0]}x{options.input_size[1]} but the graph takes {height}x{width}")
    proto = _upgrade(proto, path)
    if options.layout == "nhwc":
        _to_nchw(proto)
    _dynamic_batch(proto)
    rewritten = _batch_reshapes(proto, path, batch)
    folds = _fold_decompositions(proto)
    remove_unused_initializers(proto)
    onnx.checker.check_model(proto)
    diff, cosine = _verify(original, proto, options, embedding.name, path, batch)
    embedding_size = _session(proto).run(None, {proto.graph.input[0].name: np.zeros((1, 3, height, width), np.float32)})[0].shape[1]
    contract = _contract(options, (height, width), int(embedding_size))
    architecture = IMPORTED_PREFIX + path.stem
    add_metadata(proto, contract, architecture, {"qfsdk.source_sha256": source_sha256})
    with atomic_output(output) as tmp:
        onnx.save(proto, str(tmp))
    return ImportReport(output, architecture, contract, source_opset, _opset(proto), rewritten, diff, cosine, batch, tuple(folds))
