"""Synthetic face datasets: written to a folder (resumable, reproducible) or made on the fly.

A dataset folder holds ``000000.png``, ``000001.png``, ... and ``manifest.json``, which records
everything needed to regenerate the images (model, weights hash, method, seed, settings,
versions, torch's CPU thread count) and how many batches are done. Each batch is seeded
independently, so the same settings give byte-identical images and an interrupted run resumes
at its first unfinished batch; a rerun whose settings differ is refused.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from qfsdk._version import __version__
from qfsdk.calib.folder import ImageFolderSource
from qfsdk.calib.inversion import AUTO, InversionSettings, batch_seeds, invert_batch, resolve_method
from qfsdk.errors import QfsdkError
from qfsdk.progress import progress_bar
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output, sha256_file
from qfsdk.runtime.manifest import describe_changes, read_manifest, write_manifest

log = logging.getLogger(__name__)

DEFAULT_COUNT = 64  # what W8A8 calibration needs (benchmarks/synth.py measures the curve)
DEFAULT_BATCH_SIZE = 32
MANIFEST = "manifest.json"
FORMAT = "qfsdk-synthetic-faces/1"
IMAGE_NAME = "{:06d}.png"
RANDOM_INIT_SEED = 0  # a model without weights is initialised from this seed, so runs are reproducible
CONTRACT_KEYS = ("input_size", "mean", "std", "channel_order")  # what decides if images fit a model


def _load_model(model_name: str, weights: str | Path | None) -> tuple[nn.Module, Path | None]:
    """The zoo (or imported) model and the weights file it was loaded from (None: seeded random init)."""
    from qfsdk.models import create, get_spec

    spec = get_spec(model_name)
    if spec.weights_included:
        return create(model_name), Path(spec.weights_source)
    path = Path(weights) if weights is not None else (spec.default_weights() if spec.default_weights else None)
    if path is not None:
        return create(model_name, path), path
    with torch.random.fork_rng(devices=[]):  # create() warns that the images will match no trained model
        return create(model_name, seed=RANDOM_INIT_SEED), None


def _run_settings(
    model_name: str,
    weights: Path | None,
    contract: FaceContract,
    method: str,
    resolved: str,
    count: int,
    seed: int,
    batch_size: int,
    settings: InversionSettings,
) -> dict[str, object]:
    """Everything that determines the images, as JSON would store it."""
    record = {
        "model": model_name,
        "weights": weights.name if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "random_init_seed": None if weights else RANDOM_INIT_SEED,
        "contract": contract.to_dict(),
        "method": method,
        "resolved_method": resolved,
        "count": count,
        "seed": seed,
        "batch_size": batch_size,
        "inversion": settings.to_dict(),
        "qfsdk_version": __version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # CPU results can differ in the last bit across thread counts
    }
    return json.loads(json.dumps(record))


def _read_manifest(directory: Path) -> dict | None:
    """The folder's manifest, None if it has none."""
    return read_manifest(directory / MANIFEST, FORMAT)


def _write_manifest(directory: Path, settings: dict, batches_done: int, batches: int) -> None:
    manifest = {
        "format": FORMAT,
        "complete": batches_done == batches,
        "images": min(batches_done * settings["batch_size"], settings["count"]),
        "batches_done": batches_done,
        "batches": batches,
        "files": IMAGE_NAME,
        "settings": settings,
    }
    write_manifest(directory / MANIFEST, manifest, sort_keys=True)


def _batches_to_skip(directory: Path, settings: dict) -> int:
    """Complete batches already in ``directory``; refuses a folder made with other settings."""
    if directory.exists() and not directory.is_dir():
        raise QfsdkError(f"{directory}: exists and is not a folder; choose a folder for the dataset")
    manifest = _read_manifest(directory)
    if manifest is None:
        if directory.is_dir() and any(directory.iterdir()):
            raise QfsdkError(f"{directory}: folder is not empty and has no {MANIFEST}; choose an empty or new folder")
        return 0
    changes = describe_changes(manifest.get("settings") or {}, settings)
    if changes:
        raise QfsdkError(
            f"{directory} holds a dataset made with other settings ({changes}); "
            "rerun with the same settings to resume it, or write to another folder"
        )
    done = int(manifest.get("batches_done", 0))
    batch_size = settings["batch_size"]
    for index in range(done):  # files deleted since: regenerate from the first gap
        names = range(index * batch_size, min((index + 1) * batch_size, settings["count"]))
        if not all((directory / IMAGE_NAME.format(i)).is_file() for i in names):
            return index
    return done


def _write_batch(directory: Path, first_index: int, images: np.ndarray) -> None:
    for offset, image in enumerate(images):
        with atomic_output(directory / IMAGE_NAME.format(first_index + offset)) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")


def _generate(
    model: nn.Module,
    contract: FaceContract,
    method: str,
    count: int,
    seed: int,
    batch_size: int,
    settings: InversionSettings,
    first_batch: int,
    bar: tqdm,
) -> Iterator[np.ndarray]:
    """uint8 RGB image batches from ``first_batch`` on."""
    for size, torch_seed in batch_seeds(seed, count, batch_size)[first_batch:]:
        yield invert_batch(model, contract, method, size, torch_seed, settings, on_step=bar.update)


