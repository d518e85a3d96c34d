"""Calibration data named by the user: ``synthetic``, a ``qfsdk synth`` dataset or an image folder."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from torch import nn

from qfsdk.calib.data import BatchSource
from qfsdk.calib.folder import ImageFolderSource
from qfsdk.calib.inversion import AUTO
from qfsdk.calib.synth import (DEFAULT_BATCH_SIZE, DEFAULT_COUNT, DEFAULT_SOURCE, MANIFEST, load_synthetic_dir,
                               synthetic_source)
from qfsdk.models.card import card_of
from qfsdk.runtime.contract import FaceContract

SYNTHETIC = "synthetic"  # the keyword for synthetic images made for the model on the fly


class OpenedSource(NamedTuple):
    """A calibration source and one line saying what it is (recorded with the checkpoint)."""

    data: BatchSource
    description: str


def is_synthetic_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``qfsdk synth`` (it holds the dataset's manifest)."""
    return (folder / MANIFEST).is_file()


def open_source(
    source: str | Path,
    model: nn.Module,
    contract: FaceContract | None = None,
    *,
    num_images: int = DEFAULT_COUNT,
    method: str = AUTO,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    iterations: int | None = None,
    progress: bool = False,
    synth_source: str = DEFAULT_SOURCE,
) -> OpenedSource:
    """The data ``source`` names, preprocessed for ``contract`` (default: ``model.contract``).

    The string ``"synthetic"``: ``num_images`` images made for ``model`` on the fly from
    ``synth_source`` (see qfsdk.calib.synth.SOURCES) with ``method``, ``seed`` and ``iterations``.
    Any other string or path (a ``Path("synthetic")`` too) is a folder: a ``qfsdk synth`` dataset
    when it holds its manifest, else image files.
    """
    contract = contract or card_of(model).contract
    if source == SYNTHETIC:
        data = synthetic_source(model, contract, num_images, method=method, seed=seed, batch_size=batch_size,
                                iterations=iterations, progress=progress, source=synth_source)  # fmt: skip
        origin = "" if synth_source == DEFAULT_SOURCE else f"{synth_source} source, "
        return OpenedSource(data, f"{num_images} synthetic images generated on the fly ({origin}seed {seed})")
    folder = Path(source)
    if is_synthetic_dataset(folder):
        return OpenedSource(load_synthetic_dir(folder, contract, batch_size), f"synthetic dataset {folder}")
    return OpenedSource(ImageFolderSource(folder, contract, batch_size=batch_size), f"image folder {folder}")
