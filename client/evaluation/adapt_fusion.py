"""Fine-tuning of the fusion layers together with a new task's head (``--train-fusion``).

The CT and text encoders stay frozen: their outputs per exam are computed once
(``adapt_data.encode_exams``) and only deep copies of ``model.task_attention`` (the
question projection, registers and fusion blocks) and of the new head train on them,
with mini-batches of exams and class-weighted cross-entropy. Exams of one batch may
differ in which inputs they have (CT, clinical text), so a batch is fused in groups of
exams with the same inputs and the rows are put back in order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3fm_model import M3FM

from .adapt_data import EncodedExam

if TYPE_CHECKING:
    from .adapt import AdaptOptions

_PREDICT_CHUNK = 64


def _shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if t is None else tuple(t.shape[1:])


def fuse(
    fusion: nn.Module, encoded: Sequence[EncodedExam], idx: Sequence[int]
) -> torch.Tensor:
    """(len(idx), D) fused task-token embeddings of the exams at ``idx``.

    Exams with the same inputs (CT or not, text or not, same token shapes) are fused
    as one batch; the others are not padded into it.
    """
    groups: dict[tuple[object, object], list[int]] = {}
    for pos, i in enumerate(idx):
        e = encoded[i]
        groups.setdefault((_shape(e.ct), _shape(e.text)), []).append(pos)
    rows: list[torch.Tensor | None] = [None] * len(idx)
    for (ct_shape, text_shape), positions in groups.items():
        members = [encoded[idx[p]] for p in positions]
        token = fusion.task_token(torch.cat([e.question_state for e in members]))
        ct = text = text_mask = None
        if ct_shape is not None:
            ct = torch.cat([e.ct for e in members if e.ct is not None])
        if text_shape is not None:
            text = torch.cat([e.text for e in members if e.text is not None])
            text_mask = torch.cat(
                [e.text_mask for e in members if e.text_mask is not None]
            )
        fused = fusion(token, ct, None, text, text_mask)[0]
        for p, row in zip(positions, fused, strict=True):
            rows[p] = row
    return torch.stack([r for r in rows if r is not None])


def class_weight(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Cross-entropy weights: total / (classes x class count); 0 for absent classes."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    return torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0)


def fit_fusion(
    model: M3FM,
    task_name: str,
    encoded: Sequence[EncodedExam],
    labels: np.ndarray,
    opts: AdaptOptions,
) -> tuple[nn.Module, nn.Module]:
    """Train copies of ``model.task_attention`` and the task's head together.

    Args:
        model: The model with the new task's (untrained) head; it is not modified.
        task_name: The new task.
        encoded: The frozen encoders' outputs of the training exams.
        labels: (N,) class index per exam.
        opts: ``fusion_steps`` mini-batches of ``fusion_batch`` exams (drawn with a
            generator seeded by ``seed``), AdamW with ``lr`` for the head,
            ``fusion_lr`` for the fusion layers and ``weight_decay``.

    Returns:
        The trained fusion layers and head (both in eval mode).
    """
    if len(encoded) != len(labels):
        raise ValueError(f"{len(encoded)} encoded exams but {len(labels)} labels")
    fusion = copy.deepcopy(model.task_attention).train().requires_grad_(True)
    head = copy.deepcopy(model.heads[task_name]).train().requires_grad_(True)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = class_weight(y, head.num_outputs)
    opt = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": opts.lr},
            {"params": fusion.parameters(), "lr": opts.fusion_lr},
        ],
        weight_decay=opts.weight_decay,
    )
    gen = torch.Generator().manual_seed(opts.seed)
    batch = max(1, min(opts.fusion_batch, len(encoded)))
    for _ in range(opts.fusion_steps):
        idx = torch.randperm(len(encoded), generator=gen)[:batch].tolist()
        opt.zero_grad()
        logits = head(fuse(fusion, encoded, idx))
        F.cross_entropy(logits, y[idx], weight=weight).backward()
        opt.step()
    return fusion.eval(), head.eval()


@torch.no_grad()
def predict_fusion(
    fusion: nn.Module, head: nn.Module, encoded: Sequence[EncodedExam]
) -> np.ndarray:
    """(N, C) class probabilities of the exams through ``fusion`` and ``head``."""
    fusion.eval()
    head.eval()
    out = []
    for start in range(0, len(encoded), _PREDICT_CHUNK):
        idx = list(range(start, min(start + _PREDICT_CHUNK, len(encoded))))
        out.append(head(fuse(fusion, encoded, idx)).softmax(-1))
    return torch.cat(out).float().numpy()
