"""Image folders as calibration data: nested, odd and broken files, resizing, errors."""

import io
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from qfsdk.calib.data import BatchSource
from qfsdk.calib.folder import ImageFolderSource, load_image
from qfsdk.cli import main
from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract

CONTRACT = FaceContract(input_size=(32, 24), embedding_size=8)


def _save(path, image: Image.Image, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def _jpeg_bytes(size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    pattern = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pattern).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose pixel data stops half-way."""
    data = _jpeg_bytes((64, 64))
    return data[: len(data) // 2]


@pytest.fixture
def messy_folder(tmp_path):
    """Seven good images (nested, several formats and modes, wrong sizes) and five bad files."""
    root = tmp_path / "faces"
    _save(root / "a.png", Image.new("RGB", (24, 32), (255, 0, 0)), "PNG")  # contract size already
    _save(root / "gray.png", Image.new("L", (48, 64), 128), "PNG")
    _save(root / "rgba.png", Image.new("RGBA", (24, 32), (0, 0, 255, 10)), "PNG")
    _save(root / "nested" / "deeper" / "wide.jpg", Image.new("RGB", (200, 50), (0, 255, 0)), "JPEG")
    _save(root / "nested" / "b.bmp", Image.new("RGB", (12, 16), (10, 20, 30)), "BMP")
    _save(root / "nested" / "c.webp", Image.new("RGB", (30, 30), (200, 200, 200)), "WEBP")
    (root / "nested" / "UPPER.JPEG").write_bytes(_jpeg_bytes())
    (root / "zero.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image at all\n")
    (root / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (root / "nested" / "truncated.jpg").write_bytes(_truncated_jpeg())
    (root / "readme.txt").write_text("ignored: not an image suffix")
    (root / ".hidden.png").write_bytes(b"")  # hidden files are not part of the dataset
    return root


def _all_images(source) -> torch.Tensor:
    return torch.cat(list(source))


def test_messy_folder_yields_the_readable_images_and_warns_once_per_kind(messy_folder):
    with pytest.warns(UserWarning) as caught:
        source = ImageFolderSource(messy_folder, CONTRACT, batch_size=3)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 3 unreadable" in message and "zero.png" in message and "notes.png" in message
    assert isinstance(source, BatchSource)
    assert len(source) == 3  # 8 header-readable files, 3 per batch

    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .*truncated\.jpg"):
        batches = list(source)
    assert [len(b) for b in batches] == [3, 3, 1]  # the corrupt file's slot was refilled
    assert all(b.dtype == torch.float32 and b.shape[1:] == (3, 32, 24) for b in batches)
    assert len(source) == 3 and len(source.files) == 7 and len(source.skipped) == 4

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass knows the corrupt file and stays quiet
        assert torch.equal(torch.cat(batches), _all_images(source))


def test_pixels_are_converted_and_fitted_to_the_contract(messy_folder):
    with pytest.warns(UserWarning):
        source = ImageFolderSource(messy_folder, CONTRACT, batch_size=64)
    with pytest.warns(UserWarning):
        images = _all_images(source)
    names = [p.relative_to(messy_folder).as_posix() for p in source.files]  # the truncated JPEG is gone now
    pixels = (images * 127.5 + 127.5).round()
    by_name = dict(zip(names, pixels))
    assert torch.equal(by_name["a.png"][:, 0, 0], torch.tensor([255.0, 0, 0]))
    assert torch.equal(by_name["gray.png"].unique(), torch.tensor([128.0]))
    assert torch.equal(by_name["rgba.png"][:, 5, 5], torch.tensor([0.0, 0, 255]))  # alpha dropped
    green = by_name["nested/deeper/wide.jpg"]  # 200x50 -> centre crop to 3:4 -> 24x32
    assert green[1].min() > 240 and green[0].max() < 15


def test_load_image_crops_to_the_contract_aspect_ratio(tmp_path):
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, 20:40] = 255  # only the centre third is white
    Image.fromarray(image).save(tmp_path / "wide.png")
    fitted = load_image(tmp_path / "wide.png", (20, 20))
    assert fitted.shape == (20, 20, 3) and fitted.min() >= 250


def test_shuffle_is_seeded_and_changes_each_pass(tmp_path):
    for i in range(6):
        _save(tmp_path / f"{i}.png", Image.new("L", (24, 32), i * 40), "PNG")

    def orders(seed):
        source = ImageFolderSource(tmp_path, CONTRACT, batch_size=2, shuffle=True, seed=seed)
        return [tuple(_all_images(source)[:, 0, 0, 0].tolist()) for _ in range(2)]

    first, again = orders(0), orders(0)
    assert first == again and first[0] != first[1]
    assert sorted(first[0]) == sorted(first[1])
    assert orders(1) != first


def test_empty_and_unreadable_folders_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QfsdkError, match=r"empty: no readable images"):
        ImageFolderSource(empty, CONTRACT)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_text("text")
    with pytest.raises(QfsdkError, match=r"broken: no readable images \(1 file"):
        ImageFolderSource(broken, CONTRACT)
    with pytest.raises(QfsdkError, match="no such image folder"):
        ImageFolderSource(tmp_path / "missing", CONTRACT)


def test_folder_whose_every_image_is_corrupt_fails_while_iterating(tmp_path):
    (tmp_path / "t.jpg").write_bytes(_truncated_jpeg())
    source = ImageFolderSource(tmp_path, CONTRACT)
    with pytest.warns(UserWarning), pytest.raises(QfsdkError, match="no readable images"):
        list(source)


def test_empty_folder_through_the_cli_is_one_line_exit_1(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(
        main, ["calibrate", "--model", "mobilefacenet", "--data", str(empty), "-o", str(tmp_path / "q.safetensors")]
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert str(empty) in result.output and "no readable images" in result.output
    assert not (tmp_path / "q.safetensors").exists()
