"""One image discovery, one crop-resize, one preprocessing: calibration sees the pixels inference sees."""

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from qfsdk.calib.data import pixels_to_input
from qfsdk.calib.folder import ImageFolderSource
from qfsdk.calib.generator import GeneratorSource
from qfsdk.calib.sources import open_source
from qfsdk.cli import main
from qfsdk.models import dlib_resnet, get_spec
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.images import fit, load_rgb

CONTRACT = FaceContract(input_size=(12, 10), embedding_size=4, mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0),
                        channel_order="BGR")
SHOWN = ("face.png", "sub/face.jpg")
HIDDEN = (".face.png", "._face.png", ".ipynb_checkpoints/face-checkpoint.png", ".cache/sub/face.png")


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_embed_and_calibrate_skip_the_same_hidden_files(dlib_fp32_onnx, tmp_path):
    folder = tmp_path / ".work" / "faces"  # a hidden folder above the one given does not count
    for index, name in enumerate(SHOWN + HIDDEN):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise((150, 150, 3), index)).save(folder / name, quality=95)
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(main, ["embed", str(dlib_fp32_onnx), str(folder), "--backend", "onnxruntime", "-o", str(out)])
    assert result.exit_code == 0, result.output
    embedded = [Path(path) for path in np.load(out)["paths"]]
    calibrated = open_source(folder, nn.Identity(), get_spec("dlib_resnet").contract).data.files  # calibrate --data
    assert embedded == calibrated == [folder / name for name in SHOWN]

    named = CliRunner().invoke(main, ["embed", str(dlib_fp32_onnx), str(folder / "._face.png"), "--backend", "onnxruntime",
                                      "-o", str(tmp_path / "named.npz")])
    assert named.exit_code == 0, named.output  # a file named explicitly is always taken
    assert list(np.load(tmp_path / "named.npz")["paths"]) == [str(folder / "._face.png")]


def test_a_generator_calibrates_on_the_pixels_embed_reads_from_its_saved_images(tmp_path):
    levels = _noise((3, 3, 40, 21))  # 8-bit images of another size and aspect ratio than the contract

    class Saved(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(levels[: len(z)]).float() / 127.5 - 1  # in (-1, 1), StyleGAN-style

    generated = torch.cat(list(GeneratorSource(Saved(), CONTRACT, count=3, batch_size=3, z_dim=4))).numpy()
    for index, image in enumerate(levels.transpose(0, 2, 3, 1)):
        Image.fromarray(image).save(tmp_path / f"{index}.png")
    folder = torch.cat(list(ImageFolderSource(tmp_path, CONTRACT, batch_size=2))).numpy()
    files = sorted(tmp_path.glob("*.png"))
    embedded = CONTRACT.preprocess(np.stack([fit(load_rgb(path)[0], CONTRACT.input_size) for path in files]))  # embed --aligned
    np.testing.assert_array_equal(generated, folder)
    np.testing.assert_array_equal(generated, embedded)


def test_torch_preprocessing_is_the_contracts():
    crops = _noise((2, 12, 10, 3))
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).float().requires_grad_()
    normalised = pixels_to_input(pixels, CONTRACT)
    assert torch.equal(normalised, torch.from_numpy(CONTRACT.preprocess(crops)))
    normalised.sum().backward()  # stays differentiable for model inversion
    assert pixels.grad is not None and pixels.grad.abs().min() > 0


def test_dlib_preprocess_is_the_zoo_contracts():
    chips = _noise((2, 150, 150, 3))
    assert torch.equal(dlib_resnet.preprocess(chips), torch.from_numpy(get_spec("dlib_resnet").contract.preprocess(chips)))


def test_images_of_the_model_size_are_not_resampled():
    image = _noise((12, 10, 3))  # a generator at the model's size keeps its pixels exactly
    assert np.array_equal(fit(image, (12, 10)), image)
