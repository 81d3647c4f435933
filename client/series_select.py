"""Choose the axial CT series of each exam by explicit, reported rules.

Rules, applied per series in this order (the first that fails is reported):

1. ``not_ct``: Modality is not CT.
2. ``derived``: ImageType lacks ORIGINAL or holds DERIVED / SECONDARY (MIPs,
   reformats, secondary captures).
3. ``localizer``: ImageType holds LOCALIZER, or the series has at most
   ``LOCALIZER_MAX_SLICES`` files (scouts are one or two images).
4. ``missing_geometry``: a file lacks ImagePositionPatient, ImageOrientationPatient
   or PixelSpacing.
5. ``non_axial``: the slice normal is more than ``AXIAL_MAX_ANGLE_DEG`` from the
   patient z axis (coronal/sagittal reformats).
6. ``too_few_slices``: fewer than ``min_slices`` distinct slice positions.

Among the remaining candidates of an exam, a site-pinned SeriesDescription regex
wins when it matches at least one of them (the others are ``not_pinned``);
otherwise the thinnest reconstruction wins, then the one with most slices, then the
smallest SeriesInstanceUID (for a stable choice). Losing candidates are reported
as ``not_selected``. Rejected series are warnings (ignored); an exam left without
a candidate gets the error ``no_ct_series``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence

from client.dicom_geometry import AXIAL_MAX_ANGLE_DEG, axial_angle_deg
from client.dicom_types import IngestIssue, SeriesInfo

logger = logging.getLogger(__name__)

LOCALIZER_MAX_SLICES = 2
DEFAULT_MIN_SLICES = 16


def _warn(series: SeriesInfo, code: str, field: str, message: str) -> IngestIssue:
    """A series-level warning (the series is ignored)."""
    return IngestIssue(code, series.folder, field, message, "warning", series.exam_id)


def _geometry_reason(series: SeriesInfo) -> tuple[str, str, str] | None:
    """Return (code, field, message) for missing or non-axial geometry."""
    for header in series.slices:
        for field, value in (
            ("ImagePositionPatient", header.position),
            ("ImageOrientationPatient", header.orientation),
            ("PixelSpacing", header.pixel_spacing),
        ):
            if value is None:
                msg = f"{header.path.name} has no {field}; re-export with geometry"
                return "missing_geometry", field, msg
    try:
        angle = axial_angle_deg(series.orientation or ())
    except ValueError as exc:
        return "non_axial", "ImageOrientationPatient", f"{exc}; not an axial series"
    if angle > AXIAL_MAX_ANGLE_DEG:
        msg = (
            f"slice normal is {angle:.0f} deg from the patient z axis (coronal, "
            "sagittal or oblique); an axial reconstruction is needed"
        )
        return "non_axial", "ImageOrientationPatient", msg
    return None


def rejection_reason(
    series: SeriesInfo, *, min_slices: int = DEFAULT_MIN_SLICES
) -> tuple[str, str, str] | None:
    """Why ``series`` cannot be the exam's CT series, or None when it can.

    Args:
        series: One scanned series.
        min_slices: Fewest distinct slice positions accepted.

    Returns:
        (reason code, DICOM keyword, message) or None.
    """
    types = set(series.image_type)
    n_files = len(series.slices)
    if series.modality != "CT":
        return "not_ct", "Modality", f"Modality is {series.modality or 'empty'}"
    if "ORIGINAL" not in types or types & {"DERIVED", "SECONDARY"}:
        msg = f"ImageType {'/'.join(series.image_type)} is not ORIGINAL"
        return "derived", "ImageType", msg
    if "LOCALIZER" in types or n_files <= LOCALIZER_MAX_SLICES:
        return "localizer", "ImageType", f"localizer/scout ({n_files} image(s))"
    geometry = _geometry_reason(series)
    if geometry is not None:
        return geometry
    n_positions = len({tuple(round(v, 2) for v in p or ()) for p in series.positions})
    if n_positions < min_slices:
        msg = f"{n_positions} slice positions, fewer than the minimum {min_slices}"
        return "too_few_slices", "ImagePositionPatient", msg
    return None


def _thickness(series: SeriesInfo) -> float:
    """Reconstruction thickness: SliceThickness, else the position extent per slice."""
    if series.slice_thickness:
        return round(series.slice_thickness, 3)
    zs = sorted(p[2] for p in series.positions if p is not None)
    return round((zs[-1] - zs[0]) / max(len(zs) - 1, 1), 3) if zs else float("inf")


def _choose(
    candidates: list[SeriesInfo], pattern: re.Pattern[str] | None
) -> tuple[SeriesInfo, list[IngestIssue]]:
    """Pick one candidate of an exam; report the others."""
    issues: list[IngestIssue] = []
    pool = candidates
    if pattern is not None:
        pinned = [s for s in candidates if pattern.search(s.series_description)]
        if pinned:
            for series in candidates:
                if series not in pinned:
                    msg = "SeriesDescription does not match the site's pinned pattern"
                    issues.append(_warn(series, "not_pinned", "SeriesDescription", msg))
            pool = pinned
        else:
            msg = "no series matches the pinned SeriesDescription pattern; rules used"
            issues.append(_warn(candidates[0], "pin_unmatched", "", msg))
    pool = sorted(pool, key=lambda s: (_thickness(s), -len(s.slices), s.series_uid))
    chosen = pool[0]
    for series in pool[1:]:
        msg = (
            f"candidate not chosen: {_thickness(series)} mm / {len(series.slices)} "
            f"slices vs {_thickness(chosen)} mm / {len(chosen.slices)} slices; pin "
            "it with series-description-pattern to use it instead"
        )
        issues.append(_warn(series, "not_selected", "SliceThickness", msg))
    return chosen, issues


def select_ct_series(
    series: Sequence[SeriesInfo],
    *,
    description_pattern: str | None = None,
    min_slices: int = DEFAULT_MIN_SLICES,
) -> tuple[dict[str, SeriesInfo], list[IngestIssue]]:
    """Choose the axial CT series of each exam (see the module docstring).

    Args:
        series: Scanned series of any number of exams.
        description_pattern: Optional site-pinned regex searched in
            SeriesDescription; empty means no pin.
        min_slices: Fewest distinct slice positions accepted.

    Returns:
        The chosen series by exam ID, and one issue per series not chosen (plus
        ``no_ct_series`` / ``mixed_patients`` errors for exams left without one).

    Raises:
        ValueError: When ``description_pattern`` is not a valid regex.
    """
    try:
        pattern = re.compile(description_pattern) if description_pattern else None
    except re.error as exc:
        raise ValueError(
            f"series-description-pattern {description_pattern!r} is not a valid "
            f"regular expression: {exc}"
        ) from None
    by_exam: dict[str, list[SeriesInfo]] = defaultdict(list)
    for item in series:
        by_exam[item.exam_id].append(item)
    chosen: dict[str, SeriesInfo] = {}
    issues: list[IngestIssue] = []
    for exam_id in sorted(by_exam):
        pick, exam_issues = _select_exam(by_exam[exam_id], pattern, min_slices)
        issues.extend(exam_issues)
        if pick is not None:
            chosen[exam_id] = pick
    logger.info("selected a CT series for %d of %d exams", len(chosen), len(by_exam))
    return chosen, issues


def _select_exam(
    exam_series: list[SeriesInfo], pattern: re.Pattern[str] | None, min_slices: int
) -> tuple[SeriesInfo | None, list[IngestIssue]]:
    """Apply the rules to one exam's series."""
    issues: list[IngestIssue] = []
    candidates = []
    for item in sorted(exam_series, key=lambda s: s.series_uid):
        reason = rejection_reason(item, min_slices=min_slices)
        if reason is None:
            candidates.append(item)
        else:
            issues.append(_warn(item, *reason))
    first = exam_series[0]
    if len({s.patient_id for s in exam_series}) > 1:
        msg = "series of this exam carry different patient IDs; fix the pseudonyms"
        issues.append(
            IngestIssue("mixed_patients", first.folder, "", msg, "error", first.exam_id)
        )
        return None, issues
    if not candidates:
        msg = (
            "no series passed the CT rules (see this exam's other issues); send an "
            "original axial CT series or pin one with series-description-pattern"
        )
        issues.append(
            IngestIssue("no_ct_series", first.folder, "", msg, "error", first.exam_id)
        )
        return None, issues
    pick, choice_issues = _choose(candidates, pattern)
    return pick, issues + choice_issues
