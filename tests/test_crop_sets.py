"""The second set of real ArcFace crops (tests/crop_sets.py): fetched, aligned like A, cut from other photos."""

from __future__ import annotations

import numpy as np

from crop_sets import crop_set, scoring_crops, set_photos, shared_photos


def test_set_b_is_twenty_or_more_arcface_crops():
    crops = crop_set("B")
    assert len(crops) >= 20
    assert all(crop.shape == (112, 112, 3) and crop.dtype == np.uint8 for _, crop in crops)
    assert {name.rsplit(".", 1)[0] for name, _ in crops} == {path.stem for path in set_photos("B")}


def test_sets_share_no_photo():
    assert shared_photos() == set()
    assert not {name for name, _ in crop_set("A")} & {name for name, _ in crop_set("B")}


def test_scoring_crops_leave_out_a_calibration_half():
    a = [name for name, _ in crop_set("A")]
    assert [name for name, _ in scoring_crops("A")] == a[1::2]
    assert [name for name, _ in scoring_crops("B")] == [name for name, _ in crop_set("B")]
