"""Render the findings of an exam into a phantom volume.

Emphysema becomes clusters of <= -950 HU (upper-zone predominant) covering the
requested share of lung; fibrosis a reticular -250 HU pattern in the subpleural
bases; pleural effusion dependent fluid (10 HU) at the posterior lung base;
consolidation (25 HU) and plate-like atelectasis (10 HU) ellipsoids; COVID-19
peripheral ground-glass (-600 HU); nodules solid (35 HU), part-solid (solid core
in a -550 HU halo) or ground-glass (-550 HU), with radial spikes when spiculated;
enlarged mediastinal nodes, chest-wall masses and calcifications (300-700 HU).
"""

from __future__ import annotations

import numpy as np

from client.synth.anatomy import Anatomy, lung_shape
from client.synth.findings import Findings, Nodule
from client.synth.paint import Grid, paint_ellipsoid, smooth_noise

__all__ = ["paint_findings", "SOLID_HU", "GGO_HU", "EMPHYSEMA_HU"]

SOLID_HU = 35.0
GGO_HU = -550.0
EMPHYSEMA_HU = -978.0
_SPIKE_LENGTH = 1.2
_SPIKE_SHARPNESS = 24.0


def _box_slices(mask: np.ndarray) -> tuple[slice, ...]:
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(out)


def _emphysema(vol, grid, anat, fraction, lungs, rng) -> float:
    """Set the ``fraction`` of lung with the highest cluster field to <= -950 HU."""
    if fraction <= 0.0 or not lungs.any():
        return 0.0
    sl = _box_slices(lungs)
    local = lungs[sl]
    shape = local.shape
    field = smooth_noise(rng, shape, grid.spacing, 7.0)
    z = grid.axes()[0][sl[0]]
    field += (1.2 * z / anat.lung_height_mm).astype(np.float32)
    cut = np.quantile(field[local], 1.0 - fraction)
    hit = local & (field > cut)
    region = vol[sl]
    region[hit] = EMPHYSEMA_HU + 8.0 * field[hit].clip(-1, 1)
    return float(hit.sum() / local.sum())


def _fibrosis(vol, grid, anat, extent, lungs, rng, axes) -> int:
    """Reticular densities in the peripheral lung bases; returns voxels touched."""
    if extent <= 0.0:
        return 0
    z, y, x = axes
    h = anat.lung_height_mm
    zone = lungs & (z < (0.2 + 0.35 * extent) * h)
    for side in (-1, 1):
        cx, cy, rx, ry = anat.lung_ellipse(side)
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        inner = (rho < 1.0 - 0.35 * extent) & (np.sign(x) == side)
        zone &= ~inner
    if not zone.any():
        return 0
    sl = _box_slices(zone)
    pattern = np.abs(smooth_noise(rng, zone[sl].shape, grid.spacing, 5.0)) < 0.4
    hit = zone[sl] & pattern
    region = vol[sl]
    region[hit] += 0.8 * (-250.0 - region[hit])
    return int(hit.sum())


def _effusion(vol, anat, depths, lungs, axes) -> dict[str, int]:
    """Dependent fluid at the posterior lung bases."""
    z, y, x = axes
    out = {}
    for name, side, depth in (("right", -1, depths[0]), ("left", 1, depths[1])):
        if depth <= 0.0:
            out[name] = 0
            continue
        _, cy, _, ry = anat.lung_ellipse(side)
        level = depth * np.clip((y - (cy - 0.3 * ry)) / (1.3 * ry), 0.0, 1.0)
        fluid = lungs & lung_shape(anat, side, z, y, x) & (z < level)
        vol[fluid] = 10.0
        out[name] = int(fluid.sum())
    return out


