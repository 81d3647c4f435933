"""m3fm-site explain on generated exams: outputs, map shape, and the crop geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.cli import main
from client.evaluation.exam_input import load_ct_crops
from client.evaluation.measure import _shapes, finding_overlap, paint_over
from client.evaluation.model_io import load_model
from client.site_dataset import load_manifest
from m3fm_model import preset_config
from tests.client.site_fixtures import prepared_site, saved_tiny_model


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return saved_tiny_model(tmp_path_factory, 4, "model.pt")


def _truth(site) -> dict:
    return json.loads((site.path.parent / "truth.json").read_text())


def test_explain_writes_ranked_fields_map_png_and_html(site, ckpt, tmp_path) -> None:
    # Prepare
    exam = next(e for e in load_manifest(site, "tiny") if e["crops"])
    truth = next(e for e in _truth(site)["exams"] if e["exam_id"] == exam["exam_id"])
    folder = site.path.parent / truth["series"][0]["folder"]
    out = tmp_path / "why"
    # Execute
    rc = main(
        ["explain", "--model", str(ckpt), "--exam", str(folder)]
        + ["--clinical", json.dumps(exam["clinical_record"])]
        + ["--question", "Is there a lung nodule of at least 4 mm?", "--out", str(out)]
    )
    # Assert
    assert rc == 0
    got = json.loads((out / "explanation.json").read_text())
    assert got["task"] == "nodule_presence"
    ranked = [f["relevance"] for f in got["clinical_relevance"]]
    assert ranked == sorted(ranked, reverse=True) and all(r > 0 for r in ranked)
    assert {f["field"] for f in got["clinical_relevance"]} == set(
        exam["clinical_record"]
    )
    assert 0 < got["ct_share"] < 1
    relevance = np.load(out / "ct_relevance.npy")
    assert relevance.shape == preset_config("tiny").crop_for_roi("lung")
    assert tuple(got["ct_peak_voxel"]) < relevance.shape
    assert (out / "ct_relevance.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "explanation.html").read_text()
    assert page.count("<span title=") == len(exam["clinical_record"])


def test_crop_geometry_puts_generated_nodules_where_the_crop_is_bright(site) -> None:
    checked = 0
    for exam in _truth(site)["exams"]:
        nodules = exam["findings"].get("nodules") or []
        if (
            not nodules
            or nodules[0]["diameter_mm"] < 7
            or nodules[0]["consistency"] != "solid"
        ):
            continue
        crops, geometry = load_ct_crops(
            site.path.parent / exam["series"][0]["folder"], "tiny"
        )
        crop = crops["lung"][0][0].numpy()
        centre = np.array(geometry["lung"].to_crop(tuple(nodules[0]["center_voxel"])))
        assert np.all(centre >= 0) and np.all(centre < crop.shape)
        # solid nodule (35 HU) in lung (-850 HU): bright against the parenchyma
        assert crop[tuple(np.round(centre).astype(int))] > 0.2
        checked += 1
    assert checked >= 1


def test_nodule_overlap_measurement_runs(site, ckpt) -> None:
    got = finding_overlap(load_model(ckpt), site.path.parent, driven_drop=-1.0)
    assert got["finding"] == "nodule"
    assert got["exams"] >= 1 and 0 <= got["hits"] <= got["exams"]
    assert 0 < got["chance"] < 0.2
    assert np.isfinite(got["median_drop"]) and abs(got["median_drop"]) < 1
    # every answer counts as driven when any fall (or rise) above -1 qualifies
    assert got["driven_exams"] == got["exams"] and got["driven_hits"] == got["hits"]
    assert got["driven_chance"] == pytest.approx(got["chance"])


def test_paint_over_erases_the_ellipsoid_with_the_median_around_it() -> None:
    crop = torch.zeros(1, 16, 16, 16)
    crop[0, 5:12, 5:12, 5:12] = -0.4  # lung around the nodule
    crop[0, 7:10, 7:10, 7:10] = 0.8  # a 3-voxel solid nodule
    crop[0, 0, 0, 0] = 0.9  # a bright voxel far away
    centre, axes = np.array([8.0, 8.0, 8.0]), np.array([1.5, 1.5, 1.5])
    # Execute
    erased = paint_over(crop, [(centre, axes)], margin=1.0, shell=1.0)
    # Assert
    assert torch.all(erased[0, 7:10, 7:10, 7:10] == -0.4)
    assert erased[0, 0, 0, 0] == 0.9 and crop[0, 8, 8, 8] == 0.8  # input untouched
    changed = (erased != crop)[0].nonzero().float()
    assert ((changed - torch.tensor(centre).float()) ** 2).sum(1).max() <= 2.5**2


def test_measured_shapes_follow_the_truth_file() -> None:
    exam = {
        "findings": {
            "nodules": [{"center_voxel": [1, 2, 3], "diameter_mm": 6.0}],
            "consolidation": [
                {"center_voxel": [4, 5, 6], "radii_mm": [10, 12, 14]},
                {"center_voxel": [7, 8, 9], "radii_mm": [11, 13, 15]},
            ],
        }
    }
    assert _shapes(exam, "nodule", 4.0) == [([1, 2, 3], (3.0, 3.0, 3.0))]
    assert _shapes(exam, "nodule", 8.0) == []  # below the task's threshold
    assert [c for c, _ in _shapes(exam, "consolidation", 4.0)] == [[4, 5, 6], [7, 8, 9]]
    assert _shapes({"findings": {}}, "consolidation", 4.0) == []


def test_cli_offers_exactly_the_models_ct_methods() -> None:
    import argparse

    from client.evaluation.commands import add_site_commands
    from m3fm_model.explain import CT_METHODS

    parser = argparse.ArgumentParser()
    add_site_commands(parser.add_subparsers())
    explain = parser.parse_args(["explain", "--question", "q", "--model", "m"])
    assert explain.ct_method == "gradient"
    for method in CT_METHODS:
        got = parser.parse_args(
            ["explain", "--question", "q", "--model", "m", "--ct-method", method]
        )
        assert got.ct_method == method
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["explain", "--question", "q", "--model", "m", "--ct-method", "saliency"]
        )
