"""`qfsdk embed --detect --ray` on a local Ray instance: the faces and embeddings of `qfsdk embed --detect`,
photos without a face listed, unreadable ones in the error table, resumable, settings pinned."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from face_photos import face_photo_dir  # noqa: E402
from import_support import CONTRACTS, ok, run_cli  # noqa: E402
from real_models import REAL_MODELS, photo_paths  # noqa: E402
from qfsdk.cli import main  # noqa: E402
from qfsdk.runtime.distributed import read_gallery, read_gallery_errors, read_gallery_faces  # noqa: E402

SHARD_SIZE = 4
RAY_ARGS = ("--backend", "onnxruntime", "--ray", "--actors", "2", "--shard-size", str(SHARD_SIZE))


pytestmark = pytest.mark.usefixtures("local_ray")  # conftest: one local instance for the session


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """OpenCV's SFace through `qfsdk import` (ArcFace template)."""
    out = tmp_path_factory.mktemp("ray-sface") / "sface.onnx"
    mean, std = CONTRACTS["sface"]
    ok(run_cli("import", REAL_MODELS["sface"].onnx(), "-o", out, "--mean", mean, "--std", std))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The registry photos (t1.jpg: six faces), a wall without a face and a corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    for path in photo_paths():
        (root / path.name).write_bytes(path.read_bytes())
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(root / "wall.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    assert face_photo_dir()  # the photos are cached
    return root


@pytest.fixture(scope="module")
def single(model, photos, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("single") / "e.npz"
    result = run_embed(model, photos, "--backend", "onnxruntime", "--detect", "-o", out)
    assert result.exit_code == 0, result.output
    return dict(np.load(out))


def run_embed(*args: object):
    return CliRunner().invoke(main, ["embed", *map(str, args)])


def assert_same_faces(out: Path, single: dict[str, np.ndarray]) -> None:
    paths, embeddings = read_gallery(out)
    assert paths == list(single["paths"])
    np.testing.assert_allclose(embeddings, single["embeddings"], rtol=0, atol=1e-5)
    faces = read_gallery_faces(out)
    np.testing.assert_array_equal(faces["boxes"], single["boxes"])
    np.testing.assert_array_equal(faces["landmarks"], single["landmarks"])
    np.testing.assert_array_equal(faces["scores"], single["scores"])
    t1 = [k for k, p in enumerate(paths) if p.endswith("t1.jpg")]
    assert faces["face"][t1].tolist() == list(range(6))


def test_every_face_once_with_the_single_process_results(model, photos, single, tmp_path):
    out = tmp_path / "gallery"
    result = run_embed(model, photos, *RAY_ARGS, "--detect", "-o", out)
    assert result.exit_code == 0, result.output
    images = len(list(photos.iterdir()))
    shards = -(-images // SHARD_SIZE)
    faces = len(single["paths"])
    assert f"embedded {faces} faces of {images} images into {shards} shards ({shards} computed, 0 already written)" in result.output
    assert "found no face in 1" in result.output and "wall.png" in result.output
    assert "skipped 1 unreadable" in result.output and "broken.jpg" in result.output
    assert_same_faces(out, single)
    assert [Path(p).name for p, _ in read_gallery_errors(out)] == ["broken.jpg"]
    assert [Path(p).name for p in pq.read_table(next((out / "no_face").glob("*.parquet")))["path"].to_pylist()] == ["wall.png"]

    first = out / "shard-00000.parquet"
    first.unlink()  # a rerun finishes only the missing shard
    again = run_embed(model, photos, *RAY_ARGS, "--detect", "-o", out)
    assert again.exit_code == 0 and f"({1} computed, {shards - 1} already written)" in again.output, again.output
    assert_same_faces(out, single)

    other = run_embed(model, photos, *RAY_ARGS, "--detect", "largest", "-o", out)
    assert other.exit_code == 1 and "other settings" in other.output and "detect" in other.output
    crops = run_embed(model, photos, *RAY_ARGS, "--aligned", "-o", out)  # as crops: other settings than detection
    assert crops.exit_code == 1 and "other settings" in crops.output


def test_largest_keeps_one_face_per_photo(model, photos, tmp_path):
    out = tmp_path / "largest"
    result = run_embed(model, photos, *RAY_ARGS, "--detect", "largest", "--detect-size", "0", "-o", out)
    assert result.exit_code == 0, result.output
    paths, _ = read_gallery(out)
    assert len(paths) == len(set(paths)) >= 10 and str(photos / "t1.jpg") in paths and str(photos / "wall.png") not in paths
    assert read_gallery_faces(out)["face"].tolist() == [0] * len(paths)


def test_detect_options_need_detect(photos, tmp_path):
    result = run_embed(photos / "t1.jpg", photos, *RAY_ARGS, "--detect-size", "320", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--detect-size: only with --detect" in result.output
