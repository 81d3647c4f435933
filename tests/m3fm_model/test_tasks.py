"""Tests for the task registry."""

import dataclasses

import pytest

from m3fm_model.clinical import CLINICAL_FIELDS
from m3fm_model.tasks import (
    CLINICAL_NUMBER_QUESTIONS,
    HU_WINDOWS,
    PAPER_TASKS,
    ROIS,
    TASKS,
    AnswerKind,
    TaskSpec,
    all_questions,
    decode_number3,
    encode_number3,
    get_task,
    with_extra_tasks,
)

EXPECTED_ORDER = (
    "nodule_presence",
    "nodule_size",
    "nodule_consistency",
    "nodule_location",
    "nodule_margin",
    "heart",
    "cvd_mortality",
    "cancer_risk",
    "atelectasis",
    "pleural_effusion",
    "adenopathy",
    "chest_wall_abnormality",
    "consolidation",
    "emphysema",
    "fibrosis",
    "covid19",
    "lung_rads",
)


def _spec(**changes):
    base = dict(
        name="pneumothorax",
        group="chest_abnormality",
        answer_kind=AnswerKind.BINARY,
        roi="chest",
        questions=("Is there a pneumothorax?", "Is air in the pleura?", "Collapsed?"),
        classes=("no", "yes"),
        description="Pneumothorax.",
        uses_ct=True,
    )
    base.update(changes)
    return TaskSpec(**base)


def test_registry_has_17_paper_tasks_then_auxiliary():
    assert PAPER_TASKS == EXPECTED_ORDER
    assert tuple(TASKS) == (*EXPECTED_ORDER, "clinical_number")
    assert TASKS["clinical_number"].auxiliary
    assert not any(TASKS[n].auxiliary for n in PAPER_TASKS)
    with pytest.raises(TypeError):
        TASKS["x"] = TASKS["heart"]  # read-only


def test_canonical_questions_and_kinds():
    assert TASKS["heart"].questions[0] == (
        "Is there any significant cardiovascular abnormality?"
    )
    assert TASKS["cancer_risk"].questions[0] == (
        "Predict the lung cancer risk over six years."
    )
    assert TASKS["cancer_risk"].answer_kind is AnswerKind.HAZARD6
    assert TASKS["lung_rads"].classes == ("1", "2", "3", "4A", "4B", "4X")
    assert not TASKS["lung_rads"].uses_ct and TASKS["lung_rads"].roi == "none"
    rois = {n: TASKS[n].roi for n in EXPECTED_ORDER[8:16]}
    assert rois.pop("emphysema") == "parenchyma"
    assert set(rois.values()) == {"chest"}
    assert {TASKS[n].roi for n in EXPECTED_ORDER[:5]} == {"lung"}


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_has_distinct_questions_and_valid_roi(name):
    spec = TASKS[name]
    assert len(spec.questions) >= 3
    assert len({q.lower() for q in spec.questions}) == len(spec.questions)
    assert spec.roi in ROIS
    assert (spec.roi in HU_WINDOWS) == spec.uses_ct


def test_questions_identify_one_task():
    pairs = all_questions()
    assert len({q.lower() for _, q in pairs}) == len(pairs)
    assert {n for n, _ in pairs} == set(TASKS)
    assert pairs[0] == ("nodule_presence", TASKS["nodule_presence"].questions[0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cancer_risk", 7),
        ("heart", 2),
        ("nodule_location", 6),
        ("nodule_margin", 3),
        ("lung_rads", 6),
        ("clinical_number", 30),
    ],
)
def test_num_outputs(name, expected):
    assert TASKS[name].num_outputs == expected


def test_clinical_number_questions_match_fields():
    assert set(CLINICAL_NUMBER_QUESTIONS) <= set(CLINICAL_FIELDS)
    union = [q for qs in CLINICAL_NUMBER_QUESTIONS.values() for q in qs]
    assert TASKS["clinical_number"].questions == tuple(union)
    assert all(len(qs) >= 3 for qs in CLINICAL_NUMBER_QUESTIONS.values())


@pytest.mark.parametrize(
    ("value", "digits", "decoded"),
    [(37.5, (0, 3, 8), 38), (0, (0, 0, 0), 0), (999.4, (9, 9, 9), 999),
     (1234, (9, 9, 9), 999), (-5, (0, 0, 0), 0), (120.6, (1, 2, 1), 121)],
)  # fmt: skip
def test_number3_round_trip(value, digits, decoded):
    assert encode_number3(value) == digits
    assert decode_number3(digits) == decoded


def test_number3_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        encode_number3(float("nan"))
    with pytest.raises(ValueError, match="0..9"):
        decode_number3((1, 10, 0))
    with pytest.raises(ValueError, match="three"):
        decode_number3((1, 2))


def test_get_task_error_lists_names():
    assert get_task("covid19") is TASKS["covid19"]
    with pytest.raises(ValueError, match="unknown task 'cancer'") as info:
        get_task("cancer")
    assert "cancer_risk" in str(info.value) and "lung_rads" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(name="bad name"), "identifier"),
        (dict(questions=("Only one?", "Two?")), "at least 3"),
        (dict(questions=("Same?", "same?", "Other?")), "distinct"),
        (dict(classes=("yes", "no")), "classes"),
        (dict(roi="brain"), "roi"),
        (dict(uses_ct=False), "text-only"),
        (dict(answer_kind="ordinal"), "answer_kind"),
        (dict(answer_kind=AnswerKind.MULTICLASS, classes=("a",)), "2 distinct"),
        (dict(answer_kind=AnswerKind.NUMBER3, classes=("a",)), "classes"),
    ],
)
def test_taskspec_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        _spec(**changes)


def test_taskspec_coerces_kind_string_and_is_frozen():
    spec = _spec(answer_kind="binary", questions=["A?", "B?", "C?"])
    assert spec.answer_kind is AnswerKind.BINARY
    assert spec.questions == ("A?", "B?", "C?")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"


def test_with_extra_tasks_adds_without_touching_builtin():
    registry = with_extra_tasks([_spec()])
    assert list(registry)[-1] == "pneumothorax"
    assert "pneumothorax" not in TASKS
    with pytest.raises(TypeError):
        registry["y"] = _spec()


def test_with_extra_tasks_refuses_clashes():
    with pytest.raises(ValueError, match="already registered"):
        with_extra_tasks([_spec(name="heart")])
    with pytest.raises(ValueError, match="already used by task 'heart'"):
        with_extra_tasks(
            [
                _spec(
                    questions=(
                        "Is there any significant cardiovascular abnormality?",
                        "X?",
                        "Y?",
                    )
                )
            ]  # fmt: skip
        )
    with pytest.raises(ValueError, match="already registered"):
        with_extra_tasks([_spec(), _spec()])
