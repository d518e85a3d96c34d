"""Photo in, embedding out: detection + alignment + embedding per 640x480 one-face photo, per stage.

    .venv/bin/python benchmarks/photo_pipeline.py [--repeats 30] [--backend openvino] [--threads T] [--out DIR]
        [--mobilefacenet W8A8.onnx] [--dlib W8A8.onnx]

Prints one JSON document: for each model, p50/p90 ms of the whole photo (``Embedder.embed_photos``
with ``max_faces=1``) and of each stage timed separately on the same photo (``FaceDetector.detect``
with the packaged YuNet at its default 640 px, ``align_faces``, ``Embedder.embed`` of the crop),
and each stage's share of the summed stage p50s.

* photo: ``obama2.jpg`` of the registry photos (tests/face_photos.py), centre-cropped to 4:3 and
  resized to 640x480 (one face);
* models, unless given: made with the CLI from real trained networks (tests/real_models.py):
  ``qfsdk import`` faceplugin's MobileFaceNet (``fr_feature.onnx``), and ``dlib_resnet`` from the
  zoo; each ``qfsdk calibrate --synthetic --bits w8a8 --num-images 4 --iterations 5`` then
  ``qfsdk convert`` (tensorrt placement, which OpenVINO runs fastest). The tiny calibration makes
  them speed-representative W8A8 graphs, not accuracy references.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # registry photos and models

QFSDK = [sys.executable, "-m", "qfsdk"]
PHOTO = "obama2.jpg"
SIZE = (640, 480)  # width, height


def cli(*args: object) -> None:
    subprocess.run([*QFSDK, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def w8a8(source: str | Path, work: Path, name: str, import_args: tuple[str, ...] = ()) -> Path:
    """A W8A8 Q/DQ ONNX of a zoo name or (with ``import_args``) an ONNX file imported first."""
    model = str(source)
    if import_args:
        model = str(work / f"{name}_fp32.onnx")
        cli("import", source, "-o", model, *import_args)
    checkpoint, out = work / f"{name}.safetensors", work / f"{name}_w8a8.onnx"
    cli("calibrate", "--synthetic", "--model", model, "--bits", "w8a8", "--num-images", 4, "--iterations", 5, "-o", checkpoint)
    cli("convert", checkpoint, "-o", out)
    return out


def photo() -> np.ndarray:
    from face_photos import face_photo_dir

    image = Image.open(face_photo_dir() / PHOTO).convert("RGB")
    return np.asarray(ImageOps.fit(image, SIZE, method=Image.Resampling.BICUBIC))


def timings(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    fn()
    ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def measure(model: Path, image: np.ndarray, backend: str, threads: int | None, repeats: int) -> dict:
    from qfsdk.runtime import Embedder
    from qfsdk.runtime.detect import FaceDetector
    from qfsdk.runtime.photos import align_faces

    with Embedder(model, backend, threads=threads) as embedder, FaceDetector(backend=embedder.backend_name,
                                                                              threads=threads) as detector:
        faces = detector.detect(image).select(1, largest=True)
        assert len(faces) == 1, f"{PHOTO}: expected one face, found {len(faces)}"
        crops, _ = align_faces(image, faces, embedder.contract)
        stages = {
            "detect": timings(lambda: detector.detect(image), repeats),
            "align": timings(lambda: align_faces(image, faces, embedder.contract), repeats),
            "embed": timings(lambda: embedder.embed(crops), repeats),
        }
        total = timings(lambda: embedder.embed_photos(image, max_faces=1, largest=True, detector=detector), repeats)
        backend_name = embedder.backend_name
    summed = sum(stage["p50_ms"] for stage in stages.values())
    for stage in stages.values():
        stage["share"] = round(stage["p50_ms"] / summed, 3)
    return {"model": model.name, "backend": backend_name, "photo": total, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--mobilefacenet", type=Path, help="a W8A8 MobileFaceNet-class ONNX (default: made from fr_feature)")
    parser.add_argument("--dlib", type=Path, help="a W8A8 dlib_resnet ONNX (default: made from the zoo)")
    parser.add_argument("--out", type=Path, help="where made models are kept (default: a temporary folder)")
    args = parser.parse_args()
    from real_models import fr_feature_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = {
            "mobilefacenet_w8a8": args.mobilefacenet or w8a8(fr_feature_onnx(), work, "fr_feature", ("--mean", "127", "--std", "128")),
            "dlib_resnet_w8a8": args.dlib or w8a8("dlib_resnet", work, "dlib_resnet"),
        }
        image = photo()
        results = {name: measure(path, image, args.backend, args.threads, args.repeats) for name, path in models.items()}
    print(json.dumps({"photo": f"{PHOTO} as {SIZE[0]}x{SIZE[1]}", "cpu": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "repeats": args.repeats, "models": results}, indent=2))


if __name__ == "__main__":
    main()
