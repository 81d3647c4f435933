"""Comparison helpers: bootstrap intervals of the headline metric, arm names, table."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from client.train import TaskPredictions
from server.comparison import (
    arm_names,
    bootstrap_ci,
    bootstrap_draws,
    comparison_table,
    paired_differences,
    primary_metric,
    rarer_class,
)


def _binary(scores: np.ndarray, labels: np.ndarray) -> TaskPredictions:
    logits = np.stack([np.zeros_like(scores), scores], axis=1)
    return TaskPredictions(logits, {"target": labels.astype(np.int64)})


def test_bootstrap_ci_of_a_perfect_and_a_random_score() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 30)
    perfect = {"s1": {"heart": _binary(labels * 2.0 - 1.0, labels)}}
    assert bootstrap_ci(perfect, resamples=50) == {"heart": [1.0, 1.0]}
    noise = {"s1": {"heart": _binary(rng.normal(size=60), labels)}}
    low, high = bootstrap_ci(noise, resamples=200)["heart"]
    assert low < 0.5 < high
    assert high - low > 0.1


def test_bootstrap_ci_weights_sites_and_narrows_with_more_examples() -> None:
    rng = np.random.default_rng(2)

    def site(n: int) -> TaskPredictions:
        labels = rng.integers(0, 2, n)
        return _binary(labels + rng.normal(scale=1.0, size=n), labels)

    small = bootstrap_ci({"a": {"heart": site(20)}}, resamples=200)["heart"]
    large = bootstrap_ci(
        {"a": {"heart": site(200)}, "b": {"heart": site(200)}}, resamples=200
    )["heart"]
    assert large[1] - large[0] < small[1] - small[0]
    assert 0.6 < large[0] < large[1] < 0.95


def test_bootstrap_is_reproducible_and_skips_one_class_sites() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    preds = {
        "a": {"heart": _binary(np.linspace(-1, 1, 8), labels)},
        "b": {"heart": _binary(np.ones(3), np.ones(3, dtype=int))},  # AUC undefined
    }
    first = bootstrap_ci(preds, resamples=30, seed=5)
    assert first == bootstrap_ci(preds, resamples=30, seed=5)
    assert set(first) == {"heart"}


def test_arm_names_and_table() -> None:
    sites = [
        SimpleNamespace(name="h1", tasks=("heart",)),
        SimpleNamespace(name="h2", tasks=("heart",)),
    ]
    names = arm_names(sites)  # type: ignore[arg-type]
    assert names[:4] == ["federated", "centralised", "site:h1", "site:h2"]
    assert names[4:] == [f"{n}-dp" for n in names[:4]]
    result = {
        "tasks": {"heart": ["h1", "h2"]},
        "arms": {
            "federated": {
                "aggregate": {"heart.auc": 0.8, "heart.n": 40.0},
                "ci": {"heart": [0.7, 0.9]},
            },
            "site:h1": {"aggregate": {"heart.auc": 0.6, "heart.n": 40.0}},
        },
    }
    table = comparison_table(result)
    row, spans = table.splitlines()[1:3]
    assert row.split()[:6] == ["heart", "auc", "40", "-", "0.800", "0.600"]
    assert spans.split()[-2:] == ["0.70-0.90", "-"]
    assert primary_metric("heart", {"heart.auc": 0.8}) == ("auc", 0.8)
    # the rarer-outcome count of the worst site is shown, and flagged when tiny
    result["rarer_class"] = {
        "h1": {"heart": 12},
        "h2": {"heart": 1},
    }
    flagged = comparison_table(result).splitlines()
    assert flagged[1].split()[3] == "1*" and flagged[-1].startswith("* fewer than")


def test_rarer_class_counts_the_rarer_outcome() -> None:
    labels = np.array([0, 0, 0, 1, -100, 1, 0])
    assert rarer_class(_binary(np.zeros(7), labels)) == 2
    assert rarer_class(_binary(np.zeros(3), np.zeros(3, int))) == 0  # one class only
    multi = TaskPredictions(np.zeros((5, 3)), {"target": np.array([0, 0, 2, 2, 2])})
    assert rarer_class(multi) == 2  # class 1 absent: no AUC is computed for it
    cum = np.array([[0, 0, 1, 1, 1, 1], [0] * 6, [0] * 6, [1] * 6], dtype=float)
    observed = np.ones_like(cum, dtype=bool)
    observed[1, 3:] = False  # censored, no event
    risk = TaskPredictions(np.zeros((4, 6)), {"targets": cum, "observed": observed})
    assert rarer_class(risk) == 2  # 2 diagnosed, 2 not
    number = TaskPredictions(np.zeros((2, 30)), {"digits": np.zeros((2, 3), int)})
    assert rarer_class(number) is None


def test_paired_differences_use_the_same_resamples() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 80)
    good = {"s1": {"heart": _binary(labels + rng.normal(scale=0.5, size=80), labels)}}
    weak = {"s1": {"heart": _binary(labels + rng.normal(scale=3.0, size=80), labels)}}
    arms, draws = {}, {}
    for name, preds in (("federated", good), ("site:s1", weak), ("site:s2", good)):
        draws[name] = bootstrap_draws(preds, resamples=100, seed=0)
        auc = float(np.nanmean(draws[name]["heart"]))
        arms[name] = {"aggregate": {"heart.auc": auc, "heart.n": 80.0}}
    sites = [
        SimpleNamespace(name="s1", tasks=("heart",)),
        SimpleNamespace(name="s2", tasks=("heart", "emphysema")),
    ]
    out = paired_differences(arms, draws, sites)  # type: ignore[arg-type]
    better = out["federated vs site:s1"]["heart"]
    assert (
        better["diff"] > 0.1 and better["ci"][0] > 0 and better["share_better"] == 1.0
    )
    same = out["federated vs site:s2"]
    assert set(same) == {"heart"}  # no emphysema metric in either arm
    assert same["heart"]["diff"] == 0.0 and same["heart"]["ci"] == [0.0, 0.0]
    assert same["heart"]["share_better"] == 0.0
