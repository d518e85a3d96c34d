"""The model contract as stored in ONNX ``metadata_props`` (read without torch or onnx)."""

from __future__ import annotations

from pathlib import Path

from .contract import FaceContract

CONTRACT_KEY = "qfsdk.contract"
VERSION_KEY = "qfsdk.version"
ARCHITECTURE_KEY = "qfsdk.architecture"


class ContractMissingError(ValueError):
    """The model file carries no qfsdk contract."""


def contract_from_metadata(metadata: dict[str, str], source: str | Path) -> FaceContract:
    """Parse the contract from a model's custom metadata map."""
    text = metadata.get(CONTRACT_KEY)
    if text is None:
        raise ContractMissingError(
            f"{source}: no '{CONTRACT_KEY}' metadata; export the model with `qfsdk convert` so it carries its preprocessing contract"
        )
    return FaceContract.from_json(text)


def read_onnx_contract(path: str | Path) -> FaceContract:
    """Read the contract of an ONNX file through ONNX Runtime's metadata API."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return contract_from_metadata(session.get_modelmeta().custom_metadata_map, path)
