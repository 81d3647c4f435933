"""ROI boxes found by the site pipeline contain the generated lungs and heart."""

import numpy as np
import pytest

from client.roi import find_boxes
from client.synth import PROFILES, sample_cohort
from client.synth.site import render_exam


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_boxes_contain_generated_organs(profile):
    patients = sample_cohort(profile, 3, seed=5)
    for patient in patients:
        ph = render_exam(PROFILES[profile], patient, patient.exams[0])
        boxes = find_boxes(ph.volume, ph.grid.spacing, ("lung", "heart", "chest"))
        for organ, roi in (("lungs", "lung"), ("heart", "heart")):
            mask = ph.masks[organ]
            inside = mask[boxes[roi].to_slices()].sum() / mask.sum()
            assert inside >= 0.95, (profile, organ, inside)
        centre = np.argwhere(ph.masks["heart"]).mean(axis=0)
        assert boxes["heart"].contains(centre)
        lung = ph.masks["lungs"]
        assert lung[boxes["chest"].to_slices()].sum() / lung.sum() >= 0.95
