"""Generate a whole demo hospital: DICOM tree, tables, site.toml and truth.json.

See README.md in this package for the generative model. ``truth.json`` is ground
truth for tests only (findings, organ boxes in canonical voxel coordinates, the
injected faults); the pipeline never reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from client.synth.cohort import ExamRecord, PatientRecord, sample_cohort
from client.synth.dicom_extra import write_localizer, write_mr_series
from client.synth.dicom_writer import SeriesInfo, StudyInfo, uid, write_ct_series
from client.synth.faults import (
    apply_table_faults,
    damage_series,
    garble_exam,
    plan_faults,
)
from client.synth.heldout import HELDOUT_FILE, write_heldout_labels
from client.synth.paint import Grid
from client.synth.phantom import Phantom, make_grid, render_phantom
from client.synth.profiles import Profile, get
from client.synth.siteconfig import site_config_toml
from client.synth.tables import clinical_frame, labels_frame, write_table

__all__ = ["synthesize_site", "site_is_current", "render_exam", "GENERATOR_VERSION"]

log = logging.getLogger(__name__)
GENERATOR_VERSION = 2
_PRIMARY, _THICK, _LOCALIZER, _MR = 2, 3, 1, 601


def render_exam(profile: Profile, patient: PatientRecord, exam: ExamRecord) -> Phantom:
    """Render one exam on the profile's scanner grid.

    Args:
        profile: The site profile.
        patient: The patient (anatomy).
        exam: The exam (findings, render seed).

    Returns:
        The phantom.
    """
    s = profile.scanner
    grid = make_grid(
        patient.anatomy, rows=s.rows, pixel_spacing_mm=s.pixel_spacing_mm,
        slice_spacing_mm=s.slice_spacing_mm, margin_below_mm=s.margin_below_mm,
        margin_above_mm=s.margin_above_mm,
    )  # fmt: skip
    return render_phantom(
        patient.anatomy, exam.findings, grid, noise_hu=s.noise_hu, seed=exam.render_seed
    )


def _study(
    profile: Profile, patient: PatientRecord, exam: ExamRecord, seed: int
) -> StudyInfo:
    study_uid = uid(profile.name, seed, exam.exam_id, "study")
    return StudyInfo(
        patient_name=patient.dicom_name,
        patient_id=patient.patient_id,
        birth_date=patient.birth_date.strftime("%Y%m%d"),
        sex=patient.sex,
        age_years=exam.age,
        study_uid=study_uid,
        study_date=exam.study_date.strftime("%Y%m%d"),
        study_time=exam.study_time,
        accession=exam.exam_id,
        study_id=str(1000 + patient.index * 10 + exam.number),
        frame_uid=uid(study_uid, "frame"),
        height_m=round(float(exam.clinical["height"]) * 0.0254, 2),
        weight_kg=round(float(exam.clinical["weight"]) / 2.20462, 1),
        table_z_mm=-120.0 - float(exam.render_seed % 80),
    )


def _hex(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:10]


def _study_folder(profile: Profile, study: StudyInfo) -> Path:
    style = profile.scanner.folder_style
    if style == "hashed":
        return Path("dicom", _hex(study.patient_id), _hex(study.study_uid))
    if style == "dated":
        return Path("dicom", study.patient_id, study.study_date)
    return Path("dicom", study.patient_id, f"{study.study_date}_{study.accession}")


def _series_folder(profile: Profile, study_dir: Path, series: SeriesInfo) -> Path:
    style = profile.scanner.folder_style
    if style == "hashed":
        return study_dir / _hex(series.uid)
    if style == "dated":
        words = re.sub(r"[^A-Za-z0-9]+", "_", series.description).strip("_")
        return study_dir / f"{series.number}_{words}"
    return study_dir / f"SE{series.number:03d}"


def _thick(volume: np.ndarray, grid: Grid, factor: int) -> tuple[np.ndarray, Grid]:
    """Average ``factor`` adjacent slices (a thick-slice reconstruction)."""
    n = grid.shape[0] // factor
    thick = volume[: n * factor].reshape(n, factor, *grid.shape[1:]).mean(axis=1)
    dz = grid.spacing[0] * factor
    z0 = grid.z0_mm + grid.spacing[0] * (factor - 1) / 2
    return thick, Grid((n, *grid.shape[1:]), (dz, *grid.spacing[1:]), z0)


def _series_entry(series: SeriesInfo, role: str, folder: Path, n_files: int) -> dict:
    return {
        "uid": series.uid, "number": series.number, "description": series.description,
        "role": role, "folder": folder.as_posix(), "n_files": n_files,
    }  # fmt: skip


def _extra_series(profile, study, phantom, root, study_dir, kind, seed) -> dict:
    s = profile.scanner
    if kind == "localizer":
        info = SeriesInfo(
            uid(study.study_uid, "localizer"), _LOCALIZER, "Topogram 0.6 T20f", 1.0
        )
        folder = _series_folder(profile, study_dir, info)
        paths = write_localizer(phantom.volume, phantom.grid, root / folder, study, info,
                                s, images=1 + seed % 3)  # fmt: skip
        return _series_entry(info, "localizer", folder, len(paths))
    info = SeriesInfo(uid(study.study_uid, "mr"), _MR, "t1_se_tra", 6.0)
    folder = _series_folder(profile, study_dir, info)
    paths = write_mr_series(root / folder, study, info, s, seed=seed)
    return _series_entry(info, "non_ct", folder, len(paths))


def _write_exam(profile, patient, exam, root: Path, seed: int, fault: str | None):
    """Render and write one exam; returns (truth entry, fault record or None)."""
    s = profile.scanner
    phantom = render_exam(profile, patient, exam)
    study = _study(profile, patient, exam, seed)
    study_dir = _study_folder(profile, study)
    primary = SeriesInfo(uid(study.study_uid, "series", _PRIMARY), _PRIMARY,
                         s.series_description, s.slice_thickness_mm)  # fmt: skip
    folder = _series_folder(profile, study_dir, primary)
    files = write_ct_series(
        phantom.volume, phantom.grid, root / folder, study, primary, s
    )
    series = [_series_entry(primary, "primary", folder, len(files))]
    thick_rng = np.random.default_rng([exam.render_seed, 3])
    if thick_rng.random() < s.thick_series_fraction:
        factor = max(2, int(round(s.thick_spacing_mm / s.slice_spacing_mm)))
        volume, grid = _thick(phantom.volume, phantom.grid, factor)
        info = SeriesInfo(
            uid(study.study_uid, "series", _THICK),
            _THICK,
            f"BODY {grid.spacing[0]:.1f}",
            grid.spacing[0],
            kernel="FC13",
        )
        thick_dir = _series_folder(profile, study_dir, info)
        written = write_ct_series(volume, grid, root / thick_dir, study, info, s)
        series.append(_series_entry(info, "thick", thick_dir, len(written)))
    record = None
    if fault in ("localizer", "non_ct_series"):
        series.append(_extra_series(profile, study, phantom, root, study_dir, fault,
                                    exam.render_seed))  # fmt: skip
        record = {"series": series[-1]}
    elif fault in ("corrupt_file", "missing_slice", "slice_gap", "duplicate_slice"):
        record = damage_series(fault, files, s.file_style, root)
    elif fault == "unreadable_exam":
        record = garble_exam(root / study_dir, root, exam.render_seed)
    if record is not None:
        record = {"kind": fault, "exam_id": exam.exam_id,
                  "patient_id": patient.patient_id, **record}  # fmt: skip
    return _truth_exam(patient, exam, study, phantom, series), record


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _truth_exam(patient, exam, study: StudyInfo, phantom: Phantom, series) -> dict:
    f = exam.findings
    findings = dict(phantom.rendered)
    findings.update(
        calcium_score=f.calcium_score, effusion_mm=list(f.effusion_mm),
        fibrosis_extent=f.fibrosis_extent, emphysema_target=f.emphysema_fraction,
        covid_positive=exam.covid,
    )  # fmt: skip
    g = phantom.grid
    return {
        "patient_id": patient.patient_id, "exam_id": exam.exam_id,
        "patient_name": study.patient_name, "display_name": patient.display_name,
        "birth_date": patient.birth_date.isoformat(), "mrn": patient.mrn,
        "study_uid": study.study_uid, "study_date": exam.study_date.isoformat(),
        "age": exam.age, "series": series, "primary_series_uid": series[0]["uid"],
        "grid": {"shape": list(g.shape), "spacing_mm": list(g.spacing),
                 "z0_mm": g.z0_mm, "table_z_mm": study.table_z_mm},
        "boxes": phantom.boxes, "heart_scale": patient.anatomy.heart_scale,
        "findings": findings,
        "labels": _jsonable(exam.labels), "clinical": exam.clinical, "faults": [],
    }  # fmt: skip


def _write_images(profile, records, root: Path, seed: int, plan: dict) -> tuple:
    """Render and write every exam; returns (truth entries, DICOM fault records)."""
    exams, faults = [], []
    for patient in records:
        for exam in patient.exams:
            entry, record = _write_exam(
                profile, patient, exam, root, seed, plan.get(exam.exam_id)
            )
            exams.append(entry)
            faults += [record] if record else []
    return exams, faults


def _write_tables(profile, records, root: Path, seed: int, plan: dict | None) -> list:
    """Write the clinical and labels tables; returns table fault records."""
    clinical = clinical_frame(profile, records, seed)
    labels = labels_frame(profile, records, seed)
    faults: list[dict] = []
    if plan is not None:
        clinical, labels, faults = apply_table_faults(
            profile, clinical, labels, plan, seed
        )
    write_table(clinical, root / profile.tables.clinical_file)
    write_table(labels, root / profile.tables.labels_file)
    return faults


def site_is_current(folder: Path, *, patients: int, seed: int) -> bool:
    """Whether ``folder`` holds a complete site written by today's generator.

    False for a missing or half-written folder, another seed or cohort size, or an
    older ``GENERATOR_VERSION`` (labels or images drawn differently), so callers
    generate it again.
    """
    try:
        truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        (folder / "site.toml").exists()
        and (folder / HELDOUT_FILE).exists()
        and truth.get("generator_version") == GENERATOR_VERSION
        and truth.get("seed") == seed
        and truth.get("patients") == patients
    )


def synthesize_site(
    profile: str, out_dir: Path, *, patients: int, seed: int, faults: bool | None = None
) -> Path:
    """Generate a demo hospital's data, site config and ground truth.

    Args:
        profile: "hospital_a", "hospital_b" or "hospital_c".
        out_dir: Destination folder; must be absent or empty.
        patients: Number of patients (>= 1; >= 10 exams with faults).
        seed: Seed; the same (profile, patients, seed) gives identical files.
        faults: Inject the fault set (default: the profile's, True for hospital_b).

    Returns:
        Path of the written ``out_dir/site.toml``.

    Raises:
        ValueError: On an unknown profile or too few patients for the faults.
        FileExistsError: If ``out_dir`` is not empty.
    """
    prof = get(profile)
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new folder")
    inject = prof.default_faults if faults is None else faults
    records = sample_cohort(prof, patients, seed)
    plan = plan_faults(prof, records, seed) if inject else {}
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    exams, fault_records = _write_images(prof, records, root, seed, plan)
    log.info(
        "synthesized %s images: %d patients, %d exams, %.2f s per patient",
        prof.name, patients, len(exams), (time.perf_counter() - start) / patients,
    )  # fmt: skip
    fault_records += _write_tables(prof, records, root, seed, plan if inject else None)
    write_heldout_labels(prof, records, root, seed)
    config = root / "site.toml"
    config.write_text(site_config_toml(prof))
    by_exam = {e["exam_id"]: e for e in exams}
    for record in fault_records:
        if record["exam_id"] in by_exam:
            by_exam[record["exam_id"]]["faults"].append(record["kind"])
    truth = {
        "generator_version": GENERATOR_VERSION, "profile": prof.name,
        "patients": patients, "seed": seed, "faults_injected": inject,
        "exams": exams, "faults": fault_records,
    }  # fmt: skip
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return config
