"""Issue 15, point 4: the runtime, the C ABI and `qfsdk embed --ray` run an imported model's exports unchanged.

A real trained face embedder (tests/real_models.py) goes through `qfsdk import` -> `calibrate
--synthetic` (tiny counts: this checks the deployment path, not the fidelity) -> `convert` (the
default tensorrt target). The files that come out carry their contract in their metadata and
nothing else is given to the consumers: libqfsdk (the C ABI, OpenVINO) and `qfsdk embed --ray` must
embed the real aligned crops exactly as the Python runtime does on the same backend.

The C ABI tests skip, as tests/test_native.py does, where no C/C++ compiler, CMake or OpenVINO
development files are present; the Ray tests skip without ray, ray.data or pyarrow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from import_support import CONTRACTS, contract_of, cosines, ok, run_cli  # pytest puts tests/ on sys.path
from real_models import REAL_MODELS, arcface_crops

MIN_COSINE = 0.9999  # same file, same backend (or the C ABI's OpenVINO vs Python's): only float summation order differs
RAY_SHARD_SIZE = 8  # the 20 crops make 3 shards, the last one short


def python_embeddings(path: Path, crops: np.ndarray, backend: str, **options) -> np.ndarray:
    from qfsdk.runtime import Embedder

    with Embedder(path, backend, **options) as embedder:
        return embedder.embed(crops)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crop_array() -> np.ndarray:
    """Every real ArcFace-aligned face, uint8 RGB (N, 112, 112, 3), sorted by name."""
    crops = arcface_crops()
    assert len(crops) >= 10
    return np.stack([crop for _, crop in crops])


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory, crop_array) -> Path:
    """The crops as PNG files (lossless), named so that sorted order is the crops' order."""
    folder = tmp_path_factory.mktemp("crops")
    for index, crop in enumerate(crop_array):
        Image.fromarray(crop).save(folder / f"{index:02d}.png")
    return folder


@pytest.fixture(scope="module", params=["fr_feature", "sface"])
def exported(request, tmp_path_factory) -> dict[str, Path]:
    """{"float": the `qfsdk import` output, "w8a8": its synthetic-data W8A8 checkpoint converted} of a real model.

    The checkpoint converts after the imported ONNX is deleted, so the Q/DQ file is all the consumers see.
    """
    model = REAL_MODELS[request.param]
    work = tmp_path_factory.mktemp(f"runtime-{model.name}")
    imported = work / f"{model.name}.onnx"
    mean, std = CONTRACTS[model.name]
    ok(run_cli("import", model.onnx(), "-o", imported, "--mean", mean, "--std", std))
    standalone = work / "gone" / imported.name
    standalone.parent.mkdir()
    shutil.copyfile(imported, standalone)
    checkpoint = work / "q.safetensors"
    ok(run_cli("calibrate", "--synthetic", "--model", standalone, "--bits", "w8a8", "--num-images", 4, "--iterations", 5,
               "-o", checkpoint))
    shutil.rmtree(standalone.parent)
    quantized = work / "q.onnx"
    ok(run_cli("convert", checkpoint, "-o", quantized))  # default target: tensorrt
    assert contract_of(quantized) == contract_of(imported)
    return {"model": model, "float": imported, "w8a8": quantized}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance (2 CPUs) for this module's --ray tests only."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("pyarrow.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- C ABI


@pytest.mark.parametrize("kind", ["float", "w8a8"])
def test_c_abi_reads_the_contract_from_the_metadata(lib, exported, kind):
    path, model = exported[kind], exported["model"]
    with lib.embedder(path, num_threads=1) as emb:
        assert (emb.input_size, emb.embedding_size, emb.backend) == ((112, 112), model.embedding_size, "openvino")
        native = json.loads(emb.contract_json)
    written = contract_of(path)
    for key in ("input_size", "mean", "std", "channel_order", "embedding_size", "alignment", "template"):
        assert native[key] == written[key], key
    assert native["mean"] == [float(CONTRACTS[model.name][0])] * 3


@pytest.mark.parametrize("kind", ["float", "w8a8"])
@pytest.mark.parametrize("options", [{}, {"flip": True, "normalize": True}], ids=["plain", "flip-normalize"])
def test_c_abi_embeds_real_crops_like_the_python_runtime(lib, exported, crop_array, kind, options):
    path = exported[kind]
    expected = python_embeddings(path, crop_array, "openvino", threads=1, **options)
    with lib.embedder(path, num_threads=1, batch_hint=8, **options) as emb:
        native = emb.embed_aligned(crop_array)
        single = np.concatenate([emb.embed_aligned(crop) for crop in crop_array[:3]])
    assert native.shape == expected.shape == (len(crop_array), exported["model"].embedding_size)
    assert cosines(native, expected).min() >= MIN_COSINE
    assert cosines(single, native[:3]).min() >= MIN_COSINE  # one crop a call equals the batch's rows


# ---------------------------------------------------------------------------------------------- embed --ray


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_ray_gallery_of_the_w8a8_export_equals_the_python_runtime(local_ray, exported, crops_dir, crop_array, backend,
                                                                  tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    path, out = exported["w8a8"], tmp_path / "gallery"
    output = ok(run_cli("embed", path, crops_dir, "--ray", "--backend", backend, "--actors", 2, "--shard-size",
                        RAY_SHARD_SIZE, "-o", out))
    shards = -(-len(crop_array) // RAY_SHARD_SIZE)
    assert f"embedded {len(crop_array)} of {len(crop_array)} images into {shards} shards ({shards} computed" in output
    from qfsdk.runtime.distributed import read_gallery, read_gallery_errors

    paths, embeddings = read_gallery(out)
    assert [Path(p).name for p in paths] == sorted(p.name for p in crops_dir.iterdir())
    assert read_gallery_errors(out) == []
    expected = python_embeddings(path, crop_array, backend, threads=1)
    assert embeddings.shape == expected.shape == (len(crop_array), exported["model"].embedding_size)
    assert cosines(embeddings, expected).min() >= MIN_COSINE
