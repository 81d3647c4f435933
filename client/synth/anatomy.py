"""Analytic chest anatomy in millimetres: body, lungs, lobes, heart, aorta, airways.

Anatomical coordinates (mm): ``z`` upward from the lung base (inferior -> superior),
``y`` anterior -> posterior, ``x`` patient right -> left; the body axis is at
``x = y = 0``. ``x`` and ``y`` therefore run like DICOM patient (LPS) x and y. All
predicates take broadcastable arrays so the renderer can evaluate them on a grid
and the findings sampler on a handful of points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Anatomy",
    "LOBES",
    "Segment",
    "lung_shape",
    "lung_free",
    "lobe_of",
    "heart_ellipsoid",
    "aorta_segments",
    "airway_segments",
    "segment_distance",
    "spine_center",
]

LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
# (start (z, y, x), end (z, y, x), radius) of a capsule.
Segment = tuple[tuple[float, float, float], tuple[float, float, float], float]
_MEDIAL_MM = 22.0


@dataclass(frozen=True)
class Anatomy:
    """Body size parameters of one patient.

    Attributes:
        body_width_mm: Left-right diameter of the body.
        body_depth_mm: Anterior-posterior diameter of the body.
        fat_mm: Subcutaneous fat thickness.
        lung_height_mm: Lung base to apex.
        heart_scale: Heart size multiplier (> 1.15 looks like cardiomegaly).
    """

    body_width_mm: float = 300.0
    body_depth_mm: float = 220.0
    fat_mm: float = 15.0
    lung_height_mm: float = 200.0
    heart_scale: float = 1.0

    @property
    def cavity(self) -> tuple[float, float]:
        """Semi-axes (x, y) of the thoracic cavity inside fat, muscle and ribs."""
        wall = self.fat_mm + 12.0
        return self.body_width_mm / 2 - wall, self.body_depth_mm / 2 - wall

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        """In-plane ellipse (cx, cy, rx, ry) of one lung at full width.

        Args:
            side: -1 for the right lung, +1 for the left lung.

        Returns:
            Centre and semi-axes in mm.
        """
        wc, dc = self.cavity
        rx = (0.96 * wc - _MEDIAL_MM) / 2
        return side * (_MEDIAL_MM + rx), 0.06 * dc, rx, 0.86 * dc


def lung_shape(anat: Anatomy, side: int, z, y, x) -> np.ndarray:
    """Whether points lie inside one lung's outline (before carving organs).

    The lung is an elliptic cylinder that tapers to a dome at the apex and sits on
    a diaphragm dome (higher on the right, over the liver).

    Args:
        anat: Body parameters.
        side: -1 right, +1 left.
        z: Height above the lung base (mm), broadcastable.
        y: Anterior-posterior coordinate (mm), broadcastable.
        x: Right-left coordinate (mm), broadcastable.

    Returns:
        Boolean array of the broadcast shape.
    """
    cx, cy, rx, ry = anat.lung_ellipse(side)
    h = anat.lung_height_mm
    t = np.clip((z - 0.6 * h) / (0.4 * h), 0.0, 1.0)
    scale2 = 1.0 - t * t
    u = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    dome = (36.0 if side < 0 else 28.0) * np.clip(1.0 - u, 0.0, 1.0)
    return (u <= scale2) & (z >= dome) & (z <= h)


def heart_ellipsoid(anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Centre (z, y, x) and semi-axes (z, y, x) of the heart in mm."""
    wc, dc = anat.cavity
    h, s = anat.lung_height_mm, anat.heart_scale
    centre = np.array([0.26 * h, -0.32 * dc, 0.14 * wc])
    radii = np.array([0.22 * h * s, 0.48 * dc * s, 0.46 * wc * s])
    return centre, radii


def spine_center(anat: Anatomy) -> tuple[float, float]:
    """In-plane centre (y, x) of the vertebral bodies."""
    return 0.78 * anat.cavity[1], 0.0


