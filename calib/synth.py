"""Synthetic face datasets: written to a folder (resumable, reproducible) or made on the fly.

Images come from one of :data:`SOURCES`: ``inversion`` (optimised from noise against the model,
:mod:`qfsdk.calib.inversion`), ``generator`` (the packaged DCGAN's faces re-aligned to the model's
template, :mod:`qfsdk.calib.face_generator`) or ``hybrid`` (those faces as the inversion's starting
pixels, then a few statistics steps). benchmarks/generator.py measures their speed and W8A8 fidelity.

A dataset folder holds ``000000.png``, ``000001.png``, ... and ``manifest.json``, which records
everything needed to regenerate the images (model, weights hash, source, generator weights hash,
method, seed, settings, versions, torch's CPU thread count), how many batches are done and how
many generated faces the detector missed per batch (each replaced by the next). Each batch is seeded
independently, so the same settings give byte-identical images and an interrupted run resumes
at its first unfinished batch; a rerun whose settings differ is refused.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from qfsdk._version import __version__
from qfsdk.calib.folder import ImageFolderSource
from qfsdk.calib.inversion import AUTO, InversionSettings, batch_seeds, invert_batch, resolve_method
from qfsdk.errors import ConfigError, QfsdkError, did_you_mean
from qfsdk.progress import progress_bar
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output, sha256_file
from qfsdk.runtime.manifest import describe_changes, read_manifest, write_manifest

if TYPE_CHECKING:
    from qfsdk.calib.face_generator import AlignedFaces

log = logging.getLogger(__name__)

DEFAULT_COUNT = 64  # what W8A8 calibration needs (benchmarks/synth.py measures the curve)
DEFAULT_BATCH_SIZE = 32
MANIFEST = "manifest.json"
FORMAT = "qfsdk-synthetic-faces/1"
IMAGE_NAME = "{:06d}.png"
RANDOM_INIT_SEED = 0  # a model without weights is initialised from this seed, so runs are reproducible
CONTRACT_KEYS = ("input_size", "mean", "std", "channel_order")  # what decides if images fit a model
# Hybrid's refinement of the generator's faces: few steps (>= 10x faster than inversion's 100), a small
# learning rate (the faces are already near the model's statistics). benchmarks/generator.py picks them.
HYBRID_SETTINGS = InversionSettings(iterations=4, lr=0.01)


@dataclass(frozen=True)
class SynthesisSource:
    """Where synthetic images come from: the packaged generator's faces and/or inversion steps against the model."""

    name: str
    description: str  # one line, for command-line help
    generator: bool  # starts from the packaged generator's faces, aligned to the model's template
    settings: InversionSettings | None  # the default inversion steps against the model (None: none)


SOURCES: dict[str, SynthesisSource] = {
    s.name: s
    for s in (
        SynthesisSource("inversion", "optimise noise until the model's statistics look like its training data's "
                        "(slow, needs nothing)", False, InversionSettings()),
        SynthesisSource("generator", "the packaged DCGAN's faces (pip install 'qfsdk[generator]'), re-aligned to "
                        "the model's template with the packaged YuNet (fast)", True, None),
        SynthesisSource("hybrid", f"the generator's faces refined by {HYBRID_SETTINGS.iterations} inversion steps "
                        "against the model", True, HYBRID_SETTINGS),
    )
}  # fmt: skip
DEFAULT_SOURCE = "inversion"


def get_source(name: str) -> SynthesisSource:
    """The source called ``name``; an unknown name is a ConfigError suggesting the closest one."""
    if name not in SOURCES:
        raise ConfigError(f"unknown synthesis source {name!r}{did_you_mean(name, SOURCES)} (choose {', '.join(SOURCES)})")
    return SOURCES[name]


def sources_help() -> str:
    """Every source name with what it does, for command-line help."""
    return "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values())


