"""Latent cohort of a generated site: patients, exams, findings and labels.

Nothing here renders images, so thousands of patients take well under a second
each hundred; ``synthesize_site`` renders the records that ``sample_cohort`` returns.
Every patient has an independent random stream derived from (seed, profile,
patient index), so the first N patients of a larger cohort are the same patients.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from client.synth.anatomy import Anatomy
from client.synth.covariates import risk_factors, sample_clinical
from client.synth.findings import Findings, follow_up_findings, sample_findings
from client.synth.labels import (
    TASKS,
    clinical_features,
    draw_cancer_time,
    draw_labels,
    image_features,
)
from client.synth.names import person_name
from client.synth.profiles import Profile, get

__all__ = ["ExamRecord", "PatientRecord", "sample_cohort", "cohort_features"]

_EPOCH = dt.date(2016, 1, 4)


@dataclass(frozen=True)
class ExamRecord:
    """One CT exam of a patient.

    Attributes:
        exam_id: Pseudonymous exam ID (AccessionNumber), "<prefix>-E<patient number>-<exam number>".
        number: 1 for the first exam, 2 for a follow-up.
        study_date: Date of the scan.
        study_time: HHMMSS of the scan.
        age: Age in whole years at the scan.
        clinical: Dictionary field -> value at this scan (all 49 fields).
        findings: What the CT shows.
        labels: Task -> label for all 17 tasks.
        covid: Whether the patient has COVID-19 at this scan.
        render_seed: Seed of the image texture and noise.
    """

    exam_id: str
    number: int
    study_date: dt.date
    study_time: str
    age: int
    clinical: dict[str, object]
    findings: Findings
    labels: dict[str, object]
    covid: bool
    render_seed: int


@dataclass(frozen=True)
class PatientRecord:
    """One generated patient (identifiers are fake; names are leak sentinels).

    Attributes:
        index: 1-based patient number within the site.
        patient_id: Pseudonymous ID (PatientID), "<prefix>-P<patient number>".
        given_name: Fake given name.
        family_name: Fake family name.
        middle_initial: One letter.
        sex: "M" or "F".
        birth_date: Fake birth date.
        mrn: Fake 8-digit medical record number (never mapped).
        anatomy: Body parameters for rendering.
        exams: The patient's exams, in time order.
    """

    index: int
    patient_id: str
    given_name: str
    family_name: str
    middle_initial: str
    sex: str
    birth_date: dt.date
    mrn: str
    anatomy: Anatomy
    exams: tuple[ExamRecord, ...]

    @property
    def dicom_name(self) -> str:
        """PatientName as written in DICOM ("FAMILY^GIVEN^M")."""
        return f"{self.family_name}^{self.given_name}^{self.middle_initial}".upper()

    @property
    def display_name(self) -> str:
        """The name as written in tables and notes ("Given M. Family")."""
        return f"{self.given_name} {self.middle_initial}. {self.family_name}"


def _anatomy(rng: np.random.Generator, clin: dict, heart_range) -> Anatomy:
    male = clin["gender"] == "Male"
    height = float(clin["height"])
    bmi = float(clin["weight"]) * 703.0 / height**2
    width = float(
        np.clip(255 + 3.2 * (bmi - 25) + 18 * male + rng.normal(0, 8), 240, 310)
    )
    heart = rng.uniform(*heart_range) + (
        0.1 if clin["heart_disease"] is not None else 0.0
    )
    return Anatomy(
        body_width_mm=round(width, 1),
        body_depth_mm=round(
            width * float(np.clip(rng.normal(0.72, 0.04), 0.64, 0.8)), 1
        ),
        fat_mm=round(float(np.clip(8 + 1.3 * (bmi - 22) + 4 * (not male), 5, 28)), 1),
        lung_height_mm=round(
            float(np.clip(195 + 3.5 * (height - 67) + rng.normal(0, 8), 165, 225)), 1
        ),
        heart_scale=round(float(heart), 3),
    )


def _older(clin: dict, years: float, age: int) -> dict:
    """The clinical record ``years`` after the first scan."""
    out = dict(clin, age=float(age))
    if out["smoking_status"] == "current":
        out["smoking_years"] = float(round(out["smoking_years"] + years))
        out["pack_years"] = round(
            out["pack_years"] + years * out["cigs_per_day"] / 20, 1
        )
    return out


def _cancer_label(
    t: float, followup: float, offset: float
) -> tuple[float | None, float]:
    event = round(max(t - offset, 0.1), 1) if t <= followup else None
    return event, round(followup - offset, 1)


def _years_between(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _exam(
    profile, ctx: dict, number: int, years: float, findings: Findings
) -> ExamRecord:
    rng, clin0 = ctx["rng"], ctx["clinical"]
    day = ctx["first_date"] + dt.timedelta(days=int(round(years * 365.25)))
    age = _years_between(ctx["birth"], day)
    clin = clin0 if number == 1 else _older(clin0, years, age)
    covid = ctx["covid"] and number == 1
    labels = draw_labels(
        rng, findings, clinical_features(risk_factors(clin)), ctx["uniforms"],
        covid=covid, cvd_shift=profile.cohort.cvd_shift,
        cancer=_cancer_label(ctx["cancer_time"], ctx["followup"], years),
    )  # fmt: skip
    seed = np.random.SeedSequence([ctx["seed"], profile.code, ctx["index"], number, 7])
    return ExamRecord(
        exam_id=f"{profile.prefix}-E{ctx['index']:04d}-{number}",
        number=number,
        study_date=day,
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}"
        f"{int(rng.integers(60)):02d}",
        age=age,
        clinical=clin,
        findings=findings,
        labels=labels,
        covid=covid,
        render_seed=int(seed.generate_state(1)[0]),
    )


def _patient(profile: Profile, index: int, seed: int) -> PatientRecord:
    rng = np.random.default_rng([seed, profile.code, index])
    cohort = profile.cohort
    clin = sample_clinical(rng, cohort)
    rf = risk_factors(clin)
    anat = _anatomy(rng, clin, cohort.heart_scale)
    covid = bool(rng.random() < cohort.covid_prevalence)
    first = sample_findings(
        rng, anat, rf, nodule_logit=cohort.nodule_logit, covid=covid
    )
    first_date = _EPOCH + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    age = int(clin["age"])
    birth = first_date - dt.timedelta(days=int(age * 365.25 + rng.integers(1, 360)))
    ctx = {
        "rng": rng, "clinical": clin, "covid": covid, "first_date": first_date,
        "birth": birth, "seed": seed, "index": index,
        "uniforms": {task: float(rng.random()) for task in TASKS},
        "cancer_time": draw_cancer_time(
            rng, cohort.cancer_rate, image_features(first), clinical_features(rf)),
        "followup": float(rng.uniform(*cohort.followup_years)),
    }  # fmt: skip
    exams = [_exam(profile, ctx, 1, 0.0, first)]
    gap = float(rng.uniform(1.0, 2.0))
    if (
        rng.random() < cohort.second_exam
        and ctx["followup"] >= gap + 1.0
        and ctx["cancer_time"] > gap + 0.5
    ):
        grows = ctx["cancer_time"] < gap + 3.0
        later = follow_up_findings(rng, anat, first, years=gap, growth=grows)
        exams.append(_exam(profile, ctx, 2, gap, later))
    given, family, middle = person_name(profile.code, seed, index, clin["gender"])
    return PatientRecord(
        index=index,
        patient_id=f"{profile.prefix}-P{index:04d}",
        given_name=given,
        family_name=family,
        middle_initial=middle,
        sex="M" if clin["gender"] == "Male" else "F",
        birth_date=birth,
        mrn=f"{int(rng.integers(10**7, 10**8))}",
        anatomy=anat,
        exams=tuple(exams),
    )


def sample_cohort(
    profile: str | Profile, patients: int, seed: int
) -> list[PatientRecord]:
    """Draw the latent cohort of a site without rendering any image.

    Args:
        profile: Profile name or object.
        patients: Number of patients (>= 1).
        seed: Seed; the same (profile, patients, seed) gives the same cohort.

    Returns:
        Patients 1..``patients`` with their exams, findings and labels.

    Raises:
        ValueError: If ``patients`` < 1 or the profile is unknown.
    """
    prof = get(profile) if isinstance(profile, str) else profile
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    return [_patient(prof, i, seed) for i in range(1, patients + 1)]


def cohort_features(
    records: list[PatientRecord],
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Image and clinical feature matrices of each patient's first exam.

    Args:
        records: Output of ``sample_cohort``.

    Returns:
        (image features (N, Fi), clinical features (N, Fc), image names,
        clinical names).
    """
    img_rows, clin_rows = [], []
    for rec in records:
        exam = rec.exams[0]
        img_rows.append(image_features(exam.findings))
        clin_rows.append(clinical_features(risk_factors(exam.clinical)))
    img_names, clin_names = list(img_rows[0]), list(clin_rows[0])
    img = np.array([[r[k] for k in img_names] for r in img_rows], dtype=float)
    clin = np.array([[r[k] for k in clin_names] for r in clin_rows], dtype=float)
    return img, clin, img_names, clin_names