def aorta_segments(anat: Anatomy) -> list[Segment]:
    """Centre-line capsules of the ascending aorta, the arch and the descending aorta.

    Args:
        anat: Body parameters.

    Returns:
        Capsules (start, end, radius) in mm.
    """
    wc, dc = anat.cavity
    h, r = anat.lung_height_mm, 12.5 * min(anat.heart_scale, 1.15)
    spine_y, _ = spine_center(anat)
    asc = (-0.18 * dc, -0.1 * wc)
    desc = (spine_y - 32.0, 0.2 * wc)
    top = 0.74 * h
    segments: list[Segment] = [((0.35 * h, *asc), (top, *asc), r)]
    points = []
    for t in np.linspace(0.0, 1.0, 7):
        y = asc[0] + (desc[0] - asc[0]) * t
        x = asc[1] + (desc[1] - asc[1]) * t
        points.append((top + 22.0 * np.sin(np.pi * t), y, x))
    segments += [(points[i], points[i + 1], r) for i in range(len(points) - 1)]
    segments.append(((top, *desc), (-80.0, *desc), r * 0.9))
    return [
        (tuple(map(float, a)), tuple(map(float, b)), float(c)) for a, b, c in segments
    ]


def airway_segments(anat: Anatomy) -> list[Segment]:
    """Trachea and main bronchi as capsules (outer radius, lumen = radius - 2 mm)."""
    h = anat.lung_height_mm
    spine_y, _ = spine_center(anat)
    ty = spine_y - 42.0
    carina = (0.62 * h, ty, 0.0)
    return [
        ((h + 80.0, ty, 0.0), carina, 9.0),
        (carina, (0.5 * h, ty + 6.0, -38.0), 7.0),
        (carina, (0.48 * h, ty + 8.0, 40.0), 6.5),
    ]


def segment_distance(seg: Segment, z, y, x) -> np.ndarray:
    """Distance (mm) of points to a capsule's centre line.

    Args:
        seg: The capsule.
        z: Coordinates (mm), broadcastable.
        y: Coordinates (mm), broadcastable.
        x: Coordinates (mm), broadcastable.

    Returns:
        Distances, broadcast shape.
    """
    (az, ay, ax), (bz, by, bx), _ = seg
    dz, dy, dx = bz - az, by - ay, bx - ax
    length2 = dz * dz + dy * dy + dx * dx
    t = ((z - az) * dz + (y - ay) * dy + (x - ax) * dx) / max(length2, 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(
        (z - az - t * dz) ** 2 + (y - ay - t * dy) ** 2 + (x - ax - t * dx) ** 2
    )


def _in_heart(anat: Anatomy, z, y, x, margin: float = 0.0) -> np.ndarray:
    centre, radii = heart_ellipsoid(anat)
    radii = radii + margin
    return (
        ((z - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((x - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def lung_free(anat: Anatomy, z, y, x, margin: float = 0.0) -> np.ndarray:
    """Whether points lie in lung parenchyma, clear of heart, aorta and airways.

    Args:
        anat: Body parameters.
        z: Coordinates (mm), broadcastable.
        y: Coordinates (mm), broadcastable.
        x: Coordinates (mm), broadcastable.
        margin: Extra clearance (mm) around the carved organs.

    Returns:
        Boolean array.
    """
    inside = lung_shape(anat, -1, z, y, x) | lung_shape(anat, 1, z, y, x)
    inside &= ~_in_heart(anat, z, y, x, margin + 3.0)
    for seg in aorta_segments(anat) + airway_segments(anat):
        inside &= segment_distance(seg, z, y, x) > seg[2] + margin + 1.0
    return inside


def lobe_of(anat: Anatomy, z, y, x) -> np.ndarray:
    """Index into ``LOBES`` for points (meaningful only inside a lung).

    The oblique fissure rises posteriorly; the right horizontal fissure splits the
    upper from the middle lobe.

    Args:
        anat: Body parameters.
        z: Coordinates (mm), broadcastable.
        y: Coordinates (mm), broadcastable.
        x: Coordinates (mm), broadcastable.

    Returns:
        Integer array of lobe indices.
    """
    h = anat.lung_height_mm
    _, cy, _, ry = anat.lung_ellipse(1)
    oblique = 0.42 * h + 0.3 * h * (y - cy) / ry
    below = z < oblique
    right = np.asarray(x) < 0
    right_lobe = np.where(below, 2, np.where(z > 0.6 * h, 0, 1))
    left_lobe = np.where(below, 4, 3)
    return np.where(right, right_lobe, left_lobe)
