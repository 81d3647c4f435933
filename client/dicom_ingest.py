"""Site CT ingestion: DICOM tree -> chosen series per exam -> HU volume + true spacing.

``scan_dicom_tree`` (``client.dicom_series``) reads headers, ``select_ct_series``
(``client.series_select``) picks each exam's axial CT series, ``load_ct_volume``
decodes and checks it, and ``ingest_site`` chains the three without ever raising
for one bad exam. Compressed transfer syntaxes decode through pydicom's pixel
plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls, and
pydicom's own RLE decoder).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from client.dicom_geometry import (
    OBLIQUE_WARN_DEG,
    SlicePlan,
    canonical_pixel_spacing,
    in_plane_mapping,
    plan_slices,
    to_canonical,
)
from client.dicom_series import scan_dicom_tree
from client.dicom_types import CTVolume, IngestIssue, ScanResult, SeriesInfo
from client.series_select import select_ct_series

__all__ = [
    "CTVolume",
    "ExamIngest",
    "IngestIssue",
    "SiteIngest",
    "ingest_site",
    "load_ct_volume",
    "scan_dicom_tree",
    "select_ct_series",
    "series_content_hash",
]

logger = logging.getLogger(__name__)

AIR_HU = -1024.0  # physical minimum; lower values are FOV padding, clipped to this
# Refused before any pixel is decoded, so a hostile header cannot make the site
# allocate: at most 4096 x 4096 pixels per slice and 2**30 voxels (4 GiB of float32)
# per volume, which a 2,000-slice 512 x 512 chest CT (5.2e8 voxels) stays well under.
MAX_MATRIX = 4096
MAX_VOXELS = 2**30
# Physically plausible voxel sizes in mm; anything outside is a broken header.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
_GEOMETRY_FIELDS = (
    ("orientation", "ImageOrientationPatient"),
    ("rows", "Rows"),
    ("cols", "Columns"),
    ("pixel_spacing", "PixelSpacing"),
)


def _combine_digests(pairs: list[tuple[str, str]]) -> str:
    """SHA-256 over (SOPInstanceUID, file SHA-256) pairs sorted by UID."""
    outer = hashlib.sha256()
    for uid, digest in sorted(pairs):
        outer.update(f"{uid}:{digest}\n".encode())
    return outer.hexdigest()


def series_content_hash(series: SeriesInfo) -> str:
    """Content hash of a series, independent of file names, folders and order.

    SHA-256 over the sorted (SOPInstanceUID, SHA-256 of the file's bytes) pairs of
    every file of the series. It changes whenever any byte of any file changes
    (pixels or geometry), and it is what ``load_ct_volume`` stores in
    ``CTVolume.content_hash``; this function computes it without decoding pixels.

    Args:
        series: A scanned series.

    Returns:
        64 hex characters.
    """
    pairs = []
    for header in series.slices:
        with header.path.open("rb") as fp:
            pairs.append(
                (header.sop_uid, hashlib.file_digest(fp, "sha256").hexdigest())
            )
    return _combine_digests(pairs)


def _error(
    series: SeriesInfo, code: str, path: object, field: str, msg: str
) -> IngestIssue:
    """An exam-level error issue (the exam is skipped)."""
    return IngestIssue(code, str(path), field, msg, "error", series.exam_id)


def _warning(
    series: SeriesInfo, code: str, path: object, field: str, msg: str
) -> IngestIssue:
    """An exam-level warning (something was repaired or ignored)."""
    return IngestIssue(code, str(path), field, msg, "warning", series.exam_id)


def _check_uniform(series: SeriesInfo) -> IngestIssue | None:
    """Every file must share orientation, matrix size and pixel spacing."""
    for attr, keyword in _GEOMETRY_FIELDS:
        values = [getattr(h, attr) for h in series.slices]
        common = max(set(values), key=values.count)
        for header, value in zip(series.slices, values, strict=True):
            same = value == common or (
                value is not None
                and common is not None
                and np.allclose(value, common, rtol=1e-3, atol=1e-3)
            )
            if not same:
                msg = (
                    f"{keyword} is {value}, the rest of the series has {common}; "
                    "remove the file or split the series"
                )
                return _error(series, "mixed_geometry", header.path, keyword, msg)
    multi = next((h for h in series.slices if h.n_frames > 1), None)
    if multi is not None:
        msg = "multi-frame (enhanced) CT is not supported; convert to single-frame"
        return _error(
            series, "unsupported_multiframe", multi.path, "NumberOfFrames", msg
        )
    return None


def _decode(series: SeriesInfo, index: int, data: bytes) -> np.ndarray:
    """Decode one file's pixels to float32 HU (raises on any failure)."""
    header = series.slices[index]
    ds = pydicom.dcmread(io.BytesIO(data), force=False)
    stored = ds.pixel_array
    if stored.shape != (header.rows, header.cols):
        raise ValueError(f"pixel array shape {stored.shape} != Rows x Columns")
    with np.errstate(over="ignore", invalid="ignore"):
        hu = stored.astype(np.float32) * np.float32(header.slope)
        hu += np.float32(header.intercept)
    if not np.isfinite(hu).all():
        raise ValueError("RescaleSlope/RescaleIntercept give non-finite HU values")
    padding = ds.get("PixelPaddingValue")
    if isinstance(padding, int):
        hu[stored == padding] = AIR_HU
    np.maximum(hu, AIR_HU, out=hu)
    return hu


def _read_slices(
    series: SeriesInfo, plan: SlicePlan
) -> tuple[np.ndarray | None, str, IngestIssue | None]:
    """Read every file once: hash all of them, decode the kept ones in z order."""
    header = series.slices[0]
    stack = np.empty((len(plan.order), header.rows, header.cols), dtype=np.float32)
    slot = {index: k for k, index in enumerate(plan.order)}
    pairs = []
    for index, header in enumerate(series.slices):
        try:
            data = header.path.read_bytes()
            pairs.append((header.sop_uid, hashlib.sha256(data).hexdigest()))
            if index in slot:
                stack[slot[index]] = _decode(series, index, data)
        except Exception as exc:  # any decoder/plugin failure skips this exam only
            msg = (
                f"pixel data could not be decoded ({type(exc).__name__}: "
                f"{str(exc)[:160]}); re-export the file uncompressed or install the "
                f"decoder for transfer syntax {header.transfer_syntax}"
            )
            issue = _error(series, "decode_error", header.path, "PixelData", msg)
            return None, "", issue
    return stack, _combine_digests(pairs), None


def _fill_gaps(stack: np.ndarray, fill_after: list[int]) -> np.ndarray:
    """Insert one linearly interpolated slice after each index in ``fill_after``."""
    if not fill_after:
        return stack
    pieces = []
    start = 0
    for k in fill_after:
        pieces.append(stack[start : k + 1])
        pieces.append(0.5 * (stack[k : k + 1] + stack[k + 1 : k + 2]))
        start = k + 1
    pieces.append(stack[start:])
    return np.concatenate(pieces, axis=0)


def _plan_issues(series: SeriesInfo, plan: SlicePlan) -> list[IngestIssue]:
    """Warnings for repaired problems and the plan's error, if any."""
    field = "ImagePositionPatient"
    issues = []
    for dropped, kept in plan.duplicates:
        msg = (
            f"same slice position as {series.slices[kept].path.name}; the duplicate "
            "is ignored (remove it from the export to silence this warning)"
        )
        path = series.slices[dropped].path
        issues.append(_warning(series, "duplicate_slice", path, field, msg))
    for k in plan.fill_after:
        path = series.slices[plan.order[k + 1]].path
        msg = "one slice missing before this file; filled by linear interpolation"
        issues.append(_warning(series, "gap_filled", path, field, msg))
    if plan.error is not None:
        code, msg, index = plan.error
        issues.append(_error(series, code, series.slices[index].path, field, msg))
    return issues


def load_ct_volume(series: SeriesInfo) -> tuple[CTVolume | None, list[IngestIssue]]:
    """Decode a CT series into one HU volume in the canonical orientation.

    Slices are sorted along the slice normal; duplicates are dropped, a single
    missing slice is interpolated, and mixed geometry, larger gaps, inconsistent
    spacing and decode failures skip the exam with an error issue. Voxels below
    -1024 HU (field-of-view padding) are set to -1024.

    Args:
        series: The exam's chosen series (from ``select_ct_series``).

    Returns:
        (volume, issues); volume is None when an error issue was raised.
    """
    try:
        return _load(series)
    except Exception as exc:  # a bug or an unforeseen header must not stop the site
        logger.exception("unexpected failure loading exam %s", series.exam_id)
        msg = f"unexpected {type(exc).__name__} while loading; report this to the team"
        return None, [_error(series, "internal_error", series.folder, "", msg)]


def _plan(series: SeriesInfo) -> tuple[SlicePlan | None, list[IngestIssue]]:
    """Check geometry and order the slices; (None, issues) when unusable."""
    problem = _check_uniform(series)
    if problem is not None:
        return None, [problem]
    orientation, spacing = series.orientation, series.pixel_spacing
    if orientation is None or spacing is None or None in series.positions:
        msg = "files lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
        return None, [_error(series, "missing_geometry", series.folder, "", msg)]
    numbers = [h.instance_number for h in series.slices]
    plan = plan_slices(
        np.asarray(series.positions), orientation, spacing, instance_numbers=numbers
    )
    issues = _plan_issues(series, plan)
    return (None if plan.error else plan), issues


def _size_issue(series: SeriesInfo, plan: SlicePlan) -> IngestIssue | None:
    """Refuse absurd matrix sizes, voxel counts and spacings before allocating."""
    rows, cols = series.rows, series.cols
    if max(rows, cols) > MAX_MATRIX:
        msg = (
            f"Rows x Columns is {rows} x {cols}, above the {MAX_MATRIX} x "
            f"{MAX_MATRIX} limit; fix the header or re-export the series"
        )
        return _error(series, "volume_too_large", series.folder, "Rows", msg)
    slices = len(plan.order) + len(plan.fill_after)
    if slices * rows * cols > MAX_VOXELS:
        msg = (
            f"{slices} slices of {rows} x {cols} exceed {MAX_VOXELS} voxels; "
            "pin a thinner-sampled series or crop the export"
        )
        return _error(series, "volume_too_large", series.folder, "Rows", msg)
    spacing = (*(series.pixel_spacing or ()), plan.step_mm)
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        msg = (
            f"voxel spacing {tuple(round(s, 4) for s in spacing)} mm lies outside "
            f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm; fix PixelSpacing or the "
            "slice positions"
        )
        return _error(series, "absurd_geometry", series.folder, "PixelSpacing", msg)
    return None


def _load(series: SeriesInfo) -> tuple[CTVolume | None, list[IngestIssue]]:
    """``load_ct_volume`` without the last-resort exception guard."""
    field = "ImageOrientationPatient"
    plan, issues = _plan(series)
    if plan is None:
        return None, issues
    too_large = _size_issue(series, plan)
    if too_large is not None:
        return None, [*issues, too_large]
    try:
        mapping = in_plane_mapping(series.orientation or ())
    except ValueError as exc:
        return None, [_error(series, "non_axial", series.folder, field, str(exc))]
    if mapping.oblique_deg > OBLIQUE_WARN_DEG:
        msg = f"in-plane axes are {mapping.oblique_deg:.1f} deg oblique; not rotated"
        issues.append(
            _warning(series, "oblique_orientation", series.folder, field, msg)
        )
    stack, content_hash, failure = _read_slices(series, plan)
    if failure is not None or stack is None:
        return None, [*issues, failure]
    hu = to_canonical(_fill_gaps(stack, plan.fill_after), mapping)
    row_mm, col_mm = canonical_pixel_spacing(series.pixel_spacing, mapping)
    volume = CTVolume(
        hu=hu,
        spacing_mm=(plan.step_mm, row_mm, col_mm),
        patient_id=series.patient_id,
        exam_id=series.exam_id,
        series_uid=series.series_uid,
        content_hash=content_hash,
    )
    return volume, issues


@dataclass(frozen=True, eq=False)
class ExamIngest:
    """The outcome for one exam.

    Attributes:
        exam_id: Pseudonymous exam ID.
        patient_id: Pseudonymous patient ID.
        volume: The HU volume, or None when the exam was skipped.
        issues: Everything reported for this exam (series rejections included).
    """

    exam_id: str
    patient_id: str
    volume: CTVolume | None
    issues: list[IngestIssue]


@dataclass
class SiteIngest:
    """A scanned site: file-level issues up front, exams loaded lazily on iteration.

    Attributes:
        scan: The header scan.
        selected: The chosen series by exam ID.
        issues: Issues not tied to an exam (unreadable files, series without IDs).
        exam_issues: Selection issues by exam ID.
    """

    scan: ScanResult
    selected: dict[str, SeriesInfo]
    issues: list[IngestIssue] = field(default_factory=list)
    exam_issues: dict[str, list[IngestIssue]] = field(default_factory=dict)

    @property
    def exam_ids(self) -> list[str]:
        """Every exam ID seen in the scan, sorted."""
        return sorted({s.exam_id for s in self.scan.series})

    def __iter__(self) -> Iterator[ExamIngest]:
        """Load each exam in turn; a failed exam yields ``volume=None``."""
        patients = {s.exam_id: s.patient_id for s in self.scan.series}
        for exam_id in self.exam_ids:
            issues = list(self.exam_issues.get(exam_id, []))
            volume = None
            if exam_id in self.selected:
                volume, load_issues = load_ct_volume(self.selected[exam_id])
                issues.extend(load_issues)
            for issue in issues:
                log = logger.warning if issue.severity == "error" else logger.info
                log("exam %s: %s (%s)", exam_id, issue.code, issue.path)
            yield ExamIngest(exam_id, patients[exam_id], volume, issues)


def ingest_site(
    root: Path,
    *,
    patient_id_tag: str = "PatientID",
    exam_id_tag: str = "AccessionNumber",
    description_pattern: str | None = None,
    min_slices: int = 16,
) -> SiteIngest:
    """Scan a site's DICOM tree and choose each exam's CT series.

    Iterate the result to load the volumes one exam at a time.

    Args:
        root: The site's DICOM folder tree.
        patient_id_tag: Keyword of the pseudonymous patient ID tag.
        exam_id_tag: Keyword of the pseudonymous exam ID tag.
        description_pattern: Optional SeriesDescription regex pinning the series.
        min_slices: Fewest slices accepted for a CT series.

    Returns:
        A ``SiteIngest``; ``list(result)`` gives one ``ExamIngest`` per exam.

    Raises:
        ValueError: For an empty or missing root folder, an unknown tag keyword or
            an invalid pattern (configuration errors, not data errors).
    """
    scan = scan_dicom_tree(
        Path(root), patient_id_tag=patient_id_tag, exam_id_tag=exam_id_tag
    )
    selected, selection_issues = select_ct_series(
        scan.series, description_pattern=description_pattern, min_slices=min_slices
    )
    by_exam: dict[str, list[IngestIssue]] = defaultdict(list)
    for issue in selection_issues:
        by_exam[issue.exam_id or ""].append(issue)
    return SiteIngest(scan, selected, list(scan.issues), dict(by_exam))
