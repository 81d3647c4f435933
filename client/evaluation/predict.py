"""``m3fm-site predict``: answer a free-text question about one exam.

The question is routed to a task in the model's question space (an unknown question
is refused with the known tasks and an example question each), the exam's crop for
that task's region and/or its clinical paragraph go through the model, and the answer
comes back in words and numbers, plus a JSON record
``{"task", "question", "answer": {...}}``.
"""

from __future__ import annotations

from typing import Any

import torch

from m3fm_model.prompting import Answer, Exam, QuestionRouter, answer
from m3fm_model.tasks import AnswerKind, TaskSpec

from ..site_dataset import default_tokenizer
from .exam_input import ExamInputs
from .model_io import LoadedModel


def exam_for_task(spec: TaskSpec, inputs: ExamInputs) -> Exam:
    """The model inputs a task reads from an exam.

    Raises:
        ValueError: the exam lacks everything the task can read.
    """
    ct = spacing = None
    if spec.uses_ct and spec.roi in inputs.crops:
        ct, spacing = inputs.crops[spec.roi]
    if ct is None and inputs.text is None:
        needs = "the clinical text" if not spec.uses_ct else "a CT or clinical data"
        raise ValueError(f"task {spec.name} needs {needs}; give --clinical or --exam")
    return Exam(ct=ct, spacing_mm=spacing, clinical_text=inputs.text)


def answer_json(spec: TaskSpec, ans: Answer) -> dict[str, Any]:
    """The ``answer`` object of the JSON record."""
    out: dict[str, Any] = {"text": ans.text}
    if spec.answer_kind is AnswerKind.HAZARD6:
        out["risk_by_year"] = [float(r) for r in ans.risk_by_year]
    elif spec.answer_kind is AnswerKind.NUMBER3:
        out["number"] = ans.number
    else:
        out["probabilities"] = {k: float(v) for k, v in ans.probabilities.items()}
        out["label"] = max(ans.probabilities, key=ans.probabilities.__getitem__)
    return out


@torch.no_grad()
def predict_exam(
    loaded: LoadedModel, inputs: ExamInputs, question: str
) -> tuple[Answer, dict[str, Any]]:
    """Route the question, run the model on the exam, describe the answer.

    Args:
        loaded: The model.
        inputs: The exam (``exam_input.load_exam``).
        question: Free text.

    Returns:
        The answer and its JSON record.

    Raises:
        m3fm_model.UnknownQuestionError: no task matches (known tasks listed).
        ValueError: the exam lacks the input the task reads.
    """
    tokenizer = default_tokenizer()
    router = QuestionRouter(loaded.model, tokenizer, registry=loaded.registry)
    route = router.route(question)
    spec = loaded.registry[route.task]
    exam = exam_for_task(spec, inputs)
    ans = answer(loaded.model, exam, question, tokenizer=tokenizer, router=router)
    record = {
        "task": ans.task,
        "question": question,
        "answer": answer_json(spec, ans),
        "route": {"matched_question": route.matched, "similarity": route.score},
        "inputs": {
            "ct_region": spec.roi if exam.ct is not None else None,
            "clinical_fields": list(inputs.record),
        },
        "model": {
            "file": loaded.path.name,
            "sha256": loaded.sha256,
            "preset": loaded.preset,
        },
    }
    return ans, record
