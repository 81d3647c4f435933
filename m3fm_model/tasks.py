"""Registry of the M3FM tasks: names, answer kinds, CT regions and question wordings."""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "AnswerKind",
    "ROIS",
    "HU_WINDOWS",
    "TaskSpec",
    "TASKS",
    "PAPER_TASKS",
    "CLINICAL_NUMBER_QUESTIONS",
    "encode_number3",
    "decode_number3",
    "get_task",
    "all_questions",
    "with_extra_tasks",
]


class AnswerKind(enum.StrEnum):
    """How a task's answer is encoded by its head."""

    HAZARD6 = "hazard6"
    BINARY = "binary"
    MULTICLASS = "multiclass"
    NUMBER3 = "number3"


ROIS: tuple[str, ...] = ("lung", "heart", "chest", "parenchyma", "lung_masked", "none")

# HU clipping window per CT region of interest, (low, high); "none" has no CT input.
# "parenchyma" is the lung box in a lung-density window: emphysema (<= -950 HU) is
# 100 HU from normal lung, 0.14 of the [-1, 1] range in the chest window, and the
# tiny preset never resolved it there (CT-only AUC 0.50 on unseen sites); in this
# window it reaches 0.86-0.90 (docs/site-evaluation.md, "The CT path").
# "lung_masked" is the lung crop with everything outside the lung fields set to the
# lungs' median density (client.preprocess): a nodule is seen against lung and vessels
# only, not next to the chest wall (a tiny-preset crop, m3fm_model.config).
HU_WINDOWS: Mapping[str, tuple[float, float]] = types.MappingProxyType(
    {
        "lung": (-1300.0, 150.0),
        "heart": (-135.0, 225.0),
        "chest": (-1000.0, 400.0),
        "parenchyma": (-1000.0, -700.0),
        "lung_masked": (-1300.0, 150.0),
    }
)

_BINARY_CLASSES = ("no", "yes")
_HAZARD_CLASSES = tuple(f"year {t}" for t in range(1, 7))
_NUM_OUTPUTS_FIXED = {
    AnswerKind.HAZARD6: 7,  # 6 yearly hazards + 1 base hazard
    AnswerKind.BINARY: 2,
    AnswerKind.NUMBER3: 30,  # hundreds, tens, units: three 10-way classifiers
}


@dataclass(frozen=True)
class TaskSpec:
    """One task: what is asked, on which CT region, and how it is answered.

    Attributes:
        name: Registry key, a Python identifier (also the head's key).
        group: Task family, e.g. "nodule" or "chest_abnormality".
        answer_kind: How the head encodes the answer.
        roi: CT region of interest, one of ``ROIS`` ("none" for text-only tasks).
        questions: At least 3 distinct wordings; the first one is canonical.
        classes: Class names; ("no", "yes") for binary, ("year 1", ..., "year 6")
            for hazard6, empty for number3.
        description: One-line human description of the label.
        uses_ct: False for text-only tasks (then ``roi`` must be "none").
        auxiliary: True for training-only tasks that are not among the paper's 17.
    """

    name: str
    group: str
    answer_kind: AnswerKind
    roi: str
    questions: tuple[str, ...]
    classes: tuple[str, ...]
    description: str
    uses_ct: bool
    auxiliary: bool = False

    def __post_init__(self) -> None:
        """Validate the fields, raising ValueError with the reason and the fix."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(
                f"TaskSpec.name must be a Python identifier, got {self.name!r}; "
                "use lower_snake_case such as 'nodule_presence'"
            )
        where = f"TaskSpec {self.name!r}"
        if not isinstance(self.group, str) or not self.group:
            raise ValueError(f"{where}: group must be a non-empty string")
        try:
            kind = AnswerKind(self.answer_kind)
        except ValueError as err:
            raise ValueError(
                f"{where}: answer_kind {self.answer_kind!r} is not one of "
                f"{[k.value for k in AnswerKind]}"
            ) from err
        object.__setattr__(self, "answer_kind", kind)
        object.__setattr__(self, "questions", tuple(self.questions))
        object.__setattr__(self, "classes", tuple(self.classes))
        self._check_roi(where)
        self._check_questions(where)
        self._check_classes(where)

    def _check_roi(self, where: str) -> None:
        if self.roi not in ROIS:
            raise ValueError(f"{where}: roi {self.roi!r} is not one of {ROIS}")
        if self.uses_ct and self.roi == "none":
            raise ValueError(
                f"{where}: a task that uses CT needs a roi other than none"
            )
        if not self.uses_ct and self.roi != "none":
            raise ValueError(
                f"{where}: text-only task (uses_ct=False) must have roi 'none', "
                f"got {self.roi!r}"
            )

    def _check_questions(self, where: str) -> None:
        questions = self.questions
        if len(questions) < 3:
            raise ValueError(
                f"{where}: needs at least 3 question wordings, got {len(questions)}"
            )
        if any(not isinstance(q, str) or not q.strip() for q in questions):
            raise ValueError(f"{where}: every question must be a non-empty string")
        if len({q.strip().lower() for q in questions}) != len(questions):
            raise ValueError(f"{where}: question wordings must be distinct")

    def _check_classes(self, where: str) -> None:
        kind, classes = self.answer_kind, self.classes
        expected = {
            AnswerKind.BINARY: _BINARY_CLASSES,
            AnswerKind.HAZARD6: _HAZARD_CLASSES,
            AnswerKind.NUMBER3: (),
        }.get(kind)
        if expected is not None and classes != expected:
            raise ValueError(
                f"{where}: a {kind.value} task must have classes {expected}, "
                f"got {classes}"
            )
        if kind is AnswerKind.MULTICLASS and (
            len(classes) < 2 or len(set(classes)) != len(classes)
        ):
            raise ValueError(
                f"{where}: a multiclass task needs at least 2 distinct class names, "
                f"got {classes}"
            )

    @property
    def num_outputs(self) -> int:
        """Number of raw outputs the task's head emits."""
        if self.answer_kind is AnswerKind.MULTICLASS:
            return len(self.classes)
        return _NUM_OUTPUTS_FIXED[self.answer_kind]


