"""Outputs of ``m3fm-site adapt``: the adapted model, the shareable head, the CV table.

The shareable head (``head_<task>.pt`` + ``head_<task>.json``) holds only the new
head's tensors and the task spec with the cross-validated metric; no identifier or
patient value is in it, so a site can offer it to the consortium as an extra head.
When the fusion layers were fine-tuned with the head (``--train-fusion``), the model
and the shareable file carry the fine-tuned ``task_attention`` tensors too, and the
card says so: the model's answers to its other tasks then go through those layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from m3fm_model import M3FM, TASKS

from .model_io import LoadedModel, save_model
from .task_spec import NewTask, spec_to_dict


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def format_cv(task: str, report: Mapping[str, Any]) -> str:
    """The cross-validation table for the terminal."""
    w = max([38, *(len(name) + 2 for name in report["arms"])])
    lines = [
        f"{task}: {report['exams']} labelled exams of {report['patients']} patients, "
        f"classes {report['class_counts']}, {report['folds']}-fold CV by patient",
        f"{'arm':<{w}}{'pooled AUC':>11}{'fold mean':>11}{'fold sd':>9}",
    ]
    for name, got in report["arms"].items():
        lines.append(
            f"{name:<{w}}{_fmt(got['pooled']):>11}{_fmt(got['mean']):>11}{_fmt(got['sd']):>9}"
        )
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


FUSION_NOTE = (
    "The fusion layers (task_attention) were fine-tuned with the new task's head, so "
    "this model's answers to the other tasks now go through the fine-tuned fusion "
    "layers and may differ from those of the model it was adapted from."
)
FUSION_PREFIX = "task_attention."


def write_adapted(
    model: M3FM,
    base: LoadedModel,
    task: NewTask,
    report: Mapping[str, Any],
    out: Path,
    *,
    fusion_tuned: bool = False,
) -> list[Path]:
    """Write model.pt (+ card), the shareable head and adapt_report.json.

    Args:
        model: The adapted model (new head; fine-tuned fusion if ``fusion_tuned``).
        base: The loaded model it was adapted from.
        task: The new task.
        report: The cross-validation report (``adapt.cross_validate``).
        out: Output folder.
        fusion_tuned: The model's fusion layers were fine-tuned with the head: the
            card says so and the shareable file holds their tensors too.
    """
    name = task.spec.name
    extra = [s for n, s in base.registry.items() if n in base.tasks and n not in TASKS]
    card: dict[str, Any] = {
        "adapted-from": {"file": base.path.name, "sha256": base.sha256},
        "new-task": name,
        "cross-validation": _clean(dict(report)),
    }
    if fusion_tuned:
        card |= {"fusion-fine-tuned": True, "fusion-note": FUSION_NOTE}
    model_path = save_model(
        model, out, preset=base.preset, extra_tasks=[*extra, task.spec], card=card
    )
    head = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(f"heads.{name}.")
        or (fusion_tuned and k.startswith(FUSION_PREFIX))
    }
    head_path = out / f"head_{name}.pt"
    torch.save(head, head_path)
    spec_path = out / f"head_{name}.json"
    shared = {
        "task": spec_to_dict(task.spec),
        "preset": base.preset,
        "base-model-sha256": base.sha256,
        "cross-validation": _clean(
            {k: report[k] for k in ("metric", "exams", "folds")}
            | {"arms": {a: {"pooled": r["pooled"]} for a, r in report["arms"].items()}}
        ),
    }
    if fusion_tuned:
        shared["includes-fusion"] = True
    spec_path.write_text(json.dumps(shared, indent=1) + "\n", encoding="utf-8")
    report_path = out / "adapt_report.json"
    report_path.write_text(
        json.dumps(_clean(dict(report)), indent=1) + "\n", encoding="utf-8"
    )
    return [
        model_path,
        model_path.with_suffix(".card.json"),
        head_path,
        spec_path,
        report_path,
    ]
