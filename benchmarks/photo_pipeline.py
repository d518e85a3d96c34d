"""Photo in, embedding out: detection + alignment + embedding per 640x480 one-face photo, per stage.

    .venv/bin/python benchmarks/photo_pipeline.py [--repeats 30] [--backend openvino] [--threads T] [--out DIR]
        [--mobilefacenet W8A8.onnx] [--dlib W8A8.onnx]

Prints one JSON document: for each model, p50/p90 ms of the whole photo (``Embedder.embed_photos``
with ``max_faces=1``) and of each stage timed separately on the same photo (``FaceDetector.detect``
with the packaged YuNet (a 640x480 photo is detected at full size), ``align_faces``,
``Embedder.embed`` of the crop), and each stage's share of the summed stage p50s.

``detect_sizes`` shows what ``--detect-size`` trades, for each size refined (the default: faces found
on a scaled-down photo detected again at full resolution, qfsdk.runtime.detect) and unrefined: the
faces found in each registry photo at the default score threshold; per model, the minimum and mean
cosine, over the photos of one person (tests/real_models.py's threshold), to its embeddings with photos
detected at full size (what OpenCV's FaceDetectorYN does when its input size is set to the photo's),
and ``photos_per_s``: photo throughput, ``embed_photo_files`` (decode, detect, align, embed: ``qfsdk
embed --detect``) over every registry photo file, from its p50; detection p50 on the largest photo of
one person. ``opencv_scaled``: ``cv2.FaceDetectorYN`` given the same photos scaled to the default size
by ``cv2.resize`` (INTER_LINEAR, INTER_AREA), its points fitted and warped as tests/real_models.py
does: cosine to qfsdk unrefined at the default size with the MobileFaceNet, i.e. how far YuNet's
points move with the resampler alone.

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
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # registry photos and models

QFSDK = [sys.executable, "-m", "qfsdk"]
PHOTO = "obama2.jpg"
SIZE = (640, 480)  # width, height
DETECT_SIZES = (640, 1280, 2048, None)  # None: full size


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


def interleaved(fns: dict, repeats: int) -> dict:
    """:func:`timings` of several calls, run in turn each repeat (so drifting load hits them alike), by key."""
    for fn in fns.values():
        fn()  # warm-up
    ms: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            ms[key].append((time.perf_counter() - start) * 1e3)
    return {key: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p90_ms": round(float(np.percentile(v, 90)), 3)}
            for key, v in ms.items()}


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


def detect_sizes(models: dict[str, Path], backend: str, threads: int | None, repeats: int) -> dict:
    """Per ``DetectorOptions.max_size``, refined and not: faces found in every registry photo at the default
    threshold; per model, cosine to full-size detection over the single-person photos (tests' threshold) and
    photo throughput over every registry photo file; detection p50 on the largest single-person photo."""
    from qfsdk.eval.metrics import cosine_similarities
    from qfsdk.runtime import Embedder
    from qfsdk.runtime.detect import DEFAULT_MAX_SIZE, DetectorOptions, FaceDetector
    from qfsdk.runtime.images import load_rgb
    from qfsdk.runtime.photos import embed_photo_files
    from real_models import MIN_DETECTION_SCORE, photo_paths, single_person_arcface_crops

    paths = photo_paths()
    every = {path.name: load_rgb(path)[0] for path in paths}
    single = [every[name] for name in single_person_arcface_crops()]
    largest = max(single, key=lambda image: image.size)
    runs: dict[tuple[int | None, bool], dict] = {}
    for name, model in models.items():
        with Embedder(model, backend, threads=threads) as embedder:
            for size in DETECT_SIZES:
                modes = (True, False) if size else (False,)
                with ExitStack() as stack:
                    def detector(threshold: float, refine: bool) -> FaceDetector:
                        options = DetectorOptions(threshold, max_size=size, refine=refine)
                        return stack.enter_context(FaceDetector(backend=embedder.backend_name, threads=threads, options=options))

                    default = {refine: detector(DetectorOptions().score_threshold, refine) for refine in modes}
                    oracle = {refine: detector(MIN_DETECTION_SCORE, refine) for refine in modes}
                    if (size, False) not in runs:  # the detector's own numbers, once
                        detect = interleaved({r: partial(oracle[r].detect, largest) for r in modes}, max(3, repeats // 5))
                        for r in modes:
                            found = {photo: len(default[r].detect(image)) for photo, image in every.items()}
                            runs[size, r] = {"faces_found": found, "detect": detect[r], "models": {}}
                    files = interleaved({r: partial(embed_photo_files, embedder, paths, detector=default[r]) for r in modes},
                                        max(3, repeats // 5))
                    for r in modes:
                        faces = embedder.embed_photos(single, max_faces=1, largest=True, detector=oracle[r])
                        assert len(faces) == len(single), f"max_size {size}: {len(faces)} faces in {len(single)} photos"
                        runs[size, r]["models"][name] = {"embeddings": faces.embeddings,
                                                         "photos_per_s": round(len(paths) / files[r]["p50_ms"] * 1e3, 2)}
            if name == next(iter(models)):
                opencv = {interpolation: (name, opencv_scaled(embedder, single, interpolation)) for interpolation in ("LINEAR", "AREA")}

    def agreement(embeddings: np.ndarray, reference: np.ndarray, suffix: str = "") -> dict[str, float]:
        cosine = cosine_similarities(embeddings, reference)
        return {f"min_cosine{suffix}": round(float(cosine.min()), 4), f"mean_cosine{suffix}": round(float(cosine.mean()), 4)}

    full = runs[None, False]["models"]
    rows: dict[str, dict] = {}
    for (size, refine), run in runs.items():
        entry = {**run, "models": {name: {**agreement(result["embeddings"], full[name]["embeddings"], "_to_full_size"),
                                          "photos_per_s": result["photos_per_s"]} for name, result in run["models"].items()}}
        if size:
            rows.setdefault(str(size), {})["refined" if refine else "unrefined"] = entry
        else:
            rows["full"] = entry
    scaled = {interpolation: {"model": name, **agreement(runs[DEFAULT_MAX_SIZE, False]["models"][name]["embeddings"], reference)}
              for interpolation, (name, reference) in opencv.items()}
    return {"single_person_photos": len(single), "largest_photo": f"{largest.shape[1]}x{largest.shape[0]}",
            "throughput_photos": len(paths), "sizes": rows, "opencv_scaled": scaled}


def opencv_scaled(embedder, photos: list[np.ndarray], interpolation: str) -> np.ndarray:
    """Embeddings of crops cut by cv2.FaceDetectorYN on photos cv2.resize'd to the default detect size."""
    import cv2

    from qfsdk.runtime.detect import DEFAULT_MAX_SIZE
    from real_models import arcface_crop, detect_faces

    crops = []
    for rgb in photos:
        height, width = rgb.shape[:2]
        scale = min(1.0, DEFAULT_MAX_SIZE / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=getattr(cv2, f"INTER_{interpolation}")) if scale < 1 else rgb
        faces = detect_faces(small)
        face = faces[np.argmax(faces[:, 2] * faces[:, 3])]
        points = (face[4:14].reshape(5, 2).astype(np.float64) + 0.5) * [width / size[0], height / size[1]] - 0.5
        crops.append(arcface_crop(rgb, points))
    return embedder.embed(np.stack(crops))


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
        drift = detect_sizes(models, args.backend, args.threads, args.repeats)
    print(json.dumps({"photo": f"{PHOTO} as {SIZE[0]}x{SIZE[1]}", "cpu": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "repeats": args.repeats, "models": results, "detect_sizes": drift}, indent=2))


if __name__ == "__main__":
    main()
