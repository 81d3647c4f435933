import logging
import time

import numpy as np
import pytest

from client.synth.anatomy import LOBES, Anatomy, lobe_of, lung_free
from client.synth.findings import Blob, Findings, Nodule
from client.synth.lesions import EMPHYSEMA_HU, GGO_HU, SOLID_HU
from client.synth.paint import Grid
from client.synth.phantom import make_grid, render_phantom

log = logging.getLogger(__name__)
ANAT = Anatomy(body_width_mm=290.0, body_depth_mm=210.0, fat_mm=14.0)


def _grid(spacing=(2.5, 2.8, 2.8), rows=112) -> Grid:
    return make_grid(
        ANAT, rows=rows, pixel_spacing_mm=spacing[1], slice_spacing_mm=spacing[0],
        margin_below_mm=25.0, margin_above_mm=20.0,
    )  # fmt: skip


def _nodule(consistency="solid", diameter=14.0, margin="smooth", where=(0.7, 20, -70)):
    h = ANAT.lung_height_mm
    centre = (where[0] * h, float(where[1]), float(where[2]))
    lobe = LOBES[int(lobe_of(ANAT, *centre))]
    spikes = (
        ((1.0, 0.0, 0.0), (0.0, 0.6, 0.8), (0.0, -1.0, 0.0))
        if margin != "smooth"
        else ()
    )
    return Nodule(centre, diameter, consistency, margin, lobe, spikes)


def _voxel(phantom, centre_voxel) -> float:
    k, i, j = (int(round(v)) for v in centre_voxel)
    return float(phantom.volume[k, i, j])


def test_normal_chest_attenuation():
    # Prepare / Execute
    start = time.perf_counter()
    ph = render_phantom(ANAT, Findings(), _grid(), noise_hu=15.0, seed=3)
    log.info("render %s in %.3f s", ph.grid.shape, time.perf_counter() - start)
    # Assert
    vol, lungs, heart = ph.volume, ph.masks["lungs"], ph.masks["heart"]
    assert vol.dtype == np.float32 and vol.shape == ph.grid.shape
    assert abs(float(np.median(vol[lungs])) + 850.0) < 40.0
    assert abs(float(np.median(vol[heart])) - 40.0) < 15.0
    assert float(np.median(vol[:, :3, :3])) < -950.0  # air outside the body
    assert float(np.percentile(vol, 99.9)) > 400.0  # bone
    assert lungs.mean() > 0.1 and heart.mean() > 0.01
    lo, hi = ph.boxes["heart"]["lo"], ph.boxes["heart"]["hi"]
    assert all(a < b for a, b in zip(lo, hi, strict=True))
    # Heart sits left of the midline (higher column index) and anterior (low rows).
    centre_j = (lo[2] + hi[2]) / 2
    assert centre_j > ph.grid.shape[2] / 2
    assert (lo[1] + hi[1]) / 2 < ph.grid.shape[1] / 2


@pytest.mark.parametrize(
    ("consistency", "centre_range", "threshold"),
    [("solid", (-60, 130), -300.0), ("ground-glass", (-700, -400), -700.0)],
)
def test_nodule_at_truth_location_and_size(consistency, centre_range, threshold):
    # Prepare
    nodule = _nodule(consistency)
    assert lung_free(ANAT, *nodule.center_mm, margin=8.0)
    # Execute
    ph = render_phantom(
        ANAT, Findings(nodules=(nodule,)), _grid(), noise_hu=10.0, seed=1
    )
    # Assert
    record = ph.rendered["nodules"][0]
    assert centre_range[0] < _voxel(ph, record["center_voxel"]) < centre_range[1]
    k, i, j = (int(round(v)) for v in record["center_voxel"])
    box = ph.volume[k - 5 : k + 6, i - 5 : i + 6, j - 5 : j + 6]
    voxel_ml = float(np.prod(ph.grid.spacing))
    diameter = 2 * (3 * (box > threshold).sum() * voxel_ml / (4 * np.pi)) ** (1 / 3)
    assert abs(diameter - nodule.diameter_mm) < 0.3 * nodule.diameter_mm


