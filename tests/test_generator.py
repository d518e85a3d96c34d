"""The generator plug-in: a tiny noise-to-image generator as an nn.Module and as TorchScript."""

import pytest
import torch
from torch import nn

from qfsdk.calib.data import BatchSource
from qfsdk.calib.generator import GeneratorSource
from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract

CONTRACT = FaceContract(input_size=(12, 10), embedding_size=8, mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0))


class TinyGenerator(nn.Module):
    """noise (N, 6) -> tanh images (N, 3, 16, 16) in [-1, 1], StyleGAN-style ``z_dim`` attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.z_dim = 6
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3 * 8 * 8)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(torch.tanh(self.fc(z)).view(-1, 3, 8, 8))


def _images(source) -> torch.Tensor:
    return torch.cat(list(source))


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the contract's normalisation: 0..255 pixel values."""
    return images * torch.tensor(CONTRACT.std).view(1, 3, 1, 1) + torch.tensor(CONTRACT.mean).view(1, 3, 1, 1)


def test_module_generator_gives_contract_batches_reproducibly():
    source = GeneratorSource(TinyGenerator(), CONTRACT, count=5, batch_size=2, seed=3)
    assert isinstance(source, BatchSource) and len(source) == 3
    batches = list(source)
    assert [b.shape for b in batches] == [(2, 3, 12, 10), (2, 3, 12, 10), (1, 3, 12, 10)]
    assert torch.equal(torch.cat(batches), _images(source))  # same images every pass
    assert torch.equal(_images(GeneratorSource(TinyGenerator(), CONTRACT, 5, 2, seed=3)), torch.cat(batches))
    assert not torch.equal(_images(GeneratorSource(TinyGenerator(), CONTRACT, 5, 2, seed=4)), torch.cat(batches))
    # normalised with the contract's mean/std from 8-bit pixels in 0..255
    pixels = _to_pixels(torch.cat(batches))
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


def test_value_range_and_resizing_map_constant_images_exactly():
    class Constant(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full((len(z), 3, 40, 20), 0.5)  # half-way in (0, 1); wider aspect than the contract

    source = GeneratorSource(Constant(), CONTRACT, count=2, z_dim=4, value_range=(0.0, 1.0))
    pixels = _to_pixels(_images(source))
    assert pixels.shape == (2, 3, 12, 10) and torch.allclose(pixels, torch.full_like(pixels, 128.0), atol=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save
def test_torchscript_file_generator_matches_the_module(tmp_path):
    path = tmp_path / "generator.pt"
    torch.jit.save(torch.jit.script(TinyGenerator()), str(path))
    scripted = _images(GeneratorSource(path, CONTRACT, count=3, batch_size=2, seed=1))
    assert torch.allclose(scripted, _images(GeneratorSource(TinyGenerator(), CONTRACT, 3, 2, seed=1)), atol=1e-6)


def test_generator_errors_are_clear(tmp_path):
    with pytest.raises(QfsdkError, match="no such generator file"):
        GeneratorSource(tmp_path / "missing.pt", CONTRACT, count=1)
    (tmp_path / "junk.pt").write_text("not torchscript")
    with pytest.raises(QfsdkError, match="junk.pt: not a loadable generator"):
        GeneratorSource(tmp_path / "junk.pt", CONTRACT, count=1)
    with pytest.raises(QfsdkError, match="pass z_dim"):
        GeneratorSource(nn.Identity(), CONTRACT, count=1)
    with pytest.raises(QfsdkError, match=r"returned \(1, 4\)"):
        list(GeneratorSource(nn.Identity(), CONTRACT, count=1, z_dim=4))
    with pytest.raises(QfsdkError, match="value_range"):
        GeneratorSource(TinyGenerator(), CONTRACT, count=1, value_range=(1.0, 1.0))


def test_exported_program_generator_matches_the_module_and_knows_its_z_dim(tmp_path):
    path = tmp_path / "generator.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(TinyGenerator(), (torch.randn(2, 6),), dynamic_shapes={"z": {0: batch}})
    torch.export.save(program, str(path))
    exported = _images(GeneratorSource(path, CONTRACT, count=3, batch_size=2, seed=1))
    assert torch.allclose(exported, _images(GeneratorSource(TinyGenerator(), CONTRACT, 3, 2, seed=1)), atol=1e-6)