def _aligned_faces(contract: FaceContract) -> "AlignedFaces":
    """The packaged generator's faces for ``contract`` (imported here: it needs the detector's runtime)."""
    from qfsdk.calib.face_generator import AlignedFaces

    return AlignedFaces(contract)


class _Batches:
    """Makes ``source``'s uint8 image batches for ``model``; ``steps`` is the progress a batch counts."""

    def __init__(self, model: nn.Module, contract: FaceContract, source: SynthesisSource, method: str,
                 settings: InversionSettings | None):  # fmt: skip
        self.model = model
        self.contract = contract
        self.source = source
        self.settings = settings
        self.method = resolve_method(model, method) if settings is not None else None
        self.faces = _aligned_faces(contract) if source.generator else None
        self.steps = settings.iterations if settings is not None else 1

    def make(self, size: int, seed: int, on_step: Callable[[], None]) -> tuple[np.ndarray, int]:
        """(``size`` images of batch seed ``seed``, generated faces the detector missed)."""
        faces, dropped = self.faces.batch(size, seed) if self.faces is not None else (None, 0)
        if self.settings is None:
            on_step()
            return faces, dropped
        images = invert_batch(self.model, self.contract, self.method, size, seed, self.settings, on_step, init=faces)
        return images, dropped

    def run(self, count: int, seed: int, batch_size: int, first_batch: int, bar: tqdm) -> Iterator[tuple[np.ndarray, int]]:
        """(images, dropped) of each batch from ``first_batch`` on."""
        for size, torch_seed in batch_seeds(seed, count, batch_size)[first_batch:]:
            yield self.make(size, torch_seed, bar.update)


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
    batches: _Batches,
    method: str,
    count: int,
    seed: int,
    batch_size: int,
) -> dict[str, object]:
    """Everything that determines the images, as JSON would store it."""
    from qfsdk.calib.face_generator import generator_record

    inverts = batches.settings is not None
    record = {
        "model": model_name,
        "weights": weights.name if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "random_init_seed": None if weights else RANDOM_INIT_SEED,
        "contract": batches.contract.to_dict(),
        "source": batches.source.name,
        "generator": generator_record() if batches.faces is not None else None,
        "method": method if inverts else None,
        "resolved_method": batches.method,
        "count": count,
        "seed": seed,
        "batch_size": batch_size,
        "inversion": batches.settings.to_dict() if inverts else None,
        "qfsdk_version": __version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # CPU results can differ in the last bit across thread counts
    }
    return json.loads(json.dumps(record))


def _read_manifest(directory: Path) -> dict | None:
    """The folder's manifest, None if it has none."""
    return read_manifest(directory / MANIFEST, FORMAT)


def _write_manifest(directory: Path, settings: dict, dropped: list[int], batches: int) -> None:
    """The manifest after ``len(dropped)`` batches, ``dropped[i]``: generated faces batch i's detector missed."""
    batches_done = len(dropped)
    manifest = {
        "format": FORMAT,
        "complete": batches_done == batches,
        "images": min(batches_done * settings["batch_size"], settings["count"]),
        "batches_done": batches_done,
        "batches": batches,
        "dropped_faces": dropped,
        "files": IMAGE_NAME,
        "settings": settings,
    }
    write_manifest(directory / MANIFEST, manifest, sort_keys=True)


def _batches_done(directory: Path, settings: dict) -> list[int]:
    """The dropped-face counts of the complete batches already in ``directory``; refuses a folder made
    with other settings."""
    if directory.exists() and not directory.is_dir():
        raise QfsdkError(f"{directory}: exists and is not a folder; choose a folder for the dataset")
    manifest = _read_manifest(directory)
    if manifest is None:
        if directory.is_dir() and any(directory.iterdir()):
            raise QfsdkError(f"{directory}: folder is not empty and has no {MANIFEST}; choose an empty or new folder")
        return []
    changes = describe_changes(manifest.get("settings") or {}, settings)
    if changes:
        raise QfsdkError(
            f"{directory} holds a dataset made with other settings ({changes}); "
            "rerun with the same settings to resume it, or write to another folder"
        )
    dropped = [int(d) for d in manifest.get("dropped_faces", [])][: int(manifest.get("batches_done", 0))]
    batch_size = settings["batch_size"]
    for index in range(len(dropped)):  # files deleted since: regenerate from the first gap
        names = range(index * batch_size, min((index + 1) * batch_size, settings["count"]))
        if not all((directory / IMAGE_NAME.format(i)).is_file() for i in names):
            return dropped[:index]
    return dropped


