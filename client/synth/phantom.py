"""Chest CT phantom in HU from analytic shapes and smooth noise.

``render_phantom`` draws, in canonical orientation (axis 0 inferior -> superior,
axis 1 anterior -> posterior, axis 2 patient right -> left): air outside the body,
subcutaneous fat (-100 HU), muscle and soft tissue (40), liver (55), mediastinal fat
(-90), two lungs (about -850 with a posterior density gradient and vessel-like
strands), trachea and main bronchi (air with a soft-tissue wall), the heart (40) in
epicardial fat, the aorta (40), the spine (cancellous 220, cortex 650, discs 90),
ribs (600) and sternum (450), and then every finding of ``findings.Findings`` (see
``lesions``). Geometry is in millimetres, so any grid and spacing works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.synth.anatomy import (
    Anatomy,
    airway_segments,
    aorta_segments,
    heart_ellipsoid,
    lung_shape,
    spine_center,
)
from client.synth.findings import Findings
from client.synth.lesions import paint_findings
from client.synth.paint import Grid, paint_capsule, paint_ellipsoid, smooth_noise

__all__ = ["Grid", "Phantom", "make_grid", "render_phantom", "mask_box"]


@dataclass
class Phantom:
    """A rendered exam.

    Attributes:
        volume: float32 HU array (slices, rows, columns), canonical orientation.
        grid: Its grid.
        masks: "lungs" and "heart" boolean masks.
        boxes: Organ -> {"lo": [k, i, j], "hi": [k, i, j]} (hi exclusive).
        rendered: Measurements of what was drawn (JSON-serialisable).
    """

    volume: np.ndarray
    grid: Grid
    masks: dict[str, np.ndarray]
    boxes: dict[str, dict[str, list[int]]]
    rendered: dict


def make_grid(
    anat: Anatomy,
    *,
    rows: int,
    pixel_spacing_mm: float,
    slice_spacing_mm: float,
    margin_below_mm: float,
    margin_above_mm: float,
) -> Grid:
    """Grid that covers the lungs plus margins.

    Args:
        anat: Body parameters.
        rows: Rows and columns per slice.
        pixel_spacing_mm: In-plane spacing.
        slice_spacing_mm: Distance between slices.
        margin_below_mm: Scan range below the lung base.
        margin_above_mm: Scan range above the apex.

    Returns:
        The grid.
    """
    extent = anat.lung_height_mm + margin_below_mm + margin_above_mm
    slices = int(round(extent / slice_spacing_mm)) + 1
    return Grid(
        (slices, rows, rows),
        (slice_spacing_mm, pixel_spacing_mm, pixel_spacing_mm),
        -margin_below_mm,
    )


def mask_box(mask: np.ndarray) -> dict[str, list[int]]:
    """Bounding box {"lo": [...], "hi": [...]} (hi exclusive) of a boolean mask."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hits[0]) if hits.size else 0)
        hi.append(int(hits[-1]) + 1 if hits.size else 0)
    return {"lo": lo, "hi": hi}


