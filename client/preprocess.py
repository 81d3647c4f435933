"""Cut ROI crops for M3FM: grow the box, crop, resize trilinearly, window the HU.

Follows M3FM's step 1 (``docs/m3fm-reference.md``): an organ box is grown to at
least the crop size, cut out, resized trilinearly to a fixed crop (lung
128 x 448 x 320, heart 128 x 192 x 224) and its HU clipped to a window (lung
-1300..150, heart -135..225) and mapped to [-1, 1]. The spacing after the resize
is recorded, because the model's physical-size embedding needs the true one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    Resize,
    ScaleIntensityRange,
    SpatialCrop,
    SpatialPad,
)

from client import roi
from client.dicom_types import CTVolume
from client.roi import Box, box_region, find_boxes

logger = logging.getLogger(__name__)

# Bump whenever ingestion, ROI finding or cropping changes its output: the cache
# fingerprint includes it, so old cache entries stop matching.
ALGORITHM_VERSION = "m3fm-ct-preprocess/1"
AIR_HU = -1024.0


@dataclass(frozen=True)
class CropSpec:
    """How one ROI is cropped.

    Attributes:
        roi: ROI name, ``"lung"`` or ``"heart"`` for automatic boxes.
        crop_size: Output voxels (slices, rows, cols).
        hu_window: (low, high) HU mapped to [-1, 1] after clipping.
    """

    roi: str
    crop_size: tuple[int, int, int]
    hu_window: tuple[float, float]

    def __post_init__(self) -> None:
        """Validate the fields."""
        if not self.roi:
            raise ValueError("CropSpec.roi must be a non-empty name such as 'lung'")
        if len(self.crop_size) != 3 or any(int(n) < 1 for n in self.crop_size):
            raise ValueError(f"crop_size must be 3 positive ints, got {self.crop_size}")
        low, high = self.hu_window
        if not low < high:
            raise ValueError(
                f"hu_window must be (low, high) with low < high, got {self.hu_window}"
            )


LUNG_SPEC = CropSpec("lung", (128, 448, 320), (-1300.0, 150.0))
HEART_SPEC = CropSpec("heart", (128, 192, 224), (-135.0, 225.0))


@dataclass(frozen=True, eq=False)
class RoiCrop:
    """One preprocessed crop.

    Attributes:
        crop: float32 (1, S, H, W) in [-1, 1].
        spacing_mm: Voxel spacing (slice, row, col) after the resize.
        box: The box cut from the volume (before growing).
    """

    crop: np.ndarray
    spacing_mm: tuple[float, float, float]
    box: Box


def build_ct_transforms(
    spec: CropSpec, box: Box | None = None, shape: Sequence[int] | None = None
) -> Compose:
    """The MONAI chain for one ROI, on channel-first (1, Z, Y, X) HU arrays.

    Without ``box`` the chain only resizes and windows. With ``box`` and the
    volume ``shape`` it first grows the box to at least the crop size (centred,
    inside the volume), crops it (``SpatialCrop``) and pads with air (-1024 HU,
    ``SpatialPad``) along axes where the volume is smaller than the crop.

    Args:
        spec: The crop specification.
        box: Optional ROI box in volume voxels.
        shape: Volume shape (Z, Y, X); required with ``box``.

    Returns:
        A ``Compose`` returning a float32 NumPy array (1, *crop_size) in [-1, 1].
    """
    steps: list = []
    if box is not None:
        if shape is None:
            raise ValueError("build_ct_transforms needs the volume shape with a box")
        grown = box.grow_to(spec.crop_size, shape)
        padded = [max(g, c) for g, c in zip(grown.size, spec.crop_size, strict=True)]
        steps += [
            SpatialCrop(roi_start=grown.start, roi_end=grown.stop),
            SpatialPad(padded, method="symmetric", mode="constant", value=AIR_HU),
        ]
    low, high = spec.hu_window
    steps += [
        Resize(spatial_size=spec.crop_size, mode="trilinear"),
        ScaleIntensityRange(low, high, b_min=-1.0, b_max=1.0, clip=True),
        EnsureType(data_type="numpy", dtype=np.float32, track_meta=False),
    ]
    return Compose(steps)


def crop_roi(
    volume: CTVolume, box: Box, spec: CropSpec, *, lungs: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Crop one ROI from a volume (see ``build_ct_transforms``).

    Args:
        volume: Canonical HU volume.
        box: ROI box in voxels (found automatically or supplied by the site).
        spec: Crop size and HU window.
        lungs: ``client.roi.strided_lung_mask`` of the volume when already computed
            (used by the masked ROIs only).

    Returns:
        (crop float32 (1, S, H, W) in [-1, 1], spacing after resize in mm). The
        spacing is the grown (and padded) box extent in mm divided by the crop size.

    Raises:
        ValueError: When the box does not fit inside the volume.
    """
    shape = volume.hu.shape
    if any(b > n for b, n in zip(box.stop, shape, strict=True)):
        raise ValueError(f"box {box} exceeds the volume shape {shape}")
    grown = box.grow_to(spec.crop_size, shape)
    extent = [max(g, c) for g, c in zip(grown.size, spec.crop_size, strict=True)]
    spacing = tuple(
        e * s / c
        for e, s, c in zip(extent, volume.spacing_mm, spec.crop_size, strict=True)
    )
    if spec.roi in roi.MASKED_ROIS:
        region = _outside_lungs_filled(volume, grown, spec.crop_size, lungs)
        chain = build_ct_transforms(spec, Box((0, 0, 0), region.shape), region.shape)
        crop = chain(torch.from_numpy(region).unsqueeze(0))
    else:
        chain = build_ct_transforms(spec, box, shape)
        crop = chain(torch.from_numpy(volume.hu).unsqueeze(0))
    return np.ascontiguousarray(crop, dtype=np.float32), spacing  # type: ignore[return-value]


