"""Label models: every task's label from image findings AND clinical covariates.

Cancer: a Weibull time to diagnosis whose hazard multiplies an image term (nodule
size, spiculation, consistency, emphysema) with a clinical term (age, pack-years,
family history, prior cancer, COPD, current smoking) of comparable spread; the
follow-up time censors it. CVD diagnosis and CVD mortality: logistic models of the
coronary calcium burden, effusion and aortic calcification together with
hypertension, diabetes, heart disease, age, sex and smoking (mortality weighs age
more). Abnormality labels follow the rendered finding with reader noise.
"""

from __future__ import annotations

import math

import numpy as np

from client.synth.covariates import sigmoid
from client.synth.findings import Findings

__all__ = [
    "TASKS",
    "image_features",
    "clinical_features",
    "cancer_terms",
    "cvd_logit",
    "mortality_logit",
    "draw_cancer_time",
    "draw_labels",
    "lung_rads",
]

TASKS = (
    "nodule_presence", "nodule_size", "nodule_consistency", "nodule_location",
    "nodule_margin", "heart", "cvd_mortality", "cancer_risk", "atelectasis",
    "pleural_effusion", "adenopathy", "chest_wall_abnormality", "consolidation",
    "emphysema", "fibrosis", "covid19", "lung_rads",
)  # fmt: skip
_WEIBULL_SHAPE = 1.3
_READER_SENSITIVITY = 0.92
_READER_FALSE_POSITIVE = 0.04


def image_features(f: Findings) -> dict[str, float]:
    """Numeric summary of what the CT shows (what an image model could learn).

    Args:
        f: Findings of an exam.

    Returns:
        Feature name -> value.
    """
    nodule = f.nodules[0] if f.nodules else None
    return {
        "nodule_log_size": math.log1p(nodule.diameter_mm / 4.0) if nodule else 0.0,
        "spiculated": float(bool(nodule) and nodule.margin == "spiculated"),
        "part_solid": float(bool(nodule) and nodule.consistency == "part-solid"),
        "ground_glass": float(bool(nodule) and nodule.consistency == "ground-glass"),
        "emphysema": f.emphysema_fraction,
        "log_calcium": math.log1p(f.calcium_score),
        "aortic_calcs": float(len(f.aortic_calcs)),
        "effusion": float(max(f.effusion_mm) > 0),
    }


def clinical_features(rf: dict[str, float]) -> dict[str, float]:
    """Clinical covariates used by the label models (centred where useful).

    Args:
        rf: Risk factors (``covariates.risk_factors``).

    Returns:
        Feature name -> value.
    """
    keys = ("male", "current", "copd", "hypertension", "diabetes", "heart_disease")
    out = {"age": (rf["age"] - 62.0) / 10.0, "pack_years": rf["pack_years"] / 30.0}
    out.update({k: rf[k] for k in keys})
    out.update(family=rf["family"], prior_cancer=rf["prior_cancer"])
    return out


def cancer_terms(img: dict[str, float], clin: dict[str, float]) -> tuple[float, float]:
    """Image and clinical parts of the lung-cancer log-hazard."""
    image = (
        1.7 * img["nodule_log_size"] + 0.8 * img["spiculated"]
        + 0.6 * img["part_solid"] + 4.0 * img["emphysema"]
    )  # fmt: skip
    clinical = (
        0.9 * clin["age"] + 0.5 * clin["pack_years"] + 1.1 * clin["family"]
        + 1.1 * clin["prior_cancer"] + 0.5 * clin["copd"] + 0.4 * clin["current"]
    )  # fmt: skip
    return image, clinical


def cvd_logit(img: dict[str, float], clin: dict[str, float], shift: float) -> float:
    """Log-odds of a significant cardiovascular abnormality."""
    return (
        -4.0 + 0.2 * shift + 0.45 * img["log_calcium"] + 0.9 * img["effusion"]
        + 0.1 * img["aortic_calcs"] + 1.3 * clin["hypertension"]
        + 1.0 * clin["diabetes"] + 1.3 * clin["heart_disease"] + 0.6 * clin["age"]
        + 0.4 * clin["male"] + 0.4 * clin["current"]
    )  # fmt: skip


def mortality_logit(img: dict[str, float], clin: dict[str, float]) -> float:
    """Log-odds of cardiovascular death during follow-up."""
    return (
        -4.8 + 0.35 * img["log_calcium"] + 0.8 * img["effusion"]
        + 1.0 * clin["age"] + 0.6 * clin["hypertension"] + 0.6 * clin["diabetes"]
        + 0.9 * clin["heart_disease"] + 0.5 * clin["current"]
    )  # fmt: skip


