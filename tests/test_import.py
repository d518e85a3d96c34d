"""`qfsdk import` as a user runs it: two real trained face embedders in, the whole pipeline on them.

The models are OpenCV's SFace and faceplugin's MobileFaceNet ``fr_feature`` (tests/real_models.py,
fetched from their registries into the test cache), scored on the real ArcFace-aligned crops of the
registry photos. Everything goes through the command line (CliRunner, or a subprocess where the
exact stderr matters) and files on disk; references run the SOURCE files on ONNX Runtime directly.
The synthetic-data counts are tiny: these tests check that the pipeline runs and stays sane, the
fidelity of a real calibration is the benchmark's job.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from import_support import CONTRACTS, contract_of, cosines, ok, run_cli  # pytest puts tests/ on sys.path
from real_models import REAL_MODELS, arcface_crops

QFSDK = [sys.executable, "-m", "qfsdk"]
EXACT = 0.99999  # float import vs source, PyTorch form vs ONNX Runtime
PIPELINE_SANITY = 0.9  # W8A8 from 4 synthetic images vs float: loose on purpose


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # SFace lists its weights among its inputs: one warning each
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crops() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB 112x112 crop) of every real face."""
    found = arcface_crops()
    assert len(found) >= 10
    return found


@pytest.fixture(scope="module")
def crop_array(crops) -> np.ndarray:
    return np.stack([crop for _, crop in crops])


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory, crops) -> Path:
    """The crops as PNG files, named so that sorted order is the crops' order."""
    folder = tmp_path_factory.mktemp("crops")
    for index, (name, crop) in enumerate(crops):
        Image.fromarray(crop).save(folder / f"{index:02d}_{name}.png")
    return folder


@pytest.fixture(scope="module", params=["sface", "fr_feature"])
def imported(request, tmp_path_factory):
    """(real model, source path, imported float ONNX, `qfsdk import` output) of each real model."""
    model = REAL_MODELS[request.param]
    source = model.onnx()
    out = tmp_path_factory.mktemp(f"import-{model.name}") / f"{model.name}.onnx"
    mean, std = CONTRACTS[model.name]
    output = ok(run_cli("import", source, "-o", out, "--mean", mean, "--std", std))
    return model, source, out, output


@pytest.fixture(scope="module")
def source_embeddings(imported, crop_array) -> np.ndarray:
    """The SOURCE model on ONNX Runtime, one crop a run, preprocessed as its contract says."""
    model, source, _, _ = imported
    sess = session(source)
    return np.concatenate([run_session(sess, model.inputs(crop)) for crop in crop_array])


@pytest.fixture(scope="module")
def float_embeddings(imported, crop_array) -> np.ndarray:
    """The imported float model through the runtime (contract read from its metadata)."""
    from qfsdk.runtime import Embedder

    with Embedder(imported[2], "onnxruntime") as embedder:
        return embedder.embed(crop_array)


@pytest.fixture(scope="module")
def w8a8_onnx(imported, tmp_path_factory) -> Path:
    """calibrate --synthetic on a copy of the import -> the copy deleted -> convert the checkpoint."""
    model, _, path, _ = imported
    work = tmp_path_factory.mktemp(f"w8a8-{model.name}")
    standalone = work / "gone" / path.name
    standalone.parent.mkdir()
    shutil.copyfile(path, standalone)
    checkpoint = work / "q.safetensors"
    ok(run_cli("calibrate", "--synthetic", "--model", standalone, "--bits", "w8a8", "--num-images", 4, "--iterations", 5,
               "-o", checkpoint))
    shutil.rmtree(standalone.parent)  # the checkpoint must stand alone
    out = work / "q.onnx"
    output = ok(run_cli("convert", checkpoint, "-o", out))
    assert out.is_file(), output
    return out


# ---------------------------------------------------------------------------------------------- import


def test_import_reports_the_contract(imported):
    model, _, path, output = imported
    assert path.is_file()
    assert str(path) in output
    assert f"{model.embedding_size}-d" in output
    assert "Traceback" not in output


def test_float_import_equals_the_source_on_every_real_crop(imported, source_embeddings, float_embeddings):
    model = imported[0]
    assert float_embeddings.shape == (len(source_embeddings), model.embedding_size)
    assert cosines(float_embeddings, source_embeddings).min() >= EXACT


def test_batch_of_eight_equals_eight_single_runs(imported, crop_array):
    model, _, path, _ = imported
    sess = session(path)
    batch = np.concatenate([model.inputs(crop) for crop in crop_array[:8]])
    together = run_session(sess, batch)
    alone = np.concatenate([run_session(sess, image[None]) for image in batch])
    assert together.shape == alone.shape == (8, model.embedding_size)
    assert cosines(together, alone).min() >= EXACT
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4 * np.abs(alone).max())


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_any_batch_gives_one_correct_row_per_image(imported, crop_array, source_embeddings, batch_size):
    """fr_feature's last Reshape hard-codes [1, -1] (a batch of 4 would come back as one 2048-d row)."""
    model, _, path, _ = imported
    batch = np.concatenate([model.inputs(crop) for crop in crop_array[:batch_size]])
    out = run_session(session(path), batch)
    assert out.shape == (batch_size, model.embedding_size)
    assert cosines(out, source_embeddings[:batch_size]).min() >= EXACT


