"""Site clinical table -> validated clinical records and paragraphs, per exam.

The site config maps the site's columns and codes onto the 49 clinical data types of
``m3fm_model.clinical``; units are converted (cm -> inches, kg -> pounds). A bad cell is
dropped and reported (file, row, field, fix); the rest of the row is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3fm_model.clinical import ClinicalValueError, normalize_record, serialize

from .site_config import TableSource
from .tables import (
    RowIssue,
    cell_text,
    id_columns,
    keyed_rows,
    read_table,
    require_columns,
)

# Fields whose absence is a data-quality problem; an empty disease, cancer, family or
# exposure column usually just means "no".
CORE_FIELDS = (
    "age",
    "gender",
    "race",
    "ethnicity",
    "height",
    "weight",
    "education",
    "smoking_status",
)
_TO_DICTIONARY_UNIT = {
    "cm": 1 / 2.54,
    "kg": 2.2046226218,
    "in": 1.0,
    "inches": 1.0,
    "lb": 1.0,
    "lbs": 1.0,
    "pounds": 1.0,
}


@dataclass(frozen=True)
class ClinicalRow:
    """One exam's (or patient's) validated clinical record and its paragraph."""

    patient_id: str
    exam_id: str | None
    record: dict[str, object]
    text: str


def _convert_unit(value: str, unit: str) -> object:
    try:
        return float(value) * _TO_DICTIONARY_UNIT[unit]
    except ValueError:
        return value  # left for normalize_record to reject with the field named


def _raw_record(row: dict[str, object], src: TableSource) -> dict[str, object]:
    record: dict[str, object] = {}
    for fld, column in src.columns.items():
        text = cell_text(row.get(column))
        if text is None:
            continue
        mapped = src.values.get(fld, {})
        value: object = mapped.get(text, text)
        if fld in src.units:
            value = _convert_unit(str(value), src.units[fld])
        record[fld] = value
    return record


def _validated(
    raw: dict[str, object], path: str, row_no: int, row_id: str, issues: list[RowIssue]
) -> dict[str, object]:
    """Normalize a record, dropping (and reporting) each invalid field."""
    record = dict(raw)
    for _ in range(len(raw) + 1):
        try:
            return normalize_record(record)
        except ClinicalValueError as err:
            message = f"{err} (value omitted)"
            issues.append(
                RowIssue(
                    "invalid_value", path, row_no, err.field, message, row_id=row_id
                )
            )
            record.pop(err.field, None)
    return {}


def load_clinical_table(
    src: TableSource,
) -> tuple[dict[tuple[str, str | None], ClinicalRow], list[RowIssue]]:
    """Read, map and validate the clinical table.

    Args:
        src: the ``[clinical]`` section of the site config.

    Returns:
        (patient_id, exam_id or None) -> ClinicalRow, and the row issues.

    Raises:
        TableError: unreadable table or a configured column missing.
    """
    frame = read_table(src.path)
    require_columns(frame, src.path, id_columns(src), "ID columns")
    require_columns(frame, src.path, src.columns.values(), "[clinical.columns]")
    rows: dict[tuple[str, str | None], ClinicalRow] = {}
    issues: list[RowIssue] = []
    path = str(src.path)
    for i, pid, eid, row in keyed_rows(frame, src, issues):
        raw = _raw_record(row, src)
        row_id = f"{pid}/{eid}" if eid else pid
        missing = [f for f in src.columns if f in CORE_FIELDS and f not in raw]
        if missing:
            message = f"empty: {', '.join(missing)} (left out of the clinical text)"
            issues.append(
                RowIssue(
                    "missing_values", path, i, ",".join(missing), message, row_id=row_id
                )
            )
        record = _validated(raw, path, i, row_id, issues)
        rows[(pid, eid)] = ClinicalRow(pid, eid, record, serialize(record))
    return rows, issues
