"""``m3fm-site evaluate``: every task's metrics with 95% CIs, by subgroup, per model.

The site's prepared split is run through each model; each task the site labels gets
the metric suite of ``stats`` with patient-level bootstrap intervals (the same
resamples for every model, so models compare side by side), plus the same for each
subgroup of the named fields. Results go to ``metrics.json`` and ``report.html``
in the output folder and to a table in the terminal. No patient identifier is
written: rows are only counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3fm_model.tasks import AnswerKind

from ..site_config import SiteConfig
from ..site_dataset import SiteDataset, build_site_dataset
from . import stats, subgroups
from .model_io import LoadedModel, check_site_tasks
from .rows import Progress, TaskRows, predict_rows

HEADLINE = {AnswerKind.HAZARD6: "cindex"}


@dataclass(frozen=True)
class EvalOptions:
    """What to compute.

    Attributes:
        split: Split of the site's manifest ("train", "val" or "test").
        n_boot: Bootstrap resamples per estimate.
        alpha: 1 - confidence level.
        specificity: Specificity at which sensitivity is reported.
        subgroups: Subgroup fields (see ``subgroups``).
        seed: Bootstrap seed.
        batch_size: Examples per forward pass.
        device: Where the models run.
    """

    split: str = "test"
    n_boot: int = 1000
    alpha: float = 0.05
    specificity: float = 0.9
    subgroups: tuple[str, ...] = ("gender", "age")
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"


def _metric_fns(
    kind: AnswerKind, rows: TaskRows, specificity: float
) -> dict[str, stats.Metric]:
    if kind is AnswerKind.HAZARD6:
        t = rows.targets
        return stats.hazard_metrics(rows.outputs, t["targets"], t["observed"])
    probs = stats.softmax(rows.outputs)
    labels = rows.targets["target"].astype(int)
    return stats.class_metrics(kind, probs, labels, specificity)


def _estimates(
    fns: Mapping[str, stats.Metric],
    plan: list[np.ndarray],
    rows: np.ndarray,
    alpha: float,
) -> dict[str, dict[str, float | None]]:
    return {k: stats.bootstrap(f, plan, rows, alpha).as_dict() for k, f in fns.items()}


def _subplan(patients: np.ndarray, rows: np.ndarray, opts: EvalOptions) -> list:
    return [
        rows[p] for p in stats.resample_plan(patients[rows], opts.n_boot, opts.seed)
    ]


def _task_result(
    task: str,
    kind: AnswerKind,
    per_model: Mapping[str, TaskRows],
    exams: Sequence[Mapping[str, Any]],
    groups: Mapping[str, Mapping[str, str]],
    opts: EvalOptions,
) -> dict[str, Any]:
    first = next(iter(per_model.values()))
    for name, rows in per_model.items():
        if not np.array_equal(rows.exams, first.exams):
            raise ValueError(f"model {name} saw other {task} rows than the others")
    task_exams = [exams[i] for i in first.exams]
    patients = np.array([str(e.get("patient_id")) for e in task_exams])
    everyone = np.arange(len(task_exams))
    plan = _subplan(patients, everyone, opts)
    levels = {
        f: np.array(subgroups.assign(task_exams, f, groups)) for f in opts.subgroups
    }
    result: dict[str, Any] = {
        "kind": kind.value,
        "n": len(task_exams),
        "patients": len(set(patients)),
        "models": {},
    }
    if kind is not AnswerKind.HAZARD6:
        labels = first.targets["target"].astype(int)
        result["class_counts"] = np.bincount(
            labels, minlength=first.outputs.shape[1]
        ).tolist()
    else:
        result["events"] = int(
            (first.targets["targets"] * first.targets["observed"]).max(axis=1).sum()
        )
    for name, rows in per_model.items():
        fns = _metric_fns(kind, rows, opts.specificity)
        entry: dict[str, Any] = {"overall": _estimates(fns, plan, everyone, opts.alpha)}
        entry["subgroups"] = {}
        for field, level_of in levels.items():
            entry["subgroups"][field] = {}
            for level in sorted(set(level_of)):
                sub = np.flatnonzero(level_of == level)
                got = _estimates(fns, _subplan(patients, sub, opts), sub, opts.alpha)
                entry["subgroups"][field][level] = {"n": int(sub.size), **got}
        entry["curves"] = stats.curves(kind, rows.outputs, rows.targets)
        result["models"][name] = entry
    return result


def evaluate_site(
    cfg: SiteConfig,
    models: Sequence[LoadedModel],
    opts: EvalOptions,
    *,
    groups: Mapping[str, Mapping[str, str]] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate models on a prepared split of the site.

    Args:
        cfg: The site config.
        models: The models; the first is the reference, the others are compared.
        opts: Options.
        groups: Exam ID -> extra subgroup columns (``subgroups.load_groups_table``).
        progress: Wraps each model's batch iterator (a progress bar).

    Returns:
        The ``metrics.json`` payload (task -> model -> overall, subgroups, curves).

    Raises:
        ValueError: a model without heads for the site's tasks, an unprepared site,
            duplicate model names or an unknown subgroup field.
    """
    groups = groups or {}
    subgroups.check_fields(opts.subgroups, groups)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"models need distinct names, got {names}")
    start = time.perf_counter()
    datasets: dict[str, SiteDataset] = {}
    preds: dict[str, dict[str, TaskRows]] = {}
    for loaded in models:
        check_site_tasks(loaded, cfg.tasks)
        if loaded.preset not in datasets:
            datasets[loaded.preset] = build_site_dataset(
                cfg, loaded.preset, opts.split, augment=False, auxiliary=False
            )
        torch.set_num_threads(max(1, cfg.compute.threads))
        preds[loaded.name] = predict_rows(
            loaded.model, datasets[loaded.preset], device=opts.device,
            batch_size=opts.batch_size, progress=progress,
        )  # fmt: skip
    predicted = time.perf_counter()
    exams = next(iter(datasets.values())).exams
    tasks: dict[str, Any] = {}
    for task in cfg.tasks:
        per_model = {n: p[task] for n, p in preds.items() if task in p}
        if len(per_model) == len(models):
            kind = models[0].registry[task].answer_kind
            tasks[task] = _task_result(task, kind, per_model, exams, groups, opts)
            tasks[task]["classes"] = list(models[0].registry[task].classes)
    return {
        "site": cfg.name,
        "split": opts.split,
        "exams": len(exams),
        "options": asdict(opts),
        "models": [
            {
                "name": m.name,
                "file": m.path.name,
                "preset": m.preset,
                "sha256": m.sha256,
            }
            for m in models
        ],
        "tasks": tasks,
        "unlabelled_tasks": [t for t in cfg.tasks if t not in tasks],
        "seconds": {
            "predict": round(predicted - start, 2),
            "metrics": round(time.perf_counter() - predicted, 2),
        },
    }


