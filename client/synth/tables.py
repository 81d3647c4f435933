"""Clinical and labels tables of a generated site, in the site's own conventions.

Columns are the site's names for the dictionary fields (``TableSpec.columns``);
values are converted into the site's units and codes (the inverse of the
``[clinical.units]`` and ``[clinical.values.*]`` maps the site config declares).
Each clinical table also carries identifier columns that must never be mapped: the
patient's name, a record number, and a free-text note that repeats the name and
birth date. Files are written byte-for-byte deterministically (the xlsx zip gets
fixed timestamps).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from client.synth.cohort import ExamRecord, PatientRecord
from client.synth.profiles import Profile

__all__ = ["clinical_frame", "labels_frame", "write_table", "encode_value", "note_text"]

_CM_PER_IN = 2.54
_LB_PER_KG = 2.20462
_FIXED_TIME = "2024-01-01T00:00:00Z"
_MISSING_RATE = 0.04
_LABEL_MISSING_RATE = 0.03
_MAY_BE_MISSING = (
    "height", "weight", "pack_years", "cigs_per_day", "smoking_years",
    "age_started_smoking", "age_quit_smoking", "education", "race", "ethnicity",
)  # fmt: skip
_NOTES = {
    "hospital_a": "Participant {name} (DOB {dob}) enrolled at baseline screening; "
    "counselled on smoking cessation.",
    "hospital_b": "Cardiology referral for {name}, born {dob}: chest pain work-up, "
    "please compare with prior imaging.",
    "hospital_c": "{name} (DOB {dob}) presented to the respiratory clinic with cough.",
}


def note_text(profile: Profile, patient: PatientRecord) -> str:
    """Free-text note of a patient (contains the name and birth date)."""
    template = _NOTES.get(profile.name, "{name} (DOB {dob}).")
    return template.format(
        name=patient.display_name, dob=patient.birth_date.isoformat()
    )


def encode_value(profile: Profile, name: str, value: object) -> object:
    """Convert one dictionary value into the site's unit or code.

    Args:
        profile: The site profile.
        name: Dictionary field name.
        value: Dictionary value (``None`` when absent).

    Returns:
        The cell value as the site stores it (``None`` for an empty cell).
    """
    tables = profile.tables
    codes = tables.values.get(name)
    if codes is not None:
        if value is None or value is False:
            word = "no"
        elif value is True or isinstance(value, float):
            word = "yes"
        else:
            word = str(value)
        inverse = {v: k for k, v in codes.items()}
        if word not in inverse:
            return None
        code = inverse[word]
        return int(code) if code.isdigit() else code
    if value is None:
        return None
    if name == "height" and tables.units.get("height") == "cm":
        return round(float(value) * _CM_PER_IN, 1)
    if name == "weight" and tables.units.get("weight") == "kg":
        return round(float(value) / _LB_PER_KG, 1)
    return value


def _digit_coded(profile: Profile, name: str) -> bool:
    codes = profile.tables.values.get(name)
    return codes is not None and all(k.isdigit() for k in codes)


def _clinical_row(
    profile: Profile, patient: PatientRecord, exam: ExamRecord, rng
) -> dict:
    t = profile.tables
    name_col, mrn_col, note_col = t.identifiers
    row: dict[str, object] = {
        t.patient_id_column: patient.patient_id,
        t.exam_id_column: exam.exam_id,
        name_col: patient.display_name,
        mrn_col: patient.mrn,
    }
    for field, column in t.columns.items():
        value = encode_value(profile, field, exam.clinical[field])
        may_drop = field in _MAY_BE_MISSING and not _digit_coded(profile, field)
        row[column] = None if may_drop and rng.random() < _MISSING_RATE else value
    row[note_col] = note_text(profile, patient)
    return row


def _tidy(frame: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    """Give columns stable dtypes (nullable bool, Int64, Float64 or text).

    Integral numbers become Int64 (so a CSV shows "63", not "63.0"); all-empty
    columns become Float64.
    """
    for column in frame.columns:
        series = frame[column]
        if column in keep:
            continue
        if series.map(lambda v: isinstance(v, bool | np.bool_)).any():
            frame[column] = series.astype("boolean")
            continue
        numeric = pd.to_numeric(series, errors="coerce")
        if numeric.notna().sum() != series.notna().sum():
            continue  # text
        values = numeric.dropna().to_numpy(dtype=float)
        integral = len(values) > 0 and bool(np.all(np.mod(values, 1.0) == 0.0))
        frame[column] = numeric.astype("Int64" if integral else "Float64")
    return frame


def clinical_frame(
    profile: Profile, patients: list[PatientRecord], seed: int
) -> pd.DataFrame:
    """One clinical row per exam, in the site's column names, units and codes.

    Args:
        profile: The site profile.
        patients: The latent cohort.
        seed: Site seed (drives which cells are naturally missing).

    Returns:
        The table (identifier columns included).
    """
    rng = np.random.default_rng([seed, profile.code, 11])
    rows = [_clinical_row(profile, p, e, rng) for p in patients for e in p.exams]
    t = profile.tables
    return _tidy(
        pd.DataFrame(rows), (t.patient_id_column, t.exam_id_column, *t.identifiers)
    )


def _label_cells(profile: Profile, exam: ExamRecord, rng) -> dict:
    row: dict[str, object] = {}
    for task, column in profile.tables.label_columns.items():
        value = exam.labels[task]
        if isinstance(column, tuple):
            event, followup = value
            row[column[0]], row[column[1]] = event, followup
            continue
        row[column] = None if rng.random() < _LABEL_MISSING_RATE else value
    return row


def labels_frame(
    profile: Profile, patients: list[PatientRecord], seed: int
) -> pd.DataFrame:
    """One labels row per exam for the site's tasks (a few cells unlabelled).

    Args:
        profile: The site profile.
        patients: The latent cohort.
        seed: Site seed (drives which cells are unlabelled).

    Returns:
        The table.
    """
    t = profile.tables
    rng = np.random.default_rng([seed, profile.code, 13])
    rows = [
        {t.patient_id_column: p.patient_id, t.exam_id_column: e.exam_id}
        | _label_cells(profile, e, rng)
        for p in patients
        for e in p.exams
    ]
    return _tidy(pd.DataFrame(rows), (t.patient_id_column, t.exam_id_column))


def _fixed_xlsx(data: bytes) -> bytes:
    """Rewrite an xlsx archive with fixed timestamps (byte-identical output)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            payload = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                text = re.sub(
                    r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)",
                    rf"\g<1>{_FIXED_TIME}\g<2>",
                    payload.decode(),
                )
                payload = text.encode()
            entry = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, payload)
    return out.getvalue()


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV, Parquet or Excel according to the file suffix.

    Args:
        frame: The table.
        path: Destination (.csv, .parquet or .xlsx).

    Raises:
        ValueError: On another suffix.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False, lineterminator="\n")
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".xlsx":
        buffer = io.BytesIO()
        frame.to_excel(buffer, index=False, sheet_name="patients", engine="openpyxl")
        path.write_bytes(_fixed_xlsx(buffer.getvalue()))
    else:
        raise ValueError(
            f"unsupported table format {suffix!r}: use .csv, .parquet or .xlsx"
        )