def _with_iterations(iterations: int | None, settings: InversionSettings | None) -> InversionSettings:
    base = settings or InversionSettings()
    if iterations is None:
        return base
    return InversionSettings(**{**base.to_dict(), "iterations": iterations})


def _check_counts(count: int, batch_size: int) -> None:
    if count < 1 or batch_size < 1:
        raise QfsdkError(f"need n >= 1 images and batch_size >= 1, got n={count}, batch_size={batch_size}")


def synthesize(
    model_name: str,
    out_dir: str | Path,
    n: int,
    method: str = AUTO,
    seed: int = 0,
    weights: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    iterations: int | None = None,
    progress: bool = True,
    settings: InversionSettings | None = None,
) -> Path:
    """Write ``n`` synthetic face images for zoo model ``model_name`` to ``out_dir``; return it.

    Rerunning with the same arguments resumes an interrupted run (or does nothing if it is
    complete); other settings into the same folder are refused. ``iterations`` overrides
    ``settings.iterations``.
    """
    _check_counts(n, batch_size)
    directory = Path(out_dir)
    model, weights_path = _load_model(model_name, weights)
    inversion = _with_iterations(iterations, settings)
    resolved = resolve_method(model, method)
    record = _run_settings(
        model_name, weights_path, model.contract, method, resolved, n, seed, batch_size, inversion
    )
    first = _batches_to_skip(directory, record)
    batches = -(-n // batch_size)
    directory.mkdir(parents=True, exist_ok=True)
    _write_manifest(directory, record, first, batches)
    steps = inversion.iterations
    with progress_bar(total=batches * steps, initial=first * steps, disable=not progress, unit="step",
              desc=f"{model_name} {resolved}") as bar:  # fmt: skip
        batch_iter = _generate(model, model.contract, resolved, n, seed, batch_size, inversion, first, bar)
        for index, images in enumerate(batch_iter, start=first):
            _write_batch(directory, index * batch_size, images)
            _write_manifest(directory, record, index + 1, batches)
    log.info("%s: %d images (%s, seed %d)", directory, n, resolved, seed)
    return directory


class SyntheticSource:
    """On-the-fly synthetic images as a BatchSource: made on the first pass, then served from memory.

    Images are rounded to 8-bit pixels, so they equal what :func:`synthesize` would save.
    """

    def __init__(
        self,
        model: nn.Module,
        contract: FaceContract,
        count: int,
        method: str,
        seed: int,
        batch_size: int,
        settings: InversionSettings,
        progress: bool,
    ):
        _check_counts(count, batch_size)
        self.model = model
        self.contract = contract
        self.count = count
        self.method = resolve_method(model, method)
        self.seed = seed
        self.batch_size = batch_size
        self.settings = settings
        self.progress = progress
        self._cache: list[np.ndarray] = []

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from (self._to_input(images) for images in self._cache)
        if len(self._cache) == len(self):
            return
        with progress_bar(total=(len(self) - len(self._cache)) * self.settings.iterations, disable=not self.progress,
                  unit="step", desc=f"synthesising ({self.method})") as bar:  # fmt: skip
            args = (self.model, self.contract, self.method, self.count, self.seed, self.batch_size, self.settings)
            for images in _generate(*args, len(self._cache), bar):
                self._cache.append(images)
                yield self._to_input(images)

    def _to_input(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.contract.preprocess(images))


def synthetic_source(
    model: nn.Module,
    contract: FaceContract,
    n: int = DEFAULT_COUNT,
    method: str = AUTO,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    iterations: int | None = None,
    progress: bool = False,
    settings: InversionSettings | None = None,
) -> SyntheticSource:
    """``n`` images synthesised from ``model`` on the fly (lazily, on the first pass)."""
    return SyntheticSource(model, contract, n, method, seed, batch_size, _with_iterations(iterations, settings), progress)


def load_synthetic_dir(
    directory: str | Path,
    contract: FaceContract,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_name: str | None = None,
) -> ImageFolderSource:
    """A dataset folder written by :func:`synthesize` as a BatchSource for ``contract``.

    An unfinished dataset is an error; one made for another model or contract is used with
    a warning (the images are resized to the contract, but they match the other model).
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        warnings.warn(f"{directory}: no {MANIFEST}; using it as a plain image folder", stacklevel=2)
        return ImageFolderSource(directory, contract, batch_size)
    if not manifest.get("complete"):
        raise QfsdkError(
            f"{directory}: synthetic dataset is unfinished ({manifest.get('images')} of "
            f"{manifest['settings'].get('count')} images); rerun `qfsdk synth` with the same settings to finish it"
        )
    _warn_if_mismatched(directory, manifest["settings"], contract, model_name)
    return ImageFolderSource(directory, contract, batch_size)


def _warn_if_mismatched(directory: Path, made_for: dict, contract: FaceContract, model_name: str | None) -> None:
    wanted = json.loads(json.dumps(contract.to_dict()))
    differs = [key for key in CONTRACT_KEYS if made_for["contract"].get(key) != wanted.get(key)]
    if model_name is not None and made_for.get("model") != model_name:
        differs.insert(0, "model")
    if differs:
        warnings.warn(
            f"{directory}: synthesised for {made_for.get('model')} (differs in {', '.join(differs)}); "
            "images inverted from another model match this one less well",
            stacklevel=3,
        )
