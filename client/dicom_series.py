"""Scan a DICOM folder tree: read headers only and group the files into series.

Only the header fields needed to choose and rebuild a CT volume are read
(``specific_tags``), so patient names, birth dates and addresses are never parsed
into memory, let alone into results. The pseudonymous patient and exam IDs come
from the tags that the site config names (default ``PatientID`` and
``AccessionNumber``).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from client.dicom_types import IngestIssue, ScanResult, SeriesInfo, SliceHeader

logger = logging.getLogger(__name__)

_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_TAG_BE = b"\x7f\xe0\x00\x10"
_SEQ_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_HEADER_KEYWORDS = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "SliceThickness",
    "PixelSpacing",
    "Rows",
    "Columns",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "InstanceNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
)


class _NotImageError(ValueError):
    """A valid DICOM file that holds no image, e.g. a structured report (internal)."""


class _FieldError(ValueError):
    """A header field is missing or malformed (internal)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


def check_keyword(keyword: str) -> str:
    """Return ``keyword`` if it names a DICOM attribute, else raise ValueError.

    Args:
        keyword: A DICOM keyword such as ``"PatientID"``.

    Returns:
        The keyword unchanged.
    """
    if tag_for_keyword(keyword) is None:
        raise ValueError(
            f"{keyword!r} is not a DICOM keyword; use a keyword from the DICOM "
            "dictionary such as 'PatientID' or 'AccessionNumber'"
        )
    return keyword


def _iter_files(root: Path) -> Iterator[Path]:
    """Yield every regular file below ``root`` in a stable order, DICOMDIR excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.upper() == "DICOMDIR":
                continue
            yield Path(dirpath) / name


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    """Read a multi-valued decimal field of length ``n``; None when absent."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if n > 1 else [value]))
    except (TypeError, ValueError) as exc:
        raise _FieldError(keyword, f"{keyword} is not numeric: {exc}") from None
    if len(values) != n:
        raise _FieldError(keyword, f"{keyword} has {len(values)} values, not {n}")
    if not all(math.isfinite(v) for v in values):
        raise _FieldError(keyword, f"{keyword} holds NaN or infinite values")
    return values


def _pixel_data_complete(fp: BinaryIO, size: int, ds: pydicom.Dataset) -> str | None:
    """Check the Pixel Data element right after the parsed header; None when fine.

    pydicom leaves the file position at the Pixel Data tag when it stops before the
    pixels. Reading that element's header lets us detect truncated files without
    decoding: a native element must fit in the file; an encapsulated one must end
    with the sequence delimiter.
    """
    start = fp.tell()
    head = fp.read(12)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    tag = _PIXEL_DATA_TAG_LE if little is not False else _PIXEL_DATA_TAG_BE
    if len(head) < 8 or head[:4] != tag:
        return "the file ends before the Pixel Data element (truncated file?)"
    order = "<" if little is not False else ">"
    if implicit:
        length, header_len = struct.unpack(order + "I", head[4:8])[0], 8
    else:
        length, header_len = struct.unpack(order + "I", head[8:12])[0], 12
    if length == 0xFFFFFFFF:
        fp.seek(max(size - 1024, start))
        if _SEQ_DELIMITER_LE not in fp.read():
            return "encapsulated Pixel Data has no end delimiter (truncated file)"
        return None
    if start + header_len + length > size:
        missing = start + header_len + length - size
        return f"Pixel Data is {missing} bytes shorter than declared (truncated file)"
    return None


def _slice_header(path: Path, ds: pydicom.Dataset) -> SliceHeader:
    """Build a SliceHeader from a header-only dataset (raises _FieldError)."""
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    if spacing is not None and min(spacing) <= 0:
        raise _FieldError("PixelSpacing", f"PixelSpacing {spacing} is not positive")
    slope = _floats(ds, "RescaleSlope", 1)
    intercept = _floats(ds, "RescaleIntercept", 1)
    for keyword in ("Rows", "Columns"):
        if not isinstance(ds.get(keyword), int) or ds.get(keyword) <= 0:
            raise _FieldError(keyword, f"{keyword} is missing or not positive")
    number = ds.get("InstanceNumber")
    frames = ds.get("NumberOfFrames")
    return SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        position=position,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slope=1.0 if slope is None else slope[0],
        intercept=0.0 if intercept is None else intercept[0],
        instance_number=None if number in (None, "") else int(number),
        n_frames=1 if frames in (None, "") else int(frames),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
    )


def _required_text(ds: pydicom.Dataset, keyword: str, hint: str) -> str:
    """Return a non-empty text value or raise _FieldError naming how to fix it."""
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise _FieldError(keyword, f"{keyword} is missing or empty; {hint}")
    return value


def _read_header(path: Path, tags: list[str]) -> pydicom.Dataset | None:
    """Read one file's header; None for a DICOMDIR. Raises on unusable files."""
    size = path.stat().st_size
    with path.open("rb") as fp:
        ds = pydicom.dcmread(
            fp, stop_before_pixels=True, force=False, specific_tags=tags
        )
        sop_class = UID(str(ds.file_meta.get("MediaStorageSOPClassUID", "")))
        if sop_class == _DIRECTORY_SOP_CLASS:
            return None
        problem = _pixel_data_complete(fp, size, ds)
    if problem is None:
        return ds
    if "Image" not in sop_class.name:
        raise _NotImageError(
            f"SOP class {sop_class.name or sop_class!r} holds no image"
        )
    raise _FieldError("PixelData", problem)


def _issue(code: str, path: Path, keyword: str, message: str) -> IngestIssue:
    """Build a file-level error issue (the file is skipped)."""
    return IngestIssue(code, str(path), keyword, message, "error", None)


