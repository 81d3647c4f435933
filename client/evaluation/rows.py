"""Run a model over a prepared split and keep, per task, each row's exam.

Like ``client.train.predict_split`` but every output row keeps the dataset index of
its example, so metrics can resample patients and break results down by subgroup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from m3fm_model import M3FM

from ..site_batch import collate_parts
from ..site_dataset import SiteDataset
from ..train import resolve_device

Progress = Callable[[Iterable[Any], int], Iterable[Any]]


@dataclass
class TaskRows:
    """One task's rows of a split, in dataset order.

    Attributes:
        outputs: (n, C) logits, (n, 6) cumulative logits for the 6-year risk.
        targets: {"target": (n,)} or {"targets": (n, 6), "observed": (n, 6)}.
        exams: (n,) position of each row's exam in ``SiteDataset.exams``.
    """

    outputs: np.ndarray
    targets: dict[str, np.ndarray]
    exams: np.ndarray


@torch.no_grad()
def predict_rows(
    model: M3FM,
    data: SiteDataset,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, TaskRows]:
    """Model outputs for every example of ``data`` (canonical question, no dropout).

    Args:
        model: The model (put in eval mode).
        data: The split.
        device: Where to run.
        batch_size: Examples per batch.
        progress: Wraps the batch iterator (e.g. a progress bar), given its length.

    Returns:
        Task -> rows, for the tasks with examples.
    """
    dev = resolve_device(device)
    view = data.with_options(augment=False)
    loader = DataLoader(view, batch_size=batch_size, collate_fn=collate_parts)
    batches: Iterable[Any] = (
        loader if progress is None else progress(loader, len(loader))
    )
    got: dict[str, dict[str, list[np.ndarray]]] = {}
    model.to(dev).eval()
    for parts in batches:
        for part in parts:
            logits = model(**part.to(dev).model_inputs(), tasks=part.tasks).logits
            for task in part.tasks:
                keep = torch.tensor([t == task for t in part.example_tasks])
                acc = got.setdefault(task, {"outputs": [], "index": []})
                acc["outputs"].append(logits[task].float().cpu()[keep].numpy())
                acc["index"].append(part.indices[keep].numpy())
                for key, value in part.targets[task].items():
                    acc.setdefault(key, []).append(value[keep].numpy())
    entries = data.entries
    out = {}
    for task, acc in got.items():
        index = np.concatenate(acc["index"])
        order = np.argsort(index, kind="stable")
        targets = {
            k: np.concatenate(v)[order]
            for k, v in acc.items()
            if k not in ("outputs", "index")
        }
        exams = np.array([entries[i][0] for i in index[order]], dtype=int)
        out[task] = TaskRows(np.concatenate(acc["outputs"])[order], targets, exams)
    return out
