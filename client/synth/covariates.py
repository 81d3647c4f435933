"""Clinical covariates of a generated patient, in the clinical data dictionary's terms.

A record maps all 49 dictionary fields to a dictionary value: numbers in dictionary
units (years, inches, pounds), category spellings of the dictionary, ``True`` /
``False`` for flags, and the age at diagnosis (or ``None``) for disease history and
prior cancers. ``None`` means absent. ``risk_factors`` condenses a record into the
numeric covariates the findings and label models use.
"""

from __future__ import annotations

import math

import numpy as np

from client.synth.profiles import CohortSpec
from m3fm_model.clinical import CLINICAL_FIELDS

__all__ = [
    "RACES",
    "ETHNICITIES",
    "EDUCATION",
    "DISEASES",
    "CANCERS",
    "FAMILY",
    "EXPOSURES",
    "sample_clinical",
    "risk_factors",
    "sigmoid",
]

# Category spellings (and their order, which the cohorts' probabilities follow) come
# from the clinical data dictionary.
RACES = CLINICAL_FIELDS["race"].allowed
ETHNICITIES = CLINICAL_FIELDS["ethnicity"].allowed
EDUCATION = CLINICAL_FIELDS["education"].allowed
# Base prevalence at about 60 years of age (before cohort and risk shifts).
DISEASES: dict[str, float] = {
    "asbestosis": 0.005, "asthma": 0.08, "bronchiectasis": 0.01,
    "childhood_asthma": 0.04, "chronic_bronchitis": 0.07, "copd": 0.1,
    "diabetes": 0.1, "emphysema_history": 0.05, "pulmonary_fibrosis": 0.01,
    "heart_disease": 0.1, "hypertension": 0.33, "pneumonia": 0.18,
    "sarcoidosis": 0.005, "silicosis": 0.003, "stroke": 0.03, "tuberculosis": 0.02,
}  # fmt: skip
CANCERS: dict[str, float] = {
    "cancer_bladder": 0.008, "cancer_breast": 0.02, "cancer_cervical": 0.006,
    "cancer_colorectal": 0.01, "cancer_esophageal": 0.003, "cancer_kidney": 0.006,
    "cancer_larynx": 0.005, "cancer_lung": 0.005, "cancer_oral": 0.004,
    "cancer_pancreatic": 0.002,
}  # fmt: skip
FAMILY: dict[str, float] = {
    "family_father": 0.1, "family_mother": 0.07, "family_brother": 0.06,
    "family_sister": 0.04, "family_child": 0.01,
}  # fmt: skip
EXPOSURES: dict[str, float] = {
    "exposure_asbestos": 0.06, "exposure_coal_mining": 0.02,
    "exposure_farming": 0.08, "exposure_sandblasting": 0.01, "exposure_welding": 0.06,
}  # fmt: skip
_CVD = ("hypertension", "diabetes", "heart_disease", "stroke")
_SMOKING_DISEASES = ("copd", "emphysema_history", "chronic_bronchitis")
_MALE_EXPOSURES = ("exposure_asbestos", "exposure_coal_mining", "exposure_welding")
_FEMALE_CANCERS = ("cancer_breast", "cancer_cervical")


