"""Tests for ROI cropping, resizing, HU windowing and the preprocessing fingerprint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from client import preprocess
from client.dicom_types import CTVolume
from client.preprocess import (
    HEART_SPEC,
    LUNG_SPEC,
    CropSpec,
    build_ct_transforms,
    crop_roi,
    preprocess_exam,
    preprocessing_fingerprint,
)
from client.roi import Box, ROINotFoundError
from m3fm_model.tasks import HU_WINDOWS

from .dicom_fixtures import make_phantom

LUNG = CropSpec("lung", (16, 48, 32), (-1300.0, 150.0))
HEART = CropSpec("heart", (16, 24, 24), (-135.0, 225.0))


@pytest.fixture(scope="module")
def volume():
    torch.set_num_threads(1)
    ph = make_phantom()
    return CTVolume(
        ph.hu.astype(np.float32), ph.spacing, "P1", "E1", "1.2.3", "ab" * 32
    )


def test_crop_shape_range_and_spacing(volume):
    box = Box((6, 26, 9), (39, 70, 87))  # 33 x 44 x 78 voxels
    crop, spacing = crop_roi(volume, box, LUNG)
    assert crop.shape == (1, *LUNG.crop_size) and crop.dtype == np.float32
    assert crop.min() >= -1.0 and crop.max() <= 1.0
    # box grown to >= crop size per axis: 33, 48 (grown), 78 voxels
    assert spacing == pytest.approx((33 * 5.0 / 16, 48 * 3.0 / 48, 78 * 3.0 / 32))


def test_window_maps_linearly_and_clips():
    hu = np.zeros((8, 8, 8), dtype=np.float32)
    hu[:4] = -1000.0  # inside the lung window
    hu[4:] = 3000.0  # above it: clipped to +1
    vol = CTVolume(hu, (1.0, 1.0, 1.0), "P", "E", "1")
    crop, _ = crop_roi(
        vol, Box((0, 0, 0), (8, 8, 8)), CropSpec("x", (8, 8, 8), LUNG.hu_window)
    )
    expected_low = 2 * (-1000 + 1300) / 1450 - 1
    np.testing.assert_allclose(crop[0, 0], expected_low, atol=1e-6)
    np.testing.assert_allclose(crop[0, -1], 1.0)


def test_small_volume_is_padded_with_air(volume):
    spec = CropSpec("x", (64, 128, 128), (-1000.0, 0.0))
    whole = Box((0, 0, 0), volume.hu.shape)
    crop, spacing = crop_roi(volume, whole, spec)
    assert crop.shape == (1, 64, 128, 128)
    assert spacing == pytest.approx(volume.spacing_mm)  # padded extent / crop = 1 voxel
    assert (crop[0, :8] == -1.0).all()  # 8 padded slices of -1024 HU on each side
    inner = crop[0, 8:56, 16:112, 16:112]
    np.testing.assert_allclose(inner, volume.hu.clip(-1000, 0) / 500 + 1, atol=1e-6)


def test_monai_resize_equals_torch_trilinear(volume):
    region = torch.from_numpy(volume.hu[4:40, 10:90, 5:85]).unsqueeze(0)
    spec = CropSpec("x", (20, 50, 40), (-1300.0, 150.0))
    ours = build_ct_transforms(spec)(region.clone())
    resized = F.interpolate(region[None], size=spec.crop_size, mode="trilinear")[0]
    reference = (resized.clamp(-1300, 150) + 1300) / 1450 * 2 - 1
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5)


def test_preprocess_exam_finds_or_takes_boxes(volume):
    crops = preprocess_exam(volume, [LUNG, HEART])
    assert set(crops) == {"lung", "heart"}
    assert crops["heart"].crop.shape == (1, 16, 24, 24)
    soft = CTVolume(np.full((20, 40, 40), 40.0, np.float32), (5, 3, 3), "P", "E", "1")
    with pytest.raises(ROINotFoundError):
        preprocess_exam(soft, [LUNG])
    given = Box((2, 5, 5), (18, 35, 35))
    out = preprocess_exam(soft, [LUNG], boxes={"lung": given})
    assert out["lung"].box == given and out["lung"].crop.shape == (1, 16, 48, 32)


def test_parenchyma_is_the_lung_box_in_its_own_window(volume):
    parenchyma = CropSpec("parenchyma", (16, 48, 32), HU_WINDOWS["parenchyma"])
    crops = preprocess_exam(volume, [LUNG, parenchyma])
    assert crops["parenchyma"].box == crops["lung"].box
    # The same resized voxels as the lung crop, only windowed to -1000..-700 HU.
    hu = (crops["lung"].crop + 1) / 2 * 1450 - 1300
    low, high = HU_WINDOWS["parenchyma"]
    expected = (hu.clip(low, high) - low) / (high - low) * 2 - 1
    np.testing.assert_allclose(crops["parenchyma"].crop, expected, atol=1e-4)
    assert (crops["parenchyma"].crop > -1).mean() > 0.05  # lung voxels in range
    soft = CTVolume(np.full((20, 40, 40), 40.0, np.float32), (5, 3, 3), "P", "E", "1")
    given = Box((2, 5, 5), (18, 35, 35))
    out = preprocess_exam(soft, [parenchyma], boxes={"lung": given})
    assert out["parenchyma"].box == given


def _ball(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    axes = [
        np.arange(n) * d - c for n, d, c in zip(shape, spacing, centre_mm, strict=True)
    ]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
    return zz**2 + yy**2 + xx**2 <= radius_mm**2


def test_lung_masked_keeps_what_lies_in_the_lungs_and_blanks_the_rest():
    ph = make_phantom()
    hu = ph.hu.astype(np.float32)
    spacing = ph.spacing
    # The right lung's centre and its lateral edge (x extent 45 mm about cx - 65).
    zs, ys, xs = np.nonzero(ph.lungs)
    right = xs < hu.shape[2] / 2
    cz, cy = zs[right].mean() * spacing[0], ys[right].mean() * spacing[1]
    x_edge = xs[right].min() * spacing[2]
    inner = _ball(hu.shape, spacing, (cz, cy, x_edge + 45.0), 6.0)  # in the lung
    pleural = _ball(hu.shape, spacing, (cz, cy, x_edge + 4.0), 5.0)  # on the pleura
    hu[inner | pleural] = 35.0
    vol = CTVolume(hu, spacing, "P", "E", "1")
    box = preprocess_exam(vol, [LUNG])["lung"].box
    window = HU_WINDOWS["lung_masked"]
    spec = CropSpec("lung_masked", box.size, window)  # no resize: voxels map 1:1
    out = preprocess_exam(vol, [spec])["lung_masked"]
    assert out.box == box
    crop = out.crop[0]
    region = hu[box.to_slices()]
    lung_value = 2 * (-850 - window[0]) / (window[1] - window[0]) - 1
    nodule_value = 2 * (35 - window[0]) / (window[1] - window[0]) - 1
    inside = (inner | pleural)[box.to_slices()]
    # both nodules survive, the pleural one through the in-plane closing
    np.testing.assert_allclose(crop[inner[box.to_slices()]], nodule_value, atol=1e-5)
    assert (crop[pleural[box.to_slices()]] > 0).mean() > 0.5
    # everything outside the lung fields (chest wall, heart, spine) reads as lung,
    # but for the few chest-wall voxels the closing takes in around the pleural one
    solid = (region > -500) & ~inside
    kept = ~np.isclose(crop[solid], lung_value, atol=1e-5)
    assert solid.sum() > 10_000 and kept.sum() < 0.001 * solid.sum()
    # the plain lung crop of the same box still shows the chest wall
    plain = crop_roi(vol, box, CropSpec("lung", box.size, window))[0][0]
    assert (plain[solid] > 0).mean() > 0.9
    # no lungs in the volume: a clear error, as for the lung crop itself
    soft = CTVolume(np.full((20, 40, 40), 40.0, np.float32), (5, 3, 3), "P", "E", "1")
    with pytest.raises(ROINotFoundError):
        preprocess_exam(soft, [spec], boxes={"lung": Box((2, 5, 5), (18, 35, 35))})


def test_bad_arguments_raise(volume):
    with pytest.raises(ValueError, match="exceeds"):
        crop_roi(volume, Box((0, 0, 0), (49, 10, 10)), LUNG)
    with pytest.raises(ValueError, match="low < high"):
        CropSpec("lung", (1, 2, 3), (150.0, -1300.0))
    with pytest.raises(ValueError, match="positive"):
        CropSpec("lung", (0, 2, 3), (-1.0, 1.0))


def test_fingerprint_tracks_every_setting(monkeypatch):
    base = preprocessing_fingerprint([LUNG_SPEC, HEART_SPEC])
    assert base == preprocessing_fingerprint([HEART_SPEC, LUNG_SPEC])
    assert base == preprocessing_fingerprint(
        [CropSpec("lung", (128, 448, 320), (-1300.0, 150.0)), HEART_SPEC]
    )
    changed = [
        preprocessing_fingerprint([CropSpec("lung", (128, 448, 321), (-1300, 150))]),
        preprocessing_fingerprint([CropSpec("lung", (128, 448, 320), (-1200, 150))]),
        preprocessing_fingerprint(LUNG_SPEC, salt="site-box"),
        preprocessing_fingerprint(LUNG_SPEC),
    ]
    monkeypatch.setattr(preprocess, "ALGORITHM_VERSION", "m3fm-ct-preprocess/999")
    changed.append(preprocessing_fingerprint(LUNG_SPEC))
    monkeypatch.setattr(preprocess.roi, "LUNG_HU", -350.0)
    changed.append(preprocessing_fingerprint(LUNG_SPEC))
    assert len({base, *changed}) == len(changed) + 1
