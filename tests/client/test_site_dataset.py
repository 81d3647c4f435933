"""Tests of the site dataset: examples, questions, modality dropout, batching."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest
import torch

from client.cache import ExamCache
from client.prepare import prepare_site
from client.site_dataset import (
    AUX_TASK,
    ManifestError,
    SiteDataset,
    build_site_dataset,
    collate_examples,
    collate_parts,
    default_tokenizer,
    load_manifest,
)
from m3fm_model import build_model
from m3fm_model.config import preset_config
from m3fm_model.tasks import CLINICAL_NUMBER_QUESTIONS, TASKS, decode_number3
from tests.client.site_fixtures import prepared_site

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return prepared_site(tmp_path_factory)


@pytest.fixture(scope="module")
def train_set(site):
    return build_site_dataset(site, "tiny", "train", modality_dropout=0.2, seed=3)


def _train_exams(site):
    return [e for e in load_manifest(site, "tiny") if e["split"] == "train"]


def test_missing_manifest_names_path_and_fix(site):
    with pytest.raises(ManifestError) as err:
        load_manifest(site, "base")
    assert "manifest-base.json" in str(err.value)
    assert "m3fm-site prepare" in str(err.value)


@pytest.mark.parametrize("field", ["fingerprint", "tasks", "version"])
def test_stale_manifest_is_refused(site, tmp_path, field):
    # Prepare: a copy of the manifest with one field changed.
    payload = json.loads((site.cache_dir / "manifest-tiny.json").read_text())
    payload[field] = {"fingerprint": "0" * 32, "tasks": ["heart"], "version": 99}[field]
    (tmp_path / "manifest-tiny.json").write_text(json.dumps(payload))
    stale = dataclasses.replace(site, cache_dir=tmp_path)
    # Execute / Assert
    with pytest.raises(ManifestError, match=f"stale.*{field}.*m3fm-site prepare"):
        load_manifest(stale, "tiny")


def _flip_first_heart_label(site, path) -> tuple[str, int]:
    """Flip the first exam's heart label in ``path``; returns (exam ID, new label)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    column = site.labels.columns["heart"]
    new = "0" if frame.loc[0, column] == "1" else "1"
    frame.loc[0, column] = new
    frame.to_csv(path, index=False)
    return frame.loc[0, site.labels.exam_id_column], int(new)


def test_edited_labels_table_is_not_trained_on_until_prepared_again(site, tmp_path):
    # Prepare: the site's labels table and cache copied (the fixture stays intact)
    labels = tmp_path / "labels.csv"
    shutil.copyfile(site.labels.path, labels)
    shutil.copytree(site.cache_dir, tmp_path / "cache")
    moved = dataclasses.replace(
        site,
        labels=dataclasses.replace(site.labels, path=labels),
        cache_dir=tmp_path / "cache",
    )
    assert load_manifest(moved, "tiny")  # the same bytes elsewhere: still current
    # Execute: a reader corrects one label
    exam_id, label = _flip_first_heart_label(site, labels)
    # Assert: refused, naming the table and the fix; prepared again, the label is new
    with pytest.raises(ManifestError) as err:
        load_manifest(moved, "tiny")
    assert f"the labels table {labels} changed since prepare" in str(err.value)
    assert "m3fm-site prepare" in str(err.value)
    prepare_site(moved, preset="tiny")
    by_exam = {e["exam_id"]: e for e in load_manifest(moved, "tiny")}
    assert by_exam[exam_id]["labels"]["heart"] == label


def test_changed_split_or_missing_table_makes_the_manifest_unusable(site, tmp_path):
    resplit = dataclasses.replace(
        site, split=dataclasses.replace(site.split, seed=site.split.seed + 1)
    )
    with pytest.raises(ManifestError, match="table mappings, split or tasks"):
        load_manifest(resplit, "tiny")
    gone = dataclasses.replace(
        site, clinical=dataclasses.replace(site.clinical, path=tmp_path / "no.csv")
    )
    with pytest.raises(ManifestError, match="cannot read a table.*no.csv"):
        load_manifest(gone, "tiny")
    assert load_manifest(site, "tiny")


