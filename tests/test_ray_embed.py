"""`qfsdk embed --ray` on a local Ray instance: exact once-only output, parity with `qfsdk embed`, resumability."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from face_photos import face_chips  # noqa: E402
from qfsdk.cli import main  # noqa: E402
from qfsdk.runtime.distributed import embed_gallery, read_gallery, read_gallery_errors  # noqa: E402

IMAGES = 300
SHARD_SIZE = 64
RAY_ARGS = ("--aligned", "--backend", "onnxruntime", "--ray", "--actors", "2", "--shard-size", str(SHARD_SIZE))


pytestmark = pytest.mark.usefixtures("local_ray")  # conftest: one local instance for the session


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """MobileFaceNet with seeded random weights, float ONNX: small and fast."""
    import torch

    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create, get_spec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "mobilefacenet.onnx"
    return export_float(create("mobilefacenet"), path, get_spec("mobilefacenet").contract, "mobilefacenet")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """300 perturbed face crops in two folders (112x112, some 150x150 or grayscale) and one corrupt file."""
    root = tmp_path_factory.mktemp("faces")
    chips = face_chips(6)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        noisy = np.clip(chips[i % len(chips)] + rng.integers(-8, 9, chips[0].shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        image = image if i % 50 == 7 else image.resize((112, 112))  # 150x150: resized like `qfsdk embed` does
        image = image.convert("L") if i % 50 == 11 else image
        folder = root / ("a" if i % 3 else "b")
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{i:04d}.png")
    (root / "b" / "0100_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


@pytest.fixture(scope="module")
def single(model, faces, tmp_path_factory) -> dict[str, np.ndarray]:
    """The single-process `qfsdk embed` output."""
    out = tmp_path_factory.mktemp("single") / "e.npz"
    result = run_embed(model, faces, "--aligned", "--backend", "onnxruntime", "-o", out)
    assert result.exit_code == 0, result.output
    return dict(np.load(out))


@pytest.fixture(scope="module")
def gallery(model, faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gallery") / "out"
    result = run_embed(model, faces, *RAY_ARGS, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"embedded {IMAGES} of {IMAGES + 1} images into 5 shards (5 computed, 0 already written)" in result.output
    assert "skipped 1 unreadable" in result.output and "0100_corrupt.png" in result.output
    assert "converted 6 grayscale to RGB" in result.output and "resized 6 crops" in result.output
    return out


def run_embed(*args: object):
    return CliRunner().invoke(main, ["embed", *map(str, args)])


def assert_exact(out: Path, single: dict[str, np.ndarray]) -> None:
    """Every input exactly once (in shards or the error table) and the embeddings of `qfsdk embed`."""
    paths, embeddings = read_gallery(out)
    assert paths == list(single["paths"])
    np.testing.assert_allclose(embeddings, single["embeddings"], rtol=0, atol=1e-5)
    indices = [i for f in sorted(out.glob("**/shard-*.parquet")) for i in pq.read_table(f, columns=["index"])["index"].to_pylist()]
    assert sorted(indices) == list(range(IMAGES + 1))


def test_every_input_once_with_the_single_process_embeddings(gallery, single):
    assert_exact(gallery, single)
    [(path, error)] = read_gallery_errors(gallery)
    assert path.endswith("b/0100_corrupt.png") and "cannot identify image file" in error
    assert len(list((gallery / "errors").iterdir())) == 1


def test_rerun_recomputes_only_a_missing_shard(model, faces, gallery, single):
    (gallery / "shard-00002.parquet").unlink()
    before = {f.name: f.stat().st_mtime_ns for f in gallery.glob("shard-*.parquet")}
    result = run_embed(model, faces, *RAY_ARGS, "-o", gallery)
    assert result.exit_code == 0, result.output
    assert "(1 computed, 4 already written)" in result.output
    assert {f.name: f.stat().st_mtime_ns for f in gallery.glob("shard-*.parquet") if f.name in before} == before
    assert_exact(gallery, single)


def test_rerun_with_other_settings_is_refused(model, faces, gallery):
    before = sorted(p.name for p in gallery.iterdir())
    result = run_embed(model, faces, *RAY_ARGS[:-1], "32", "--normalize", "-o", gallery)
    assert result.exit_code == 1 and "holds a gallery made with other settings" in result.output
    assert "shard_size 64 -> 32" in result.output and "'normalize': True" in result.output
    assert sorted(p.name for p in gallery.iterdir()) == before


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's workers in /proc")
def test_a_killed_worker_s_shard_is_recomputed(model, faces, single, tmp_path):
    out, box = tmp_path / "out", {}
    run = threading.Thread(target=lambda: box.update(result=embed_gallery(
        model, [faces], out, actors=2, shard_size=16, backend="onnxruntime", aligned=True)))  # fmt: skip
    run.start()
    while run.is_alive() and not list(out.glob("shard-*.parquet")):
        time.sleep(0.01)
    os.kill(ray_actor_pids("ShardEmbedder", busy=True)[0], signal.SIGKILL)
    written_before_the_kill = len(list(out.glob("shard-*.parquet")))
    run.join(timeout=120)
    assert written_before_the_kill < 19 and box["result"].computed == box["result"].shards == 19
    assert_exact(out, single)


def test_photos_are_refused_before_any_shard_without_aligned(model, faces, tmp_path):
    result = run_embed(model, faces, *RAY_ARGS[1:], "-o", tmp_path / "out")
    assert result.exit_code == 1 and "6 of 301 images are not 112x112 aligned crops" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_without_ray_the_flag_says_how_to_install_it(model, faces, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run_embed(model, faces, "--ray", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "pip install 'qfsdk[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_ray_options_need_ray_and_a_path_is_not_an_address(model, faces, tmp_path):
    result = run_embed(model, faces, "--shard-size", "10", "-o", tmp_path / "e.npz")
    assert result.exit_code == 2 and "--shard-size: only with --ray" in result.output
    result = run_embed(model, faces, "--ray", faces, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "put --ray after PATHS" in result.output


def ray_actor_pids(name: str, busy: bool = False) -> list[int]:
    """Processes whose title (Ray sets it to ``ray::<actor class>[.method]``) names ``name``; ``busy``: past ``__init__``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if name.encode() in title and not (busy and b"__init__" in title):
            pids.append(int(proc.name))
    return pids