# Questions of the auxiliary "clinical number" task, per clinical field; the answer is
# the field's value rounded to an integer 0..999 (names match clinical.CLINICAL_FIELDS).
CLINICAL_NUMBER_QUESTIONS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "age": (
            "How old is the patient?",
            "What is the patient's age in years?",
            "At what age was the patient scanned?",
        ),
        "height": (
            "How tall is the patient in inches?",
            "What is the patient's height?",
            "What height in inches is recorded for the patient?",
        ),
        "weight": (
            "How much does the patient weigh in pounds?",
            "What is the patient's body weight?",
            "What weight in pounds is recorded for the patient?",
        ),
        "pack_years": (
            "How many pack-years has the patient smoked?",
            "What is the patient's smoking history in pack years?",
            "What is the cumulative pack-year exposure of the patient?",
        ),
        "cigs_per_day": (
            "How many cigarettes per day does the patient smoke?",
            "What is the patient's daily cigarette count?",
            "What is the smoking intensity in cigarettes per day?",
        ),
        "smoking_years": (
            "For how many years has the patient smoked?",
            "How many years of smoking does the patient report?",
            "What is the total number of years the patient smoked?",
        ),
    }
)


def _binary(name: str, group: str, roi: str, description: str, *qs: str) -> TaskSpec:
    return TaskSpec(
        name, group, AnswerKind.BINARY, roi, qs, _BINARY_CLASSES, description, True
    )


def _multi(name: str, classes: tuple[str, ...], description: str, *qs: str) -> TaskSpec:
    return TaskSpec(
        name, "nodule", AnswerKind.MULTICLASS, "lung", qs, classes, description, True
    )


_NONE = "none"
_NODULE_TASKS = (
    _binary(
        "nodule_presence",
        "nodule",
        "lung",
        "Any lung nodule of at least 4 mm.",
        "Is there a lung nodule of at least 4 mm?",
        "Does the CT show any pulmonary nodule 4 mm or larger?",
        "Are any lung nodules measuring 4 mm or more present?",
        "Is a pulmonary nodule present on this scan?",
    ),
    _multi(
        "nodule_size",
        (_NONE, "<6 mm", "6-15 mm", ">15 mm"),
        "Size range of the largest lung nodule (none if no nodule).",
        "What is the size of the largest lung nodule?",
        "How large is the biggest pulmonary nodule?",
        "Which size range does the largest nodule fall into?",
        "What is the diameter category of the dominant lung nodule?",
    ),
    _multi(
        "nodule_consistency",
        (_NONE, "solid", "part-solid", "ground-glass"),
        "Attenuation of the largest lung nodule (none if no nodule).",
        "What is the consistency of the largest lung nodule?",
        "Is the dominant nodule solid, part-solid or ground-glass?",
        "What is the attenuation type of the main pulmonary nodule?",
        "Describe the density of the largest nodule.",
    ),
    _multi(
        "nodule_location",
        (
            _NONE,
            "right upper lobe",
            "right middle lobe",
            "right lower lobe",
            "left upper lobe",
            "left lower lobe",
        ),
        "Lobe that holds the largest lung nodule (none if no nodule).",
        "In which lobe is the largest lung nodule located?",
        "Where is the dominant pulmonary nodule?",
        "Which lung lobe contains the main nodule?",
        "What is the lobar location of the largest nodule?",
    ),
    _multi(
        "nodule_margin",
        (_NONE, "smooth", "spiculated"),
        "Margin of the largest lung nodule (none if no nodule).",
        "What is the margin of the largest lung nodule?",
        "Is the edge of the dominant nodule smooth or spiculated?",
        "How would you describe the border of the main pulmonary nodule?",
        "What do the margins of the largest nodule look like?",
    ),
)

