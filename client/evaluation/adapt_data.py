"""Inputs of a new task's adaptation: labelled exams, their model features, clinical matrix.

Labels come from a site table keyed by the pseudonymous (patient, exam) IDs and are
joined with the site's prepared manifest (crops and clinical records). With the trunk
frozen, an exam's fused task-token embedding for the task's canonical question is fixed,
so it is computed once per exam and the head trains on these features. When the fusion
layers train too (``--train-fusion``), the encoders stay frozen: their outputs per exam
(``encode_exams``) are computed once and the fusion layers run on them at every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3fm_model import M3FM
from m3fm_model.clinical import CLINICAL_FIELDS, FieldKind
from m3fm_model.tasks import AnswerKind, TaskSpec

from ..cache import CacheKey, ExamCache
from ..site_dataset import default_tokenizer
from ..tables import cell_text, read_table
from .task_spec import NewTask

_TRUE = {"1", "yes", "true", "y"}
_FALSE = {"0", "no", "false", "n"}


@dataclass
class LabelledExams:
    """Manifest exams with a label of the new task.

    Attributes:
        exams: Manifest entries (crops, clinical record, IDs).
        labels: (N,) class index per exam.
        patients: (N,) patient ID per exam (cross-validation groups).
    """

    exams: list[dict[str, Any]]
    labels: np.ndarray
    patients: np.ndarray

    def subset(self, idx: Sequence[int]) -> LabelledExams:
        """The exams at ``idx``."""
        return LabelledExams(
            [self.exams[i] for i in idx],
            self.labels[list(idx)],
            self.patients[list(idx)],
        )


def _label_index(spec: TaskSpec, text: str, where: str) -> int:
    if spec.answer_kind is AnswerKind.BINARY:
        if text.lower() in _TRUE:
            return 1
        if text.lower() in _FALSE:
            return 0
    elif text in spec.classes:
        return spec.classes.index(text)
    allowed = (
        "0/1 (or yes/no)" if spec.answer_kind is AnswerKind.BINARY else spec.classes
    )
    raise ValueError(f"{where}: label {text!r} is not one of {allowed}")


def load_labelled_exams(
    task: NewTask, labels_path: str | Path, manifest: Sequence[Mapping[str, Any]]
) -> LabelledExams:
    """Join the new task's labels table with the prepared manifest.

    Raises:
        ValueError: a missing column (named with the columns found), a bad label
            (file and row named), or no label matching a prepared exam.
    """
    path = Path(labels_path)
    frame = read_table(path)
    cols = (task.patient_id_column, task.exam_id_column, task.label_column)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(
            f"labels table {path} lacks columns {missing} (has {list(frame.columns)}); "
            "set [labels] column / patient-id-column / exam-id-column in the task file"
        )
    by_id = {(str(e["patient_id"]), str(e["exam_id"])): e for e in manifest}
    exams, labels = [], []
    for i, row in enumerate(frame.to_dict("records")):
        text = cell_text(row[task.label_column])
        key = (cell_text(row[cols[0]]) or "", cell_text(row[cols[1]]) or "")
        if text is None or key not in by_id:
            continue
        labels.append(_label_index(task.spec, text, f"{path} row {i + 2}"))
        exams.append(dict(by_id[key]))
    if not exams:
        raise ValueError(
            f"no row of {path} matches a prepared exam of this site; check the ID "
            "columns and run m3fm-site prepare"
        )
    patients = np.array([str(e["patient_id"]) for e in exams])
    return LabelledExams(exams, np.array(labels, dtype=int), patients)


@dataclass
class ExamInputs:
    """One exam's model inputs for a task's first question (batch of one).

    Attributes:
        question_ids: (1, Lq) token ids of the question.
        question_mask: (1, Lq) True = real question token.
        text_ids: (1, L) clinical-text token ids, or None when the exam has no text.
        text_mask: (1, L) True = real text token, or None.
        ct: (1, Z, Y, X) CT crop of the task's region, or None.
        spacing_mm: (1, 3) voxel spacing of the crop, or None.
    """

    question_ids: torch.Tensor
    question_mask: torch.Tensor
    text_ids: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    ct: torch.Tensor | None = None
    spacing_mm: torch.Tensor | None = None


@dataclass
class EncodedExam:
    """The frozen encoders' outputs of one exam, as ``model.task_attention`` takes them.

    Attributes:
        question_state: (1, Dt) first-token state of the question (text encoder);
            ``task_attention.task_token`` turns it into the task token.
        ct: (1, 1 + N, Di) CT tokens, or None when the exam has no CT.
        text: (1, L, Dt) clinical-text states, or None when the exam has no text.
        text_mask: (1, L) True = real text token, or None.
    """

    question_state: torch.Tensor
    ct: torch.Tensor | None
    text: torch.Tensor | None
    text_mask: torch.Tensor | None


def exam_inputs(
    model: M3FM, spec: TaskSpec, exams: Sequence[Mapping[str, Any]], cache: ExamCache
) -> list[ExamInputs]:
    """Per exam: the task's first question, clinical text and CT crop (if cached).

    Raises:
        ValueError: an exam with neither a cached CT crop nor clinical text.
    """
    tok = default_tokenizer()
    cfg = model.config
    q_ids, q_mask = tok.encode([spec.questions[0]], cfg.text.question_len)
    texts = [e.get("clinical_text") or None for e in exams]
    t_ids, t_mask = tok.encode(texts, cfg.text.clinical_len)
    out = []
    for i, exam in enumerate(exams):
        got = ExamInputs(q_ids, q_mask)
        if bool(t_mask[i].any()):
            got.text_ids, got.text_mask = t_ids[i : i + 1], t_mask[i : i + 1]
        entry = (exam.get("crops") or {}).get(spec.roi) if spec.uses_ct else None
        cached = cache.get(CacheKey(**entry["key"])) if entry else None
        if cached is not None:
            got.ct = torch.from_numpy(np.array(cached.crop, dtype=np.float32))[None]
            got.spacing_mm = torch.tensor([entry["spacing_mm"]])
        if got.ct is None and got.text_ids is None:
            raise ValueError(f"exam {i} of the labelled set has neither CT nor text")
        out.append(got)
    return out


@torch.no_grad()
def task_features(
    model: M3FM, spec: TaskSpec, exams: Sequence[Mapping[str, Any]], cache: ExamCache
) -> torch.Tensor:
    """(N, D) fused task-token embeddings of the exams for the task's first question."""
    model.eval()
    out = []
    for x in exam_inputs(model, spec, exams, cache):
        kw: dict[str, torch.Tensor] = {
            "question_ids": x.question_ids,
            "question_mask": x.question_mask,
        }
        if x.text_ids is not None and x.text_mask is not None:
            kw |= {"text_ids": x.text_ids, "text_mask": x.text_mask}
        if x.ct is not None and x.spacing_mm is not None:
            kw |= {"ct": x.ct, "spacing_mm": x.spacing_mm}
        out.append(model.forward_features(**kw)[0])
    return torch.cat(out).float()


