"""A finding held out of the 17 tasks, for adaptation demos: cardiomegaly.

An enlarged heart is a finding that low-dose screening CTs show but none of the 17 tasks
asks about (the ``heart`` task is a significant cardiovascular abnormality, drawn from
calcium, effusion and the clinical record, not from heart size). The generator already
renders each patient's heart at ``Anatomy.heart_scale`` times the reference size; the
profiles draw that scale from their own range and add 0.1 for a history of heart disease,
so the label depends on the image and, more weakly, on the clinical record.

Cardiomegaly here means a scale above ``HEART_SCALE_THRESHOLD`` (1.1). A reader calls it
with the sensitivity and false-positive rate of the other findings. The labels go into
``heldout_labels.csv`` beside the site's own tables; the site config does not name it, so
training never sees it; ``m3fm-site adapt`` adds it as a new task
(``site_configs/new_task_example.toml``). Prevalence differs by profile (hospital_b, with
scales up to 1.3, has the most positives; hospital_a and hospital_c reach 1.1 only with
heart disease).

The finding is large on purpose: at the tiny preset's heart crop (32 x 48 x 48 voxels,
several millimetres each) coronary calcifications of a few millimetres are averaged
away, so no model can learn them from that crop.
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
    "HEART_SCALE_THRESHOLD",
    "heldout_frame",
    "write_heldout_labels",
]

HELDOUT_TASK = "cardiomegaly"
HELDOUT_FILE = "heldout_labels.csv"
HEART_SCALE_THRESHOLD = 1.1
_SENSITIVITY, _FALSE_POSITIVE = 0.92, 0.04


def heldout_frame(
    profile: Profile, patients: list[PatientRecord], seed: int
) -> pd.DataFrame:
    """One row per exam: ``patient_id``, ``exam_id`` and the reader's 0/1 call.

    A patient's exams share the heart size and one reader uniform (drawn from its own
    stream, so the other generated files do not change), so their calls agree.
    """
    rows = []
    for p in patients:
        u = float(np.random.default_rng([seed, profile.code, p.index, 7919]).random())
        present = p.anatomy.heart_scale > HEART_SCALE_THRESHOLD
        label = int(u < (_SENSITIVITY if present else _FALSE_POSITIVE))
        for e in p.exams:
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
