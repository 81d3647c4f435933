"""Metric suites of m3fm-site evaluate against scikit-learn and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from client.evaluation import stats
from client.metrics import bootstrap_ci, roc_auc
from m3fm_model.tasks import AnswerKind


def _binary(n: int, seed: int, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = np.stack([np.zeros(n), signal * labels + rng.normal(size=n)], axis=1)
    return logits, labels


def test_binary_suite_matches_sklearn() -> None:
    logits, labels = _binary(300, 0)
    probs = stats.softmax(logits)
    fns = stats.class_metrics(AnswerKind.BINARY, probs, labels, 0.9)
    rows = np.arange(300)
    assert fns["auc"](rows) == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert fns["balanced-accuracy"](rows) == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1))
    )
    assert fns["brier"](rows) == pytest.approx(brier_score_loss(labels, probs[:, 1]))
    fpr, tpr, _ = roc_curve(labels, probs[:, 1], drop_intermediate=False)
    assert fns["sensitivity"](rows) == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max())


def test_multiclass_suite_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[labels]
    probs = stats.softmax(logits)
    fns = stats.class_metrics(AnswerKind.MULTICLASS, probs, labels, 0.9)
    rows = np.arange(200)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert fns["auc"](rows) == pytest.approx(expected)
    assert fns["balanced-accuracy"](rows) == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1))
    )
    onehot = np.eye(4)[labels]
    assert fns["brier"](rows) == pytest.approx(((probs - onehot) ** 2).sum(1).mean())


def test_hazard_suite_handles_censoring() -> None:
    rng = np.random.default_rng(2)
    n = 120
    event_year = np.where(rng.random(n) < 0.3, rng.integers(1, 7, n), 99)
    followup = rng.integers(1, 7, n)
    years = np.arange(1, 7)
    targets = (years[None] >= event_year[:, None]).astype(float)
    observed = (years[None] <= followup[:, None]) | (targets == 1)
    logits = np.cumsum(rng.normal(size=(n, 6)) * 0.3, axis=1) - 2 + targets * 1.5
    fns = stats.hazard_metrics(logits, targets, observed)
    rows = np.arange(n)
    risk = stats.sigmoid(logits)
    for k in range(6):
        m = observed[:, k]
        assert fns[f"auc-y{k + 1}"](rows) == pytest.approx(
            roc_auc_score(targets[m, k], risk[m, k])
        )
        assert fns[f"brier-y{k + 1}"](rows) == pytest.approx(
            brier_score_loss(targets[m, k], risk[m, k])
        )
    # Harrell's C by brute force over the comparable pairs.
    event = (targets * observed).max(1) > 0
    last = np.where(observed, years, 0).max(1)
    time = np.where(event, (targets * observed).argmax(1) + 1, last)
    conc = pairs = 0.0
    for i, j in itertools.permutations(range(n), 2):
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            pairs += 1
            conc += (
                1.0
                if risk[i, -1] > risk[j, -1]
                else 0.5
                if risk[i, -1] == risk[j, -1]
                else 0
            )
    assert fns["cindex"](rows) == pytest.approx(conc / pairs)


def test_cindex_hand_computed_case() -> None:
    # Patients A..D: event at year 1, censored after 2, event at 3, censored after 4;
    # 6-year risks 0.9, 0.5, 0.05, 0.1. Comparable pairs (the earlier event vs anyone
    # known to outlive it): A-B, A-C, A-D concordant; C-D discordant (0.05 < 0.1).
    logits = np.zeros((4, 6))
    targets = np.zeros((4, 6))
    observed = np.zeros((4, 6), dtype=bool)
    for r, (t, ev) in enumerate([(1, True), (2, False), (3, True), (4, False)]):
        observed[r, :t] = True
        if ev:
            targets[r, t - 1 :] = 1
            observed[r, t - 1 :] = True
    risk6 = np.array([0.9, 0.5, 0.05, 0.1])
    logits[:, -1] = np.log(risk6 / (1 - risk6))
    fns = stats.hazard_metrics(logits, targets, observed)
    assert fns["cindex"](np.arange(4)) == pytest.approx(3 / 4)


def test_reliability_matches_sklearn() -> None:
    logits, labels = _binary(500, 3)
    probs = stats.softmax(logits)[:, 1]
    got = stats.curves(AnswerKind.BINARY, logits, {"target": labels})["reliability"]
    frac, mean = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(got["mean_predicted"], mean)
    np.testing.assert_allclose(got["fraction_positive"], frac)


def test_cluster_bootstrap_equals_row_bootstrap_for_one_row_per_patient() -> None:
    logits, labels = _binary(80, 4)
    scores = logits[:, 1]
    plan = stats.resample_plan([f"p{i}" for i in range(80)], 300, seed=7)
    mine = stats.bootstrap(lambda i: roc_auc(scores[i], labels[i]), plan, np.arange(80))
    ref = bootstrap_ci(roc_auc, scores, labels, n_boot=300, seed=7)
    assert (mine.value, mine.low, mine.high) == pytest.approx(ref)


def test_cluster_bootstrap_draws_whole_patients() -> None:
    groups = [f"p{i // 2}" for i in range(20)]  # two exams per patient
    for idx in stats.resample_plan(groups, 50, seed=0):
        assert idx.size == 20
        assert np.all(idx[0::2] // 2 == idx[1::2] // 2)


@pytest.mark.parametrize("kind", ["auc", "brier"])
def test_ci_contains_point_and_narrows_with_n(kind: str) -> None:
    widths = []
    for n in (60, 240, 960):
        logits, labels = _binary(n, 5, signal=1.5)
        probs = stats.softmax(logits)
        fn = stats.class_metrics(AnswerKind.BINARY, probs, labels, 0.9)[kind]
        plan = stats.resample_plan(list(range(n)), 400, seed=1)
        est = stats.bootstrap(fn, plan, np.arange(n))
        assert est.low <= est.value <= est.high
        widths.append(est.high - est.low)
    assert widths[0] > widths[1] > widths[2]
    # the width shrinks roughly like 1/sqrt(n): 16x the data, about a quarter
    assert widths[2] / widths[0] < 0.45


def test_undefined_metric_gives_nan_interval() -> None:
    labels = np.ones(10, dtype=int)
    probs = stats.softmax(np.zeros((10, 2)))
    fn = stats.class_metrics(AnswerKind.BINARY, probs, labels, 0.9)["auc"]
    est = stats.bootstrap(fn, stats.resample_plan(range(10), 20), np.arange(10))
    assert math.isnan(est.value) and est.as_dict() == {
        "value": None,
        "low": None,
        "high": None,
    }