def test_part_solid_has_core_and_halo():
    nodule = _nodule("part-solid", diameter=18.0)
    ph = render_phantom(
        ANAT, Findings(nodules=(nodule,)), _grid(), noise_hu=5.0, seed=2
    )
    k, i, j = (int(round(v)) for v in ph.rendered["nodules"][0]["center_voxel"])
    assert ph.volume[k, i, j] > SOLID_HU - 40
    ring = ph.volume[k, i, j + 3 : j + 4]  # 8.4 mm out: halo, not core
    assert abs(float(ring.mean()) - GGO_HU) < 120


def test_spiculated_nodule_reaches_beyond_smooth_one():
    smooth = _nodule("solid", 12.0)
    spiky = _nodule("solid", 12.0, margin="spiculated")
    grid = _grid((1.5, 1.5, 1.5), rows=200)
    a = render_phantom(ANAT, Findings(nodules=(smooth,)), grid, noise_hu=0.0, seed=4)
    b = render_phantom(ANAT, Findings(nodules=(spiky,)), grid, noise_hu=0.0, seed=4)
    extra = (b.volume > -300).sum() - (a.volume > -300).sum()
    assert extra > 10


def test_same_findings_render_at_any_spacing():
    nodule = _nodule("solid", 16.0)
    for spacing, rows in (((2.5, 2.8, 2.8), 112), ((5.0, 2.0, 2.0), 160)):
        ph = render_phantom(
            ANAT,
            Findings(nodules=(nodule,)),
            _grid(spacing, rows),
            noise_hu=5.0,
            seed=0,
        )
        assert _voxel(ph, ph.rendered["nodules"][0]["center_voxel"]) > -100


def test_calcium_and_emphysema():
    # Prepare: calcifications on the heart surface, 20 % emphysema
    from client.synth.anatomy import heart_ellipsoid

    centre, radii = heart_ellipsoid(ANAT)
    spots = [centre + 0.9 * radii * d for d in ([0.6, -0.8, 0.0], [0.5, -0.5, 0.7])]
    calcs = tuple(Blob(tuple(map(float, p)), (2.5, 2.5, 2.5), 400.0) for p in spots)
    findings = Findings(coronary_calcs=calcs, emphysema_fraction=0.2)
    # Execute
    ph = render_phantom(ANAT, findings, _grid(), noise_hu=15.0, seed=5)
    # Assert
    for record in ph.rendered["coronary_calcs"]:
        k, i, j = (int(round(v)) for v in record["center_voxel"])
        assert ph.volume[k - 1 : k + 2, i - 1 : i + 2, j - 1 : j + 2].max() > 130.0
    assert abs(ph.rendered["emphysema_fraction"] - 0.2) < 0.02
    low = (ph.volume[ph.masks["lungs"]] <= -950.0).mean()
    assert 0.12 < low < 0.25
    assert EMPHYSEMA_HU <= -950.0


def test_effusion_is_dependent_fluid():
    ph = render_phantom(
        ANAT, Findings(effusion_mm=(50.0, 0.0)), _grid(), noise_hu=5.0, seed=6
    )
    assert ph.rendered["effusion_voxels"]["right"] > 50
    assert ph.rendered["effusion_voxels"]["left"] == 0
    fluid = (ph.volume > -50) & (ph.volume < 60) & ph.masks["lungs"]
    k, i, _ = np.nonzero(fluid)
    assert i.mean() > ph.grid.shape[1] / 2  # posterior half
    assert k.mean() < ph.grid.shape[0] / 3  # lung base


def test_render_is_deterministic():
    findings = Findings(nodules=(_nodule(),), emphysema_fraction=0.1)
    a = render_phantom(ANAT, findings, _grid(), noise_hu=15.0, seed=9).volume
    b = render_phantom(ANAT, findings, _grid(), noise_hu=15.0, seed=9).volume
    c = render_phantom(ANAT, findings, _grid(), noise_hu=15.0, seed=10).volume
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
