"""open_source: the calibration data a command-line value names (keyword, synth dataset, image folder)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qfsdk.calib.folder import ImageFolderSource
from qfsdk.calib.sources import SYNTHETIC, open_source
from qfsdk.calib.synth import SyntheticSource, load_synthetic_dir, synthesize
from qfsdk.models import create


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("mobilefacenet")


def test_the_synthetic_keyword_makes_images_on_the_fly(model):
    data, description = open_source(SYNTHETIC, model, num_images=3, seed=4, batch_size=2, iterations=1)
    assert isinstance(data, SyntheticSource) and len(data) == 2 and data.method == "bn-inversion"
    assert description == "3 synthetic images generated on the fly (seed 4)"


def test_a_synth_dataset_is_read_through_its_manifest(model, tmp_path):
    folder = synthesize("mobilefacenet", tmp_path / "synth", 2, batch_size=2, iterations=1, progress=False)
    data, description = open_source(folder, model, batch_size=2)
    assert description == f"synthetic dataset {folder}"
    assert torch.equal(torch.cat(list(data)), torch.cat(list(load_synthetic_dir(folder, model.contract, 2))))


def test_a_folder_without_manifest_is_an_image_folder_even_when_named_synthetic(model, tmp_path, monkeypatch):
    (tmp_path / SYNTHETIC).mkdir()
    for index in range(3):
        Image.fromarray(np.full((112, 112, 3), 40 * index, np.uint8)).save(tmp_path / SYNTHETIC / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    data, description = open_source(Path(SYNTHETIC), model, batch_size=2)
    assert isinstance(data, ImageFolderSource) and len(data) == 2
    assert description == f"image folder {SYNTHETIC}"
