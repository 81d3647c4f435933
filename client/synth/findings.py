"""Image findings of one exam, drawn conditionally on the patient's covariates.

Findings are described in anatomical millimetres (see ``anatomy``) so that the same
findings render on any grid. Probabilities and sizes follow the covariates, e.g.
nodule presence and size rise with age and pack-years, emphysema with pack-years
and COPD, coronary calcium with age, male sex, hypertension, diabetes and smoking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from client.synth.anatomy import (
    LOBES,
    Anatomy,
    airway_segments,
    aorta_segments,
    heart_ellipsoid,
    lobe_of,
    lung_free,
)
from client.synth.covariates import sigmoid

__all__ = ["Nodule", "Blob", "Findings", "sample_findings", "follow_up_findings"]

_LOBE_WEIGHTS = (0.3, 0.08, 0.2, 0.25, 0.17)
_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    dtype=float,
)


@dataclass(frozen=True)
class Nodule:
    """A lung nodule.

    Attributes:
        center_mm: Centre (z, y, x) in anatomical mm.
        diameter_mm: Diameter of the nodule body (spikes excluded).
        consistency: "solid", "part-solid" or "ground-glass".
        margin: "smooth" or "spiculated".
        lobe: One of ``anatomy.LOBES``.
        spikes: Unit directions (z, y, x) of the spicules (empty when smooth).
    """

    center_mm: tuple[float, float, float]
    diameter_mm: float
    consistency: str
    margin: str
    lobe: str
    spikes: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class Blob:
    """An axis-aligned ellipsoidal lesion or calcification.

    Attributes:
        center_mm: Centre (z, y, x) in anatomical mm.
        radii_mm: Semi-axes (z, y, x).
        hu: Attenuation.
    """

    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float


@dataclass(frozen=True)
class Findings:
    """Everything abnormal in one exam (all defaults = a normal chest).

    Attributes:
        nodules: Lung nodules, largest first.
        emphysema_fraction: Share of lung volume <= -950 HU to render (0-0.3).
        calcium_score: Agatston-like coronary calcium burden.
        coronary_calcs: Coronary calcifications.
        aortic_calcs: Aortic wall calcifications.
        effusion_mm: Depth of dependent pleural fluid (right, left); 0 = none.
        consolidation: Consolidation patches.
        atelectasis: Plate-like atelectasis.
        fibrosis_extent: 0 (none) to 1 (extensive basal reticulation).
        covid: Peripheral ground-glass patches of COVID-19 pneumonia.
        adenopathy: Enlarged mediastinal lymph nodes.
        chest_wall: Chest-wall masses.
    """

    nodules: tuple[Nodule, ...] = ()
    emphysema_fraction: float = 0.0
    calcium_score: float = 0.0
    coronary_calcs: tuple[Blob, ...] = ()
    aortic_calcs: tuple[Blob, ...] = ()
    effusion_mm: tuple[float, float] = (0.0, 0.0)
    consolidation: tuple[Blob, ...] = ()
    atelectasis: tuple[Blob, ...] = ()
    fibrosis_extent: float = 0.0
    covid: tuple[Blob, ...] = ()
    adenopathy: tuple[Blob, ...] = ()
    chest_wall: tuple[Blob, ...] = ()

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists)."""
        return asdict(self)


def _place(
    rng: np.random.Generator,
    anat: Anatomy,
    lobes: tuple[int, ...],
    radius: float,
    peripheral: bool = False,
) -> tuple[float, float, float] | None:
    """Sample a centre in one of ``lobes`` whose ball of ``radius`` stays in lung."""
    h = anat.lung_height_mm
    for _ in range(20):
        n = 256
        side = np.where(rng.random(n) < 0.5, -1, 1)
        pts = np.empty((n, 3))
        pts[:, 0] = rng.uniform(0.05 * h, 0.95 * h, n)
        for s in (-1, 1):
            cx, cy, rx, ry = anat.lung_ellipse(s)
            m = side == s
            pts[m, 1] = rng.uniform(cy - ry, cy + ry, m.sum())
            pts[m, 2] = rng.uniform(cx - rx, cx + rx, m.sum())
        ok = np.isin(lobe_of(anat, pts[:, 0], pts[:, 1], pts[:, 2]), lobes)
        ok &= lung_free(anat, pts[:, 0], pts[:, 1], pts[:, 2])
        if peripheral:
            out = pts + np.array([0.0, 14.0, 0.0])
            out[:, 2] += np.sign(pts[:, 2]) * 14.0
            ok &= ~lung_free(anat, out[:, 0], out[:, 1], out[:, 2])
        pts = pts[ok][:16]
        probe = pts[:, None, :] + (radius + 2.0) * _OFFSETS[None]
        ok = lung_free(anat, probe[..., 0], probe[..., 1], probe[..., 2]).all(axis=1)
        hits = np.flatnonzero(ok)
        if hits.size:
            return tuple(float(v) for v in pts[hits[0]])
    return None


