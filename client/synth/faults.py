"""Faults injected into a generated site, each in its own exam, all recorded.

DICOM faults: a corrupt (truncated) file, one missing slice in the middle of a
series, a gap of three slices, a localizer series next to the good series, a non-CT
(MR) series next to the good series, a duplicate slice (a copy under another name),
and an exam whose files are all garbage. Table faults: several empty clinical
cells, an out-of-range value, an exam without a clinical row, and a clinical and
labels row whose IDs match no DICOM exam.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from client.synth.cohort import PatientRecord
from client.synth.dicom_writer import SliceFile, file_name
from client.synth.names import person_name
from client.synth.profiles import Profile

__all__ = [
    "DICOM_FAULTS",
    "SERIES_FAULTS",
    "TABLE_FAULTS",
    "ALL_FAULTS",
    "plan_faults",
    "damage_series",
    "garble_exam",
    "apply_table_faults",
]

SERIES_FAULTS = ("localizer", "non_ct_series")
DICOM_FAULTS = (
    "corrupt_file", "missing_slice", "slice_gap", *SERIES_FAULTS, "duplicate_slice",
    "unreadable_exam",
)  # fmt: skip
TABLE_FAULTS = ("missing_values", "out_of_range", "no_clinical_row")
ALL_FAULTS = (*DICOM_FAULTS, *TABLE_FAULTS, "orphan_row")
_ORPHAN_INDEX = 9001


def plan_faults(
    profile: Profile, patients: list[PatientRecord], seed: int
) -> dict[str, str]:
    """Choose a distinct exam for every exam-bound fault.

    Args:
        profile: The site profile.
        patients: The latent cohort.
        seed: Site seed.

    Returns:
        Exam ID -> fault kind.

    Raises:
        ValueError: If the cohort has fewer exams than faults.
    """
    exams = [e.exam_id for p in patients for e in p.exams]
    kinds = (*DICOM_FAULTS, *TABLE_FAULTS)
    if len(exams) < len(kinds):
        raise ValueError(
            f"fault injection needs at least {len(kinds)} exams, the cohort has "
            f"{len(exams)}; generate more patients or pass faults=False"
        )
    rng = np.random.default_rng([seed, profile.code, 17])
    chosen = rng.choice(len(exams), size=len(kinds), replace=False)
    return {exams[int(i)]: kind for i, kind in zip(chosen, kinds, strict=True)}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def damage_series(
    kind: str, files: list[SliceFile], style: str, root: Path
) -> dict[str, object]:
    """Apply a slice-level fault to a written series.

    Args:
        kind: "corrupt_file", "missing_slice", "slice_gap" or "duplicate_slice".
        files: The series' slices in canonical order.
        style: The scanner's file naming style.
        root: Site folder (paths in the record are relative to it).

    Returns:
        Record with the affected ``files`` and canonical ``slices``.

    Raises:
        ValueError: On another kind.
    """
    n = len(files)
    if kind == "corrupt_file":
        target = files[n // 2 + 1]
        data = target.path.read_bytes()
        target.path.write_bytes(data[: int(len(data) * 0.6)])
        hit = [target]
    elif kind == "missing_slice":
        hit = [files[n // 2]]
    elif kind == "slice_gap":
        hit = files[n // 3 : n // 3 + 3]
    elif kind == "duplicate_slice":
        source = files[n // 2]
        copy_name = file_name(style, 9000 + source.instance, source.sop_uid + ".copy")
        copy = source.path.with_name(copy_name)
        shutil.copyfile(source.path, copy)
        return {
            "files": [_rel(source.path, root), _rel(copy, root)],
            "slices": [source.k],
        }
    else:
        raise ValueError(f"not a slice-level fault: {kind!r}")
    if kind in ("missing_slice", "slice_gap"):
        for item in hit:
            item.path.unlink()
    return {"files": [_rel(f.path, root) for f in hit], "slices": [f.k for f in hit]}


def garble_exam(folder: Path, root: Path, seed: int) -> dict[str, object]:
    """Overwrite every file under an exam folder with random bytes of equal size.

    Args:
        folder: The exam's study folder.
        root: Site folder.
        seed: Seed of the garbage.

    Returns:
        Record with the exam ``folder`` and the number of ``files``.
    """
    rng = np.random.default_rng(seed)
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in paths:
        path.write_bytes(rng.bytes(path.stat().st_size))
    return {"folder": _rel(folder, root), "n_files": len(paths)}


def _row_index(frame: pd.DataFrame, column: str, exam_id: str) -> int:
    hits = frame.index[frame[column] == exam_id]
    return int(hits[0])


def _orphan(
    profile: Profile, frame: pd.DataFrame, seed: int, clinical: bool
) -> pd.DataFrame:
    t = profile.tables
    row = frame.iloc[[len(frame) // 2]].copy()
    pid = f"{profile.prefix}-P{_ORPHAN_INDEX:04d}"
    row[t.patient_id_column] = pid
    row[t.exam_id_column] = f"{profile.prefix}-E{_ORPHAN_INDEX:04d}-1"
    if clinical:
        given, family, middle = person_name(profile.code, seed, _ORPHAN_INDEX, "Female")
        name = f"{given} {middle}. {family}"
        row[t.identifiers[0]] = name
        row[t.identifiers[2]] = f"{name}: results pending, no imaging on file."
    return pd.concat([frame, row], ignore_index=True)


def apply_table_faults(
    profile: Profile,
    clinical: pd.DataFrame,
    labels: pd.DataFrame,
    plan: dict[str, str],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Inject the table faults of ``plan`` and add an orphan row.

    Args:
        profile: The site profile.
        clinical: Clinical table (site columns).
        labels: Labels table.
        plan: Exam ID -> fault kind (only table kinds are used here).
        seed: Site seed.

    Returns:
        (clinical, labels, fault records).
    """
    t = profile.tables
    rng = np.random.default_rng([seed, profile.code, 19])
    records: list[dict] = []
    for exam_id, kind in plan.items():
        if kind not in TABLE_FAULTS:
            continue
        idx = _row_index(clinical, t.exam_id_column, exam_id)
        record = {"kind": kind, "exam_id": exam_id, "row_id": exam_id}
        if kind == "no_clinical_row":
            clinical = clinical.drop(index=idx).reset_index(drop=True)
        else:
            record |= _damage_row(profile, clinical, idx, kind, rng)
        records.append(record)
    clinical = _orphan(profile, clinical, seed, clinical=True)
    labels = _orphan(profile, labels, seed, clinical=False)
    orphan = f"{profile.prefix}-E{_ORPHAN_INDEX:04d}-1"
    records.append({"kind": "orphan_row", "exam_id": orphan, "row_id": orphan})
    return clinical, labels, records


def _damage_row(
    profile: Profile, clinical: pd.DataFrame, idx: int, kind: str, rng
) -> dict:
    """Empty four filled cells, or write one out-of-range value (in place)."""
    t = profile.tables
    if kind == "missing_values":
        filled = [
            f for f in sorted(t.columns) if pd.notna(clinical.loc[idx, t.columns[f]])
        ]
        fields = sorted(str(f) for f in rng.choice(filled, size=4, replace=False))
        for field in fields:
            clinical.loc[idx, t.columns[field]] = None
        return {"fields": fields, "columns": [t.columns[f] for f in fields]}
    field = "height" if t.units.get("height") == "cm" else "age"
    value = 400.0 if field == "height" else 250
    clinical.loc[idx, t.columns[field]] = value
    return {"fields": [field], "columns": [t.columns[field]], "value": value}
