"""m3fm-site predict on generated exams: JSON interface, agreement with evaluate, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.cli import main
from client.evaluation.model_io import load_model
from client.evaluation.rows import predict_rows
from client.evaluation.stats import sigmoid, softmax
from client.site_dataset import build_site_dataset, load_manifest
from m3fm_model import TASKS
from tests.client.site_fixtures import prepared_site, saved_tiny_model


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return saved_tiny_model(tmp_path_factory, 3, "model.pt")


def _exam_folder(site, exam_id: str) -> Path:
    truth = json.loads((site.path.parent / "truth.json").read_text())
    entry = next(e for e in truth["exams"] if e["exam_id"] == exam_id)
    return site.path.parent / entry["series"][0]["folder"]


def _predict(args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "answer.json"
    assert main(["predict", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("task", ["cancer_risk", "heart", "nodule_size"])
def test_predict_equals_batch_evaluator(site, ckpt, tmp_path, task) -> None:
    # Prepare: the batch evaluator's numbers for the train split
    data = build_site_dataset(site, "tiny", "train", augment=False, auxiliary=False)
    rows = predict_rows(load_model(ckpt).model, data)[task]
    pos = 0
    exam = data.exams[rows.exams[pos]]
    clinical = tmp_path / "clinical.json"
    clinical.write_text(json.dumps(exam["clinical_record"]))
    question = TASKS[task].questions[0]
    # Execute
    got = _predict(
        ["--model", str(ckpt), "--exam", str(_exam_folder(site, exam["exam_id"]))]
        + ["--clinical", str(clinical), "--question", question],
        tmp_path,
    )
    # Assert
    assert got["task"] == task and got["question"] == question
    if task == "cancer_risk":
        want = sigmoid(rows.outputs[pos])
        assert len(got["answer"]["risk_by_year"]) == 6
        np.testing.assert_allclose(got["answer"]["risk_by_year"], want, atol=2e-5)
        assert (
            "(year 1)" in got["answer"]["text"] and "(year 6)" in got["answer"]["text"]
        )
    else:
        want = softmax(rows.outputs[pos : pos + 1])[0]
        probs = [got["answer"]["probabilities"][c] for c in TASKS[task].classes]
        np.testing.assert_allclose(probs, want, atol=2e-5)


def test_predict_with_ct_only_and_clinical_only(site, ckpt, tmp_path) -> None:
    exam = next(e for e in load_manifest(site, "tiny") if e["crops"])
    q = ["--question", "Estimate the six-year risk of developing lung cancer."]
    ct_only = _predict(
        ["--model", str(ckpt), "--exam", str(_exam_folder(site, exam["exam_id"]))] + q,
        tmp_path,
    )
    text_only = _predict(
        ["--model", str(ckpt), "--clinical", json.dumps(exam["clinical_record"])] + q,
        tmp_path,
    )
    assert ct_only["inputs"] == {"ct_region": "lung", "clinical_fields": []}
    assert text_only["inputs"]["ct_region"] is None
    for got in (ct_only, text_only):
        risk = got["answer"]["risk_by_year"]
        assert len(risk) == 6 and all(0 <= r <= 1 for r in risk)
        assert risk == sorted(risk)  # cumulative risk never decreases
    assert ct_only["answer"]["risk_by_year"] != text_only["answer"]["risk_by_year"]


def test_bad_inputs_get_one_clear_error(site, ckpt, tmp_path, capsys) -> None:
    base = ["predict", "--model", str(ckpt)]
    assert (
        main(base + ["--clinical", '{"age": 61}', "--question", "Capital of France?"])
        == 2
    )
    err = capsys.readouterr().err
    assert "no task matches" in err
    assert "cancer_risk: 'Predict the lung cancer risk over six years.'" in err
    empty = tmp_path / "no_ct"
    empty.mkdir()
    (empty / "readme.txt").write_text("not a DICOM file")
    assert main(base + ["--exam", str(empty), "--question", "Is there emphysema?"]) == 2
    assert str(empty) in capsys.readouterr().err
    bad = [
        "--clinical",
        '{"age": 61, "shoe_size": 9}',
        "--question",
        "Is there emphysema?",
    ]
    assert main(base + bad) == 2
    err = capsys.readouterr().err
    assert "unknown columns ['shoe_size']" in err and "pack_years" in err
    assert main(base + ["--question", "Is there emphysema?"]) == 2
    assert "give --exam" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
