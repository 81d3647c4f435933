"""A site's new task: its TOML file, and the spec's round trip through JSON.

A new task file (``site_configs/new_task_example.toml``) names the task, its question
wordings, answer kind, CT region and classes, and says which labels-table column holds
its labels. ``spec_to_dict``/``spec_from_dict`` carry the spec inside a model card so
that a model with an added head can be loaded anywhere.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3fm_model.tasks import TASKS, AnswerKind, TaskSpec, with_extra_tasks

_TASK_KEYS = {
    "name",
    "group",
    "answer-kind",
    "roi",
    "questions",
    "classes",
    "description",
    "uses-ct",
}
_LABEL_KEYS = {"column", "patient-id-column", "exam-id-column"}


@dataclass(frozen=True)
class NewTask:
    """A parsed new-task file.

    Attributes:
        spec: The task's spec (validated against the built-in registry).
        label_column: Labels-table column holding the task's labels.
        patient_id_column: Labels-table column of the pseudonymous patient ID.
        exam_id_column: Labels-table column of the pseudonymous exam ID.
    """

    spec: TaskSpec
    label_column: str
    patient_id_column: str = "patient_id"
    exam_id_column: str = "exam_id"


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """A JSON-ready dict of a task spec (no site data in it)."""
    return {
        "name": spec.name,
        "group": spec.group,
        "answer_kind": spec.answer_kind.value,
        "roi": spec.roi,
        "questions": list(spec.questions),
        "classes": list(spec.classes),
        "description": spec.description,
        "uses_ct": spec.uses_ct,
    }


def spec_from_dict(raw: Mapping[str, Any]) -> TaskSpec:
    """The spec written by ``spec_to_dict``.

    Raises:
        ValueError: a missing field or an invalid value (the spec's own checks).
    """
    try:
        return TaskSpec(
            name=raw["name"],
            group=raw["group"],
            answer_kind=AnswerKind(raw["answer_kind"]),
            roi=raw["roi"],
            questions=tuple(raw["questions"]),
            classes=tuple(raw["classes"]),
            description=raw["description"],
            uses_ct=bool(raw["uses_ct"]),
        )
    except KeyError as err:
        raise ValueError(f"task spec lacks the field {err.args[0]!r}") from None


def _default_classes(kind: AnswerKind) -> tuple[str, ...]:
    if kind is AnswerKind.BINARY:
        return ("no", "yes")
    if kind is AnswerKind.HAZARD6:
        return tuple(f"year {t}" for t in range(1, 7))
    return ()


def load_new_task(path: str | Path) -> NewTask:
    """Parse and validate a new-task TOML file.

    Args:
        path: The file.

    Returns:
        The new task.

    Raises:
        ValueError: unreadable file, unknown or missing keys, a name or question
            wording that clashes with a built-in task, or an invalid spec; the
            message names the file, the key and the fix.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"cannot read new-task file {path}: {err}") from None
    task, labels = raw.get("task"), raw.get("labels", {})
    if not isinstance(task, dict):
        raise ValueError(f"{path}: needs a [task] table (see docs/site-evaluation.md)")
    for section, keys, got in (
        ("task", _TASK_KEYS, task),
        ("labels", _LABEL_KEYS, labels),
    ):
        unknown = sorted(set(got) - keys)
        if unknown:
            raise ValueError(
                f"{path}: unknown keys {unknown} in [{section}]; allowed: {sorted(keys)}"
            )
    missing = [k for k in ("name", "answer-kind", "roi", "questions") if k not in task]
    if missing:
        raise ValueError(f"{path}: [task] lacks {missing}")
    try:
        kind = AnswerKind(task["answer-kind"])
    except ValueError:
        raise ValueError(
            f"{path}: [task] answer-kind {task['answer-kind']!r} is not one of "
            f"{[k.value for k in AnswerKind]}"
        ) from None
    if kind is AnswerKind.NUMBER3:
        raise ValueError(
            f"{path}: number3 tasks cannot be added; use binary/multiclass"
        )
    try:
        spec = TaskSpec(
            name=task["name"],
            group=task.get("group", "site"),
            answer_kind=kind,
            roi=task["roi"],
            questions=tuple(task["questions"]),
            classes=tuple(task.get("classes", _default_classes(kind))),
            description=task.get("description", task["name"]),
            uses_ct=bool(task.get("uses-ct", task["roi"] != "none")),
        )
        with_extra_tasks([spec])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return NewTask(
        spec,
        label_column=labels.get("column", spec.name),
        patient_id_column=labels.get("patient-id-column", "patient_id"),
        exam_id_column=labels.get("exam-id-column", "exam_id"),
    )


def registry_with(extra: list[TaskSpec]) -> Mapping[str, TaskSpec]:
    """The built-in registry, plus ``extra`` tasks when there are any."""
    return with_extra_tasks(extra) if extra else TASKS
