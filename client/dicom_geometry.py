"""Slice geometry: order slices along the slice normal, find gaps, canonicalise axes.

Pure NumPy, no DICOM reading, so every rule here is unit-testable on plain arrays.
The canonical orientation is DICOM LPS with the standard axial orientation: axis 0
inferior to superior, axis 1 anterior to posterior, axis 2 patient right to left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

AXIAL_MAX_ANGLE_DEG = 20.0  # slice normal vs patient z; steeper series are not axial
OBLIQUE_WARN_DEG = 2.0  # in-plane axes further than this from x/y get a warning
DUPLICATE_TOL_MM = 0.01  # slices closer than this along the normal are duplicates
GAP_RATIO = 1.5  # a step above 1.5 x the median step is a gap
SPACING_TOL = 0.10  # steps may deviate 10 % from the median (or from k x median)
SHEAR_TOL_PX = 0.5  # in-plane drift of the slice origin, in pixels


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: row cosines x column cosines.

    Args:
        orientation: ImageOrientationPatient, six values (row then column cosines).

    Returns:
        The unit normal, oriented so that its z component is >= 0.
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    normal /= norm
    return -normal if normal[2] < 0 else normal


def axial_angle_deg(orientation: Sequence[float]) -> float:
    """Angle in degrees between the slice normal and the patient z axis (0..90)."""
    normal = slice_normal(orientation)
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


@dataclass(frozen=True)
class InPlaneMapping:
    """How to turn an (S, rows, cols) slice stack into canonical (S, y, x) axes.

    Attributes:
        transpose: Swap the in-plane axes (image rows run along patient x).
        flip_y: Reverse canonical axis 1 after the optional transpose.
        flip_x: Reverse canonical axis 2 after the optional transpose.
        oblique_deg: Largest angle between an in-plane axis and x or y.
    """

    transpose: bool
    flip_y: bool
    flip_x: bool
    oblique_deg: float


def in_plane_mapping(orientation: Sequence[float]) -> InPlaneMapping:
    """Map the image row/column directions onto patient x (left) and y (posterior).

    Args:
        orientation: ImageOrientationPatient of an axial series.

    Returns:
        The mapping to canonical axes.

    Raises:
        ValueError: When the in-plane axes do not map onto distinct x and y axes.
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    row_axis, col_axis = int(np.argmax(np.abs(row))), int(np.argmax(np.abs(col)))
    if {row_axis, col_axis} != {0, 1}:
        raise ValueError("image axes do not lie along patient x and y (not axial)")
    cosines = min(abs(row[row_axis]), abs(col[col_axis])) / max(
        float(np.linalg.norm(row)), float(np.linalg.norm(col))
    )
    oblique = math.degrees(math.acos(min(1.0, cosines)))
    if row_axis == 0:  # columns run along x, rows along y: no transpose
        return InPlaneMapping(False, bool(col[1] < 0), bool(row[0] < 0), oblique)
    return InPlaneMapping(True, bool(row[1] < 0), bool(col[0] < 0), oblique)


def to_canonical(stack: np.ndarray, mapping: InPlaneMapping) -> np.ndarray:
    """Apply an in-plane mapping to an (S, rows, cols) stack already sorted by z.

    Args:
        stack: Slices ordered inferior to superior, shape (S, rows, cols).
        mapping: From ``in_plane_mapping``.

    Returns:
        A C-contiguous (S, y, x) array.
    """
    out = stack.transpose(0, 2, 1) if mapping.transpose else stack
    if mapping.flip_y:
        out = out[:, ::-1, :]
    if mapping.flip_x:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def canonical_pixel_spacing(
    pixel_spacing: Sequence[float], mapping: InPlaneMapping
) -> tuple[float, float]:
    """Spacing (y, x) in mm from PixelSpacing (between rows, between columns)."""
    row_step, col_step = float(pixel_spacing[0]), float(pixel_spacing[1])
    return (col_step, row_step) if mapping.transpose else (row_step, col_step)


@dataclass
class SlicePlan:
    """Result of ordering one series' slices.

    Attributes:
        order: Indices of the kept slices, inferior to superior.
        duplicates: (dropped index, kept index) pairs at the same position.
        fill_after: Positions k in ``order`` after which one missing slice is
            interpolated from ``order[k]`` and ``order[k + 1]``.
        step_mm: The median step between kept slices along the normal.
        error: (code, message, index of the slice concerned) or None.
    """

    order: list[int] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    fill_after: list[int] = field(default_factory=list)
    step_mm: float = 0.0
    error: tuple[str, str, int] | None = None