def draw_cancer_time(
    rng: np.random.Generator, rate: float, img: dict, clin: dict
) -> float:
    """Years from the first scan to lung-cancer diagnosis (may exceed follow-up).

    Args:
        rng: The patient's random stream.
        rate: Cohort Weibull scale (per year**shape).
        img: Image features of the first exam.
        clin: Clinical features at the first exam.

    Returns:
        Time to diagnosis in years.
    """
    image, clinical = cancer_terms(img, clin)
    hazard = rate * math.exp(image + clinical)
    return float((rng.exponential() / hazard) ** (1.0 / _WEIBULL_SHAPE))


def lung_rads(f: Findings) -> str:
    """Lung-RADS category implied by the largest nodule (v1.1 simplified)."""
    if not f.nodules or f.nodules[0].diameter_mm < 4.0:
        return "1"
    n = f.nodules[0]
    d = n.diameter_mm
    if n.consistency == "ground-glass":
        return "2" if d < 30 else "3"
    if n.consistency == "part-solid":
        core = d / 2
        category = "2" if d < 6 else "3" if core < 6 else "4A" if core < 8 else "4B"
    else:
        category = "2" if d < 6 else "3" if d < 8 else "4A" if d < 15 else "4B"
    if n.margin == "spiculated" and category in ("4A", "4B"):
        return "4X"
    return category


def _reader(u: float, present: bool) -> int:
    """A radiologist's 0/1 call from a uniform draw ``u``."""
    return int(u < (_READER_SENSITIVITY if present else _READER_FALSE_POSITIVE))


def _nodule_labels(rng: np.random.Generator, f: Findings, seen: bool) -> dict:
    if not seen:
        return dict.fromkeys(
            ("nodule_size", "nodule_consistency", "nodule_location", "nodule_margin"),
            "none",
        )
    if not f.nodules:  # a false-positive call: a small solid "nodule" somewhere
        lobes = ("right upper lobe", "right lower lobe", "left upper lobe")
        return {
            "nodule_size": "<6 mm",
            "nodule_consistency": "solid",
            "nodule_location": lobes[int(rng.integers(len(lobes)))],
            "nodule_margin": "smooth",
        }
    n = f.nodules[0]
    measured = n.diameter_mm + rng.normal(0.0, 0.7)
    size = "<6 mm" if measured < 6 else "6-15 mm" if measured <= 15 else ">15 mm"
    kinds = ("solid", "part-solid", "ground-glass")
    kind = n.consistency if rng.random() < 0.9 else kinds[int(rng.integers(3))]
    margin = n.margin if rng.random() < 0.9 else "smooth"
    return {
        "nodule_size": size,
        "nodule_consistency": kind,
        "nodule_location": n.lobe,
        "nodule_margin": margin,
    }


def _abnormalities(f: Findings, uniforms: dict, covid: bool) -> dict[str, int]:
    """Reader calls (with noise) of the binary abnormality tasks."""
    present = {
        "atelectasis": bool(f.atelectasis),
        "pleural_effusion": max(f.effusion_mm) > 0,
        "adenopathy": bool(f.adenopathy),
        "chest_wall_abnormality": bool(f.chest_wall),
        "consolidation": bool(f.consolidation),
        "emphysema": f.emphysema_fraction >= 0.05,
        "fibrosis": f.fibrosis_extent > 0,
        "covid19": covid,
    }
    return {k: _reader(uniforms[k], v) for k, v in present.items()}


def draw_labels(
    rng: np.random.Generator,
    f: Findings,
    clin: dict[str, float],
    uniforms: dict[str, float],
    *,
    covid: bool,
    cvd_shift: float,
    cancer: tuple[float | None, float],
) -> dict[str, object]:
    """Labels of all 17 tasks for one exam.

    Args:
        rng: The patient's random stream (measurement and reader noise).
        f: Findings of this exam.
        clin: Clinical features at this exam.
        uniforms: Per-patient uniforms per task, shared by a patient's exams so
            that their labels agree unless the findings changed.
        covid: Whether the patient has COVID-19 at this scan.
        cvd_shift: Cohort shift of the CVD log-odds.
        cancer: (years to diagnosis or None, follow-up years) from this scan.

    Returns:
        Task -> label (0/1, class name, or (event years | None, follow-up years)).
    """
    img = image_features(f)
    big = bool(f.nodules) and f.nodules[0].diameter_mm >= 4.0
    seen = _reader(uniforms["nodule_presence"], big) == 1
    labels: dict[str, object] = {"nodule_presence": int(seen)}
    labels.update(_nodule_labels(rng, f, seen))
    labels.update(_abnormalities(f, uniforms, covid))
    labels["heart"] = int(uniforms["heart"] < sigmoid(cvd_logit(img, clin, cvd_shift)))
    labels["cvd_mortality"] = int(
        uniforms["cvd_mortality"] < sigmoid(mortality_logit(img, clin))
    )
    labels["cancer_risk"] = cancer
    labels["lung_rads"] = lung_rads(f)
    return labels