def test_import_normalises_the_graph_and_records_the_contract(imported):
    model, _, path, _ = imported
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13  # per-axis DequantizeLinear
    initializers = {i.name for i in proto.graph.initializer}
    assert [i.name for i in proto.graph.input if i.name in initializers] == []  # SFace listed its weights
    assert len(proto.graph.input) == 1 and len(proto.graph.output) == 1
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch
    mean, std = (float(v) for v in CONTRACTS[model.name])
    contract = contract_of(path)
    assert contract["mean"] == [mean] * 3 and contract["std"] == [std] * 3
    assert contract["embedding_size"] == model.embedding_size
    assert contract["input_size"] == [112, 112] and contract["channel_order"] == "RGB"
    assert contract["distance"] == "cosine" and contract["alignment"] == "arcface_5pt"


def test_imported_path_is_a_model_name_and_its_pytorch_form_equals_onnx_runtime(imported, crop_array, float_embeddings):
    import qfsdk.models

    model, _, path, _ = imported
    net = qfsdk.models.create(str(path))
    assert tuple(net.contract.mean) == (float(CONTRACTS[model.name][0]),) * 3
    assert net.contract.embedding_size == model.embedding_size
    with torch.no_grad():
        out = net(torch.from_numpy(net.contract.preprocess(crop_array))).numpy()
    assert out.shape == float_embeddings.shape
    assert cosines(out, float_embeddings).min() >= EXACT


