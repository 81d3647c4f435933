"""Write a canonical HU volume as a CT Image Storage series that dciodvfy accepts.

Geometry: canonical voxel (k, i, j) sits at patient (LPS) position
``x = (j - (nx - 1) / 2) * dx``, ``y = (i - (ny - 1) / 2) * dy``,
``z = table_z + z0_mm + k * dz``. The scanner's ImageOrientationPatient decides how
each slice's pixels are laid out (a flipped row or column direction flips the
pixels, and ImagePositionPatient names the voxel in the first row and column);
``superior_first`` numbers instances from the top. Pixels are stored as
``round(HU) - RescaleIntercept`` (slope 1) in int16 or uint16, optionally with a
PixelPaddingValue outside the reconstruction circle, and optionally JPEG-LS
lossless compressed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import JPEGLSLosslessEncoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from client.synth.dicom_fast import SeriesTemplate
from client.synth.paint import Grid
from client.synth.profiles import ScannerSpec

__all__ = [
    "StudyInfo",
    "SeriesInfo",
    "SliceFile",
    "uid",
    "write_ct_series",
    "base_dataset",
    "decimal_string",
    "file_name",
    "slice_pixels",
    "series_header",
    "slice_values",
    "SLICE_VARYING",
]

HU_RANGE = (-1024.0, 3071.0)
# SOPInstanceUID, InstanceNumber, ImagePositionPatient, SliceLocation, PixelData
SLICE_VARYING = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)


def uid(*parts: object) -> str:
    """Deterministic DICOM UID from entropy parts (pydicom's root + a hash)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class StudyInfo:
    """Patient- and study-level attributes shared by all series of an exam.

    Attributes:
        patient_name: PatientName ("FAMILY^GIVEN^M").
        patient_id: Pseudonymous PatientID.
        birth_date: PatientBirthDate (YYYYMMDD).
        sex: PatientSex ("M"/"F").
        age_years: Age at the scan (PatientAge).
        study_uid: StudyInstanceUID.
        study_date: StudyDate (YYYYMMDD).
        study_time: StudyTime (HHMMSS).
        accession: AccessionNumber (the pseudonymous exam ID).
        study_id: StudyID.
        frame_uid: FrameOfReferenceUID.
        height_m: PatientSize in metres.
        weight_kg: PatientWeight in kg.
        table_z_mm: Patient z of the lung base (table position).
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    study_id: str
    frame_uid: str
    height_m: float
    weight_kg: float
    table_z_mm: float


@dataclass(frozen=True)
class SeriesInfo:
    """Series-level attributes.

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber.
        description: SeriesDescription.
        thickness_mm: SliceThickness.
        image_type: ImageType values.
        kernel: ConvolutionKernel (empty: the scanner's).
    """

    uid: str
    number: int
    description: str
    thickness_mm: float
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    kernel: str = ""


@dataclass(frozen=True)
class SliceFile:
    """One written slice.

    Attributes:
        path: File path.
        k: Canonical slice index it holds.
        instance: InstanceNumber.
        sop_uid: SOPInstanceUID.
    """

    path: Path
    k: int
    instance: int
    sop_uid: str = field(repr=False)


def decimal_string(value: float) -> str:
    """Format a decimal string within DICOM's 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def base_dataset(
    study: StudyInfo, scanner: ScannerSpec, modality: str = "CT"
) -> Dataset:
    """Dataset with the Patient, Study, Frame of Reference and Equipment modules.

    Args:
        study: Patient and study attributes.
        scanner: The site's scanner.
        modality: Modality of the series.

    Returns:
        A new dataset (no SOP, series or image attributes yet).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = "Synthetic Demo Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = scanner.station
    ds.StudyDescription = scanner.study_description
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age_years:03d}Y"
    ds.PatientSize = decimal_string(study.height_m)
    ds.PatientWeight = decimal_string(study.weight_kg)
    ds.BodyPartExamined = "CHEST"
    ds.DeviceSerialNumber = hashlib.sha1(scanner.station.encode()).hexdigest()[:8]
    ds.SoftwareVersions = "synth-1.0"
    ds.PatientPosition = scanner.patient_position
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = study.study_id
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _ct_attributes(
    ds: Dataset, grid: Grid, scanner: ScannerSpec, series: SeriesInfo
) -> None:
    """Series, CT Image, Image Plane and Image Pixel constants of every slice."""
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = list(series.image_type)
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.AcquisitionNumber = 1
    ds.SliceThickness = decimal_string(series.thickness_mm)
    ds.SpacingBetweenSlices = decimal_string(grid.spacing[0])
    ds.KVP = decimal_string(scanner.kvp)
    ds.DataCollectionDiameter = decimal_string(500.0)
    ds.ReconstructionDiameter = decimal_string(grid.shape[2] * grid.spacing[2])
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 120 if "SCREEN" in scanner.study_description else 250
    ds.ConvolutionKernel = series.kernel or scanner.kernel
    ds.ImageOrientationPatient = [decimal_string(v) for v in scanner.orientation]
    ds.PixelSpacing = [decimal_string(grid.spacing[1]), decimal_string(grid.spacing[2])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = scanner.bits_stored
    ds.HighBit = scanner.bits_stored - 1
    ds.PixelRepresentation = 1 if scanner.signed else 0
    if scanner.padding_value is not None:
        ds.PixelPaddingValue = scanner.padding_value
        ds["PixelPaddingValue"].VR = "SS" if scanner.signed else "US"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.RescaleIntercept = decimal_string(scanner.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def _flips(orientation) -> tuple[bool, bool]:
    """(flip rows, flip columns) of a slice for an axis-aligned orientation."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if abs(abs(row[0]) - 1) > 1e-6 or abs(abs(col[1]) - 1) > 1e-6:
        raise ValueError(
            f"orientation {tuple(orientation)} is not supported: the row direction "
            "must be +-x and the column direction +-y (axial, axis-aligned)"
        )
    return bool(col[1] < 0), bool(row[0] < 0)


def slice_pixels(plane: np.ndarray, scanner: ScannerSpec, grid: Grid) -> np.ndarray:
    """Stored pixel values of one canonical HU plane (rows i, columns j).

    Args:
        plane: HU plane in canonical layout.
        scanner: The site's scanner (orientation, intercept, padding, sign).
        grid: Grid of the volume (for the reconstruction circle).

    Returns:
        int16 or uint16 array in the file's row/column layout.
    """
    flip_rows, flip_cols = _flips(scanner.orientation)
    hu = np.clip(np.rint(plane), *HU_RANGE)
    stored = hu - scanner.rescale_intercept
    if scanner.padding_value is not None:
        ny, nx = plane.shape
        i = (np.arange(ny) - (ny - 1) / 2)[:, None]
        j = (np.arange(nx) - (nx - 1) / 2)[None, :]
        stored = np.where(i * i + j * j > (nx / 2) ** 2, scanner.padding_value, stored)
    if flip_rows:
        stored = stored[::-1]
    if flip_cols:
        stored = stored[:, ::-1]
    return np.ascontiguousarray(
        stored.astype(np.int16 if scanner.signed else np.uint16)
    )


def _position(grid: Grid, scanner: ScannerSpec, k: int, table_z: float) -> list[float]:
    """ImagePositionPatient of slice k: the voxel in the file's first row/column."""
    flip_rows, flip_cols = _flips(scanner.orientation)
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    i0, j0 = (ny - 1 if flip_rows else 0), (nx - 1 if flip_cols else 0)
    return [
        (j0 - (nx - 1) / 2) * dx,
        (i0 - (ny - 1) / 2) * dy,
        table_z + grid.z0_mm + k * dz,
    ]


def file_name(style: str, instance: int, sop_uid: str) -> str:
    """Opaque file name: "IM0001" (numbered) or "<16 hex>.dcm" (hashed)."""
    if style == "numbered":
        return f"IM{instance:04d}"
    return hashlib.sha1(sop_uid.encode()).hexdigest()[:16] + ".dcm"


def _set_pixels(ds: Dataset, header: Dataset, pixels: np.ndarray, syntax: str) -> None:
    """Put ``pixels`` into ``ds`` as PixelData (``header`` holds the image attributes)."""
    if syntax == JPEGLSLossless:
        frame = JPEGLSLosslessEncoder.encode(
            pixels, rows=header.Rows, columns=header.Columns, number_of_frames=1,
            samples_per_pixel=1, bits_allocated=16, bits_stored=header.BitsStored,
            pixel_representation=header.PixelRepresentation,
            photometric_interpretation="MONOCHROME2",
        )  # fmt: skip
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"


def write_ct_series(
    volume: np.ndarray,
    grid: Grid,
    folder: Path,
    study: StudyInfo,
    series: SeriesInfo,
    scanner: ScannerSpec,
) -> list[SliceFile]:
    """Write a canonical HU volume as one CT series, one file per slice.

    Args:
        volume: HU array (slices, rows, columns) in canonical orientation.
        grid: Its grid.
        folder: Output folder (created).
        study: Patient and study attributes.
        series: Series attributes.
        scanner: Vendor conventions (orientation, storage, transfer syntax, names).

    Returns:
        The written slices, in canonical order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    header = series_header(grid, study, series, scanner)
    template = SeriesTemplate(header, SLICE_VARYING)
    out = []
    for k in range(grid.shape[0]):
        values, instance = slice_values(volume, grid, header, study, series, scanner, k)
        path = folder / file_name(scanner.file_style, instance, values.SOPInstanceUID)
        template.write(path, values)
        out.append(SliceFile(path, k, instance, values.SOPInstanceUID))
    return out


def series_header(
    grid: Grid, study: StudyInfo, series: SeriesInfo, scanner: ScannerSpec
) -> Dataset:
    """The attributes every slice of the series shares, with its file meta."""
    ds = base_dataset(study, scanner)
    _ct_attributes(ds, grid, scanner, series)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = scanner.transfer_syntax or ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def slice_values(
    volume: np.ndarray,
    grid: Grid,
    header: Dataset,
    study: StudyInfo,
    series: SeriesInfo,
    scanner: ScannerSpec,
    k: int,
) -> tuple[Dataset, int]:
    """The ``SLICE_VARYING`` attributes of canonical slice ``k`` and its InstanceNumber."""
    nz = grid.shape[0]
    instance = nz - k if scanner.superior_first else k + 1
    values = Dataset()
    values.SOPInstanceUID = uid(series.uid, "slice", k)
    values.InstanceNumber = instance
    position = _position(grid, scanner, k, study.table_z_mm)
    values.ImagePositionPatient = [decimal_string(v) for v in position]
    values.SliceLocation = decimal_string(position[2])
    pixels = slice_pixels(volume[k], scanner, grid)
    _set_pixels(values, header, pixels, header.file_meta.TransferSyntaxUID)
    return values, instance