_CARDIO_TASKS = (
    _binary(
        "heart",
        "cardiovascular",
        "heart",
        "Significant cardiovascular abnormality (CVD diagnosis).",
        "Is there any significant cardiovascular abnormality?",
        "Does the scan show a significant cardiovascular abnormality?",
        "Is clinically significant cardiovascular disease visible?",
        "Are there signs of important heart or vessel disease?",
    ),
    _binary(
        "cvd_mortality",
        "cardiovascular",
        "heart",
        "Death from a cardiovascular cause during follow-up.",
        "Will the patient die from cardiovascular disease?",
        "Is the patient at risk of cardiovascular death?",
        "Predict whether the patient dies of a cardiovascular cause.",
        "What is the risk of death from heart or vascular disease?",
    ),
)

_CANCER_RISK = TaskSpec(
    "cancer_risk",
    "cancer_risk",
    AnswerKind.HAZARD6,
    "lung",
    (
        "Predict the lung cancer risk over six years.",
        "What is the probability of lung cancer in each of the next six years?",
        "Estimate the six-year risk of developing lung cancer.",
        "How likely is the patient to be diagnosed with lung cancer within six years?",
    ),
    _HAZARD_CLASSES,
    "Lung cancer diagnosed by year 1..6 after the scan (cumulative, censored).",
    True,
)


def _chest(name: str, description: str, *qs: str, roi: str = "chest") -> TaskSpec:
    return _binary(name, "chest_abnormality", roi, description, *qs)


_CHEST_TASKS = (
    _chest(
        "atelectasis",
        "Atelectasis.",
        "Is there atelectasis?",
        "Does the CT show collapsed lung tissue?",
        "Is any lung collapse or atelectasis present?",
        "Are there atelectatic changes in the lungs?",
    ),
    _chest(
        "pleural_effusion",
        "Pleural thickening or effusion.",
        "Is there pleural thickening or effusion?",
        "Does the scan show fluid or thickening of the pleura?",
        "Is a pleural effusion or pleural thickening present?",
        "Are there pleural abnormalities such as effusion or thickening?",
    ),
    _chest(
        "adenopathy",
        "Hilar or mediastinal adenopathy.",
        "Is there hilar or mediastinal adenopathy?",
        "Are enlarged hilar or mediastinal lymph nodes present?",
        "Does the CT show lymphadenopathy in the hilum or mediastinum?",
        "Are there swollen lymph nodes in the chest?",
    ),
    _chest(
        "chest_wall_abnormality",
        "Chest wall abnormality (bone or soft tissue).",
        "Is there a chest wall abnormality?",
        "Does the scan show an abnormality of the chest wall?",
        "Are the ribs, spine or soft tissues of the chest wall abnormal?",
        "Is any chest wall lesion or deformity present?",
    ),
    _chest(
        "consolidation",
        "Consolidation.",
        "Is there consolidation?",
        "Does the CT show lung consolidation?",
        "Is any airspace consolidation present?",
        "Are there areas of consolidated lung parenchyma?",
    ),
    _chest(
        "emphysema",
        "Emphysema seen on CT.",
        "Is there emphysema?",
        "Does the CT show emphysematous changes?",
        "Is pulmonary emphysema visible on the scan?",
        "Are there signs of emphysema in the lungs?",
        roi="parenchyma",
    ),
    _chest(
        "fibrosis",
        "Reticular/reticulonodular opacities, honeycombing, fibrosis or scar.",
        "Is there fibrosis or scarring?",
        "Does the CT show reticular opacities, honeycombing or fibrosis?",
        "Are there reticulonodular opacities or lung scars?",
        "Is pulmonary fibrosis or scar tissue present?",
    ),
)

