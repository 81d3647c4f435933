"""Voxel grid and drawing primitives shared by the phantom and lesion renderers.

The canonical array has axis 0 inferior -> superior, axis 1 anterior -> posterior
and axis 2 patient right -> left. Voxel centres map to anatomical millimetres (see
``anatomy``): ``z = z0_mm + k * dz``, ``y = (i - (ny - 1) / 2) * dy`` and
``x = (j - (nx - 1) / 2) * dx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.synth.anatomy import segment_distance

__all__ = ["Grid", "smooth_noise", "paint_ellipsoid", "paint_capsule"]


@dataclass(frozen=True)
class Grid:
    """A canonical voxel grid.

    Attributes:
        shape: (slices, rows, columns).
        spacing: (dz, dy, dx) in mm.
        z0_mm: Anatomical height of slice 0 above the lung base.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z0_mm: float

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates shaped (nz,1,1), (1,ny,1), (1,1,nx) in mm."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        z = self.z0_mm + np.arange(nz) * dz
        y = (np.arange(ny) - (ny - 1) / 2) * dy
        x = (np.arange(nx) - (nx - 1) / 2) * dx
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def to_voxel(self, zyx_mm) -> np.ndarray:
        """Convert anatomical (z, y, x) mm to fractional voxel indices (k, i, j)."""
        p = np.asarray(zyx_mm, dtype=float)
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        return np.array(
            [
                (p[0] - self.z0_mm) / dz,
                p[1] / dy + (ny - 1) / 2,
                p[2] / dx + (nx - 1) / 2,
            ]
        )

    def window(
        self, centre_mm, half_mm
    ) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, ...]] | None:
        """Index window around a box and its local voxel-centre coordinates.

        Args:
            centre_mm: Box centre (z, y, x) in mm.
            half_mm: Box half extents (z, y, x) in mm.

        Returns:
            (slices, (z, y, x) local axes), or None when the box misses the grid.
        """
        centre = self.to_voxel(centre_mm)
        half = np.asarray(half_mm, dtype=float) / np.asarray(self.spacing) + 1.0
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        z, y, x = self.axes()
        return sl, (z[sl[0]], y[:, sl[1]], x[:, :, sl[2]])


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    corr_mm: float,
) -> np.ndarray:
    """Gaussian-like random field with correlation length ``corr_mm``, unit std.

    Coarse white noise on a lattice of ``corr_mm`` is linearly interpolated onto
    the grid (separably, as three small matrix products), which is much faster
    than filtering full-resolution noise.

    Args:
        rng: Random stream.
        shape: Output shape.
        spacing: Voxel spacing per axis (mm).
        corr_mm: Lattice step of the coarse noise (mm).

    Returns:
        float32 array of ``shape``.
    """
    coarse = tuple(
        max(2, int(np.ceil(n * s / corr_mm)) + 1)
        for n, s in zip(shape, spacing, strict=True)
    )
    field = rng.standard_normal(coarse).astype(np.float32)
    for axis, n in enumerate(shape):
        weights = _interp_matrix(n, coarse[axis])
        field = np.moveaxis(np.tensordot(weights, field, axes=(1, axis)), 0, axis)
    return field / np.float32(max(float(field.std()), 1e-6))


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Dense (n_out, n_in) matrix of linear interpolation weights."""
    t = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(t).astype(int), n_in - 2)
    frac = (t - i0).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    weights[rows, i0] = 1.0 - frac
    weights[rows, i0 + 1] = frac
    return weights


def _blend(
    vol: np.ndarray,
    sl: tuple[slice, slice, slice],
    weight: np.ndarray,
    hu: float | np.ndarray,
    where: np.ndarray | None,
) -> np.ndarray:
    if where is not None:
        weight = weight * where[sl]
    region = vol[sl]
    region += weight * (hu - region)
    return weight


def paint_ellipsoid(
    vol: np.ndarray,
    grid: Grid,
    centre_mm,
    radii_mm,
    hu: float,
    *,
    where: np.ndarray | None = None,
    edge_mm: float = 1.0,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Blend an ellipsoid of ``hu`` into ``vol`` with a soft edge.

    Args:
        vol: Canonical HU volume, modified in place.
        grid: Its grid.
        centre_mm: Centre (z, y, x) in mm.
        radii_mm: Semi-axes (z, y, x) in mm.
        hu: Attenuation inside.
        where: Optional full-size mask limiting where paint lands.
        edge_mm: Width of the soft edge.

    Returns:
        (slices, blend weights in the window), or None when outside the grid.
    """
    radii = np.asarray(radii_mm, dtype=float)
    win = grid.window(centre_mm, radii + edge_mm)
    if win is None:
        return None
    sl, (z, y, x) = win
    c = centre_mm
    rho = np.sqrt(
        ((z - c[0]) / radii[0]) ** 2
        + ((y - c[1]) / radii[1]) ** 2
        + ((x - c[2]) / radii[2]) ** 2
    )
    weight = np.clip(0.5 - (rho - 1.0) * radii.min() / edge_mm, 0.0, 1.0)
    return sl, _blend(vol, sl, weight.astype(np.float32), hu, where)


def paint_capsule(
    vol: np.ndarray,
    grid: Grid,
    seg,
    radius: float,
    hu: float,
    *,
    where: np.ndarray | None = None,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Blend a capsule (segment ``seg`` with ``radius``) of ``hu`` into ``vol``.

    Args:
        vol: Canonical HU volume, modified in place.
        grid: Its grid.
        seg: ((z, y, x) start, (z, y, x) end, nominal radius) in mm.
        radius: Radius to paint (may differ from the nominal one, e.g. a lumen).
        hu: Attenuation inside.
        where: Optional full-size mask limiting where paint lands.

    Returns:
        (slices, blend weights in the window), or None when outside the grid.
    """
    a, b = np.asarray(seg[0]), np.asarray(seg[1])
    win = grid.window((a + b) / 2, np.abs(b - a) / 2 + radius + 1.0)
    if win is None:
        return None
    sl, (z, y, x) = win
    dist = segment_distance(seg, z, y, x)
    weight = np.clip(0.5 - (dist - radius), 0.0, 1.0).astype(np.float32)
    return sl, _blend(vol, sl, weight, hu, where)
