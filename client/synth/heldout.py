"""A finding held out of the 17 tasks, for adaptation demos: coronary calcium.

Coronary artery calcification (any: an Agatston-like score above 0) is a finding that
low-dose screening CTs show but none of the 17 tasks asks about.
The generator already renders the calcifications (``findings._calcium``: more with age,
male sex, hypertension, diabetes, smoking and heart disease, plus patient-level noise),
so its label depends on the image and, more weakly, on the clinical record. A reader
calls it with the sensitivity and false-positive rate of the other findings. The
labels go into ``heldout_labels.csv`` beside the site's own tables; the site config
does not name it, so training never sees it; ``m3fm-site adapt`` adds it as a new task
(``site_configs/new_task_example.toml``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from client.synth.cohort import PatientRecord
from client.synth.profiles import Profile

__all__ = [
    "HELDOUT_TASK",
    "HELDOUT_FILE",
    "CALCIUM_THRESHOLD",
    "heldout_frame",
    "write_heldout_labels",
]

HELDOUT_TASK = "coronary_calcium"
HELDOUT_FILE = "heldout_labels.csv"
CALCIUM_THRESHOLD = 0.0  # any calcification
_SENSITIVITY, _FALSE_POSITIVE = 0.92, 0.04


def heldout_frame(
    profile: Profile, patients: list[PatientRecord], seed: int
) -> pd.DataFrame:
    """One row per exam: ``patient_id``, ``exam_id`` and the reader's 0/1 call.

    A patient's exams share one reader uniform (drawn from its own stream, so the
    other generated files do not change), so their calls agree unless the calcium
    score crossed the threshold (a follow-up exam).
    """
    rows = []
    for p in patients:
        u = float(np.random.default_rng([seed, profile.code, p.index, 7919]).random())
        for e in p.exams:
            present = e.findings.calcium_score > CALCIUM_THRESHOLD
            label = int(u < (_SENSITIVITY if present else _FALSE_POSITIVE))
            rows.append(
                {"patient_id": p.patient_id, "exam_id": e.exam_id, HELDOUT_TASK: label}
            )
    return pd.DataFrame(rows)


def write_heldout_labels(
    profile: Profile, patients: list[PatientRecord], root: Path, seed: int
) -> Path:
    """Write ``heldout_labels.csv`` into the site folder; returns its path."""
    path = root / HELDOUT_FILE
    heldout_frame(profile, patients, seed).to_csv(path, index=False)
    return path
