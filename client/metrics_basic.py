"""Array-level evaluation metrics: ROC AUC, accuracy, calibration, C-index.

Rank metrics treat tied scores as half-concordant. The 6-year risk helpers use the
discrete yearly labels of ``m3fm_model.losses.cancer_risk_targets``. ``client.metrics``
re-exports every public name here and adds the per-task dispatch.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "YEARS",
    "roc_auc",
    "multiclass_auc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity_at_specificity",
    "brier_score",
    "reliability_curve",
    "times_from_targets",
    "cindex",
    "per_year_auc",
]

YEARS = 6


def _vector(name: str, x: object, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


def _scores_labels(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    s = _vector("scores", scores).astype(float)
    y = _vector("labels", labels, s.shape[0])
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (or bool)")
    return s, y.astype(bool)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], xs.shape[0]]
    ranks = np.empty(x.shape[0])
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new) - 1]
    return ranks


def roc_auc(scores: object, labels: object) -> float:
    """Area under the ROC curve (Mann-Whitney U, tied scores count one half).

    Args:
        scores: (N,) scores; higher means more likely positive.
        labels: (N,) 0/1 labels.

    Returns:
        The AUC, or NaN when either class is absent.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multiclass_auc(probs: object, labels: object) -> float:
    """Macro one-vs-rest AUC over the classes present in ``labels``.

    Args:
        probs: (N, C) class scores (probabilities, or any per-column monotone map
            of them such as log-probabilities).
        labels: (N,) integer classes 0..C-1.

    Returns:
        Mean of the per-class AUCs that are defined; NaN when fewer than two
        classes are present.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    y = _vector("labels", labels, p.shape[0]).astype(int)
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    if present.min() < 0 or present.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    return float(np.mean([roc_auc(p[:, c], y == c) for c in present]))


def accuracy(pred: object, labels: object) -> float:
    """Fraction of predictions equal to the labels (NaN when empty)."""
    y = _vector("labels", labels)
    p = _vector("pred", pred, y.shape[0])
    return float(np.mean(p == y)) if y.size else math.nan


def balanced_accuracy(pred: object, labels: object) -> float:
    """Mean per-class recall over the classes present in ``labels``.

    Args:
        pred: (N,) predicted classes.
        labels: (N,) true classes.

    Returns:
        The balanced accuracy, NaN when empty.
    """
    y = _vector("labels", labels)
    p = _vector("pred", pred, y.shape[0])
    if not y.size:
        return math.nan
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))


def sensitivity_at_specificity(
    scores: object, labels: object, specificity: float = 0.9
) -> float:
    """Best sensitivity among thresholds whose specificity is at least the target.

    A case is called positive when its score is strictly above the threshold;
    the threshold is the smallest negative score that keeps
    ``specificity`` of the negatives at or below it.

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1 labels.
        specificity: Required specificity in [0, 1].

    Returns:
        The sensitivity, NaN when either class is absent.
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must be in [0, 1], got {specificity}")
    s, y = _scores_labels(scores, labels)
    neg = np.sort(s[~y])
    if neg.size == 0 or not y.any():
        return math.nan
    k = math.ceil(specificity * neg.size - 1e-9)
    threshold = -np.inf if k == 0 else neg[k - 1]
    return float(np.mean(s[y] > threshold))


def brier_score(probs: object, labels: object) -> float:
    """Mean squared difference between predicted probabilities and 0/1 labels."""
    p, y = _scores_labels(probs, labels)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def reliability_curve(
    probs: object, labels: object, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration curve on equal-width probability bins over [0, 1].

    Args:
        probs: (N,) predicted probabilities in [0, 1].
        labels: (N,) 0/1 labels.
        bins: Number of bins; the last bin includes 1.0.

    Returns:
        (mean predicted probability, fraction positive, count) per bin; the first
        two are NaN for an empty bin.
    """
    p, y = _scores_labels(probs, labels)
    if bins < 1 or ((p < 0) | (p > 1)).any():
        raise ValueError("bins must be >= 1 and probs must lie in [0, 1]")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=p, minlength=bins) / counts
        frac_pos = np.bincount(idx, weights=y.astype(float), minlength=bins) / counts
    return mean_pred, frac_pos, counts


def _hazard_arrays(*arrays: object) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    for a in out:
        if a.ndim != 2 or a.shape != out[0].shape or a.shape[1] != YEARS:
            raise ValueError(
                f"hazard arrays must all be (N, {YEARS}), got {[x.shape for x in out]}"
            )
    return out


def times_from_targets(
    targets: object, observed: object
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient event or censoring year from yearly cumulative labels.

    Args:
        targets: (N, 6) 0/1, 1 = cancer by that year.
        observed: (N, 6) bool, True = the year's label is known.

    Returns:
        (time, event): ``time`` is the first observed year (1..6) with target 1
        when ``event`` is True, else the last observed year (0 if none).
    """
    t, o = _hazard_arrays(targets, observed)
    o = o.astype(bool)
    pos = (t == 1) & o
    event = pos.any(axis=1)
    years = np.arange(1, YEARS + 1)
    last_observed = np.where(o, years, 0).max(axis=1)
    time = np.where(event, pos.argmax(axis=1) + 1, last_observed)
    return time.astype(int), event


def cindex(
    risk_at_horizon: object, event_time: object, event_observed: object
) -> float:
    """Harrell's concordance index.

    Pair (i, j) is comparable when i had the event and ``time_i < time_j``, or
    ``time_i == time_j`` and j is censored (j is known to outlive i); pairs of
    events at the same time are not comparable. A comparable pair is concordant
    when ``risk_i > risk_j`` and counts one half when the risks tie.

    Args:
        risk_at_horizon: (N,) risk scores (e.g. the 6-year risk).
        event_time: (N,) event or censoring times.
        event_observed: (N,) bool, True when the time is an event.

    Returns:
        The C-index, NaN when no pair is comparable.
    """
    risk = _vector("risk_at_horizon", risk_at_horizon).astype(float)
    time = _vector("event_time", event_time, risk.shape[0]).astype(float)
    event = _vector("event_observed", event_observed, risk.shape[0]).astype(bool)
    if np.isnan(risk).any() or np.isnan(time).any():
        raise ValueError("risk and time must not contain NaN")
    concordant, pairs = 0.0, 0
    for t in np.unique(time[event]):
        cases = risk[event & (time == t)]
        controls = np.sort(risk[(time > t) | ((time == t) & ~event)])
        below = np.searchsorted(controls, cases, side="left")
        tied = np.searchsorted(controls, cases, side="right") - below
        concordant += below.sum() + 0.5 * tied.sum()
        pairs += cases.size * controls.size
    return concordant / pairs if pairs else math.nan


def per_year_auc(risk: object, targets: object, observed: object) -> list[float]:
    """AUC of each year's cumulative risk among the patients observed that year.

    Args:
        risk: (N, 6) cumulative risk (any per-year monotone map of it, such as
            the cumulative logits, gives the same AUCs).
        targets: (N, 6) 0/1 labels.
        observed: (N, 6) bool.

    Returns:
        Six AUCs, year 1 first; NaN for a year lacking one of the classes.
    """
    r, t, o = _hazard_arrays(risk, targets, observed)
    o = o.astype(bool)
    return [roc_auc(r[o[:, k], k], t[o[:, k], k]) for k in range(YEARS)]
