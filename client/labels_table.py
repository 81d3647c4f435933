"""Site labels table -> per-task training targets, per exam.

Binary tasks accept 0/1/yes/no/true/false; multi-class tasks a class name of the task
registry (case-insensitive) or its index; the 6-year cancer risk its event year (empty =
no event) and follow-up years, turned into 6 targets and an observed mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3fm_model.losses import cancer_risk_targets
from m3fm_model.tasks import TASKS, AnswerKind, TaskSpec

from .site_config import CancerRiskColumns, TableSource
from .tables import (
    RowIssue,
    cell_text,
    id_columns,
    keyed_rows,
    read_table,
    require_columns,
)

_TRUE = {"1", "yes", "true", "y", "positive"}
_FALSE = {"0", "no", "false", "n", "negative"}


@dataclass(frozen=True)
class HazardTarget:
    """6-year risk targets (year 1 first) and which years are observed."""

    targets: tuple[float, ...]
    observed: tuple[bool, ...]


Label = int | HazardTarget


def _class_label(spec: TaskSpec, text: str) -> int:
    low = text.strip().lower()
    if spec.answer_kind == AnswerKind.BINARY:
        if low in _TRUE:
            return 1
        if low in _FALSE:
            return 0
        raise ValueError(f"expected 0/1 or yes/no for {spec.name}")
    names = [c.lower() for c in spec.classes]
    if low in names:
        return names.index(low)
    if low.isdigit() and int(low) < len(names):
        return int(low)
    raise ValueError(f"expected one of {list(spec.classes)} for {spec.name}")


def _hazard_label(
    row: dict[str, object], cols: CancerRiskColumns
) -> HazardTarget | None:
    follow = cell_text(row.get(cols.followup_years))
    event = cell_text(row.get(cols.event_year))
    if follow is None and event is None:
        return None
    event_year = float(event) if event is not None else None
    if follow is None:
        raise ValueError(f"follow-up years ({cols.followup_years}) missing")
    targets, observed = cancer_risk_targets(event_year, float(follow))
    return HazardTarget(
        tuple(float(t) for t in targets), tuple(bool(o) for o in observed)
    )


def _row_labels(
    row: dict[str, object], src: TableSource, issues: list[RowIssue], i: int
) -> dict[str, Label]:
    labels: dict[str, Label] = {}
    for task, col in src.columns.items():
        spec = TASKS[task]
        try:
            if isinstance(col, CancerRiskColumns):
                target = _hazard_label(row, col)
                if target is not None:
                    labels[task] = target
                continue
            text = cell_text(row.get(col))
            if text is not None:
                labels[task] = _class_label(spec, text)
        except ValueError as err:
            ids = (src.patient_id_column, src.exam_id_column)
            row_id = "/".join(str(cell_text(row.get(c)) or "") for c in ids if c)
            issues.append(
                RowIssue(
                    "invalid_label",
                    str(src.path),
                    i,
                    task,
                    f"{err}; label omitted",
                    row_id=row_id,
                )
            )
    return labels


def load_labels_table(
    src: TableSource,
) -> tuple[dict[tuple[str, str | None], dict[str, Label]], list[RowIssue]]:
    """Read the labels table.

    Returns:
        (patient_id, exam_id or None) -> {task: label}, and the row issues.

    Raises:
        TableError: unreadable table or a configured column missing.
    """
    frame = read_table(src.path)
    cols: list[str] = []
    for col in src.columns.values():
        cols += (
            [col.event_year, col.followup_years]
            if isinstance(col, CancerRiskColumns)
            else [col]
        )
    require_columns(frame, src.path, id_columns(src) + cols, "[labels]")
    out: dict[tuple[str, str | None], dict[str, Label]] = {}
    issues: list[RowIssue] = []
    for i, pid, eid, row in keyed_rows(frame, src, issues):
        out[(pid, eid)] = _row_labels(row, src, issues, i)
    return out, issues