_COVID19 = _binary(
    "covid19",
    "infection",
    "chest",
    "COVID-19 positive.",
    "Does the patient have COVID-19?",
    "Is the CT consistent with COVID-19 pneumonia?",
    "Are there findings of a SARS-CoV-2 infection?",
    "Is this a COVID-19 positive case?",
)

_LUNG_RADS = TaskSpec(
    "lung_rads",
    "lung_rads",
    AnswerKind.MULTICLASS,
    "none",
    (
        "What is the Lung-RADS category?",
        "Which Lung-RADS category fits this nodule description?",
        "Assign a Lung-RADS score to the reported findings.",
        "What Lung-RADS assessment does this report correspond to?",
    ),
    ("1", "2", "3", "4A", "4B", "4X"),
    "Lung-RADS category from a report's nodule description (given as the text).",
    False,
)

_CLINICAL_NUMBER = TaskSpec(
    "clinical_number",
    "clinical",
    AnswerKind.NUMBER3,
    "none",
    tuple(q for qs in CLINICAL_NUMBER_QUESTIONS.values() for q in qs),
    (),
    "A clinical field's value rounded to an integer 0..999 (auxiliary, text only).",
    False,
    auxiliary=True,
)


def _build_registry(specs: Iterable[TaskSpec]) -> Mapping[str, TaskSpec]:
    """Check names and question wordings are unique, then freeze the registry."""
    registry: dict[str, TaskSpec] = {}
    owner: dict[str, str] = {}
    for spec in specs:
        if not isinstance(spec, TaskSpec):
            raise ValueError(f"expected a TaskSpec, got {type(spec).__name__}")
        if spec.name in registry:
            raise ValueError(
                f"task name {spec.name!r} is already registered; choose another name"
            )
        for question in spec.questions:
            key = question.strip().lower()
            if key in owner:
                raise ValueError(
                    f"question {question!r} of task {spec.name!r} is already used by "
                    f"task {owner[key]!r}; each wording must identify one task"
                )
            owner[key] = spec.name
        registry[spec.name] = spec
    return types.MappingProxyType(registry)


TASKS: Mapping[str, TaskSpec] = _build_registry(
    (*_NODULE_TASKS, *_CARDIO_TASKS, _CANCER_RISK, *_CHEST_TASKS, _COVID19)
    + (_LUNG_RADS, _CLINICAL_NUMBER)
)

PAPER_TASKS: tuple[str, ...] = tuple(n for n, s in TASKS.items() if not s.auxiliary)


def encode_number3(value: float) -> tuple[int, int, int]:
    """Encode a number as its hundreds, tens and units digits.

    Args:
        value: A finite number; it is rounded to the nearest integer and clipped to
            0..999.

    Returns:
        The (hundreds, tens, units) digits, each 0..9.
    """
    if isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"number3 value must be a finite number, got {value!r}")
    number = min(max(round(float(value)), 0), 999)
    return number // 100, (number // 10) % 10, number % 10


def decode_number3(digits: Sequence[int]) -> int:
    """Decode (hundreds, tens, units) digits back to an integer 0..999.

    Args:
        digits: Three integers, each 0..9.

    Returns:
        The integer the digits spell.
    """
    values = [int(d) for d in digits]
    if len(values) != 3 or any(not 0 <= d <= 9 for d in values):
        raise ValueError(f"digits must be three integers 0..9, got {list(digits)!r}")
    return values[0] * 100 + values[1] * 10 + values[2]


def get_task(name: str) -> TaskSpec:
    """Look a task up by name.

    Args:
        name: A key of ``TASKS``.

    Returns:
        The task's spec.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)}"
        ) from None


def all_questions() -> list[tuple[str, str]]:
    """List every (task name, question) pair of the registry, in registry order.

    Returns:
        The pairs, canonical question first within each task.
    """
    return [(name, q) for name, spec in TASKS.items() for q in spec.questions]


def with_extra_tasks(extra: Iterable[TaskSpec]) -> Mapping[str, TaskSpec]:
    """Return a new read-only registry with tasks added (site adaptation).

    Args:
        extra: New task specs; names and question wordings must not clash with the
            built-in tasks or with each other.

    Returns:
        A read-only mapping with the built-in tasks followed by ``extra``.
    """
    return _build_registry((*TASKS.values(), *extra))
