"""Test helpers: a small chest phantom and a minimal CT DICOM series writer.

The phantom is built in the canonical orientation (axis 0 inferior->superior,
axis 1 anterior->posterior, axis 2 patient right->left, i.e. LPS); the writer can
store it with any axis-aligned ImageOrientationPatient and slice order, so tests
can check that ingestion returns the phantom unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SENTINEL_NAME = "ZZSENTINEL^PHI^NAME"
STANDARD = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FLIPPED_LR = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # typical feet-first supine
FLIPPED_BOTH = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
TRANSPOSED = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@dataclass
class Phantom:
    """A chest phantom in HU with its ground-truth structures."""

    hu: np.ndarray  # (Z, Y, X) int16, canonical orientation
    spacing: tuple[float, float, float]  # (z, y, x) mm
    lungs: np.ndarray  # bool, both lungs
    heart: np.ndarray  # bool
    heart_centre: tuple[int, int, int]
    lung_top: int  # highest slice index holding lung


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    inside = (
        sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        <= 1.0
    )
    return np.broadcast_to(inside, np.broadcast_shapes(*(g.shape for g in grid)))


def make_phantom(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (5.0, 3.0, 3.0),
) -> Phantom:
    """Body (40 HU) with two lungs (-850 HU), a heart (60 HU), spine, trachea."""
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    cz, cy, cx = z[-1] * 110 / 235, y[-1] / 2, x[-1] / 2
    hu = np.full(shape, -1000, dtype=np.int16)
    body = ((xx - cx) / 130) ** 2 + ((yy - cy) / 95) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = 40
    spine = ((xx - cx) ** 2 + (yy - cy - 65) ** 2 <= 15**2) & body
    hu[np.broadcast_to(spine, shape)] = 400
    heart_c = (cz - 40, cy - 20, cx + 5)
    heart = _ellipsoid((zz, yy, xx), heart_c, (30, 28, 18))
    hu[heart] = 60
    lungs = _ellipsoid((zz, yy, xx), (cz, cy, cx - 65), (80, 60, 45))
    lungs = lungs | _ellipsoid((zz, yy, xx), (cz, cy, cx + 65), (80, 60, 45))
    hu[lungs] = -850
    trachea = ((xx - cx) ** 2 + (yy - cy + 10) ** 2 <= 8**2) & (zz >= cz + 30)
    bronchi = (np.abs(zz - cz - 30) <= 4) & (np.abs(yy - cy + 10) <= 5)
    bronchi = bronchi & (np.abs(xx - cx) <= 40)
    hu[np.broadcast_to(trachea | bronchi, shape)] = -1000
    centre = tuple(int(round(c / s)) for c, s in zip(heart_c, spacing, strict=True))
    lung_top = int(np.nonzero(lungs.any(axis=(1, 2)))[0].max())
    return Phantom(hu, spacing, lungs, heart, centre, lung_top)  # type: ignore[arg-type]


def _image_and_origin(
    slab: np.ndarray, orientation: Sequence[float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Turn a canonical (y, x) slice into the stored image for ``orientation``.

    Returns the image and the canonical (i, j) index of its pixel (0, 0).
    """
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    image = slab if abs(row[0]) > 0.5 else slab.T
    if (row[0] if abs(row[0]) > 0.5 else row[1]) < 0:
        image = image[:, ::-1]
    if (col[1] if abs(col[1]) > 0.5 else col[0]) < 0:
        image = image[::-1, :]
    ny, nx = slab.shape
    i0 = ny - 1 if (row[1] < -0.5 or col[1] < -0.5) else 0
    j0 = nx - 1 if (row[0] < -0.5 or col[0] < -0.5) else 0
    return np.ascontiguousarray(image), (i0, j0)


def ct_dataset(
    image_hu: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    ids: dict[str, str],
    instance: int,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "CHEST 1.0",
    thickness: float = 1.0,
) -> FileDataset:
    """One single-frame CT image dataset with unsigned 16-bit stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientBirthDate = SENTINEL_NAME, "19500101"
    ds.PatientID, ds.AccessionNumber = ids["patient"], ids["exam"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids["study"], ids["series"]
    ds.Modality, ds.ImageType, ds.SeriesDescription = (
        modality,
        list(image_type),
        description,
    )
    ds.InstanceNumber, ds.SliceThickness = instance, thickness
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image_hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    stored = np.round((image_hu.astype(np.float64) - intercept) / slope)
    ds.PixelData = np.clip(stored, 0, 65535).astype("<u2").tobytes()
    return ds


def write_series(
    folder: Path,
    hu: np.ndarray,
    spacing: Sequence[float],
    *,
    patient_id: str = "PSEUDO-P1",
    exam_id: str = "PSEUDO-E1",
    series_uid: str | None = None,
    orientation: Sequence[float] = STANDARD,
    reverse_order: bool = False,
    slopes: Sequence[float] | None = None,
    transfer_syntax: str | None = None,
    origin: Sequence[float] = (-140.0, -150.0, -120.0),
    suffix: str = "",
    **dataset_kwargs,
) -> list[Path]:
    """Write a canonical (Z, Y, X) HU volume as one series, one file per slice.

    Files get random names (``suffix`` appended) so file order means nothing.
    Returns the paths in canonical slice order (inferior first).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids = {
        "patient": patient_id,
        "exam": exam_id,
        "study": generate_uid(),
        "series": series_uid or generate_uid(),
    }
    sz, sy, sx = (float(s) for s in spacing)
    transposed = abs(orientation[0]) < 0.5
    pixel_spacing = (sx, sy) if transposed else (sy, sx)
    n = hu.shape[0]
    paths = []
    for k in range(n):
        image, (i0, j0) = _image_and_origin(hu[k], orientation)
        position = (origin[0] + j0 * sx, origin[1] + i0 * sy, origin[2] + k * sz)
        ds = ct_dataset(
            image,
            position=position,
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            ids=ids,
            instance=(n - k) if reverse_order else (k + 1),
            slope=1.0 if slopes is None else slopes[k],
            **dataset_kwargs,
        )
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / f"{uuid.uuid4().hex}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_back(path: Path) -> pydicom.Dataset:
    """Read a written file (used by tests to edit headers)."""
    return pydicom.dcmread(path)