def _nodule(
    rng: np.random.Generator, anat: Anatomy, rf: dict[str, float], ggo_share: float
) -> Nodule | None:
    mu = math.log(5.5) + 0.012 * (rf["age"] - 60.0) + 0.004 * rf["pack_years"]
    diameter = float(np.clip(rng.lognormal(mu, 0.55), 3.0, 30.0))
    solid, part = 0.75 - ggo_share, 0.1
    consistency = ("solid", "part-solid", "ground-glass")[
        int(rng.choice(3, p=(solid, part, 1.0 - solid - part)))
    ]
    spiculated = rng.random() < sigmoid(-3.2 + 0.2 * diameter)
    lobe = int(rng.choice(len(LOBES), p=_LOBE_WEIGHTS))
    centre = _place(rng, anat, (lobe,), diameter / 2)
    if centre is None:
        return None
    spikes: tuple[tuple[float, float, float], ...] = ()
    if spiculated:
        dirs = rng.normal(size=(int(rng.integers(8, 15)), 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        spikes = tuple(tuple(float(v) for v in d) for d in dirs)
    margin = "spiculated" if spiculated else "smooth"
    return Nodule(centre, round(diameter, 2), consistency, margin, LOBES[lobe], spikes)


def _calcium(
    rng: np.random.Generator, anat: Anatomy, rf: dict[str, float]
) -> tuple[float, tuple[Blob, ...], tuple[Blob, ...]]:
    latent = (
        -1.2 + 0.07 * (rf["age"] - 60.0) + 0.8 * rf["male"] + 0.6 * rf["hypertension"]
        + 0.6 * rf["diabetes"] + 0.5 * (rf["current"] + 0.5 * rf["former"])
        + 0.5 * rf["heart_disease"] + rng.normal(0.0, 1.1)
    )  # fmt: skip
    score = 0.0 if latent < 0 else float(10.0 * math.exp(1.3 * min(latent, 4.5)))
    centre, radii = heart_ellipsoid(anat)
    calcs = []
    for _ in range(min(14, math.ceil(score / 60.0))):
        u = np.array(
            [rng.uniform(0.0, 0.8), rng.uniform(-1.0, 0.3), rng.uniform(-1, 1)]
        )
        pos = centre + 0.9 * radii * u / np.linalg.norm(u)
        r = 2.5 + 1.5 * min(1.0, score / 1000.0) * rng.random()
        calcs.append(
            Blob(tuple(map(float, pos)), (r, r, r), float(rng.uniform(300, 700)))
        )
    aortic = []
    segments = aorta_segments(anat)
    for _ in range(int(rng.poisson(max(0.0, 0.15 * (rf["age"] - 55.0))))):
        a, b, r = segments[int(rng.integers(1, len(segments)))]
        p = np.array(a) + rng.random() * (np.array(b) - np.array(a))
        axis = (np.array(b) - np.array(a)) / np.linalg.norm(np.array(b) - np.array(a))
        d = rng.normal(size=3)
        d -= d.dot(axis) * axis
        pos = p + (r - 2.0) * d / np.linalg.norm(d)
        aortic.append(Blob(tuple(map(float, pos)), (2.5, 2.5, 2.5), 450.0))
    return round(score, 1), tuple(calcs), tuple(aortic)


def _blobs(
    rng: np.random.Generator,
    anat: Anatomy,
    count: int,
    lobes: tuple[int, ...],
    radii: tuple[float, float],
    hu: float,
    peripheral: bool = False,
) -> tuple[Blob, ...]:
    out = []
    for _ in range(count):
        r = rng.uniform(*radii, size=3)
        centre = _place(rng, anat, lobes, float(r.min()), peripheral)
        if centre is not None:
            out.append(Blob(centre, tuple(float(v) for v in r), hu))
    return tuple(out)


def _mediastinum(rng: np.random.Generator, anat: Anatomy, node: bool) -> Blob:
    """An enlarged lymph node (node=True) or a chest-wall mass."""
    if node:
        (cz, ty, _), _, _ = airway_segments(anat)[1]
        spots = (
            (cz - 22, ty + 16, 0.0),
            (cz + 25, ty - 4, -22.0),
            (cz + 14, ty - 14, 24),
        )
        r = float(rng.uniform(8.0, 13.0))
        return Blob(spots[int(rng.integers(3))], (r, r * 0.9, r * 0.8), 40.0)
    angle = rng.uniform(0.2 * np.pi, 0.8 * np.pi) * rng.choice((-1, 1))
    w, d = anat.body_width_mm / 2 - anat.fat_mm / 2, anat.body_depth_mm / 2 - 8
    pos = (
        rng.uniform(0.2, 0.8) * anat.lung_height_mm,
        d * np.cos(angle),
        w * np.sin(angle),
    )
    r = float(rng.uniform(10.0, 18.0))
    return Blob(tuple(float(v) for v in pos), (r * 1.4, r, r), 45.0)


def _parenchyma(rng, anat: Anatomy, rf: dict, nodule_logit: float, covid: bool) -> dict:
    """Nodule (probability and size rise with age and pack-years) and emphysema."""
    age, py = rf["age"] - 60.0, rf["pack_years"]
    nodules: tuple[Nodule, ...] = ()
    logit = nodule_logit + 0.04 * age + 0.015 * py + 0.3 * rf["copd"]
    if rng.random() < sigmoid(logit):
        nodule = _nodule(rng, anat, rf, 0.3 if covid else 0.15)
        nodules = (nodule,) if nodule else ()
    emph = sigmoid(-3.0 + 0.035 * py + 1.5 * rf["copd"] + 0.6 * rf["current"])
    fraction = (
        float(np.clip(0.05 + 0.25 * rng.beta(1.5, 3.0), 0.05, 0.3))
        if rng.random() < emph
        else float(rng.uniform(0.0, 0.02))
    )
    return {"nodules": nodules, "emphysema_fraction": round(fraction, 4)}


def _pleura_airspace(rng, anat: Anatomy, rf: dict, covid: bool) -> dict:
    """Effusion, consolidation, atelectasis, fibrosis and COVID-19 ground-glass."""
    age = rf["age"] - 60.0
    effusion = (0.0, 0.0)
    if rng.random() < sigmoid(-3.4 + 0.03 * age + 1.3 * rf["heart_disease"]):
        depth, side = float(rng.uniform(25.0, 60.0)), rng.random()
        effusion = (depth if side < 0.75 else 0.0, depth if side > 0.4 else 0.0)
    cons_p = sigmoid(-3.3 + 0.8 * rf["pneumonia"] + (1.2 if covid else 0.0))
    n_cons = int(rng.random() < cons_p) * int(rng.integers(1, 3))
    atel_p = sigmoid(-2.8 + (1.8 if max(effusion) > 0 else 0.0) + 0.02 * age)
    fib_p = sigmoid(
        -3.6 + 0.05 * age + 2.5 * rf["fibrosis_history"] + 1.0 * rf["asbestos"]
    )
    fibrosis = round(float(rng.uniform(0.35, 1.0)), 3) if rng.random() < fib_p else 0.0
    n_covid = int(rng.integers(3, 8)) if covid and rng.random() < 0.85 else 0
    return {
        "effusion_mm": effusion,
        "consolidation": _blobs(rng, anat, n_cons, (0, 1, 2, 3, 4), (12.0, 24.0), 25.0),
        "atelectasis": _blobs(
            rng, anat, int(rng.random() < atel_p), (2, 4), (4.0, 6.0), 10.0
        ),
        "fibrosis_extent": fibrosis,
        "covid": _blobs(
            rng, anat, n_covid, (0, 2, 2, 3, 4, 4), (10.0, 24.0), -600.0, True
        ),
    }


def sample_findings(
    rng: np.random.Generator,
    anat: Anatomy,
    rf: dict[str, float],
    *,
    nodule_logit: float,
    covid: bool,
) -> Findings:
    """Draw the findings of a patient's first exam.

    Args:
        rng: The patient's random stream.
        anat: Body parameters.
        rf: Risk factors (``covariates.risk_factors``).
        nodule_logit: Cohort intercept of the nodule-presence model.
        covid: Whether the patient has COVID-19 at the scan.

    Returns:
        The findings.
    """
    score, calcs, aortic = _calcium(rng, anat, rf)
    n_nodes = int(rng.random() < 0.06) * int(rng.integers(1, 3))
    return Findings(
        **_parenchyma(rng, anat, rf, nodule_logit, covid),
        **_pleura_airspace(rng, anat, rf, covid),
        calcium_score=score,
        coronary_calcs=calcs,
        aortic_calcs=aortic,
        adenopathy=tuple(_mediastinum(rng, anat, True) for _ in range(n_nodes)),
        chest_wall=(_mediastinum(rng, anat, False),) if rng.random() < 0.03 else (),
    )


def follow_up_findings(
    rng: np.random.Generator,
    anat: Anatomy,
    first: Findings,
    *,
    years: float,
    growth: bool,
) -> Findings:
    """Findings of a follow-up exam: chronic findings persist, acute ones change.

    Args:
        rng: The patient's random stream.
        anat: Body parameters.
        first: Findings of the first exam.
        years: Time since the first exam.
        growth: Whether nodules grow (a cancer is developing).

    Returns:
        The follow-up findings.
    """
    factor = 1.0 + 0.25 * years if growth else 1.0
    nodules = tuple(
        replace(n, diameter_mm=round(min(30.0, n.diameter_mm * factor), 2))
        for n in first.nodules
    )
    effusion = first.effusion_mm if rng.random() < 0.5 else (0.0, 0.0)
    return replace(
        first,
        nodules=nodules,
        emphysema_fraction=min(0.3, round(first.emphysema_fraction * 1.05, 4)),
        calcium_score=round(first.calcium_score * (1.0 + 0.2 * years), 1),
        effusion_mm=effusion,
        consolidation=first.consolidation if rng.random() < 0.3 else (),
        atelectasis=first.atelectasis if max(effusion) > 0 else (),
        covid=(),
    )
