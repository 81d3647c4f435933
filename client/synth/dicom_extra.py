r"""Series that sit next to the diagnostic CT: localizers and a non-CT (MR) series.

Ingestion must recognise and skip both, so they are written as valid DICOM of the
right kind: a CT localizer (ImageType ORIGINAL\PRIMARY\LOCALIZER, a coronal
projection of the volume) and an MR Image Storage series of a few axial slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from client.synth.dicom_writer import (
    SeriesInfo,
    StudyInfo,
    base_dataset,
    decimal_string,
    file_name,
    uid,
)
from client.synth.paint import Grid
from client.synth.profiles import ScannerSpec

__all__ = ["write_localizer", "write_mr_series"]


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _instance(
    study, scanner, series: SeriesInfo, sop_class: str, n: int, modality: str
):
    """Dataset of instance ``n`` of ``series`` with SOP, file meta and series set."""
    ds = base_dataset(study, scanner, modality=modality)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(series.uid, n)
    ds.file_meta = _meta(sop_class, ds.SOPInstanceUID)
    ds.SeriesInstanceUID, ds.SeriesNumber = series.uid, series.number
    ds.SeriesDescription, ds.InstanceNumber = series.description, n
    ds.SliceThickness = decimal_string(series.thickness_mm)
    return ds


def _save(ds, folder: Path, scanner, n: int) -> Path:
    path = folder / file_name(scanner.file_style, n, ds.SOPInstanceUID)
    ds.save_as(path, enforce_file_format=True)
    return path


def _pixels(ds, image: np.ndarray, signed: bool, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = image.astype(np.int16 if signed else np.uint16).tobytes()
    ds["PixelData"].VR = "OW"


def write_localizer(
    volume: np.ndarray,
    grid: Grid,
    folder: Path,
    study: StudyInfo,
    series: SeriesInfo,
    scanner: ScannerSpec,
    *,
    images: int = 1,
) -> list[Path]:
    """Write a localizer (scout) series: coronal projections of the volume.

    Args:
        volume: Canonical HU volume.
        grid: Its grid.
        folder: Output folder (created).
        study: Patient and study attributes.
        series: Series attributes (the ImageType is always a LOCALIZER one).
        scanner: The site's scanner.
        images: Number of localizer images (1-3).

    Returns:
        Written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    projection = volume.mean(axis=1)[::-1]  # rows run superior -> inferior
    stored = np.clip(np.rint(projection) + 1024.0, 0, 4095)
    nz, _, nx = grid.shape
    dz, _, dx = grid.spacing
    top = study.table_z_mm + grid.z0_mm + (nz - 1) * dz
    position = [decimal_string(-(nx - 1) / 2 * dx), "0", decimal_string(top)]
    paths = []
    for n in range(1, images + 1):
        ds = _instance(study, scanner, series, CTImageStorage, n, "CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.AcquisitionNumber, ds.KVP = n, decimal_string(scanner.kvp)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = position
        ds.PixelSpacing = [decimal_string(dz), decimal_string(dx)]
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        _pixels(ds, stored, False, 12)
        paths.append(_save(ds, folder, scanner, n))
    return paths


def _mr_attributes(ds) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "1.5"
    ds.ImagedNucleus = "1H"


def write_mr_series(
    folder: Path,
    study: StudyInfo,
    series: SeriesInfo,
    scanner: ScannerSpec,
    *,
    slices: int = 3,
    seed: int = 0,
) -> list[Path]:
    """Write a small axial T1 MR Image Storage series in the same study.

    Args:
        folder: Output folder (created).
        study: Patient and study attributes.
        series: Series attributes.
        scanner: The site's scanner (vendor names, file naming).
        slices: Number of slices.
        seed: Seed of the pixel noise.

    Returns:
        Written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-32:32, -32:32]
    body = ((yy / 22.0) ** 2 + (xx / 30.0) ** 2) <= 1.0
    paths = []
    for n in range(1, slices + 1):
        ds = _instance(study, scanner, series, MRImageStorage, n, "MR")
        _mr_attributes(ds)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        z = decimal_string(study.table_z_mm + 40.0 * n)
        ds.ImagePositionPatient = ["-189", "-189", z]
        ds.PixelSpacing = ["6", "6"]
        image = body * 600.0 + rng.normal(40.0, 10.0, body.shape)
        _pixels(ds, np.clip(image, 0, 4095), False, 12)
        paths.append(_save(ds, folder, scanner, n))
    return paths