def _outside_lungs_filled(
    volume: CTVolume,
    grown: Box,
    crop_size: Sequence[int],
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """The grown box's HU, every voxel outside the lung fields at the lungs' median.

    The crop then shows only what lies in the lungs.

    Chest wall, mediastinum and fluid next to the lungs are as bright as a nodule and,
    cut into 8^3-voxel patches, look like one to the tiny preset's linear patch
    embedding; with them gone a nodule is seen against lung and vessels only
    (docs/site-evaluation.md, "The CT path").

    Where the volume is smaller than ``crop_size`` the region is padded with that
    median too.

    Raises:
        client.roi.ROINotFoundError: When no lung voxel lies in the box.
    """
    region = np.asarray(volume.hu[grown.to_slices()], dtype=np.float32)
    keep = roi.lung_field_mask(volume.hu, volume.spacing_mm, grown, lungs)
    if not keep.any():
        raise roi.ROINotFoundError(
            f"no lung voxel lies in the lung box {grown}; check the box supplied "
            "for this exam"
        )
    fill = float(np.median(region[keep]))
    region = np.where(keep, region, fill).astype(np.float32)
    # Where the volume is smaller than the crop, pad like SpatialPad's "symmetric"
    # (the larger half after), with the same density rather than air.
    short = [max(c - n, 0) for n, c in zip(region.shape, crop_size, strict=True)]
    pad = [(d // 2, d - d // 2) for d in short]
    return np.pad(region, pad, constant_values=fill)


def _roi_parameters() -> dict[str, object]:
    """ROI-finder constants that change the boxes (part of the fingerprint)."""
    names = (
        "ROI_TARGET_MM",
        "BODY_HU",
        "LUNG_HU",
        "SOFT_TISSUE_HU",
        "MIN_LUNG_ML",
        "SECOND_LUNG_FRACTION",
        "AIRWAY_AREA_FRACTION",
        "MIN_HEART_ML",
        "LUNG_FIELD_CLOSING_MM",
    )
    return {name: getattr(roi, name) for name in names}


def preprocessing_fingerprint(
    specs: CropSpec | Sequence[CropSpec], *, salt: str = ""
) -> str:
    """Stable hash of everything that changes the crops of ``specs``.

    Covers each spec (ROI, crop size, window), ``ALGORITHM_VERSION``, the
    ROI-finder constants and ``salt`` (e.g. ``"site-boxes"`` when a site supplies
    its own boxes). The cache keys each ROI by the fingerprint of its own spec, so
    changing the heart window leaves cached lung crops valid.

    Args:
        specs: One spec or several (order does not matter).
        salt: Extra text that changes the output, e.g. the box source.

    Returns:
        32 hex characters.
    """
    items = [specs] if isinstance(specs, CropSpec) else list(specs)
    payload = {
        "version": ALGORITHM_VERSION,
        "roi_parameters": _roi_parameters(),
        "specs": sorted((asdict(s) for s in items), key=lambda d: json.dumps(d)),
        "salt": salt,
    }
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def preprocess_exam(
    volume: CTVolume,
    specs: Sequence[CropSpec],
    boxes: Mapping[str, Box] | None = None,
    *,
    margin_mm: float = 5.0,
) -> dict[str, RoiCrop]:
    """Crop every ROI of ``specs`` from one volume.

    Site-supplied ``boxes`` win; the others are found once with
    ``client.roi.find_boxes``. An ROI cut from another ROI's box (``box_region``,
    e.g. the parenchyma from the lung box) uses that box.

    Args:
        volume: Canonical HU volume.
        specs: One spec per ROI.
        boxes: Optional site-supplied boxes by ROI name.
        margin_mm: Margin around automatically found boxes.

    Returns:
        Crop by ROI name.

    Raises:
        client.roi.ROINotFoundError: When an automatic ROI cannot be found.
    """
    chosen = dict(boxes or {})
    regions = {s.roi: box_region(s.roi) for s in specs}
    missing = sorted({r for r in regions.values() if r not in chosen})
    lungs = None  # the lung mask, found once for the boxes and the masked crops
    if missing or any(s.roi in roi.MASKED_ROIS for s in specs):
        lungs = roi.strided_lung_mask(volume.hu, volume.spacing_mm)
    if missing:
        chosen.update(
            find_boxes(
                volume.hu, volume.spacing_mm, missing, margin_mm=margin_mm, lungs=lungs
            )
        )
    crops = {}
    for spec in specs:
        box = chosen[regions[spec.roi]]
        crop, spacing = crop_roi(volume, box, spec, lungs=lungs)
        crops[spec.roi] = RoiCrop(crop, spacing, box)  # type: ignore[arg-type]
    return crops
