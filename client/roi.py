"""Find the lung and heart regions of interest (ROI boxes) in a canonical CT volume.

Masks are thresholds plus connected components (``scipy.ndimage``); large volumes
are strided down to about ``ROI_TARGET_MM`` voxels first, so a 300 x 512 x 512
volume is labelled at roughly 150 x 170 x 170. Volumes are in the canonical
orientation of ``client.dicom_types.CTVolume``: axis 0 inferior->superior, axis 1
anterior->posterior, axis 2 patient right->left.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

ROI_TARGET_MM = (2.5, 2.5, 2.5)  # coarsest voxel (z, y, x) used for mask finding
BODY_HU = -500.0
LUNG_HU = -400.0
SOFT_TISSUE_HU = (-100.0, 300.0)
MIN_LUNG_ML = 100.0  # below this no lungs are considered found
SECOND_LUNG_FRACTION = 0.25  # a 2nd air component this size of the 1st is a lung
AIRWAY_AREA_FRACTION = 0.03  # small midline 2-D components are trachea/bronchi
MIN_HEART_ML = 20.0
# ROIs cut from another ROI's box (in their own HU window).
BOX_OF_ROI: Mapping[str, str] = MappingProxyType(
    {"parenchyma": "lung", "lung_masked": "lung"}
)
# ROIs whose voxels outside the lung fields take the lungs' median density.
MASKED_ROIS = frozenset({"lung_masked"})
# In-plane closing radius that re-attaches nodules lying on the pleura to the lung.
LUNG_FIELD_CLOSING_MM = 6.0
_SIX = ndimage.generate_binary_structure(3, 1)


class ROINotFoundError(ValueError):
    """No usable ROI was found in the volume; the message says why."""


@dataclass(frozen=True)
class Box:
    """A voxel box: ``start`` inclusive, ``stop`` exclusive, per axis (z, y, x)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def __post_init__(self) -> None:
        """Validate the corners."""
        if len(self.start) != 3 or len(self.stop) != 3:
            raise ValueError(f"Box needs 3-D corners, got {self.start}, {self.stop}")
        if any(a < 0 or b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(
                f"Box needs 0 <= start < stop per axis, got {self.start}, {self.stop}"
            )

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxels per axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def to_slices(self) -> tuple[slice, slice, slice]:
        """Slices for indexing a (Z, Y, X) array."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def grow_to(self, min_size: Sequence[int], shape: Sequence[int]) -> Box:
        """Grow to at least ``min_size`` voxels, centred, then shifted into ``shape``.

        Along an axis where the volume is smaller than ``min_size`` the box covers
        the whole axis (the caller pads).

        Args:
            min_size: Minimum voxels per axis.
            shape: Volume shape (Z, Y, X).

        Returns:
            The grown box, inside the volume.
        """
        start, stop = [], []
        for a, b, want, n in zip(self.start, self.stop, min_size, shape, strict=True):
            size = min(max(b - a, want), n)
            lo = int(math.floor((a + b) / 2 - size / 2))
            lo = min(max(lo, 0), n - size)
            start.append(lo)
            stop.append(lo + size)
        return Box(tuple(start), tuple(stop))  # type: ignore[arg-type]

    def expand(self, margin: Sequence[int], shape: Sequence[int]) -> Box:
        """Add ``margin`` voxels on each side, clamped to ``shape``."""
        return Box(
            tuple(max(a - m, 0) for a, m in zip(self.start, margin, strict=True)),  # type: ignore[arg-type]
            tuple(
                min(b + m, n) for b, m, n in zip(self.stop, margin, shape, strict=True)
            ),  # type: ignore[arg-type]
        )

    def contains(self, point: Sequence[float]) -> bool:
        """Whether a voxel coordinate lies inside the box."""
        return all(
            a <= p < b for a, p, b in zip(self.start, point, self.stop, strict=True)
        )

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box:
        """The tight box around the True voxels of a non-empty 3-D mask."""
        coords = [
            np.nonzero(mask.any(axis=tuple(o for o in range(3) if o != a)))[0]
            for a in range(3)
        ]
        if any(c.size == 0 for c in coords):
            raise ROINotFoundError("mask is empty")
        return cls(
            tuple(int(c[0]) for c in coords),  # type: ignore[arg-type]
            tuple(int(c[-1]) + 1 for c in coords),  # type: ignore[arg-type]
        )


def _strides(spacing: Sequence[float]) -> tuple[int, int, int]:
    """Integer strides bringing each axis to at most about ``ROI_TARGET_MM``."""
    return tuple(
        max(1, int(t // s)) for t, s in zip(ROI_TARGET_MM, spacing, strict=True)
    )  # type: ignore[return-value]


def _upscale(box: Box, strides: Sequence[int], shape: Sequence[int]) -> Box:
    """Map a box found on a strided volume back to full resolution."""
    return Box(
        tuple(a * f for a, f in zip(box.start, strides, strict=True)),  # type: ignore[arg-type]
        tuple(min(b * f, n) for b, f, n in zip(box.stop, strides, shape, strict=True)),  # type: ignore[arg-type]
    )


def _margin_voxels(margin_mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(math.ceil(margin_mm / s)) for s in spacing)


def _largest(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel counts of labels 1..n (index 0 is background)."""
    return np.bincount(labels.ravel(), minlength=n + 1)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body: HU > -500, largest 3-D component, holes filled per slice.

    Args:
        hu: (Z, Y, X) Hounsfield units.

    Returns:
        Boolean mask of the body with internal air (lungs, bowel) filled in.
    """
    labels, n = ndimage.label(hu > BODY_HU, structure=_SIX)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    counts = _largest(labels, n)
    counts[0] = 0
    body = labels == int(np.argmax(counts))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    # Only in-plane connectivity: each axial slice is filled on its own.
    return ndimage.binary_fill_holes(body, structure=in_plane)


def _remove_airways(lungs: np.ndarray) -> np.ndarray:
    """Drop small 2-D components that straddle the left-right midline (airways)."""
    areas = lungs.sum(axis=(1, 2))
    xs = np.nonzero(lungs.any(axis=(0, 1)))[0]
    midline = (xs[0] + xs[-1]) / 2
    limit = AIRWAY_AREA_FRACTION * areas.max()
    out = lungs.copy()
    for z in np.nonzero((areas > 0) & (areas < areas.max()))[0]:
        labels, _ = ndimage.label(lungs[z])
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            x_lo, x_hi = found[1].start, found[1].stop - 1
            small = (labels[found] == index).sum() < limit
            if small and x_lo <= midline <= x_hi:
                out[z][labels == index] = False
    return out


def lung_mask(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Both lungs: enclosed air (HU < -400) not connected to the in-plane border.

    Air touching the in-plane border is outside the patient; of the rest, the
    largest 3-D component is kept, plus the second largest when it holds at least
    ``SECOND_LUNG_FRACTION`` of the first (lungs separated). The trachea and main
    bronchi are then removed where feasible: small axial 2-D components that
    straddle the midline. We do not intersect with ``body_mask``: when the field of
    view cuts the body, its slices cannot be hole-filled, whereas the border rule
    still holds.

    Args:
        hu: (Z, Y, X) Hounsfield units, canonical orientation.
        spacing: Voxel spacing (z, y, x) in mm.

    Returns:
        Boolean lung mask.

    Raises:
        ROINotFoundError: When less than ``MIN_LUNG_ML`` of enclosed air is found.
    """
    labels, n = ndimage.label(hu < LUNG_HU, structure=_SIX)
    counts = _largest(labels, n)
    faces = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    counts[np.unique(np.concatenate([f.ravel() for f in faces]))] = 0
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if counts[order[0]] * voxel_ml < MIN_LUNG_ML:
        raise ROINotFoundError(
            f"no lungs found: the largest enclosed air region is "
            f"{counts[order[0]] * voxel_ml:.0f} mL (< {MIN_LUNG_ML:.0f} mL); the series "
            "may not cover the chest, or supply ROI boxes for this exam"
        )
    keep = [order[0]]
    if n > 1 and counts[order[1]] >= SECOND_LUNG_FRACTION * counts[order[0]]:
        keep.append(order[1])
    return _remove_airways(np.isin(labels, keep))


def _close_and_fill(lungs: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Lungs plus what they enclose, slice by slice (see ``lung_field_mask``)."""
    radius = [max(1, round(LUNG_FIELD_CLOSING_MM / s)) for s in spacing[1:]]
    yy, xx = np.ogrid[-radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1]
    disk = ((yy / radius[0]) ** 2 + (xx / radius[1]) ** 2 <= 1.0)[None]
    # Padded so that the erosion does not eat lung touching the array's edge; a
    # closing with a symmetric disk keeps every voxel of ``lungs``.
    pad = ((0, 0), (radius[0],) * 2, (radius[1],) * 2)
    closed = ndimage.binary_closing(np.pad(lungs, pad), structure=disk)
    closed = closed[:, radius[0] : -radius[0], radius[1] : -radius[1]]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(closed, structure=in_plane)


def strided_lung_mask(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``lung_mask`` of the strided volume every box finder here works on.

    Computed once per exam, it can be handed to ``find_boxes`` and
    ``lung_field_mask`` so neither labels the volume's air again.

    Raises:
        ROINotFoundError: When no lungs are found.
    """
    small, small_spacing, _ = _downsample(hu, spacing)
    return lung_mask(small, small_spacing)


def _lungs_of(
    small: np.ndarray, small_spacing: Sequence[float], lungs: np.ndarray | None
) -> np.ndarray:
    """The strided volume's lung mask: ``lungs`` when given (checked), else found."""
    if lungs is None:
        return lung_mask(small, small_spacing)
    if lungs.shape != small.shape:
        raise ValueError(
            f"precomputed lung mask has shape {lungs.shape}, the strided volume "
            f"{small.shape}; compute it with strided_lung_mask on the same volume"
        )
    return lungs


def lung_field_mask(
    hu: np.ndarray,
    spacing: Sequence[float],
    box: Box | None = None,
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """The lung fields: both lungs with the nodules, vessels and consolidation in them.

    The lung mask (``lung_mask``, on the strided volume) is closed in plane with a
    disk of ``LUNG_FIELD_CLOSING_MM``, so a nodule on the pleura, which dents the
    mask, is taken back in, and each axial slice's holes are filled. Pleural fluid
    and the chest wall stay outside.

    Args:
        hu: (Z, Y, X) Hounsfield units.
        spacing: Voxel spacing (z, y, x) in mm.
        box: Return only this region of the mask (full resolution); whole volume
            when None.
        lungs: ``strided_lung_mask`` of the same volume when already computed.

    Returns:
        Boolean mask of the box (nearest strided voxel).

    Raises:
        ROINotFoundError: When no lungs are found.
        ValueError: When ``lungs`` does not match the strided volume.
    """
    small, small_spacing, strides = _downsample(hu, spacing)
    lungs = _lungs_of(small, small_spacing, lungs)
    field = _close_and_fill(lungs, small_spacing)
    box = box or Box((0, 0, 0), hu.shape)
    index = [
        np.arange(a, b) // s
        for a, b, s in zip(box.start, box.stop, strides, strict=True)
    ]
    return field[np.ix_(*index)]


def _downsample(
    hu: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, list[float], tuple[int, int, int]]:
    """Strided view of ``hu`` (no copy) with its spacing and the strides used."""
    strides = _strides(spacing)
    small = hu[:: strides[0], :: strides[1], :: strides[2]]
    return small, [s * f for s, f in zip(spacing, strides, strict=True)], strides


def _full_box(
    small_box: Box,
    strides: Sequence[int],
    hu: np.ndarray,
    spacing: Sequence[float],
    margin_mm: float,
) -> Box:
    """Upscale a box found on the strided volume and add the margin."""
    box = _upscale(small_box, strides, hu.shape)
    return box.expand(_margin_voxels(margin_mm, spacing), hu.shape)


def find_lung_box(
    hu: np.ndarray, spacing: Sequence[float], margin_mm: float = 5.0
) -> Box:
    """Bounding box of both lungs plus ``margin_mm``, at full resolution.

    Args:
        hu: (Z, Y, X) Hounsfield units.
        spacing: Voxel spacing (z, y, x) in mm.
        margin_mm: Margin added on every side.

    Returns:
        The lung box.

    Raises:
        ROINotFoundError: When no lungs are found.
    """
    small, small_spacing, strides = _downsample(hu, spacing)
    lungs = lung_mask(small, small_spacing)
    return _full_box(Box.from_mask(lungs), strides, hu, spacing, margin_mm)


def _between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung both to their patient-right and patient-left on their row."""
    to_left = np.maximum.accumulate(lungs, axis=2)
    to_right = np.maximum.accumulate(lungs[:, :, ::-1], axis=2)[:, :, ::-1]
    return to_left & to_right & ~lungs


def _heart_candidates(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Soft tissue between the lungs, lower half of the lungs, anterior two thirds."""
    box = Box.from_mask(lungs)
    (z0, y0, _), (z1, y1, _) = box.start, box.stop
    region = np.zeros(hu.shape, dtype=bool)
    region[z0 : z0 + max((z1 - z0) // 2, 1), y0 : y0 + max(2 * (y1 - y0) // 3, 1)] = (
        True
    )
    lo, hi = SOFT_TISSUE_HU
    return region & _between_lungs(lungs) & (hu >= lo) & (hu <= hi)


def _heart_small_box(
    small: np.ndarray, small_lungs: np.ndarray, small_spacing: Sequence[float]
) -> Box:
    """The heart heuristic on the strided volume (see ``find_heart_box``)."""
    if not small_lungs.any():
        raise ROINotFoundError("the lung mask is empty; cannot place the heart box")
    candidates = ndimage.binary_opening(_heart_candidates(small, small_lungs))
    labels, n = ndimage.label(candidates, structure=_SIX)
    counts = _largest(labels, n)
    counts[0] = 0
    voxel_ml = float(np.prod(small_spacing)) / 1000.0
    if n == 0 or counts.max() * voxel_ml < MIN_HEART_ML:
        raise ROINotFoundError(
            "no mediastinal soft tissue (-100..300 HU) found between the lungs; "
            "supply a heart box for this exam"
        )
    return Box.from_mask(labels == int(np.argmax(counts)))


def find_heart_box(
    hu: np.ndarray,
    spacing: Sequence[float],
    lungs: np.ndarray | None = None,
    margin_mm: float = 5.0,
) -> Box:
    """Approximate heart box from the mediastinum between the lungs.

    Heuristic (documented because it is one): the heart is the largest connected
    region of soft tissue (-100..300 HU) that lies between the two lungs on its
    left-right row, in the lower (inferior) half of the lung extent and the
    anterior two thirds of the lung depth (which excludes the spine, descending
    aorta and oesophagus behind it). Its bounding box plus ``margin_mm`` is
    returned. It is a crop window for a classifier, not a segmentation.

    Args:
        hu: (Z, Y, X) Hounsfield units.
        spacing: Voxel spacing (z, y, x) in mm.
        lungs: Optional precomputed full-resolution lung mask.
        margin_mm: Margin added on every side.

    Returns:
        The heart box at full resolution.

    Raises:
        ROINotFoundError: When no lungs or no mediastinal tissue is found.
    """
    small, small_spacing, strides = _downsample(hu, spacing)
    if lungs is None:
        small_lungs = lung_mask(small, small_spacing)
    else:
        small_lungs = lungs[:: strides[0], :: strides[1], :: strides[2]]
    box = _heart_small_box(small, small_lungs, small_spacing)
    return _full_box(box, strides, hu, spacing, margin_mm)


def box_region(roi: str) -> str:
    """The ROI whose box ``roi`` is cut from (itself unless in ``BOX_OF_ROI``)."""
    return BOX_OF_ROI.get(roi, roi)


def find_boxes(
    hu: np.ndarray,
    spacing: Sequence[float],
    rois: Sequence[str] = ("lung", "heart"),
    margin_mm: float = 5.0,
    lungs: np.ndarray | None = None,
) -> dict[str, Box]:
    """Find the requested ROI boxes, computing the lung mask once.

    Args:
        hu: (Z, Y, X) Hounsfield units.
        spacing: Voxel spacing (z, y, x) in mm.
        rois: Any of ``"lung"``, ``"heart"`` and ``"chest"`` (the body's in-plane
            extent over the lungs' slices: the whole thorax cross-section).
        margin_mm: Margin added on every side of each box.
        lungs: ``strided_lung_mask`` of the same volume when already computed.

    Returns:
        Box by ROI name.

    Raises:
        ROINotFoundError: When a requested ROI cannot be found.
        ValueError: For an unknown ROI name, or ``lungs`` not matching the volume.
    """
    unknown = set(rois) - {"lung", "heart", "chest"}
    if unknown:
        raise ValueError(
            f"unknown ROI(s) {sorted(unknown)}; use 'lung', 'heart' or 'chest'"
        )
    small, small_spacing, strides = _downsample(hu, spacing)
    lungs = _lungs_of(small, small_spacing, lungs)
    boxes = {}
    if "lung" in rois:
        boxes["lung"] = _full_box(Box.from_mask(lungs), strides, hu, spacing, margin_mm)
    if "heart" in rois:
        heart = _heart_small_box(small, lungs, small_spacing)
        boxes["heart"] = _full_box(heart, strides, hu, spacing, margin_mm)
    if "chest" in rois:
        lung_box, body = Box.from_mask(lungs), Box.from_mask(body_mask(small))
        chest = Box(
            (lung_box.start[0], body.start[1], body.start[2]),
            (lung_box.stop[0], body.stop[1], body.stop[2]),
        )
        boxes["chest"] = _full_box(chest, strides, hu, spacing, margin_mm)
    return boxes
