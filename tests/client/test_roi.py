"""Tests for ROI boxes and lung/heart localisation on a chest phantom."""

import numpy as np
import pytest

from client.roi import (
    Box,
    ROINotFoundError,
    body_mask,
    find_boxes,
    find_heart_box,
    find_lung_box,
    lung_field_mask,
    lung_mask,
    strided_lung_mask,
)

from .dicom_fixtures import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()  # 48 x 96 x 96 at 5 x 3 x 3 mm: no striding


@pytest.fixture(scope="module")
def fine_phantom():
    return make_phantom(shape=(64, 256, 256), spacing=(3.75, 1.2, 1.2))  # stride 2


def _lung_fraction_inside(box: Box, lungs: np.ndarray) -> float:
    return lungs[box.to_slices()].sum() / lungs.sum()


@pytest.mark.parametrize("name", ["phantom", "fine_phantom"])
def test_lung_box_holds_the_lungs_but_not_the_trachea(request, name):
    ph = request.getfixturevalue(name)
    box = find_lung_box(ph.hu, ph.spacing, margin_mm=5.0)
    assert _lung_fraction_inside(box, ph.lungs) >= 0.95
    tight = Box.from_mask(ph.lungs)
    # the trachea runs to the top slice; the box must stop near the lung apex
    assert box.stop[0] <= ph.lung_top + 1 + int(np.ceil(5.0 / ph.spacing[0])) + 1
    assert box.stop[0] < ph.hu.shape[0]
    for axis in range(3):
        slack = int(np.ceil(5.0 / ph.spacing[axis])) + 2  # margin + stride rounding
        assert tight.start[axis] - slack <= box.start[axis] <= tight.start[axis]
        assert tight.stop[axis] - 1 <= box.stop[axis] <= tight.stop[axis] + slack


@pytest.mark.parametrize("name", ["phantom", "fine_phantom"])
def test_heart_box_contains_the_heart_centre(request, name):
    ph = request.getfixturevalue(name)
    heart = find_heart_box(ph.hu, ph.spacing)
    lung = find_lung_box(ph.hu, ph.spacing)
    assert heart.contains(ph.heart_centre)
    assert ph.heart[heart.to_slices()].sum() / ph.heart.sum() >= 0.8
    assert heart.size[2] < lung.size[2]  # narrower than both lungs together
    assert not heart.contains((ph.heart_centre[0], ph.hu.shape[1] - 20, 48))


def test_find_boxes_matches_single_finders(phantom):
    boxes = find_boxes(phantom.hu, phantom.spacing)
    assert boxes["lung"] == find_lung_box(phantom.hu, phantom.spacing)
    assert boxes["heart"] == find_heart_box(phantom.hu, phantom.spacing)
    lungs = lung_mask(phantom.hu, phantom.spacing)
    assert find_heart_box(phantom.hu, phantom.spacing, lungs=lungs) == boxes["heart"]
    with pytest.raises(ValueError, match="unknown ROI"):
        find_boxes(phantom.hu, phantom.spacing, rois=("liver",))


def test_a_lung_mask_found_once_serves_boxes_and_lung_fields(fine_phantom):
    hu, spacing = fine_phantom.hu, fine_phantom.spacing
    lungs = strided_lung_mask(hu, spacing)
    assert lungs.shape == hu[::1, ::2, ::2].shape  # the finders' stride here
    rois = ("lung", "heart", "chest")
    assert find_boxes(hu, spacing, rois, lungs=lungs) == find_boxes(hu, spacing, rois)
    box = find_lung_box(hu, spacing)
    shared = lung_field_mask(hu, spacing, box, lungs=lungs)
    assert shared.shape == box.size
    assert np.array_equal(shared, lung_field_mask(hu, spacing, box))
    # the mask handed over is the one used: without the left lung, so are the results
    right_only = lungs.copy()
    right_only[:, :, right_only.shape[2] // 2 :] = False
    assert find_boxes(hu, spacing, ("lung",), lungs=right_only)["lung"] != box
    assert lung_field_mask(hu, spacing, box, lungs=right_only).sum() < shared.sum()
    full_resolution = lung_mask(hu, spacing)
    for call in (
        lambda: find_boxes(hu, spacing, lungs=full_resolution),
        lambda: lung_field_mask(hu, spacing, box, lungs=full_resolution),
    ):
        with pytest.raises(ValueError, match="strided_lung_mask"):
            call()


def test_lung_mask_matches_truth(phantom):
    mask = lung_mask(phantom.hu, phantom.spacing)
    truth = phantom.lungs
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.98
    assert not mask[phantom.lung_top + 1 :].any()  # trachea above the apex removed


def test_body_mask_fills_the_lungs(phantom):
    body = body_mask(phantom.hu)
    assert body[phantom.lungs].all()
    assert not body[:, 0, :].any() and not body[:, :, 0].any()


def test_no_lungs_raise_a_typed_error():
    soft = np.full((20, 40, 40), 40.0, dtype=np.float32)
    with pytest.raises(ROINotFoundError, match="no lungs found"):
        find_lung_box(soft, (5.0, 3.0, 3.0))
    air_only = np.full((20, 40, 40), -1000.0, dtype=np.float32)
    with pytest.raises(ROINotFoundError):
        find_heart_box(air_only, (5.0, 3.0, 3.0))


def test_box_helpers():
    box = Box((10, 20, 30), (14, 30, 36))
    assert box.size == (4, 10, 6)
    grown = box.grow_to((8, 8, 10), (100, 100, 100))
    assert grown == Box((8, 20, 28), (16, 30, 38))  # centred, never shrunk
    clamped = Box((0, 0, 95), (2, 4, 100)).grow_to((8, 8, 10), (100, 100, 100))
    assert clamped == Box((0, 0, 90), (8, 8, 100))  # shifted inside the volume
    whole = box.grow_to((200, 8, 8), (100, 100, 100))
    assert whole.start[0] == 0 and whole.stop[0] == 100
    arr = np.zeros((100, 100, 100))
    assert arr[box.to_slices()].shape == box.size
    assert box.expand((20, 1, 1), (100, 100, 100)) == Box((0, 19, 29), (34, 31, 37))
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1:3, 2, 4:6] = True
    assert Box.from_mask(mask) == Box((1, 2, 4), (3, 3, 6))
    with pytest.raises(ValueError):
        Box((5, 0, 0), (5, 1, 1))
    with pytest.raises(ROINotFoundError):
        Box.from_mask(np.zeros((2, 2, 2), dtype=bool))
