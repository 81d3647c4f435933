"""Evaluation metrics for the M3FM tasks (numpy only).

The array-level metrics live in ``client.metrics_basic`` and are re-exported here;
``task_metrics`` dispatches on a task's answer kind. Per-site results leave the site as the allow-listed ``<task>.<metric>`` keys of
docs/records.md (``flatten_for_reply``) and the server averages them over sites
weighted by ``<task>.n`` (``aggregate_site_metrics``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np

from m3fm_model.tasks import TASKS, AnswerKind, TaskSpec

from . import metrics_basic
from .metrics_basic import *  # noqa: F403  (re-exported, see __all__)
from .metrics_basic import (
    YEARS,
    _hazard_arrays,
    _vector,
    accuracy,
    balanced_accuracy,
    cindex,
    multiclass_auc,
    per_year_auc,
    roc_auc,
    times_from_targets,
)

__all__ = [
    *metrics_basic.__all__,
    "IGNORE_LABEL",
    "REPLY_METRICS",
    "task_metrics",
    "bootstrap_ci",
    "flatten_for_reply",
    "aggregate_site_metrics",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100
_YEAR_KEYS = tuple(f"auc-y{t}" for t in range(1, YEARS + 1))
# Per-task metric names a site may send back, by answer kind (docs/records.md).
REPLY_METRICS: Mapping[AnswerKind, frozenset[str]] = {
    AnswerKind.HAZARD6: frozenset({"n", "loss", "cindex", *_YEAR_KEYS}),
    AnswerKind.BINARY: frozenset({"n", "loss", "auc", "accuracy"}),
    AnswerKind.MULTICLASS: frozenset({"n", "loss", "auc", "accuracy"}),
    AnswerKind.NUMBER3: frozenset({"n", "loss", "accuracy"}),
}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _class_metrics(kind: AnswerKind, logits: np.ndarray, target: object) -> dict:
    labels = _vector("target", target, logits.shape[0]).astype(int)
    keep = labels != IGNORE_LABEL
    logits, labels = logits[keep], labels[keep]
    if not labels.size:
        return {"n": 0.0}
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} or be -100")
    logp = _log_softmax(logits)
    pred = logits.argmax(axis=1)
    if kind is AnswerKind.BINARY:
        auc = roc_auc(logits[:, 1] - logits[:, 0], labels)
    else:
        auc = multiclass_auc(logp, labels)
    return {
        "n": float(labels.size),
        "loss": float(-logp[np.arange(labels.size), labels].mean()),
        "auc": auc,
        "accuracy": accuracy(pred, labels),
        "balanced-accuracy": balanced_accuracy(pred, labels),
    }


def _hazard_metrics(logits: np.ndarray, target: Mapping[str, object]) -> dict:
    logits, t, o = _hazard_arrays(logits, target["targets"], target["observed"])
    o = o.astype(bool)
    keep = o.any(axis=1)
    logits, t, o = logits[keep], t[keep].astype(float), o[keep]
    if not keep.any():
        return {"n": 0.0}
    bce = np.logaddexp(0.0, logits) - t * logits
    time, event = times_from_targets(t, o)
    out = {
        "n": float(logits.shape[0]),
        "loss": float(bce[o].mean()),
        "cindex": cindex(logits[:, -1], time, event),
    }
    out.update(zip(_YEAR_KEYS, per_year_auc(logits, t, o), strict=True))
    return out


def _number3_metrics(logits: np.ndarray, target: object) -> dict:
    digits = np.asarray(target).astype(int)
    if logits.shape[1] != 30 or digits.shape != (logits.shape[0], 3):
        raise ValueError("number3 needs (N, 30) logits and (N, 3) digits")
    keep = (digits != IGNORE_LABEL).all(axis=1)
    logp = _log_softmax(logits[keep].reshape(-1, 10))
    digits = digits[keep]
    if not digits.size:
        return {"n": 0.0}
    pred = logp.argmax(axis=1).reshape(-1, 3)
    place = np.array([100, 10, 1])
    return {
        "n": float(digits.shape[0]),
        "loss": float(-logp[np.arange(logp.shape[0]), digits.ravel()].mean()),
        "digit-accuracy": float(np.mean(pred == digits)),
        "accuracy": float(np.mean((pred == digits).all(axis=1))),
        "mae": float(np.mean(np.abs((pred - digits) @ place))),
    }


def task_metrics(
    task: str,
    outputs: np.ndarray,
    targets: Mapping[str, object] | np.ndarray,
    *,
    registry: Mapping[str, TaskSpec] | None = None,
) -> dict[str, float]:
    """All evaluation metrics of one task on one split.

    Args:
        task: Task name in the registry.
        outputs: Head outputs: (N, C) logits for binary/multiclass, (N, 6)
            cumulative logits for hazard6, (N, 30) digit logits for number3.
        targets: As in ``m3fm_model.losses.multitask_loss``: {"target": (N,)}
            with -100 for unlabelled rows, {"targets", "observed"} for hazard6,
            {"digits": (N, 3)} for number3; a bare array is taken as the target
            (digits for number3).
        registry: Task registry; ``TASKS`` by default.

    Returns:
        ``n`` and ``loss`` plus auc/accuracy/balanced-accuracy (binary,
        multiclass), cindex/auc-y1..auc-y6 (hazard6) or
        digit-accuracy/accuracy/mae (number3); only ``n`` when nothing is labelled.
    """
    spec = (registry or TASKS).get(task)
    if spec is None:
        raise ValueError(f"unknown task {task!r}")
    logits = np.asarray(outputs, dtype=float)
    if logits.ndim != 2:
        raise ValueError(f"outputs of {task!r} must be 2-D, got {logits.shape}")
    kind = spec.answer_kind
    if kind is AnswerKind.HAZARD6:
        if not isinstance(targets, Mapping):
            raise ValueError("hazard6 targets need {'targets', 'observed'}")
        return _hazard_metrics(logits, targets)
    key = "digits" if kind is AnswerKind.NUMBER3 else "target"
    target = targets[key] if isinstance(targets, Mapping) else targets
    if kind is AnswerKind.NUMBER3:
        return _number3_metrics(logits, target)
    if logits.shape[1] != spec.num_outputs:
        raise ValueError(f"{task!r} needs {spec.num_outputs} logits per row")
    return _class_metrics(kind, logits, target)


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: object,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval over patients.

    Args:
        metric_fn: Called as ``metric_fn(*arrays)``; returns a float (may be NaN).
        *arrays: Arrays sharing their first dimension (patients); rows are
            resampled jointly.
        n_boot: Number of resamples.
        alpha: 1 - confidence level.
        seed: Random seed.

    Returns:
        (point estimate, lower, upper); the bounds are NaN when every resample
        gives NaN. Resamples with a NaN metric are skipped.
    """
    data = [np.asarray(a) for a in arrays]
    if not data or any(a.ndim == 0 or a.shape[0] != data[0].shape[0] for a in data):
        raise ValueError("bootstrap_ci needs arrays sharing their first dimension")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("n_boot must be >= 1 and alpha in (0, 1)")
    point = float(metric_fn(*data))
    n = data[0].shape[0]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        value = float(metric_fn(*(a[idx] for a in data)))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return point, math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def flatten_for_reply(
    per_task: Mapping[str, Mapping[str, float]],
    *,
    registry: Mapping[str, TaskSpec] | None = None,
) -> dict[str, float]:
    """Per-task metrics as the allow-listed ``<task>.<metric>`` reply keys.

    Args:
        per_task: Task name -> ``task_metrics`` output.
        registry: Task registry; ``TASKS`` by default.

    Returns:
        Finite values of the metrics in ``REPLY_METRICS`` for each task's kind;
        NaN, infinite and other metrics are dropped.
    """
    reg = registry or TASKS
    out: dict[str, float] = {}
    for task, metrics in per_task.items():
        if task not in reg:
            raise ValueError(f"unknown task {task!r}; it cannot be reported")
        allowed = REPLY_METRICS[reg[task].answer_kind]
        for name, value in metrics.items():
            if name in allowed and math.isfinite(float(value)):
                out[f"{task}.{name}"] = float(value)
            elif name in allowed:
                logger.debug("dropping non-finite %s.%s = %s", task, name, value)
    return out


def aggregate_site_metrics(
    per_site: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """Average each ``<task>.<metric>`` over sites, weighted by ``<task>.n``.

    A site counts for a task only with a positive ``<task>.n``; a non-finite
    value is skipped with its weight. ``<task>.n`` is summed. Keys without a
    task prefix (``status``, ``loss``, ...) are ignored.

    Args:
        per_site: Site name -> flattened reply metrics.

    Returns:
        The aggregated metrics, keys sorted.
    """
    sums: dict[str, list[float]] = {}
    for metrics in per_site.values():
        for key, value in metrics.items():
            task, dot, name = key.partition(".")
            weight = float(metrics.get(f"{task}.n", 0.0))
            if not dot or not weight > 0 or not math.isfinite(float(value)):
                continue
            acc = sums.setdefault(key, [0.0, 0.0])
            if name == "n":
                acc[0] += weight
                acc[1] = 1.0
            else:
                acc[0] += weight * float(value)
                acc[1] += weight
    return {k: total / w for k, (total, w) in sorted(sums.items()) if w > 0}
