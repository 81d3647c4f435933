"""m3fm-site adapt: new task file, labels join, CV arms, outputs that load and answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from client.cache import ExamCache
from client.cli import main
from client.evaluation.adapt import (
    AdaptOptions,
    cross_validate,
    fit_final,
    fit_head,
    with_new_head,
)
from client.evaluation.adapt_data import (
    encode_exams,
    load_labelled_exams,
    task_features,
)
from client.evaluation.adapt_fusion import fit_fusion, predict_fusion
from client.evaluation.model_io import load_model
from client.evaluation.task_spec import load_new_task
from client.site_dataset import load_manifest
from client.synth.heldout import HEART_SCALE_THRESHOLD, HELDOUT_FILE, HELDOUT_TASK
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
    scale = {e["exam_id"]: e["heart_scale"] for e in truth["exams"]}
    present = table["exam_id"].map(scale) > HEART_SCALE_THRESHOLD
    agree = (table[HELDOUT_TASK] == present.astype(int)).mean()
    assert agree >= 0.7  # reader calls follow the rendered heart size (92% / 4% noise)
    # a patient's exams share the heart and the reader's call
    assert (table.groupby("patient_id")[HELDOUT_TASK].nunique() == 1).all()


def test_example_task_file_parses_and_bad_ones_are_refused(tmp_path) -> None:
    task = load_new_task(EXAMPLE)
    assert task.spec.name == HELDOUT_TASK and task.spec.roi == "heart"
    clash = tmp_path / "clash.toml"
    clash.write_text(
        EXAMPLE.read_text().replace(f'name = "{HELDOUT_TASK}"', 'name = "heart"')
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
            HELDOUT_TASK: (ages >= np.median(ages)).astype(int),
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
    assert "adapted (pretrained trunk, frozen)" in report["arms"]
    card = json.loads((out / "model.card.json").read_text())
    assert "fusion-fine-tuned" not in card
    assert "includes-fusion" not in json.loads(
        (out / f"head_{HELDOUT_TASK}.json").read_text()
    )
    head = torch.load(out / f"head_{HELDOUT_TASK}.pt", weights_only=True)
    assert head and all(k.startswith(f"heads.{HELDOUT_TASK}.") for k in head)
    shared = (out / f"head_{HELDOUT_TASK}.json").read_text()
    assert not any(e["patient_id"] in shared or e["exam_id"] in shared for e in exams)
    adapted = load_model(out / "model.pt")
    assert HELDOUT_TASK in adapted.tasks and "heart" in adapted.tasks
    answer = tmp_path / "answer.json"
    question = "Is the cardiac silhouette larger than normal?"
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
    labels.write_text("patient_id,exam_id,heart_size\nx,y,1\n")
    rc = main(
        ["adapt", "--model", str(ckpt), "--task", str(EXAMPLE), "--labels", str(labels)]
        + ["--site-config", str(site.path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"lacks columns ['{HELDOUT_TASK}']" in err


def _age_labels(site, path: Path) -> Path:
    exams = load_manifest(site, "tiny")
    ages = np.array([e["clinical_record"].get("age", 60) for e in exams])
    pd.DataFrame(
        {
            "patient_id": [e["patient_id"] for e in exams],
            "exam_id": [e["exam_id"] for e in exams],
            HELDOUT_TASK: (ages >= np.median(ages)).astype(int),
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def adapt_inputs(site, ckpt, tmp_path_factory):
    loaded = load_model(ckpt)
    task = load_new_task(EXAMPLE)
    labels = _age_labels(site, tmp_path_factory.mktemp("labels") / "labels.csv")
    data = load_labelled_exams(task, labels, load_manifest(site, loaded.preset))
    return loaded, task, data, ExamCache(site.cache_dir / "crops")


FUSION_OPTS = AdaptOptions(
    steps=5, folds=2, train_fusion=True, fusion_steps=4, fusion_batch=4, fusion_lr=1e-2
)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _part(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_encoded_exams_through_task_attention_give_task_features(adapt_inputs):
    loaded, task, data, cache = adapt_inputs
    model = with_new_head(loaded, task, 0)
    feats = task_features(model, task.spec, data.exams, cache)
    encoded = encode_exams(model, task.spec, data.exams, cache)
    assert len(encoded) == len(data.exams)
    assert any(e.ct is not None for e in encoded)
    with torch.no_grad():
        fused = torch.cat(
            [
                model.task_attention(
                    model.task_attention.task_token(e.question_state),
                    e.ct,
                    None,
                    e.text,
                    e.text_mask,
                )[0]
                for e in encoded
            ]
        )
    torch.testing.assert_close(fused, feats, atol=1e-5, rtol=0)


def test_fit_fusion_trains_fusion_and_head_only(adapt_inputs):
    loaded, task, data, cache = adapt_inputs
    model = with_new_head(loaded, task, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoded = encode_exams(model, task.spec, data.exams, cache)
    fusion, head = fit_fusion(model, task.spec.name, encoded, data.labels, FUSION_OPTS)
    assert _same(model.state_dict(), before)  # the model itself is untouched
    old_fusion = _part(model, "task_attention.")
    new_fusion = {f"task_attention.{k}": v for k, v in fusion.state_dict().items()}
    assert new_fusion.keys() == old_fusion.keys()
    assert not all(torch.equal(new_fusion[k], old_fusion[k]) for k in old_fusion)
    old_head = model.heads[task.spec.name].state_dict()
    assert not _same(head.state_dict(), old_head)
    probs = predict_fusion(fusion, head, encoded)
    assert probs.shape == (len(encoded), 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_fit_final_with_train_fusion_keeps_the_encoders(adapt_inputs):
    loaded, task, data, cache = adapt_inputs
    model = fit_final(loaded, task, data, cache, FUSION_OPTS)
    base = loaded.model.state_dict()
    got = model.state_dict()
    for prefix in ("ct_encoder.", "text_encoder."):
        assert _same(
            _part(model, prefix), {k: base[k] for k in got if k.startswith(prefix)}
        )
    fusion = [k for k in base if k.startswith("task_attention.")]
    assert fusion and not all(torch.equal(got[k], base[k]) for k in fusion)
    for name in loaded.tasks:  # the other heads are the loaded ones
        prefix = f"heads.{name}."
        assert all(torch.equal(got[k], base[k]) for k in base if k.startswith(prefix))


def test_cross_validation_arm_names_say_what_trained(adapt_inputs):
    loaded, task, data, cache = adapt_inputs
    report = cross_validate(loaded, task, data, cache, FUSION_OPTS)
    assert list(report["arms"]) == [
        "adapted (pretrained trunk, fusion + head)",
        "same fusion + head, random trunk",
        "logistic regression, clinical",
    ]


def test_adapt_train_fusion_saves_the_fusion(site, ckpt, tmp_path, capsys) -> None:
    labels = _age_labels(site, tmp_path / "labels.csv")
    out = tmp_path / "adapted"
    rc = main(
        ["adapt", "--model", str(ckpt), "--task", str(EXAMPLE), "--labels", str(labels)]
        + ["--site-config", str(site.path), "--steps", "5", "--folds", "2"]
        + ["--train-fusion", "--fusion-steps", "3", "--out", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fusion layers (task_attention)" in printed
    report = json.loads((out / "adapt_report.json").read_text())
    assert "adapted (pretrained trunk, fusion + head)" in report["arms"]
    assert "same fusion + head, random trunk" in report["arms"]
    card = json.loads((out / "model.card.json").read_text())
    assert card["fusion-fine-tuned"] is True
    assert "other tasks" in card["fusion-note"]
    head = torch.load(out / f"head_{HELDOUT_TASK}.pt", weights_only=True)
    assert any(k.startswith(f"heads.{HELDOUT_TASK}.") for k in head)
    assert any(k.startswith("task_attention.") for k in head)
    assert all(
        k.startswith((f"heads.{HELDOUT_TASK}.", "task_attention.")) for k in head
    )
    shared = json.loads((out / f"head_{HELDOUT_TASK}.json").read_text())
    assert shared["includes-fusion"] is True
    adapted = load_model(out / "model.pt")
    base = torch.load(ckpt, weights_only=True)
    saved = adapted.model.state_dict()
    assert not all(
        torch.equal(saved[k], base[k]) for k in base if k.startswith("task_attention.")
    )
    assert all(torch.equal(head[k], saved[k]) for k in head)


def test_severe_emphysema_labels_follow_the_truth_and_join_the_site(
    site, ckpt, tmp_path
) -> None:
    from client.evaluation.measure import main as measure_main

    root = site.path.parent
    out = tmp_path / "severe.csv"
    args = ["labels", "--site", str(root), "--finding", "severe_emphysema"]
    assert measure_main([*args, "--threshold", "0.05", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    truth = json.loads((root / "truth.json").read_text())
    frac = {e["exam_id"]: e["findings"]["emphysema_fraction"] for e in truth["exams"]}
    expected = (table["exam_id"].map(frac) >= 0.05).astype(int)
    assert (table["severe_emphysema"] == expected).all() and len(table) == len(frac)
    task = load_new_task(EXAMPLE.parent / "new_task_severe_emphysema.toml")
    data = load_labelled_exams(task, out, load_manifest(site, load_model(ckpt).preset))
    assert len(data.labels) >= 10 and set(data.labels.tolist()) <= {0, 1}
