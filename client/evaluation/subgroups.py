"""Subgroups of a site's exams for the evaluation breakdown.

A subgroup field is a clinical data type of the exam's record (``gender``,
``smoking_status``, ...; ``age`` is cut into bands, other numbers at the split's
median), ``ct`` (whether the exam has a CT), or a column of a site-supplied groups
table keyed by exam ID (e.g. ``scanner``), for groupings the clinical table lacks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3fm_model.clinical import CLINICAL_FIELDS, FieldKind

from ..tables import cell_text, read_table

AGE_BANDS = ((0, 55, "<55"), (55, 65, "55-64"), (65, 75, "65-74"), (75, 999, ">=75"))
UNKNOWN = "unknown"


def load_groups_table(path: str | Path, exam_id_column: str = "exam_id") -> dict:
    """Exam ID -> {column: value} from a CSV/Parquet/Excel groups table.

    Raises:
        ValueError: unreadable table or no exam-ID column (named in the message).
    """
    frame = read_table(Path(path))
    if exam_id_column not in frame.columns:
        raise ValueError(
            f"groups table {path} has no {exam_id_column!r} column (columns: "
            f"{list(frame.columns)}); add one with the pseudonymous exam IDs"
        )
    out: dict[str, dict[str, str]] = {}
    for row in frame.to_dict("records"):
        key = cell_text(row[exam_id_column])
        if key is not None:
            out[key] = {
                str(c): cell_text(v) or UNKNOWN
                for c, v in row.items()
                if c != exam_id_column
            }
    return out


def check_fields(fields: Sequence[str], groups: Mapping[str, Mapping]) -> None:
    """Refuse a subgroup field that is neither clinical, ``ct`` nor a groups column."""
    columns = {c for row in groups.values() for c in row}
    for name in fields:
        if name not in CLINICAL_FIELDS and name != "ct" and name not in columns:
            raise ValueError(
                f"unknown subgroup field {name!r}; use a clinical data type "
                f"(e.g. gender, age, smoking_status), 'ct', or a column of --groups "
                f"({sorted(columns) or 'no table given'})"
            )


def _age_band(value: float) -> str:
    return next(label for lo, hi, label in AGE_BANDS if lo <= value < hi)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def assign(
    exams: Sequence[Mapping[str, Any]],
    name: str,
    groups: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """The subgroup of each exam for one field (``UNKNOWN`` when not recorded)."""
    if name == "ct":
        return ["with CT" if e.get("crops") else "without CT" for e in exams]
    if name not in CLINICAL_FIELDS:
        return [groups.get(str(e.get("exam_id")), {}).get(name, UNKNOWN) for e in exams]
    values = [(e.get("clinical_record") or {}).get(name) for e in exams]
    if (
        CLINICAL_FIELDS[name].kind is not FieldKind.NUMBER
        and CLINICAL_FIELDS[name].kind is not FieldKind.CATEGORY
    ):  # flags and histories: absent means "no"
        return ["no" if v in (None, False) else "yes" for v in values]
    numbers = [_number(v) for v in values]
    if name == "age":
        return [UNKNOWN if x is None else _age_band(x) for x in numbers]
    present = [x for x in numbers if x is not None]
    if CLINICAL_FIELDS[name].kind is FieldKind.NUMBER and present:
        cut = float(np.median(present))
        return [
            UNKNOWN if x is None else (f"<{cut:g}" if x < cut else f">={cut:g}")
            for x in numbers
        ]
    return [UNKNOWN if v in (None, "") else str(v) for v in values]