def _nodule(vol, grid, nodule: Nodule, lungs) -> dict:
    """Draw one nodule; returns its truth record in voxel coordinates."""
    r = nodule.diameter_mm / 2
    spiculated = nodule.margin == "spiculated"
    reach = r * (1 + _SPIKE_LENGTH) if spiculated else r
    centre = np.asarray(nodule.center_mm)
    record = {
        "center_voxel": [round(float(v), 3) for v in grid.to_voxel(centre)],
        "center_mm": list(nodule.center_mm),
        "diameter_mm": nodule.diameter_mm,
        "consistency": nodule.consistency,
        "margin": nodule.margin,
        "lobe": nodule.lobe,
    }
    win = grid.window(centre, (reach + 1.5,) * 3)
    if win is None:
        return record
    sl, (z, y, x) = win
    d = (z - centre[0], y - centre[1], x - centre[2])
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    r_eff = np.full(dist.shape, r)
    if spiculated:
        cos = np.zeros(dist.shape)
        for s in nodule.spikes:
            cos = np.maximum(cos, (d[0] * s[0] + d[1] * s[1] + d[2] * s[2]))
        cos /= np.maximum(dist, 1e-6)
        r_eff = r * (1.0 + _SPIKE_LENGTH * np.clip(cos, 0, 1) ** _SPIKE_SHARPNESS)
    mask = lungs[sl]
    region = vol[sl]
    outer = np.clip(0.5 + (r_eff - dist), 0.0, 1.0) * mask
    hu = SOLID_HU if nodule.consistency == "solid" else GGO_HU
    region += (outer * (hu - region)).astype(np.float32)
    if nodule.consistency == "part-solid":
        core = np.clip(0.5 + (0.5 * r - dist), 0.0, 1.0) * mask
        region += (core * (SOLID_HU - region)).astype(np.float32)
    return record


def _blobs(vol, grid, blobs, where=None, only_below=None) -> list[dict]:
    out = []
    for blob in blobs:
        mask = where
        if only_below is not None:
            mask = where & (vol < only_below)
        paint_ellipsoid(vol, grid, blob.center_mm, blob.radii_mm, blob.hu, where=mask)
        out.append(
            {
                "center_voxel": [
                    round(float(v), 3) for v in grid.to_voxel(blob.center_mm)
                ],
                "radii_mm": list(blob.radii_mm),
                "hu": blob.hu,
            }
        )
    return out


def paint_findings(
    vol: np.ndarray,
    grid: Grid,
    anat: Anatomy,
    findings: Findings,
    lungs: np.ndarray,
    rng: np.random.Generator,
) -> dict:
    """Draw every finding into ``vol`` (in place) and describe what was drawn.

    Args:
        vol: Canonical HU volume of the normal chest.
        grid: Its grid.
        anat: Body parameters.
        findings: The findings to draw.
        lungs: Lung parenchyma mask (heart, vessels and airways carved out).
        rng: Random stream for textures.

    Returns:
        JSON-serialisable description: measured emphysema share, nodule and blob
        centres in canonical voxel coordinates, effusion voxel counts.
    """
    axes = grid.axes()
    emphysema = _emphysema(vol, grid, anat, findings.emphysema_fraction, lungs, rng)
    fibrosis = _fibrosis(vol, grid, anat, findings.fibrosis_extent, lungs, rng, axes)
    effusion = _effusion(vol, anat, findings.effusion_mm, lungs, axes)
    return {
        "emphysema_fraction": round(emphysema, 4),
        "fibrosis_voxels": fibrosis,
        "effusion_voxels": effusion,
        "consolidation": _blobs(vol, grid, findings.consolidation, lungs),
        "atelectasis": _blobs(vol, grid, findings.atelectasis, lungs),
        "covid": _blobs(vol, grid, findings.covid, lungs, only_below=-600.0),
        "nodules": [_nodule(vol, grid, n, lungs) for n in findings.nodules],
        "adenopathy": _blobs(vol, grid, findings.adenopathy),
        "chest_wall": _blobs(vol, grid, findings.chest_wall),
        "coronary_calcs": _blobs(vol, grid, findings.coronary_calcs),
        "aortic_calcs": _blobs(vol, grid, findings.aortic_calcs),
    }
