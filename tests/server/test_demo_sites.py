"""Checks of generated hospitals (demo and pretraining): out-of-date ones are generated again."""

import json

from client.synth import synthesize_site
from client.synth.site import GENERATOR_VERSION, site_is_current


def test_current_site_is_kept_and_stale_ones_are_not(tmp_path):
    folder = tmp_path / "hospital_c"
    synthesize_site("hospital_c", folder, patients=4, seed=3)
    assert site_is_current(folder, patients=4, seed=3)
    assert not site_is_current(
        folder, patients=5, seed=3
    )  # the profile's cohort size changed
    assert not site_is_current(folder, patients=4, seed=4)  # another seed
    truth = json.loads((folder / "truth.json").read_text())
    truth["generator_version"] = GENERATOR_VERSION - 1
    (folder / "truth.json").write_text(json.dumps(truth))
    assert not site_is_current(
        folder, patients=4, seed=3
    )  # written by an older generator
    assert not site_is_current(tmp_path / "missing", patients=4, seed=3)


def test_pretraining_cohort_site_is_generated_again_when_stale(tmp_path):
    from server.pretrain import _one_site

    folder = tmp_path / "hospital_c-7003"
    folder.mkdir()
    (folder / "dicom").mkdir()  # half-written by an interrupted run
    config = _one_site("hospital_c", 7003, 3, folder)
    assert (
        site_is_current(folder, patients=3, seed=7003)
        and config == folder / "site.toml"
    )
    truth = json.loads((folder / "truth.json").read_text())
    truth["generator_version"] = GENERATOR_VERSION - 1
    (folder / "truth.json").write_text(json.dumps(truth))
    _one_site("hospital_c", 7003, 3, folder)
    assert site_is_current(folder, patients=3, seed=7003)
