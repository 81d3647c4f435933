"""Data types shared by DICOM scanning, series selection and volume loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class IngestIssue:
    """One problem found while ingesting, reported instead of raised.

    Attributes:
        code: Machine-readable reason code, e.g. ``"gap"`` or ``"unreadable_file"``.
        path: The file or series folder concerned.
        field: The DICOM keyword concerned, or ``""``.
        message: What is wrong and how to fix it.
        severity: ``"error"`` (the file, series or exam was skipped) or
            ``"warning"`` (repaired or ignored).
        exam_id: The pseudonymous exam ID, when known.
    """

    code: str
    path: str
    field: str
    message: str
    severity: str
    exam_id: str | None = None


@dataclass(frozen=True)
class SliceHeader:
    """Geometry and rescale fields of one DICOM file (one slice).

    Attributes:
        path: The file.
        sop_uid: SOPInstanceUID.
        position: ImagePositionPatient in mm, or None when absent.
        orientation: ImageOrientationPatient (row then column cosines), or None.
        rows: Rows.
        cols: Columns.
        pixel_spacing: PixelSpacing (between rows, between columns) in mm, or None.
        slope: RescaleSlope (1.0 when absent).
        intercept: RescaleIntercept (0.0 when absent).
        instance_number: InstanceNumber, or None.
        n_frames: NumberOfFrames (1 when absent).
        transfer_syntax: The transfer syntax UID of the file.
    """

    path: Path
    sop_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    rows: int
    cols: int
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    instance_number: int | None
    n_frames: int
    transfer_syntax: str


@dataclass(frozen=True)
class SeriesInfo:
    """One series (one SeriesInstanceUID) with the headers of its files.

    Series-level geometry properties report the first file; ``load_ct_volume``
    checks that every file agrees.

    Attributes:
        patient_id: Pseudonymous patient ID from the configured tag.
        exam_id: Pseudonymous exam ID from the configured tag.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        modality: Modality, e.g. ``"CT"``.
        image_type: ImageType values, upper case.
        series_description: SeriesDescription (may be ``""``).
        slice_thickness: SliceThickness in mm, or None.
        slices: Per-file headers, in scan order (not sorted).
    """

    patient_id: str
    exam_id: str
    study_uid: str
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    series_description: str
    slice_thickness: float | None
    slices: tuple[SliceHeader, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """The series' files, in scan order."""
        return tuple(s.path for s in self.slices)

    @property
    def positions(self) -> tuple[tuple[float, float, float] | None, ...]:
        """ImagePositionPatient of each file, in scan order."""
        return tuple(s.position for s in self.slices)

    @property
    def orientation(self) -> tuple[float, ...] | None:
        """ImageOrientationPatient of the first file."""
        return self.slices[0].orientation

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """PixelSpacing of the first file."""
        return self.slices[0].pixel_spacing

    @property
    def rows(self) -> int:
        """Rows of the first file."""
        return self.slices[0].rows

    @property
    def cols(self) -> int:
        """Columns of the first file."""
        return self.slices[0].cols

    @property
    def transfer_syntax(self) -> str:
        """Transfer syntax UID of the first file."""
        return self.slices[0].transfer_syntax

    @property
    def folder(self) -> str:
        """The folder holding the first file (used to report series issues)."""
        return str(self.slices[0].path.parent)


@dataclass
class ScanResult:
    """What ``scan_dicom_tree`` found.

    Attributes:
        series: One entry per SeriesInstanceUID.
        issues: Files that could not be used, with reasons.
        n_files: Number of files looked at (DICOMDIR excluded).
    """

    series: list[SeriesInfo] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)
    n_files: int = 0


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT volume in Hounsfield units, in the one canonical orientation.

    Axis 0 runs inferior to superior (increasing patient z), axis 1 anterior to
    posterior (increasing y), axis 2 patient right to left (increasing x): DICOM
    LPS with the standard axial orientation ``[1, 0, 0, 0, 1, 0]``.

    Attributes:
        hu: Hounsfield units, float32, shape (S, H, W).
        spacing_mm: Voxel spacing (slice, row, col) in mm; the slice spacing is
            measured from the slice positions, not taken from SliceThickness.
        patient_id: Pseudonymous patient ID.
        exam_id: Pseudonymous exam ID.
        series_uid: SeriesInstanceUID of the series used.
        content_hash: SHA-256 of the series' files (see ``series_content_hash``).
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    patient_id: str
    exam_id: str
    series_uid: str
    content_hash: str = ""