def test_one_example_per_labelled_task_plus_auxiliary(site, train_set):
    exams = _train_exams(site)
    expected = {t: 0 for t in TASKS}
    for exam in exams:
        for task in site.tasks:
            label = exam["labels"].get(task)
            if isinstance(label, dict):
                expected[task] += any(label["observed"])
            elif label is not None:
                expected[task] += 1
        record = exam["clinical_record"] or {}
        expected[AUX_TASK] += any(f in record for f in CLINICAL_NUMBER_QUESTIONS)
    assert train_set.task_counts == {t: n for t, n in expected.items() if n}
    assert len(train_set) == sum(expected.values())
    assert train_set.crop_sizes == {(32, 64, 64), (32, 48, 48)}


def test_site_without_labels_still_has_auxiliary_examples(site):
    data = SiteDataset(
        _train_exams(site),
        cache=ExamCache(site.cache_dir / "crops"),
        model_config=preset_config("tiny"),
        tasks=(),
        tokenizer=default_tokenizer(),
    )
    assert set(data.task_counts) == {AUX_TASK}
    without = build_site_dataset(site, "tiny", "train", auxiliary=False)
    assert AUX_TASK not in without.task_counts


def test_auxiliary_answer_is_the_number_in_the_clinical_text(site, train_set):
    exams = train_set.exams
    tok = train_set.tokenizer
    aux = [i for i in range(len(train_set)) if train_set.entries[i][1] == AUX_TASK]
    assert aux
    for i in aux:
        ex = train_set[i]
        record = exams[train_set.entries[i][0]]["clinical_record"]
        question = tok.decode(ex.question_ids)
        field = next(f for f, qs in CLINICAL_NUMBER_QUESTIONS.items() if question in qs)
        assert decode_number3(ex.target) == round(record[field])
        assert ex.ct is None and bool(ex.text_mask.any())


def test_question_paraphrases_vary_across_fetches(train_set):
    index = next(i for i, (_, t) in enumerate(train_set.entries) if t == "heart")
    data = train_set.with_options(seed=7)
    seen = []
    for epoch in range(3):
        data.set_epoch(epoch)
        seen += [tuple(data[index].question_ids.tolist()) for _ in range(6)]
    wordings = {train_set.tokenizer.decode(torch.tensor(q)) for q in seen}
    assert len(wordings) > 1
    assert wordings <= set(TASKS["heart"].questions)
    # Reproducible from the seed, and canonical without augmentation.
    again = train_set.with_options(seed=7)
    again.set_epoch(0)
    assert [tuple(again[index].question_ids.tolist()) for _ in range(6)] == seen[:6]
    plain = train_set.with_options(augment=False)
    canonical = {plain.tokenizer.decode(plain[index].question_ids) for _ in range(4)}
    assert canonical == {TASKS["heart"].questions[0]}


def test_modality_dropout_never_drops_both(train_set):
    data = train_set.with_options(modality_dropout=0.5, seed=1)
    ct_tasks = [i for i, (_, t) in enumerate(data.entries) if TASKS[t].uses_ct]
    dropped_ct = dropped_text = 0
    for epoch in range(4):
        data.set_epoch(epoch)
        for i in ct_tasks:
            ex = data[i]
            no_ct, no_text = ex.ct is None, not bool(ex.text_mask.any())
            assert not (no_ct and no_text)
            assert no_ct or no_text  # p = 0.5 each: exactly one is hidden
            dropped_ct += no_ct
            dropped_text += no_text
            if no_text:
                assert bool((ex.text_ids == data.tokenizer.pad_id).all())
    assert dropped_ct > 0 and dropped_text > 0
    keep = train_set.with_options(modality_dropout=0.0)
    assert all(keep[i].ct is not None for i in ct_tasks)