def _ellipse(y, x, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _body(vol: np.ndarray, anat: Anatomy, axes) -> np.ndarray:
    """Air, fat, muscle, liver and mediastinal fat; returns the cavity mask (2-D)."""
    z, y, x = axes
    w, d = anat.body_width_mm / 2, anat.body_depth_mm / 2
    wc, dc = anat.cavity
    plane = np.full(vol.shape[1:], -1000.0, dtype=np.float32)
    plane[_ellipse(y, x, 0, 0, d, w)[0]] = -100.0
    plane[_ellipse(y, x, 0, 0, d - anat.fat_mm, w - anat.fat_mm)[0]] = 40.0
    vol[:] = plane
    cavity = _ellipse(y, x, 0, 0, dc, wc)[0]
    spine_y, _ = spine_center(anat)
    fat = cavity & (np.abs(x[0]) < 42.0) & (y[0] < spine_y - 16.0)
    vol[(z[:, 0, 0] > 0.3 * anat.lung_height_mm)[:, None, None] & fat[None]] = -90.0
    dome = 36.0 * np.clip(1.0 - ((x + 60.0) / 70.0) ** 2 - (y / dc) ** 2, 0.0, 1.0)
    liver = (z < dome + 6.0) & (z < 0.25 * anat.lung_height_mm) & (x < 30.0)
    vol[liver & cavity[None]] = 55.0
    return cavity


def _lungs(vol: np.ndarray, anat: Anatomy, grid: Grid, axes, rng) -> np.ndarray:
    """Lung parenchyma with density gradient and vessels; returns the lung region."""
    z, y, x = axes
    region = lung_shape(anat, -1, z, y, x) | lung_shape(anat, 1, z, y, x)
    box = mask_box(region)
    sl = tuple(slice(a, b) for a, b in zip(box["lo"], box["hi"], strict=True))
    zz, yy, xx = z[sl[0]], y[:, sl[1]], x[:, :, sl[2]]
    shape = tuple(s.stop - s.start for s in sl)
    tex = smooth_noise(rng, shape, grid.spacing, 6.0)
    n1 = smooth_noise(rng, shape, grid.spacing, 14.0)
    n2 = smooth_noise(rng, shape, grid.spacing, 14.0)
    dc = anat.cavity[1]
    base = -862.0 + 18.0 * tex + 28.0 * (yy / dc)
    (_, ty, _), _, _ = airway_segments(anat)[1]
    hilum = (
        (zz - 0.5 * anat.lung_height_mm) ** 2 + (yy - ty) ** 2 + (np.abs(xx) - 45) ** 2
    )
    width = 0.2 + 0.2 * np.exp(-hilum / (2 * 45.0**2))
    strand = np.clip(1.0 - np.sqrt(n1 * n1 + n2 * n2) / width, 0.0, 1.0)
    tissue = base + np.sqrt(strand) * (35.0 - base)
    local = region[sl]
    vol[sl][local] = tissue[local]
    return region


def _heart_vessels(
    vol: np.ndarray, anat: Anatomy, grid: Grid
) -> tuple[np.ndarray, ...]:
    """Heart in epicardial fat, aorta, trachea and bronchi; returns (heart, carved)."""
    centre, radii = heart_ellipsoid(anat)
    paint_ellipsoid(vol, grid, centre, radii + 4.0, -80.0)
    heart = np.zeros(vol.shape, dtype=bool)
    painted = paint_ellipsoid(vol, grid, centre, radii, 40.0)
    carved = np.zeros(vol.shape, dtype=bool)
    if painted is not None:
        sl, weight = painted
        heart[sl] = weight > 0.5
    carved |= heart
    for seg in aorta_segments(anat):
        painted = paint_capsule(vol, grid, seg, seg[2], 40.0)
        if painted is not None:
            carved[painted[0]] |= painted[1] > 0.0
    for seg in airway_segments(anat):
        painted = paint_capsule(vol, grid, seg, seg[2], 40.0)
        paint_capsule(vol, grid, seg, seg[2] - 2.0, -1000.0)
        if painted is not None:
            carved[painted[0]] |= painted[1] > 0.0
    return heart, carved


def _skeleton(vol: np.ndarray, anat: Anatomy, axes) -> None:
    """Vertebrae with discs, posterior elements, ribs and sternum."""
    z, y, x = axes
    sy, _ = spine_center(anat)
    yy, xx = y[0], x[0]
    r = np.sqrt((yy - sy) ** 2 + xx**2)
    disc = (np.mod(z[:, 0, 0] + 500.0, 28.0) < 5.0)[:, None]
    vol[:, r < 16.0] = np.where(disc, 90.0, 220.0)
    vol[:, (r >= 13.5) & (r < 16.0)] = np.where(disc, 90.0, 650.0)
    rc = np.sqrt((yy - sy - 26.0) ** 2 + xx**2)
    arch = (rc >= 8.0) & (rc < 13.0) & (yy > sy + 18.0)
    vol[:, arch | _ellipse(yy, xx, sy + 44.0, 0.0, 12.0, 5.0)] = 550.0
    vol[:, rc < 8.0] = 20.0
    wc, dc = anat.cavity
    rho = np.sqrt((xx / wc) ** 2 + (yy / dc) ** 2)
    ring = (rho > 1.0 + 2.0 / wc) & (rho < 1.0 + 9.0 / wc)
    ring &= ~((yy < -0.5 * dc) & (np.abs(xx) < 30.0))
    ribs = (np.mod(z - 0.35 * y + 500.0, 24.0) < 8.0) & (z > -30.0)
    ribs &= z < anat.lung_height_mm + 10.0
    vol[ribs & ring[None]] = 600.0
    h = anat.lung_height_mm
    sternum = _ellipse(yy, xx, -dc - 4.0, 0.0, 6.0, 14.0)
    level = (z > 0.25 * h) & (z < 0.85 * h)
    vol[level & sternum[None]] = 450.0


def render_phantom(
    anat: Anatomy, findings: Findings, grid: Grid, *, noise_hu: float, seed: int
) -> Phantom:
    """Render one exam.

    Args:
        anat: Body parameters.
        findings: What is abnormal.
        grid: Voxel grid to render on.
        noise_hu: Standard deviation of white noise added at the end.
        seed: Seed of the texture and noise (same seed -> same array).

    Returns:
        The phantom with masks, organ boxes and rendered measurements.
    """
    rng = np.random.default_rng(seed)
    axes = grid.axes()
    vol = np.empty(grid.shape, dtype=np.float32)
    _body(vol, anat, axes)
    region = _lungs(vol, anat, grid, axes, rng)
    heart, carved = _heart_vessels(vol, anat, grid)
    _skeleton(vol, anat, axes)
    lungs = region & ~carved
    rendered = paint_findings(vol, grid, anat, findings, lungs, rng)
    vol += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(noise_hu)
    masks = {"lungs": lungs, "heart": heart}
    boxes = {name: mask_box(mask) for name, mask in masks.items()}
    return Phantom(vol, grid, masks, boxes, rendered)
