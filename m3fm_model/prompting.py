"""Free-text prompting: route a question to a task and answer it for one exam.

A question is routed by similarity in the model's own question-encoder space: every
registry paraphrase is encoded once, and a new question goes to the task of its nearest
paraphrase when the cosine similarity clears a threshold and beats the best other task
by a margin. Anything else is refused with the list of known tasks, never guessed.
The space separates tasks once the text encoder has been trained with the routing
objective of ``m3fm_model.routing`` (part of site training); how far routing generalises
to wordings far from the registry depends on the text encoder's language knowledge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .m3fm import M3FM
from .routing import ROUTE_THRESHOLD, pooled_question_embedding
from .tasks import TASKS, AnswerKind, TaskSpec, decode_number3
from .tokenizer import TextTokenizer, load_tokenizer


class UnknownQuestionError(ValueError):
    """No task matches the question; the message lists the known tasks."""


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@dataclass(frozen=True)
class Route:
    """Where a question went: task, matched paraphrase, cosine score (1.0 = exact)."""

    task: str
    matched: str
    score: float
    margin: float


@dataclass
class Exam:
    """One exam's inputs for prompting.

    Attributes:
        ct: (1, S, H, W) crop in [-1, 1] at a crop size of the model, or None.
        spacing_mm: voxel spacing after resizing (slice, row, col), with ct.
        clinical_text: the clinical paragraph, or None.
    """

    ct: torch.Tensor | None = None
    spacing_mm: tuple[float, float, float] | None = None
    clinical_text: str | None = None


@dataclass
class Answer:
    """A model answer.

    Attributes:
        task: routed task.
        question: the question as asked.
        text: the answer in words.
        probabilities: class name -> probability (classification tasks).
        risk_by_year: six cumulative probabilities, year 1 first (6-year risk).
        number: the decoded number (clinical-number questions).
        route: how the question was routed.
    """

    task: str
    question: str
    text: str
    probabilities: dict[str, float] = field(default_factory=dict)
    risk_by_year: list[float] = field(default_factory=list)
    number: int | None = None
    route: Route | None = None


class QuestionRouter:
    """Routes free-text questions to tasks in a model's question-encoder space.

    Args:
        model: the model whose question encoder defines the space.
        tokenizer: tokenizer matching the model's vocabulary.
        registry: task registry (default ``TASKS``); only tasks with a head are used.
        threshold: minimum cosine similarity to the nearest paraphrase.
        margin: minimum lead of the best task over the second-best task.
    """

    def __init__(
        self,
        model: M3FM,
        tokenizer: TextTokenizer,
        *,
        registry: Mapping[str, TaskSpec] = TASKS,
        threshold: float = ROUTE_THRESHOLD,
        margin: float = 0.05,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.threshold, self.margin = threshold, margin
        self.specs = {t: registry[t] for t in model.tasks if t in registry}
        self.questions = [(t, q) for t, s in self.specs.items() for q in s.questions]
        self._exact = {_normalise(q): (t, q) for t, q in self.questions}
        self._bank = self.embed([q for _, q in self.questions])

    @torch.no_grad()
    def embed(self, questions: list[str]) -> torch.Tensor:
        """Unit-norm embeddings (N, Dt): mean-pooled question-encoder token states."""
        ids, mask = self.tokenizer.encode(
            questions, self.model.config.text.question_len
        )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        emb = pooled_question_embedding(self.model, ids.to(device), mask.to(device))
        self.model.train(was_training)
        return emb

    def known_tasks_message(self) -> str:
        """The known tasks with one example question each."""
        return "; ".join(f"{t}: '{s.questions[0]}'" for t, s in self.specs.items())

    def route(self, question: str) -> Route:
        """Route a question to a task.

        Raises:
            UnknownQuestionError: no task matches confidently.
        """
        if not question or not question.strip():
            raise UnknownQuestionError(
                "the question is empty; known tasks: " + self.known_tasks_message()
            )
        exact = self._exact.get(_normalise(question))
        if exact is not None:
            return Route(exact[0], exact[1], 1.0, 1.0)
        sims = (self._bank @ self.embed([question])[0]).tolist()
        best: dict[str, tuple[float, str]] = {}
        for (task, q), s in zip(self.questions, sims, strict=True):
            if task not in best or s > best[task][0]:
                best[task] = (s, q)
        ranked = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)
        (task, (score, matched)) = ranked[0]
        second = ranked[1][1][0] if len(ranked) > 1 else -1.0
        if score < self.threshold or score - second < self.margin:
            raise UnknownQuestionError(
                f"no task matches the question {question!r} (best: {task}, similarity "
                f"{score:.3f}, needed {self.threshold}); ask one of the known tasks: "
                + self.known_tasks_message()
            )
        return Route(task, matched, score, score - second)


def _describe(spec: TaskSpec, logits: torch.Tensor) -> Answer:
    kind = spec.answer_kind
    if kind == AnswerKind.HAZARD6:
        risk = logits.sigmoid().tolist()
        parts = ", ".join(f"{100 * r:.1f}% (year {i + 1})" for i, r in enumerate(risk))
        return Answer(
            spec.name, "", f"6-year lung cancer risk: {parts}", risk_by_year=risk
        )
    if kind == AnswerKind.NUMBER3:
        digits = logits.view(3, 10).argmax(-1).tolist()
        value = decode_number3(digits)
        return Answer(spec.name, "", f"{value}", number=value)
    probs = logits.softmax(-1).tolist()
    named = dict(zip(spec.classes, probs, strict=True))
    top = max(named, key=named.__getitem__)
    text = f"{spec.description.rstrip('.')}: {top} ({100 * named[top]:.1f}%)"
    return Answer(spec.name, "", text, probabilities=named)


@torch.no_grad()
def answer(
    model: M3FM,
    exam: Exam,
    question: str,
    *,
    tokenizer: TextTokenizer | None = None,
    router: QuestionRouter | None = None,
) -> Answer:
    """Answer a free-text question about one exam.

    Args:
        model: the model.
        exam: the exam's CT crop and/or clinical paragraph.
        question: free text; routed to a task (see ``QuestionRouter``).
        tokenizer: tokenizer of the model's vocabulary (default: the shipped one).
        router: a prepared router (built on demand otherwise).

    Returns:
        The answer in words and numbers.

    Raises:
        UnknownQuestionError: the question matches no task.
        ValueError: the exam lacks the input the task needs (e.g. no CT and no text).
    """
    if tokenizer is None:
        tokenizer = router.tokenizer if router is not None else load_tokenizer()
    router = router or QuestionRouter(model, tokenizer)
    route = router.route(question)
    spec = router.specs[route.task]
    if exam.ct is None and exam.clinical_text is None:
        raise ValueError(
            "the exam has neither a CT crop nor clinical text; give at least one"
        )
    device = next(model.parameters()).device
    q_ids, q_mask = tokenizer.encode([question], model.config.text.question_len)
    kw: dict[str, torch.Tensor] = {
        "question_ids": q_ids.to(device),
        "question_mask": q_mask.to(device),
    }
    if exam.ct is not None and spec.uses_ct:
        if exam.spacing_mm is None:
            raise ValueError("exam.spacing_mm is required with exam.ct")
        kw["ct"] = exam.ct[None].to(device)
        kw["spacing_mm"] = torch.tensor(
            [exam.spacing_mm], dtype=torch.float32, device=device
        )
    if exam.clinical_text is not None:
        t_ids, t_mask = tokenizer.encode(
            [exam.clinical_text], model.config.text.clinical_len
        )
        kw["text_ids"], kw["text_mask"] = t_ids.to(device), t_mask.to(device)
    model.eval()
    logits = model(**kw, tasks=[route.task]).logits[route.task][0].float().cpu()
    result = _describe(spec, logits)
    result.question, result.route = question, route
    return result