def sigmoid(x: float) -> float:
    """Logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _demographics(rng: np.random.Generator, cohort: CohortSpec) -> dict[str, object]:
    lo, hi = cohort.age_range
    age = int(np.clip(round(rng.normal(cohort.age_mean, cohort.age_sd)), lo, hi))
    male = bool(rng.random() < cohort.male_fraction)
    height = rng.normal(69.5, 2.8) if male else rng.normal(64.0, 2.6)
    bmi = float(np.clip(rng.normal(27.5 + cohort.cvd_shift, 4.5), 17.0, 45.0))
    return {
        "age": float(age),
        "gender": "Male" if male else "Female",
        "race": RACES[int(rng.choice(len(RACES), p=cohort.race))],
        "ethnicity": ETHNICITIES[0 if rng.random() < cohort.hispanic else 1],
        "height": round(float(height), 1),
        "weight": round(bmi * float(height) ** 2 / 703.0, 1),
        "education": EDUCATION[int(rng.choice(len(EDUCATION), p=cohort.education))],
    }


def _smoking(
    rng: np.random.Generator, cohort: CohortSpec, age: float
) -> dict[str, object]:
    status = ("current", "former", "never")[int(rng.choice(3, p=cohort.smoking))]
    if status == "never":
        return {
            "smoking_status": "never", "pack_years": 0.0, "cigs_per_day": None,
            "smoking_years": None, "age_started_smoking": None, "age_quit_smoking": None,
        }  # fmt: skip
    started = float(min(np.clip(round(rng.normal(17.0, 3.5)), 10, 35), age - 2))
    quit_age = None
    if status == "former":
        quit_age = float(round(rng.uniform(min(started + 5, age - 1), age - 1)))
    years = (quit_age if quit_age is not None else age) - started
    cigs = float(
        np.clip(round(rng.lognormal(math.log(cohort.cigs_median), 0.45)), 3, 80)
    )
    if cigs * years / 20.0 < cohort.min_pack_years:
        cigs = math.ceil(cohort.min_pack_years * 20.0 / years) + float(rng.integers(10))
    return {
        "smoking_status": status,
        "pack_years": round(cigs * years / 20.0, 1),
        "cigs_per_day": cigs,
        "smoking_years": years,
        "age_started_smoking": started,
        "age_quit_smoking": quit_age,
    }


def _history(
    rng: np.random.Generator, cohort: CohortSpec, rec: dict[str, object]
) -> dict[str, object]:
    age = float(rec["age"])
    pack_years = float(rec["pack_years"])
    obese = float(rec["weight"]) * 703.0 / float(rec["height"]) ** 2 > 30.0
    out: dict[str, object] = {}
    for name, base in DISEASES.items():
        shift = 0.03 * (age - 60.0)
        if name in _CVD:
            shift += cohort.cvd_shift + (0.5 if obese else 0.0)
        if name in _SMOKING_DISEASES:
            shift += pack_years / 30.0 - 0.5
        if name == "emphysema_history" and out.get("copd") is not None:
            shift += 1.5
        if name == "heart_disease" and out.get("hypertension") is not None:
            shift += 0.8
        p = sigmoid(_logit(base * cohort.disease_scale) + shift)
        out[name] = _diagnosis_age(rng, age, name) if rng.random() < p else None
    for name, base in CANCERS.items():
        if name in _FEMALE_CANCERS and rec["gender"] == "Male":
            base = 0.0
        if name in ("cancer_larynx", "cancer_lung", "cancer_esophageal", "cancer_oral"):
            base *= 1.0 + pack_years / 30.0
        hit = rng.random() < base * cohort.disease_scale
        out[name] = float(round(rng.uniform(age - 15, age - 1))) if hit else None
    return out


def _diagnosis_age(rng: np.random.Generator, age: float, name: str) -> float:
    if name == "childhood_asthma":
        return float(rng.integers(3, 16))
    return float(round(rng.uniform(max(18.0, age - 25.0), age)))


def sample_clinical(rng: np.random.Generator, cohort: CohortSpec) -> dict[str, object]:
    """Draw one patient's clinical record at the first scan.

    Args:
        rng: The patient's random stream.
        cohort: The site's cohort distributions.

    Returns:
        All 49 dictionary fields -> dictionary value (``None`` when absent).
    """
    rec = _demographics(rng, cohort)
    rec.update(_smoking(rng, cohort, float(rec["age"])))
    rec.update(_history(rng, cohort, rec))
    male = rec["gender"] == "Male"
    for name, p in FAMILY.items():
        rec[name] = bool(rng.random() < p)
    for name, p in EXPOSURES.items():
        factor = (1.8 if male else 0.3) if name in _MALE_EXPOSURES else 1.0
        rec[name] = bool(rng.random() < p * factor)
    return rec


def risk_factors(clin: dict[str, object]) -> dict[str, float]:
    """Numeric covariates of a clinical record used by the findings and label models.

    Args:
        clin: A record as returned by ``sample_clinical``.

    Returns:
        Covariate name -> value (flags as 0.0/1.0).
    """

    def has(name: str) -> float:
        value = clin.get(name)
        return 0.0 if value is None or value is False else 1.0

    height = float(clin["height"])
    return {
        "age": float(clin["age"]),
        "male": float(clin["gender"] == "Male"),
        "pack_years": float(clin["pack_years"] or 0.0),
        "current": float(clin["smoking_status"] == "current"),
        "former": float(clin["smoking_status"] == "former"),
        "bmi": float(clin["weight"]) * 703.0 / (height * height),
        "copd": max(has("copd"), has("emphysema_history")),
        "hypertension": has("hypertension"),
        "diabetes": has("diabetes"),
        "heart_disease": max(has("heart_disease"), has("stroke")),
        "pneumonia": has("pneumonia"),
        "fibrosis_history": max(has("pulmonary_fibrosis"), has("asbestosis")),
        "asbestos": max(has("exposure_asbestos"), has("asbestosis")),
        "family": max(has(name) for name in FAMILY),
        "prior_cancer": max(has(name) for name in CANCERS),
    }