def _fmt(est: Mapping[str, float | None]) -> str:
    v, lo, hi = est["value"], est["low"], est["high"]
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def format_table(payload: Mapping[str, Any]) -> str:
    """The terminal table: every metric per task and model, then the subgroups."""
    names = [m["name"] for m in payload["models"]]
    width = 26
    lines = [
        f"site {payload['site']}, split {payload['split']}, {payload['exams']} exams; "
        f"95% bootstrap CIs over patients ({payload['options']['n_boot']} resamples)",
    ]
    header = f"{'metric':<22}" + "".join(f"{n[:width]:<{width + 2}}" for n in names)
    for task, res in payload["tasks"].items():
        lines += [
            "",
            f"{task} ({res['kind']}, n={res['n']}, patients={res['patients']})",
        ]
        lines.append(header)
        models = res["models"]
        for metric in models[names[0]]["overall"]:
            cells = "".join(
                f"{_fmt(models[n]['overall'][metric]):<{width + 2}}" for n in names
            )
            lines.append(f"{metric:<22}{cells}")
        head = HEADLINE.get(AnswerKind(res["kind"]), "auc")
        for field, levels in models[names[0]]["subgroups"].items():
            for level, got in levels.items():
                label = f"{head} {field}={level} (n={got['n']})"
                cells = "".join(
                    f"{_fmt(models[n]['subgroups'][field][level][head]):<{width + 2}}"
                    for n in names
                )
                lines.append(f"  {label[:40]:<40}{cells}")
    if payload["unlabelled_tasks"]:
        lines += ["", f"no labelled rows in this split: {payload['unlabelled_tasks']}"]
    return "\n".join(lines)


def write_outputs(payload: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir``."""
    from .report_html import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / "metrics.json"
    metrics.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return metrics, write_report(payload, out_dir / "report.html")