def test_parts_share_a_crop_size(train_set):
    examples = [train_set[i] for i in range(len(train_set))]
    parts = collate_parts(examples)
    cfg = preset_config("tiny")
    assert sum(len(p) for p in parts) == len(examples)
    assert sorted(int(i) for p in parts for i in p.indices) == list(
        range(len(examples))
    )
    for part in parts:
        if part.ct is None:
            assert not part.ct_present.any()
            continue
        assert part.ct_present.all() and part.ct.dtype == torch.float32
        assert part.ct.shape[1] == 1 and part.spacing_mm.shape == (len(part), 3)
        for task in part.example_tasks:
            assert tuple(part.ct.shape[2:]) == cfg.crop_for_roi(TASKS[task].roi)
    assert len({p.ct.shape[2:] for p in parts if p.ct is not None}) == 2
    with pytest.raises(ValueError, match="mix crop sizes"):
        collate_examples(examples)
    assert collate_parts([]) == []


def test_batch_without_ct_rows_gets_zero_volumes(train_set):
    data = train_set.with_options(modality_dropout=0.0)
    with_ct = next(data[i] for i in range(len(data)) if data[i].ct is not None)
    aux = next(data[i] for i in range(len(data)) if data.entries[i][1] == AUX_TASK)
    batch = collate_examples([with_ct, aux])
    assert batch.ct_present.tolist() == [True, False]
    assert bool((batch.ct[1] == 0).all()) and bool((batch.ct[0] == with_ct.ct).all())


def test_targets_have_the_loss_format_and_mask_other_rows(train_set):
    parts = collate_parts([train_set[i] for i in range(len(train_set))])
    for part in parts:
        b = len(part)
        assert part.question_ids.shape == (b, 50) and part.text_ids.shape == (b, 160)
        assert (
            part.question_mask.dtype == torch.bool
            and part.text_mask.dtype == torch.bool
        )
        assert set(part.targets) == set(part.tasks) == set(part.example_tasks)
        for task, tgt in part.targets.items():
            own = torch.tensor([t == task for t in part.example_tasks])
            kind = TASKS[task].answer_kind.value
            if kind == "hazard6":
                assert tgt["targets"].shape == (b, 6) and tgt["observed"].shape == (
                    b,
                    6,
                )
                assert (
                    not tgt["observed"][~own].any()
                    and tgt["observed"][own].any(1).all()
                )
            elif kind == "number3":
                assert tgt["digits"].shape == (b, 3)
                assert (tgt["digits"][~own] == -100).all()
                assert ((tgt["digits"][own] >= 0) & (tgt["digits"][own] <= 9)).all()
            else:
                assert tgt["target"].shape == (b,) and tgt["target"].dtype == torch.long
                assert (tgt["target"][~own] == -100).all()
                classes = len(TASKS[task].classes)
                assert (
                    (tgt["target"][own] >= 0) & (tgt["target"][own] < classes)
                ).all()


def test_parts_feed_the_model(train_set):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    for part in collate_parts([train_set[i] for i in range(0, len(train_set), 3)]):
        moved = part.to("cpu")
        kw = moved.model_inputs()
        assert ("ct" in kw) == (part.ct is not None)
        with torch.no_grad():
            out = model(**kw, tasks=part.tasks)
        assert set(out.logits) == set(part.tasks)
        assert all(torch.isfinite(v).all() for v in out.logits.values())


def test_per_patient_items_are_patients(site):
    plain = build_site_dataset(site, "tiny", "train")
    per = build_site_dataset(site, "tiny", "train", per_patient=True)
    patients = {e["patient_id"] for e in plain.exams}
    assert len(per) == len(patients) < len(plain)
    assert per.per_patient and not plain.per_patient
    # each fetch draws one of the patient's examples; over many fetches several appear
    seen = {per.with_options(seed=s)[0].task for s in range(40)}
    assert len(seen) > 1
