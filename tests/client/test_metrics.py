"""Tests of client.metrics against brute-force definitions and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.metrics import (
    accuracy,
    aggregate_site_metrics,
    balanced_accuracy,
    bootstrap_ci,
    brier_score,
    cindex,
    flatten_for_reply,
    multiclass_auc,
    per_year_auc,
    reliability_curve,
    roc_auc,
    sensitivity_at_specificity,
    task_metrics,
    times_from_targets,
)
from m3fm_model.losses import cancer_risk_targets


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def brute_cindex(risk, time, event):
    num = den = 0.0
    for i in range(len(risk)):
        for j in range(len(risk)):
            if not event[i] or i == j:
                continue
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0
    return num / den


def hazard_labels(event_years, followups):
    pairs = [
        cancer_risk_targets(e, f) for e, f in zip(event_years, followups, strict=True)
    ]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def random_cohort(rng, n):
    events = [
        float(rng.uniform(0.2, 6)) if rng.random() < 0.3 else None for _ in range(n)
    ]
    followups = [
        max(e or 0.0, float(rng.uniform(0.0, 7.0))) for e in events
    ]  # follow-up at least to the event
    return hazard_labels(events, followups)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    labels = rng.integers(0, 2, 80)
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels))


def test_roc_auc_edge_cases():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1.0, 1.0, 1.0], [0, 1, 1]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([0.2, 0.3], [1, 1]))
    with pytest.raises(ValueError):
        roc_auc([0.2, 0.3], [0, 2])


def test_multiclass_auc_hand_case():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.4, 0.3],
            [0.2, 0.5, 0.3],
            [0.4, 0.1, 0.5],
            [0.5, 0.3, 0.2],
        ]
    )
    labels = np.array([0, 1, 1, 2, 0])
    # class 0: pos {.7,.5} vs neg {.3,.2,.4} -> 6/6; class 1: pos {.4,.5} vs
    # neg {.2,.1,.3} -> 6/6; class 2: pos {.5} vs neg {.1,.3,.3,.2} -> 4/4.
    assert multiclass_auc(probs, labels) == pytest.approx(1.0)
    probs[4, 0] = 0.35  # class 0: .35 vs .4 loses -> 5/6
    assert multiclass_auc(probs, labels) == pytest.approx((5 / 6 + 1 + 1) / 3)
    # a class absent from the labels does not count
    assert multiclass_auc(probs[:3], labels[:3]) == pytest.approx(
        (
            roc_auc(probs[:3, 0], labels[:3] == 0)
            + roc_auc(probs[:3, 1], labels[:3] == 1)
        )
        / 2
    )
    assert math.isnan(multiclass_auc(probs[:1], labels[:1]))


def test_accuracy_balanced_brier_and_sensitivity():
    labels = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 1, 0])
    assert accuracy(pred, labels) == pytest.approx(5 / 6)
    assert balanced_accuracy(pred, labels) == pytest.approx((1.0 + 0.5) / 2)
    assert brier_score([0.0, 1.0, 0.5], [0, 1, 1]) == pytest.approx(0.25 / 3)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.95, 0.85])
    y = np.array([0] * 10 + [1, 1])
    # spec 0.9 -> threshold = 9th smallest negative (0.9): only 0.95 is above it
    assert sensitivity_at_specificity(scores, y, 0.9) == pytest.approx(0.5)
    assert sensitivity_at_specificity(scores, y, 0.7) == pytest.approx(1.0)
    assert sensitivity_at_specificity(scores, y, 1.0) == pytest.approx(0.0)


def test_reliability_curve_bins():
    probs = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    labels = np.array([0, 1, 0, 1, 1])
    mean_pred, frac_pos, counts = reliability_curve(probs, labels, bins=10)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert mean_pred[1] == pytest.approx(0.135) and frac_pos[1] == pytest.approx(0.5)
    assert math.isnan(mean_pred[2]) and frac_pos[9] == 1.0


def test_cindex_hand_case_four_patients():
    # A: cancer in year 1; B: cancer in year 3; C: followed 2 years; D: 3 years.
    targets, observed = hazard_labels([0.5, 2.5, None, None], [6.0, 6.0, 2.0, 3.0])
    time, event = times_from_targets(targets, observed)
    assert time.tolist() == [1, 3, 2, 3]
    assert event.tolist() == [True, True, False, False]
    risk = np.array([0.9, 0.5, 0.7, 0.5])
    # pairs: A>B, A>C, A>D concordant; B vs D tied risk (D censored at 3): 0.5;
    # B vs C not comparable (C censored before B's event).
    assert cindex(risk, time, event) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("seed", range(4))
def test_cindex_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    targets, observed = random_cohort(rng, 120)
    time, event = times_from_targets(targets, observed)
    risk = rng.integers(0, 8, 120).astype(float)
    assert cindex(risk, time, event) == pytest.approx(brute_cindex(risk, time, event))
    assert math.isnan(cindex(risk[:3], time[:3], np.zeros(3, bool)))


def test_per_year_auc_excludes_unobserved():
    targets, observed = hazard_labels([1.5, None, None, None], [6.0, 1.0, 6.0, 6.0])
    risk = np.tile(np.array([[0.5], [0.9], [0.1], [0.2]]), (1, 6))
    aucs = per_year_auc(risk, targets, observed)
    # year 1: nobody positive -> NaN; year 2 on: patient 1 (risk .9, censored after
    # year 1) is excluded, so the positive (.5) beats both negatives (.1, .2).
    assert math.isnan(aucs[0])
    assert aucs[1:] == pytest.approx([1.0] * 5)
    observed[1, 1:] = True  # if it were observed, it would rank above the positive
    assert per_year_auc(risk, targets, observed)[1] == pytest.approx(2 / 3)


def test_task_metrics_binary_and_multiclass():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 2))
    labels = rng.integers(0, 2, 40)
    labels[:5] = -100
    out = task_metrics("heart", logits, {"target": labels})
    keep = labels != -100
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    assert out["n"] == 35
    assert out["auc"] == pytest.approx(brute_auc(p1[keep], labels[keep]))
    ce = -np.log(np.where(labels[keep] == 1, p1[keep], 1 - p1[keep])).mean()
    assert out["loss"] == pytest.approx(ce)
    assert out["accuracy"] == pytest.approx(np.mean((p1[keep] > 0.5) == labels[keep]))
    multi = task_metrics(
        "nodule_size", rng.normal(size=(30, 4)), rng.integers(0, 4, 30)
    )
    assert set(multi) == {"n", "loss", "auc", "accuracy", "balanced-accuracy"}
    assert task_metrics("heart", logits[:2], np.array([-100, -100])) == {"n": 0.0}


def test_task_metrics_hazard6_and_number3():
    rng = np.random.default_rng(2)
    targets, observed = random_cohort(rng, 60)
    logits = rng.normal(size=(60, 6))
    out = task_metrics(
        "cancer_risk", logits, {"targets": targets, "observed": observed}
    )
    time, event = times_from_targets(targets, observed)
    used = observed.any(axis=1)
    assert out["n"] == used.sum()
    assert out["cindex"] == pytest.approx(
        brute_cindex(logits[used, 5], time[used], event[used])
    )
    p = 1 / (1 + np.exp(-logits[observed]))
    bce = -(targets[observed] * np.log(p) + (1 - targets[observed]) * np.log(1 - p))
    assert out["loss"] == pytest.approx(bce.mean())
    assert {f"auc-y{t}" for t in range(1, 7)} <= set(out)
    with pytest.raises(ValueError):
        task_metrics(
            "cancer_risk",
            rng.normal(size=(60, 7)),
            {"targets": targets, "observed": observed},
        )
    digits = np.array([[0, 4, 2], [1, 0, 0], [9, 9, 9]])
    num_logits = np.full((3, 30), -5.0)
    pred = np.array([[0, 4, 2], [1, 1, 0], [9, 9, 9]])
    for row, ds in enumerate(pred):
        num_logits[row, [ds[0], 10 + ds[1], 20 + ds[2]]] = 5.0
    num = task_metrics("clinical_number", num_logits, {"digits": digits})
    assert num["accuracy"] == pytest.approx(2 / 3)
    assert num["digit-accuracy"] == pytest.approx(8 / 9)
    assert num["mae"] == pytest.approx(10 / 3)


def test_bootstrap_ci_contains_point_and_narrows():
    rng = np.random.default_rng(3)

    def sample(n):
        labels = rng.integers(0, 2, n)
        return rng.normal(size=n) + labels, labels

    widths = []
    for n in (50, 2000):
        point, low, high = bootstrap_ci(roc_auc, *sample(n), n_boot=300, seed=0)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
    # resamples where one class is absent are skipped, not propagated
    point, low, high = bootstrap_ci(roc_auc, [0.1, 0.9, 0.5], [0, 1, 0], n_boot=200)
    assert point == 1.0 and not math.isnan(low)


def test_flatten_keeps_allow_listed_finite_keys():
    flat = flatten_for_reply(
        {
            "heart": {
                "n": 10.0,
                "auc": 0.8,
                "accuracy": math.nan,
                "balanced-accuracy": 0.7,
            },
            "cancer_risk": {"n": 5.0, "cindex": 0.6, "auc-y1": math.nan, "auc-y2": 0.7},
        }
    )
    assert flat == {
        "heart.n": 10.0,
        "heart.auc": 0.8,
        "cancer_risk.n": 5.0,
        "cancer_risk.cindex": 0.6,
        "cancer_risk.auc-y2": 0.7,
    }
    with pytest.raises(ValueError):
        flatten_for_reply({"no_such_task": {"n": 1.0}})


def test_aggregate_weights_by_task_n():
    per_site = {
        "a": {
            "heart.n": 100.0,
            "heart.auc": 0.9,
            "cancer_risk.n": 10.0,
            "cancer_risk.cindex": 0.5,
            "loss": 1.0,
        },
        "b": {"heart.n": 300.0, "heart.auc": 0.7},
        "c": {
            "heart.n": 0.0,
            "heart.auc": 0.1,
            "cancer_risk.n": 30.0,
            "cancer_risk.cindex": 0.7,
        },
    }
    agg = aggregate_site_metrics(per_site)
    assert agg["heart.auc"] == pytest.approx((100 * 0.9 + 300 * 0.7) / 400)
    assert agg["heart.n"] == 400.0
    assert agg["cancer_risk.cindex"] == pytest.approx((10 * 0.5 + 30 * 0.7) / 40)
    assert agg["cancer_risk.n"] == 40.0
    assert "loss" not in agg