@torch.no_grad()
def encode_exams(
    model: M3FM, spec: TaskSpec, exams: Sequence[Mapping[str, Any]], cache: ExamCache
) -> list[EncodedExam]:
    """The frozen encoders' outputs per exam (the inputs of ``model.task_attention``).

    ``model.task_attention(model.task_attention.task_token(e.question_state), e.ct,
    None, e.text, e.text_mask)`` gives the
    same fused embedding as ``task_features``; fine-tuning the fusion layers reuses
    these outputs instead of running the encoders at every step.
    """
    model.eval()
    out: list[EncodedExam] = []
    question_state: torch.Tensor | None = None
    for x in exam_inputs(model, spec, exams, cache):
        if question_state is None:  # one question for every exam
            states = model.text_encoder(x.question_ids, x.question_mask)
            question_state = states[:, 0]
        text = None
        if x.text_ids is not None and x.text_mask is not None:
            text = model.text_encoder(x.text_ids, x.text_mask)
        ct = None
        if x.ct is not None and x.spacing_mm is not None:
            ct = model.ct_encoder(x.ct, x.spacing_mm)
        out.append(
            EncodedExam(
                question_state=question_state,
                ct=ct,
                text=text,
                text_mask=x.text_mask if text is not None else None,
            )
        )
    return out


def clinical_matrix(exams: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Clinical variables as numbers: values, flags 0/1, one-hot categories, NaN if absent."""
    columns: list[np.ndarray] = []
    records = [e.get("clinical_record") or {} for e in exams]
    for name, fld in CLINICAL_FIELDS.items():
        values = [r.get(name) for r in records]
        if fld.kind is FieldKind.CATEGORY:
            for option in fld.allowed:
                columns.append(np.array([float(v == option) for v in values]))
        elif fld.kind is FieldKind.NUMBER:
            columns.append(
                np.array([np.nan if v is None else float(v) for v in values])
            )
        else:  # flags and disease histories: present or not
            columns.append(np.array([float(v not in (None, False)) for v in values]))
    return np.stack(columns, axis=1)
