"""Typed examples and batches of the site dataset, and their collation by crop size.

The CT encoder takes one crop size per forward pass, but lung and heart crops differ in
size and DP-SGD samples examples from the whole dataset (Poisson). So ``collate_parts``
splits a batch into parts, one per crop size among the examples that show a CT plus one
part without CT (text-only tasks, auxiliary questions, CT dropped by modality dropout).
Every example lands in exactly one part; the trainer runs one forward/backward per part
and concatenates per-sample gradients. A per-bucket batch sampler would break the
Poisson sampling the privacy accountant assumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from m3fm_model.tasks import TASKS, AnswerKind

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One question-answer example.

    Attributes:
        index: Position in the dataset.
        task: Task answered (a ``TASKS`` key).
        question_ids: (Lq,) question token ids.
        question_mask: (Lq,) True = token.
        text_ids: (Lt,) clinical-text ids.
        text_mask: (Lt,) True = token; all False = no clinical text.
        ct: (1, S, H, W) float32 crop in [-1, 1], or None (no CT shown).
        spacing_mm: (3,) spacing of the crop, or None.
        target: The answer: class index (binary/multiclass), digits (number3) or
            {"targets": 6 floats, "observed": 6 bools} (hazard6).
    """

    index: int
    task: str
    question_ids: torch.Tensor
    question_mask: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    ct: torch.Tensor | None
    spacing_mm: torch.Tensor | None
    target: Any

    @property
    def crop(self) -> tuple[int, ...] | None:
        """(S, H, W) of the CT shown, None without CT."""
        return None if self.ct is None else tuple(self.ct.shape[1:])


@dataclass
class M3FMBatch:
    """A batch of examples sharing one crop size (or showing no CT).

    Attributes:
        question_ids: (B, Lq) long.
        question_mask: (B, Lq) bool, True = token.
        text_ids: (B, Lt) long; rows without text are all pad.
        text_mask: (B, Lt) bool; all False = no clinical text.
        ct: (B, 1, S, H, W) float32, or None when no example shows a CT.
        spacing_mm: (B, 3) float32, or None with ``ct``.
        ct_present: (B,) bool, False = that row's CT is hidden (zeros).
        targets: Task -> labels in ``m3fm_model.losses.multitask_loss`` format; rows
            of other tasks are ignored (-100) or unobserved (False).
        tasks: Tasks present in the batch (heads to evaluate), registry order.
        example_tasks: The task of each row.
        indices: (B,) dataset index of each row.
    """

    question_ids: torch.Tensor
    question_mask: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    ct: torch.Tensor | None
    spacing_mm: torch.Tensor | None
    ct_present: torch.Tensor
    targets: dict[str, dict[str, torch.Tensor]]
    tasks: tuple[str, ...]
    example_tasks: tuple[str, ...]
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.question_ids.shape[0])

    def to(self, device: torch.device | str) -> M3FMBatch:
        """A copy with every tensor on ``device``."""

        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return M3FMBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``M3FM.forward`` (absent modalities left out)."""
        kw = {"question_ids": self.question_ids, "question_mask": self.question_mask}
        if bool(self.text_mask.any()):
            kw |= {"text_ids": self.text_ids, "text_mask": self.text_mask}
        if self.ct is not None:
            kw |= {"ct": self.ct, "spacing_mm": self.spacing_mm}
            kw["ct_present"] = self.ct_present
        return kw


def _task_targets(examples: Sequence[Example], task: str) -> dict[str, torch.Tensor]:
    """One task's target tensors over all rows (other tasks' rows masked)."""
    b, kind = len(examples), TASKS[task].answer_kind
    rows = [i for i, e in enumerate(examples) if e.task == task]
    if kind is AnswerKind.HAZARD6:
        targets, observed = torch.zeros(b, 6), torch.zeros(b, 6, dtype=torch.bool)
        for i in rows:
            targets[i] = torch.tensor(examples[i].target["targets"], dtype=torch.float)
            observed[i] = torch.tensor(examples[i].target["observed"], dtype=torch.bool)
        return {"targets": targets, "observed": observed}
    if kind is AnswerKind.NUMBER3:
        digits = torch.full((b, 3), IGNORE_INDEX, dtype=torch.long)
        for i in rows:
            digits[i] = torch.tensor(examples[i].target, dtype=torch.long)
        return {"digits": digits}
    target = torch.full((b,), IGNORE_INDEX, dtype=torch.long)
    for i in rows:
        target[i] = int(examples[i].target)
    return {"target": target}


def collate_examples(examples: Sequence[Example]) -> M3FMBatch:
    """Stack examples into a batch; those showing a CT must share its crop size.

    Rows without CT in a batch with CT get a zero volume and ``ct_present`` False.

    Raises:
        ValueError: For an empty list or mixed crop sizes (use ``collate_parts``).
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    crops = {e.crop for e in examples if e.ct is not None}
    if len(crops) > 1:
        raise ValueError(f"examples mix crop sizes {sorted(crops)}; use collate_parts")
    ct = spacing = None
    present = torch.tensor([e.ct is not None for e in examples])
    if crops:
        crop = crops.pop()
        ct = torch.stack(
            [e.ct if e.ct is not None else torch.zeros(1, *crop) for e in examples]
        )
        spacing = torch.stack(
            [e.spacing_mm if e.ct is not None else torch.ones(3) for e in examples]
        )
    present_tasks = {e.task for e in examples}
    tasks = tuple(t for t in TASKS if t in present_tasks)
    return M3FMBatch(
        question_ids=torch.stack([e.question_ids for e in examples]),
        question_mask=torch.stack([e.question_mask for e in examples]),
        text_ids=torch.stack([e.text_ids for e in examples]),
        text_mask=torch.stack([e.text_mask for e in examples]),
        ct=ct,
        spacing_mm=spacing,
        ct_present=present,
        targets={t: _task_targets(examples, t) for t in tasks},
        tasks=tasks,
        example_tasks=tuple(e.task for e in examples),
        indices=torch.tensor([e.index for e in examples], dtype=torch.long),
    )


def collate_parts(examples: Sequence[Example]) -> list[M3FMBatch]:
    """Split a (Poisson-sampled) batch by crop size: one part per size + one without CT.

    Args:
        examples: Any examples; an empty list (an empty Poisson batch) gives [].

    Returns:
        The parts, CT parts by crop size first, the part without CT last.
    """
    groups: dict[tuple[int, ...] | None, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.crop, []).append(example)
    keys = sorted((k for k in groups if k is not None), key=str)
    keys += [None] if None in groups else []
    return [collate_examples(groups[k]) for k in keys]
