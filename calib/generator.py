"""A user-supplied face generator (noise in, face images out) as a BatchSource.

The generator is a ``torch.nn.Module`` (or any callable), a ``torch.export`` program (``.pt2``)
or a TorchScript file; qfsdk never downloads one. The assumed interface is that of unconditional
StyleGAN-family generators: ``generator(z)``, with ``z`` (N, z_dim) drawn from a standard normal,
returns RGB images (N, 3, h, w) with values in ``value_range`` ((-1, 1) by default). Wrap a
generator with another signature (StyleGAN2-ADA's ``G(z, c)``) in a small module. Images are
rounded to 8-bit pixels (exactly what a saved dataset would hold), then fitted to the contract's
input size and normalised as a folder of those images would be (:func:`qfsdk.runtime.images.fit`,
:meth:`~qfsdk.runtime.contract.FaceContract.preprocess`: the pixels ``qfsdk embed`` sees).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from qfsdk.calib.data import batch_seed
from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.images import fit

Generator = Callable[[torch.Tensor], torch.Tensor]


def load_generator(source: Generator | str | Path) -> Generator:
    """A generator object as given (a module is put in eval mode), or the one saved at ``source``:
    a ``torch.export`` program (``.pt2``, saved with ``torch.export.save``) or a TorchScript file."""
    if not isinstance(source, (str, Path)):
        return source.eval() if isinstance(source, nn.Module) else source
    path = Path(source)
    if not path.is_file():
        raise QfsdkError(f"{path}: no such generator file (expected a .pt2 torch.export program or a TorchScript file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still supported
            if path.suffix == ".pt2":
                return _exported_generator(path)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QfsdkError(
            f"{path}: not a loadable generator ({reason}); save one with torch.export.save(...) as .pt2, "
            "or torch.jit.save(torch.jit.script(generator), path), or pass the module itself"
        ) from None


def _exported_generator(path: Path) -> nn.Module:
    """A ``torch.export`` program as a module; the noise size of its example input becomes ``z_dim``."""
    program = torch.export.load(str(path))
    module = program.module()
    args, _ = program.example_inputs or ((), {})
    if len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].ndim == 2:
        module.z_dim = int(args[0].shape[1])
    return module


class GeneratorSource:
    """``count`` images from ``generator``, the same ones on every pass for a given ``seed``."""

    def __init__(
        self,
        generator: Generator | str | Path,
        contract: FaceContract,
        count: int,
        batch_size: int = 32,
        seed: int = 0,
        z_dim: int | None = None,
        value_range: tuple[float, float] = (-1.0, 1.0),
    ):
        if count < 1:
            raise QfsdkError(f"the generator source needs at least one image, got count={count}")
        low, high = value_range
        if not high > low:
            raise QfsdkError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.generator = load_generator(generator)
        self.z_dim = resolve_z_dim(self.generator, z_dim)
        self.contract = contract
        self.count = count
        self.batch_size = max(1, int(batch_size))
        self.seed = seed
        self.value_range = (float(low), float(high))

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index, start in enumerate(range(0, self.count, self.batch_size)):
            size = min(self.batch_size, self.count - start)
            noise = torch.randn(size, self.z_dim, generator=torch.Generator().manual_seed(batch_seed(self.seed, index)))
            with torch.no_grad():
                images = self.generator(noise)
            yield torch.from_numpy(self.contract.preprocess(self._to_pixels(images, size)))

    def _to_pixels(self, images: object, size: int) -> np.ndarray:
        """Generator output -> uint8 RGB crops (N, H, W, 3) at the contract's size."""
        pixels = (unit_images(images, size, self.value_range) * 255).round().to(torch.uint8)
        return np.stack([fit(image, self.contract.input_size) for image in pixels.permute(0, 2, 3, 1).numpy()])


def unit_images(images: object, size: int, value_range: tuple[float, float]) -> torch.Tensor:
    """A generator's output for ``size`` noise vectors, checked to be (size, 3, H, W) images, as 0..1 float
    on the CPU (``value_range`` is the generator's own pixel range)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[:2] != (size, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise QfsdkError(f"the generator returned {shape} for {size} noise vectors; expected images ({size}, 3, H, W)")
    low, high = value_range
    return ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)


def resolve_z_dim(generator: Generator, z_dim: int | None) -> int:
    """``z_dim`` if given, else the generator's own ``z_dim`` attribute (StyleGAN's convention)."""
    found = z_dim if z_dim is not None else getattr(generator, "z_dim", None)
    if not isinstance(found, int) or found < 1:
        raise QfsdkError("the generator's noise size is unknown: pass z_dim=... (it has no integer `z_dim` attribute)")
    return found
