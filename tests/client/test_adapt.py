"""m3fm-site adapt: new task file, labels join, CV arms, outputs that load and answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from client.cli import main
from client.evaluation.adapt import AdaptOptions, fit_head
from client.evaluation.model_io import load_model
from client.evaluation.task_spec import load_new_task
from client.site_dataset import load_manifest
from client.synth.heldout import HELDOUT_FILE, HELDOUT_TASK
from m3fm_model import build_model
from tests.client.site_fixtures import prepared_site, saved_tiny_model

EXAMPLE = Path(__file__).resolve().parents[2] / "site_configs" / "new_task_example.toml"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return saved_tiny_model(tmp_path_factory, 5, "base.pt")


def test_generator_writes_the_held_out_labels(site) -> None:
    table = pd.read_csv(site.path.parent / HELDOUT_FILE)
    assert set(table[HELDOUT_TASK]) <= {0, 1} and len(table) >= 10
    truth = json.loads((site.path.parent / "truth.json").read_text())
    calcium = {e["exam_id"]: e["findings"]["calcium_score"] for e in truth["exams"]}
    present = table["exam_id"].map(calcium) > 0
    agree = (table[HELDOUT_TASK] == present.astype(int)).mean()
    assert agree >= 0.7  # reader calls follow the rendered calcium (92% / 4% noise)


def test_example_task_file_parses_and_bad_ones_are_refused(tmp_path) -> None:
    task = load_new_task(EXAMPLE)
    assert task.spec.name == HELDOUT_TASK and task.spec.roi == "heart"
    clash = tmp_path / "clash.toml"
    clash.write_text(
        EXAMPLE.read_text().replace('name = "coronary_calcium"', 'name = "heart"')
    )
    with pytest.raises(ValueError, match="already registered"):
        load_new_task(clash)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(EXAMPLE.read_text() + "\n[task.extra]\nx = 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_new_task(unknown)


def test_head_training_separates_separable_features() -> None:
    torch.manual_seed(0)
    head = build_model("tiny", tasks=("heart",)).heads["heart"]
    labels = np.array([0, 1] * 20)
    feats = torch.randn(40, 64) + torch.tensor(labels)[:, None] * 2.0
    fitted = fit_head(head, feats, labels, AdaptOptions(steps=100))
    with torch.no_grad():
        acc = (fitted(feats).argmax(-1).numpy() == labels).mean()
    assert acc > 0.9


def test_adapt_end_to_end_outputs_load_and_answer(site, ckpt, tmp_path, capsys) -> None:
    # Prepare: a label both classes of which exist in the 10 generated exams
    exams = load_manifest(site, "tiny")
    ages = np.array([e["clinical_record"].get("age", 60) for e in exams])
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "patient_id": [e["patient_id"] for e in exams],
            "exam_id": [e["exam_id"] for e in exams],
            "coronary_calcium": (ages >= np.median(ages)).astype(int),
        }
    ).to_csv(labels, index=False)
    out = tmp_path / "adapted"
    # Execute
    rc = main(
        ["adapt", "--model", str(ckpt), "--task", str(EXAMPLE), "--labels", str(labels)]
        + ["--site-config", str(site.path), "--steps", "50", "--folds", "2"]
        + ["--out", str(out)]
    )
    # Assert
    assert rc == 0
    printed = capsys.readouterr().out
    assert "same head, random trunk" in printed and "logistic regression" in printed
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["exams"] == len(exams) and len(report["arms"]) == 3
    head = torch.load(out / f"head_{HELDOUT_TASK}.pt", weights_only=True)
    assert head and all(k.startswith(f"heads.{HELDOUT_TASK}.") for k in head)
    shared = (out / f"head_{HELDOUT_TASK}.json").read_text()
    assert not any(e["patient_id"] in shared or e["exam_id"] in shared for e in exams)
    adapted = load_model(out / "model.pt")
    assert HELDOUT_TASK in adapted.tasks and "heart" in adapted.tasks
    answer = tmp_path / "answer.json"
    question = "Are the coronary arteries calcified?"
    clinical = json.dumps(exams[0]["clinical_record"])
    rc = main(
        ["predict", "--model", str(out / "model.pt"), "--clinical", clinical]
        + ["--question", question, "--json", str(answer)]
    )
    got = json.loads(answer.read_text())
    assert rc == 0 and got["task"] == HELDOUT_TASK
    assert set(got["answer"]["probabilities"]) == {"no", "yes"}


def test_labels_without_the_task_column_are_refused(site, ckpt, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,exam_id,calcium\nx,y,1\n")
    rc = main(
        ["adapt", "--model", str(ckpt), "--task", str(EXAMPLE), "--labels", str(labels)]
        + ["--site-config", str(site.path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "lacks columns ['coronary_calcium']" in err