def _write_batch(directory: Path, first_index: int, images: np.ndarray) -> None:
    for offset, image in enumerate(images):
        with atomic_output(directory / IMAGE_NAME.format(first_index + offset)) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")


def _source_settings(source: SynthesisSource, iterations: int | None,
                     settings: InversionSettings | None) -> InversionSettings | None:  # fmt: skip
    """The inversion steps ``source`` runs: ``settings`` (default: the source's) with ``iterations`` if given."""
    if source.settings is None:
        if iterations is not None or settings is not None:
            raise ConfigError(f"the {source.name} source runs no inversion steps: drop iterations/settings")
        return None
    base = settings or source.settings
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
    source: str = DEFAULT_SOURCE,
) -> Path:
    """Write ``n`` synthetic face images for zoo model ``model_name`` from ``source`` to ``out_dir``; return it.

    Rerunning with the same arguments resumes an interrupted run (or does nothing if it is
    complete); other settings into the same folder are refused. ``iterations`` overrides
    ``settings.iterations`` (default settings: the source's).
    """
    _check_counts(n, batch_size)
    directory = Path(out_dir)
    spec = get_source(source)
    inversion = _source_settings(spec, iterations, settings)
    model, weights_path = _load_model(model_name, weights)
    maker = _Batches(model, model.contract, spec, method, inversion)
    record = _run_settings(model_name, weights_path, maker, method, n, seed, batch_size)
    dropped = _batches_done(directory, record)
    first, batches = len(dropped), -(-n // batch_size)
    directory.mkdir(parents=True, exist_ok=True)
    _write_manifest(directory, record, dropped, batches)
    label = maker.method or spec.name
    with progress_bar(total=batches * maker.steps, initial=first * maker.steps, disable=not progress, unit="step",
              desc=f"{model_name} {label}") as bar:  # fmt: skip
        for index, (images, missed) in enumerate(maker.run(n, seed, batch_size, first, bar), start=first):
            _write_batch(directory, index * batch_size, images)
            dropped.append(missed)
            _write_manifest(directory, record, dropped, batches)
    log.info("%s: %d images (%s, seed %d, %d generated faces dropped)", directory, n, label, seed, sum(dropped))
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
        settings: InversionSettings | None,
        progress: bool,
        source: SynthesisSource = SOURCES[DEFAULT_SOURCE],
    ):
        _check_counts(count, batch_size)
        self._batches = _Batches(model, contract, source, method, settings)
        self.contract = contract
        self.count = count
        self.method = self._batches.method
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self._cache: list[np.ndarray] = []

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from (self._to_input(images) for images in self._cache)
        if len(self._cache) == len(self):
            return
        label = self.method or self._batches.source.name
        with progress_bar(total=(len(self) - len(self._cache)) * self._batches.steps, disable=not self.progress,
                  unit="step", desc=f"synthesising ({label})") as bar:  # fmt: skip
            for images, _ in self._batches.run(self.count, self.seed, self.batch_size, len(self._cache), bar):
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
    source: str = DEFAULT_SOURCE,
) -> SyntheticSource:
    """``n`` images from ``source`` for ``model``, made on the fly (lazily, on the first pass)."""
    spec = get_source(source)
    return SyntheticSource(model, contract, n, method, seed, batch_size, _source_settings(spec, iterations, settings),
                           progress, spec)  # fmt: skip


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