def _dedupe(
    dist: np.ndarray, instance: np.ndarray
) -> tuple[list[int], list[tuple[int, int]]]:
    """Sort by distance (ties by InstanceNumber) and drop repeated positions."""
    order = np.lexsort((instance, dist))
    kept: list[int] = []
    duplicates: list[tuple[int, int]] = []
    for idx in order.tolist():
        if kept and dist[idx] - dist[kept[-1]] < DUPLICATE_TOL_MM:
            duplicates.append((idx, kept[-1]))
        else:
            kept.append(idx)
    return kept, duplicates


def _check_shear(
    positions: np.ndarray, normal: np.ndarray, order: list[int], pixel_mm: float
) -> tuple[str, str, int] | None:
    """Reject series whose slice origins drift in-plane (gantry tilt, shear)."""
    pts = positions[order]
    in_plane = pts - np.outer(pts @ normal, normal)
    drift = np.linalg.norm(in_plane - in_plane[0], axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] > SHEAR_TOL_PX * pixel_mm:
        msg = (
            f"slice origins drift {drift[worst]:.2f} mm in-plane (gantry tilt or "
            "sheared stack); resample to an untilted axial grid or pin another series"
        )
        return "sheared_geometry", msg, order[worst]
    return None


def _classify_steps(
    dist: np.ndarray, order: list[int], plan: SlicePlan
) -> tuple[str, str, int] | None:
    """Fill ``plan.fill_after`` and return the first gap/spacing error, if any."""
    steps = np.diff(dist[order])
    median = float(np.median(steps))
    plan.step_mm = median
    for k, step in enumerate(steps.tolist()):
        ratio = step / median
        multiple = 1 if ratio <= GAP_RATIO else round(ratio)
        where = f"between z={dist[order[k]]:.2f} and z={dist[order[k + 1]]:.2f} mm"
        if abs(ratio - multiple) > SPACING_TOL * multiple:
            msg = (
                f"slice step {step:.3f} mm {where} differs from the median "
                f"{median:.3f} mm by more than {SPACING_TOL:.0%}; re-export one "
                "uniformly spaced reconstruction"
            )
            return "inconsistent_spacing", msg, order[k + 1]
        if multiple == 2:
            plan.fill_after.append(k)
        elif multiple > 2:
            msg = (
                f"{multiple - 1} slices missing {where} (median step {median:.3f} mm);"
                " re-send the complete series"
            )
            return "gap", msg, order[k + 1]
    return None


def plan_slices(
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    *,
    instance_numbers: Sequence[int | None] | None = None,
) -> SlicePlan:
    """Order slices along the slice normal; find duplicates, gaps and bad spacing.

    The order comes from ImagePositionPatient projected on the slice normal (the
    cross product of the orientation cosines), never from InstanceNumber or file
    order. A step above ``GAP_RATIO`` x the median is a gap: one missing slice is
    marked for interpolation, more are an error. Other steps must stay within
    ``SPACING_TOL`` of the median.

    Args:
        positions: (N, 3) ImagePositionPatient values in mm.
        orientation: ImageOrientationPatient shared by all slices.
        pixel_spacing: PixelSpacing in mm (used for the shear tolerance).
        instance_numbers: Optional tie-break among duplicate positions.

    Returns:
        The plan; ``plan.error`` is set when the series cannot be used.
    """
    positions = np.asarray(positions, dtype=np.float64)
    normal = slice_normal(orientation)
    dist = positions @ normal
    numbers = [0 if n is None else n for n in (instance_numbers or [0] * len(dist))]
    plan = SlicePlan()
    plan.order, plan.duplicates = _dedupe(dist, np.asarray(numbers))
    if len(plan.order) < 2:
        msg = "fewer than 2 distinct slice positions; re-send the complete series"
        plan.error = ("too_few_slices", msg, plan.order[0] if plan.order else 0)
        return plan
    plan.error = _check_shear(positions, normal, plan.order, min(pixel_spacing))
    if plan.error is None:
        plan.error = _classify_steps(dist, plan.order, plan)
    return plan