def _scan_file(
    path: Path, tags: list[str], patient_tag: str, exam_tag: str
) -> tuple[dict[str, Any] | None, IngestIssue | None]:
    """Read one file into a record ``{series_uid, ids, header, ...}`` or an issue."""
    try:
        ds = _read_header(path, tags)
        if ds is None:
            return None, None
        hint = f"fill {patient_tag}/{exam_tag} with the site's pseudonymous IDs"
        record = {
            "series_uid": _required_text(ds, "SeriesInstanceUID", "re-export it"),
            "patient_id": _required_text(ds, patient_tag, hint),
            "exam_id": _required_text(ds, exam_tag, hint),
            "study_uid": str(ds.get("StudyInstanceUID", "")),
            "modality": str(ds.get("Modality", "")).upper(),
            "image_type": tuple(str(v).upper() for v in ds.get("ImageType", [])),
            "description": str(ds.get("SeriesDescription", "")),
            "thickness": _floats(ds, "SliceThickness", 1),
            "header": _slice_header(path, ds),
        }
        return record, None
    except _NotImageError as exc:
        msg = f"{exc}; ignored (only image files are used)"
        return None, IngestIssue("not_image", str(path), "SOPClassUID", msg, "warning")
    except (InvalidDicomError, EOFError, OSError) as exc:
        msg = (
            f"not a readable DICOM file ({type(exc).__name__}); remove it or re-export"
        )
        return None, _issue("unreadable_file", path, "", msg)
    except _FieldError as exc:
        code = "unreadable_file" if exc.keyword == "PixelData" else "invalid_header"
        return None, _issue(code, path, exc.keyword, f"{exc}; re-export the file")
    except Exception as exc:  # one bad file must never stop a scan
        msg = f"header could not be parsed ({type(exc).__name__}); re-export the file"
        return None, _issue("unreadable_file", path, "", msg)


def _unique_files(
    records: list[dict[str, Any]], issues: list[IngestIssue]
) -> list[SliceHeader]:
    """Headers of a series with repeated SOPInstanceUIDs (file copies) dropped."""
    seen: dict[str, Path] = {}
    headers = []
    for record in records:
        header: SliceHeader = record["header"]
        if header.sop_uid and header.sop_uid in seen:
            msg = f"same SOPInstanceUID as {seen[header.sop_uid]}; copy ignored"
            issue = IngestIssue(
                "duplicate_file", str(header.path), "SOPInstanceUID", msg, "warning"
            )
            issues.append(replace(issue, exam_id=record["exam_id"]))
            continue
        seen[header.sop_uid] = header.path
        headers.append(header)
    return headers


def _build_series(
    uid: str, records: list[dict[str, Any]], issues: list[IngestIssue]
) -> SeriesInfo | None:
    """Merge the records of one SeriesInstanceUID, dropping duplicate files."""
    first = records[0]
    ids = {(r["patient_id"], r["exam_id"]) for r in records}
    if len(ids) > 1:
        folder = str(first["header"].path.parent)
        msg = (
            f"one series (SeriesInstanceUID) mixes {len(ids)} patient/exam ID "
            "pairs; fix the pseudonymisation so a series has one patient and exam"
        )
        issues.append(
            IngestIssue("mixed_ids", folder, "SeriesInstanceUID", msg, "error")
        )
        return None
    thickness = first["thickness"]
    return SeriesInfo(
        patient_id=first["patient_id"],
        exam_id=first["exam_id"],
        study_uid=first["study_uid"],
        series_uid=uid,
        modality=first["modality"],
        image_type=first["image_type"],
        series_description=first["description"],
        slice_thickness=None if thickness is None else thickness[0],
        slices=tuple(_unique_files(records, issues)),
    )


def scan_dicom_tree(
    root: Path,
    *,
    patient_id_tag: str = "PatientID",
    exam_id_tag: str = "AccessionNumber",
) -> ScanResult:
    """Read the headers of every file below ``root`` and group them into series.

    Any file names are accepted (with or without ``.dcm``); DICOMDIR files are
    skipped. Files that are not DICOM, truncated files and files missing the IDs
    are reported as issues and skipped; the scan never raises for one bad file.

    Args:
        root: Folder tree holding the site's DICOM files.
        patient_id_tag: Keyword of the tag holding the pseudonymous patient ID.
        exam_id_tag: Keyword of the tag holding the pseudonymous exam ID.

    Returns:
        The series found (one per SeriesInstanceUID), the issues and the file count.

    Raises:
        ValueError: When ``root`` is not a folder, holds no files, or a tag keyword
            is unknown.
    """
    root = Path(root)
    check_keyword(patient_id_tag)
    check_keyword(exam_id_tag)
    if not root.is_dir():
        raise ValueError(f"DICOM root {root} is not a folder; check [dicom] root")
    tags = sorted({*_HEADER_KEYWORDS, patient_id_tag, exam_id_tag})
    result = ScanResult()
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in _iter_files(root):
        result.n_files += 1
        record, issue = _scan_file(path, tags, patient_id_tag, exam_id_tag)
        if issue is not None:
            result.issues.append(issue)
        if record is not None:
            groups[record["series_uid"]].append(record)
    if result.n_files == 0:
        raise ValueError(
            f"DICOM root {root} holds no files; check [dicom] root in the site config"
        )
    for uid in sorted(groups):
        series = _build_series(uid, groups[uid], result.issues)
        if series is not None:
            result.series.append(series)
    logger.info(
        "scanned %d files under %s: %d series, %d issues",
        result.n_files,
        root,
        len(result.series),
        len(result.issues),
    )
    return result
