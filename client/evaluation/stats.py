"""Per-task metric suites with patient-level bootstrap confidence intervals.

Binary and multi-class tasks: AUC (one-vs-rest macro for multi-class), balanced
accuracy, sensitivity at a fixed specificity, Brier score and a reliability curve.
6-year risk: Harrell's C-index of the 6-year risk, per-year AUC and Brier score among
the patients observed that year (censored years are left out), and a reliability curve
over the observed patient-years. Intervals resample patients (all exams of a drawn
patient come along), and every model of a comparison sees the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from client.metrics import (
    YEARS,
    balanced_accuracy,
    cindex,
    multiclass_auc,
    reliability_curve,
    roc_auc,
    sensitivity_at_specificity,
    times_from_targets,
)
from m3fm_model.tasks import AnswerKind

Metric = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate and its bootstrap interval (NaN when undefined)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON form (None for NaN)."""
        return {k: _finite(getattr(self, k)) for k in ("value", "low", "high")}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def resample_plan(
    groups: Sequence[object], n_boot: int, seed: int = 0
) -> list[np.ndarray]:
    """Row indices of each cluster-bootstrap resample.

    Patients are drawn with replacement (as many as there are); each draw brings all
    of that patient's rows. With one row per patient this equals an ordinary row
    bootstrap (``client.metrics.bootstrap_ci``) with the same seed.

    Args:
        groups: (N,) patient of each row.
        n_boot: Number of resamples.
        seed: Random seed.

    Returns:
        One index array per resample.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    order: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    members = [np.asarray(v) for v in order.values()]
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n_boot):
        draws = rng.integers(0, len(members), len(members))
        plan.append(np.concatenate([members[d] for d in draws]))
    return plan


def bootstrap(
    metric: Metric, plan: Sequence[np.ndarray], rows: np.ndarray, alpha: float = 0.05
) -> Estimate:
    """Point estimate on ``rows`` and the percentile interval over ``plan``.

    Args:
        metric: Called with an index array of rows; returns a float (NaN allowed).
        plan: Resamples (index arrays into the same rows as ``rows``).
        rows: The rows of the point estimate (all rows, or a subgroup's).
        alpha: 1 - confidence level.

    Returns:
        The estimate; resamples where the metric is NaN are skipped.
    """
    point = float(metric(rows))
    values = [v for v in (float(metric(idx)) for idx in plan) if math.isfinite(v)]
    if not values or not math.isfinite(point):
        return Estimate(point, math.nan, math.nan)
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Estimate(point, float(low), float(high))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def multiclass_brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of the summed squared error against the one-hot label."""
    if not labels.size:
        return math.nan
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(((probs - onehot) ** 2).sum(axis=1)))


def macro_sensitivity(
    probs: np.ndarray, labels: np.ndarray, specificity: float
) -> float:
    """One-vs-rest sensitivity at the specificity, averaged over present classes."""
    present = np.unique(labels)
    if present.size < 2:
        return math.nan
    values = [
        sensitivity_at_specificity(probs[:, c], labels == c, specificity)
        for c in present
    ]
    return float(np.mean(values))


def class_metrics(
    kind: AnswerKind, probs: np.ndarray, labels: np.ndarray, specificity: float
) -> dict[str, Metric]:
    """Metric functions over row subsets for a binary or multi-class task."""
    pred = probs.argmax(axis=1)
    if kind is AnswerKind.BINARY:
        score = probs[:, 1]
        return {
            "auc": lambda i: roc_auc(score[i], labels[i]),
            "balanced-accuracy": lambda i: balanced_accuracy(pred[i], labels[i]),
            "sensitivity": lambda i: sensitivity_at_specificity(
                score[i], labels[i], specificity
            ),
            "brier": lambda i: float(np.mean((score[i] - labels[i]) ** 2)),
        }
    return {
        "auc": lambda i: multiclass_auc(probs[i], labels[i]),
        "balanced-accuracy": lambda i: balanced_accuracy(pred[i], labels[i]),
        "sensitivity": lambda i: macro_sensitivity(probs[i], labels[i], specificity),
        "brier": lambda i: multiclass_brier(probs[i], labels[i]),
    }


def hazard_metrics(
    logits: np.ndarray, targets: np.ndarray, observed: np.ndarray
) -> dict[str, Metric]:
    """Metric functions over row subsets for the 6-year risk (censoring-aware)."""
    risk = sigmoid(logits)
    obs = observed.astype(bool)
    time, event = times_from_targets(targets, obs)

    def year_auc(k: int) -> Metric:
        return lambda i: roc_auc(risk[i][obs[i, k], k], targets[i][obs[i, k], k])

    def year_brier(k: int) -> Metric:
        def fn(i: np.ndarray) -> float:
            m = obs[i, k]
            if not m.any():
                return math.nan
            return float(np.mean((risk[i][m, k] - targets[i][m, k]) ** 2))

        return fn

    out: dict[str, Metric] = {
        "cindex": lambda i: cindex(risk[i, -1], time[i], event[i])
    }
    out |= {f"auc-y{k + 1}": year_auc(k) for k in range(YEARS)}
    out |= {f"brier-y{k + 1}": year_brier(k) for k in range(YEARS)}
    return out


def curves(
    kind: AnswerKind,
    outputs: np.ndarray,
    targets: Mapping[str, np.ndarray],
    bins: int = 10,
) -> dict[str, object]:
    """ROC points and reliability curve for the report's plots.

    Binary: the positive-class probability. Multi-class: one-vs-rest ROC per present
    class; reliability of the top-class confidence against its correctness. 6-year
    risk: ROC per year among the observed; reliability over observed patient-years.
    """
    from sklearn.metrics import roc_curve

    def roc(score: np.ndarray, y: np.ndarray) -> dict[str, list[float]] | None:
        if y.size == 0 or y.min() == y.max():
            return None
        fpr, tpr, _ = roc_curve(y, score)
        return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}

    def reliability(p: np.ndarray, y: np.ndarray) -> dict[str, list]:
        mean, frac, count = reliability_curve(p, y, bins)
        keep = count > 0
        return {
            "mean_predicted": mean[keep].tolist(),
            "fraction_positive": frac[keep].tolist(),
            "count": count[keep].astype(int).tolist(),
        }

    if kind is AnswerKind.HAZARD6:
        risk, t = sigmoid(outputs), targets["targets"]
        o = targets["observed"].astype(bool)
        rocs = {f"year {k + 1}": roc(risk[o[:, k], k], t[o[:, k], k]) for k in range(6)}
        return {"roc": rocs, "reliability": reliability(risk[o], t[o].astype(int))}
    probs, y = softmax(outputs), targets["target"].astype(int)
    if kind is AnswerKind.BINARY:
        return {
            "roc": {"yes": roc(probs[:, 1], y)},
            "reliability": reliability(probs[:, 1], y),
        }
    rocs = {str(c): roc(probs[:, c], (y == c).astype(int)) for c in np.unique(y)}
    top = probs.argmax(axis=1)
    return {
        "roc": rocs,
        "reliability": reliability(probs.max(axis=1), (top == y).astype(int)),
    }