def _nhwc_bgr_embedder(path: Path) -> Path:
    """A tiny seeded embedder taking (1, 112, 112, 3) BGR: Transpose, Conv, PRelu, pooling, Gemm -> (1, 16)."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 112, 112, 3])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 16])
    initializers = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
        numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "slope"),
        numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c", "slope"], ["p"]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["embedding"], transB=1),
    ]
    graph = helper.make_graph(nodes, "nhwc_bgr", [x], [y], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_nhwc_bgr_source_imports_to_an_nchw_model_the_runtime_feeds_right(tmp_path, crop_array):
    from qfsdk.runtime import Embedder

    source = _nhwc_bgr_embedder(tmp_path / "nhwc.onnx")
    out = tmp_path / "imported.onnx"
    ok(run_cli("import", source, "-o", out, "--layout", "nhwc", "--channel-order", "bgr", "--mean", "127.5",
               "--std", "127.5", "--distance", "euclidean", "--threshold", "0.6", "--template", "none"))
    contract = contract_of(out)
    assert (contract["channel_order"], contract["distance"], contract["threshold"]) == ("BGR", "euclidean", 0.6)
    assert [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 112, 112]
    sess = session(source)
    expected = np.concatenate([run_session(sess, ((crop[..., ::-1].astype(np.float32) - 127.5) / 127.5)[None])
                               for crop in crop_array[:4]])
    with Embedder(out, "onnxruntime") as embedder:
        got = embedder.embed(crop_array[:4])  # RGB crops in: the contract swaps them to BGR
    assert cosines(got, expected).min() >= EXACT
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------- refusals


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def _add_graph(path: Path) -> Path:
    """One Add node, two image-shaped inputs: not a face embedder."""
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 112, 112]) for n in "abc"]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "add", info[:2], info[2:])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _conv_graph(path: Path) -> Path:
    """One image in, a 4-D feature map out: no 2-D embedding."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 55, 55])
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])], "conv", [x], [y], [w])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _resize_graph(path: Path) -> Path:
    """A well-formed embedder (image in, (1, 64) out) with a Resize the SDK cannot represent."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    initializers = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales"),
        numpy_helper.from_array(rng.normal(size=(4, 64)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "resize", [x], [y], initializers)
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert run_session(session(path), np.zeros((1, 3, 112, 112), np.float32)).shape == (1, 64)  # it is valid ONNX
    return path


def _junk(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


REFUSALS = {
    "add-graph": (_add_graph, "not a face embedder"),
    "no-2d-output": (_conv_graph, "2-D"),
    "unsupported-op": (_resize_graph, "Resize"),
    "not-onnx": (_junk, "not an ONNX model"),
    "missing-file": (lambda path: path, "no such file"),
}


def _run_import(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*QFSDK, "import", *map(str, args)], capture_output=True, text=True, timeout=120)


def _assert_one_line_refusal(done: subprocess.CompletedProcess, source: Path, *needles: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert source.name in lines[0]
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_in_one_line_and_nothing_written(case, tmp_path):
    make, reason = REFUSALS[case]
    source = make(tmp_path / f"{case}.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out" / "imported.onnx"
    done = _run_import(source, "-o", out, "--mean", "0", "--std", "1")
    _assert_one_line_refusal(done, source, reason)
    assert done.stdout == ""
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "out") == before  # no temporary left either


def _same_file(tmp_path: Path) -> tuple[Path, bytes]:
    source = tmp_path / "model.onnx"
    shutil.copyfile(REAL_MODELS["fr_feature"].onnx(), source)
    return source, source.read_bytes()


def test_output_equal_to_the_source_is_refused_and_the_source_kept(tmp_path):
    source, data = _same_file(tmp_path)
    done = _run_import(source, "-o", tmp_path / "." / "model.onnx", "--mean", "127", "--std", "128")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "is also an input" in done.stderr and source.name in done.stderr
    assert source.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_output_equal_to_the_source_is_a_one_line_user_error(tmp_path):
    source, _ = _same_file(tmp_path)
    done = _run_import(source, "-o", source, "--mean", "127", "--std", "128")
    _assert_one_line_refusal(done, source, "is also an input")


def test_an_onnx_that_was_not_imported_is_no_model_name(tmp_path):
    source = REAL_MODELS["fr_feature"].onnx()
    result = run_cli("calibrate", "--synthetic", "--model", source, "--num-images", 1, "-o", tmp_path / "q.safetensors")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "import it first" in result.output and str(source) in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- pipeline


def test_w8a8_from_synthetic_data_converts_checks_and_embeds(imported, w8a8_onnx, crops_dir, crop_array, float_embeddings,
                                                            tmp_path):
    model = imported[0]
    ok(run_cli("check", w8a8_onnx))  # the default target is tensorrt
    assert contract_of(w8a8_onnx)["embedding_size"] == model.embedding_size
    out = tmp_path / "emb.npz"
    output = ok(run_cli("embed", w8a8_onnx, crops_dir, "--aligned", "-o", out))
    assert f"embedded {len(crop_array)} of {len(crop_array)}" in output
    with np.load(out) as saved:
        embeddings, paths = saved["embeddings"], [Path(p).name for p in saved["paths"]]
    assert paths == sorted(p.name for p in crops_dir.iterdir())
    assert embeddings.shape == (len(crop_array), model.embedding_size)
    assert np.isfinite(embeddings).all()
    assert cosines(embeddings, float_embeddings).min() > PIPELINE_SANITY


def test_w6a6_qat_on_the_folded_mobilefacenet_writes_a_checkpoint_that_converts(tmp_path, crop_array):
    """fr_feature has its BatchNorm folded away: synthesis cannot use BatchNorm statistics."""
    source = REAL_MODELS["fr_feature"].onnx()
    standalone = tmp_path / "gone" / "fr_feature.onnx"
    standalone.parent.mkdir()
    ok(run_cli("import", source, "-o", standalone, "--mean", "127", "--std", "128"))
    checkpoint = tmp_path / "w6.safetensors"
    ok(run_cli("qat", "--model", standalone, "--data", "synthetic", "--bits", "w6a6", "--steps", 2, "--num-images", 4,
               "--iterations", 5, "--batch-size", 4, "-o", checkpoint))
    assert checkpoint.is_file()
    shutil.rmtree(standalone.parent)
    out = tmp_path / "w6.onnx"
    ok(run_cli("convert", checkpoint, "-o", out))
    ok(run_cli("check", out))
    from qfsdk.runtime import Embedder

    with Embedder(out, "onnxruntime") as embedder:
        embeddings = embedder.embed(crop_array[:4])
    assert embeddings.shape == (4, 512) and np.isfinite(embeddings).all()


def test_fp32_convert_of_an_import_runs_on_the_runtime(imported, crop_array, float_embeddings, tmp_path):
    from qfsdk.runtime import Embedder

    model, _, path, _ = imported
    out = tmp_path / "f.onnx"
    ok(run_cli("convert", path, "--fp32", "-o", out))
    ok(run_cli("check", out))
    assert contract_of(out)["mean"] == contract_of(path)["mean"]
    with Embedder(out, "onnxruntime") as embedder:
        embeddings = embedder.embed(crop_array)
    assert embeddings.shape == (len(crop_array), model.embedding_size)
    assert cosines(embeddings, float_embeddings).min() >= EXACT


def test_an_insightface_style_iresnet_export_lands_on_the_zoo_iresnet(tmp_path):
    """An iresnet18 with seeded weights, exported as insightface exports it (BatchNorm kept, PRelu, Flatten +
    Gemm + BatchNorm1d head, opset 11), imports onto the zoo's iresnet18 (strict keys) with identical outputs."""
    from qfsdk.models import card_of, create
    from qfsdk.models.iresnet import IResNet

    torch.manual_seed(3)
    original = create("iresnet18")
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for module in original.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    source = tmp_path / "r18.onnx"
    torch.onnx.export(original.eval(), torch.zeros(1, 3, 112, 112), str(source), input_names=["data"], opset_version=11,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    assert {n.op_type for n in onnx.load(str(source)).graph.node} >= {"BatchNormalization", "PRelu", "Flatten", "Gemm"}
    imported = tmp_path / "r18_imported.onnx"
    ok(run_cli("import", str(source), "-o", str(imported)))

    model = create(str(imported))
    assert isinstance(model, IResNet) and card_of(model).architecture == "iresnet18"
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-5)
