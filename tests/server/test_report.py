"""Tests of server.report: history JSON, atomic write, plots and the summary table."""

from __future__ import annotations

import json
import math

import pytest

from server.report import MetricsHistory, summary_table, write_plots

SITES = {"north": 120, "south": 40}


def make_history(rounds: int = 3) -> MetricsHistory:
    history = MetricsHistory({"run": "test", "preset": "tiny"})
    for r in range(1, rounds + 1):
        for i, (site, n) in enumerate(SITES.items()):
            history.record_train(
                r,
                site,
                {
                    "status": 0,
                    "num-examples": n,
                    "train-loss": 1.0 / r + 0.1 * i,
                    "loss.heart": 0.5 / r,
                    "epsilon": 0.4 * r + i,
                    "delta": 1e-5,
                    "noise-multiplier": 1.1,
                },
            )
            history.record_evaluate(
                r,
                site,
                {
                    "status": 0,
                    "loss": 0.7,
                    "heart.n": n,
                    "heart.auc": 0.6 + 0.05 * r + 0.01 * i,
                    "heart.accuracy": 0.8,
                    "cancer_risk.n": n // 2,
                    "cancer_risk.cindex": 0.55 + 0.03 * r,
                    "cancer_risk.auc-y1": 0.6,
                },
            )
        history.record_aggregation(r, True, "", {"trunk": 2, "heads.heart": 2})
        history.record_seconds(r, 10.0 + r / 3)
    return history


def test_aggregate_recorded_per_round():
    history = make_history(1)
    agg = history.rounds[0].aggregate
    assert agg["heart.auc"] == pytest.approx((120 * 0.65 + 40 * 0.66) / 160)
    assert agg["heart.n"] == 160.0
    assert "loss" not in agg


def test_history_json_round_trip(tmp_path):
    history = make_history()
    history.record_train(4, "north", {"epsilon": math.inf, "train-loss": math.nan})
    history.record_aggregation(4, False, "only 1 of 2 sites replied", {"trunk": 1})
    text = history.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    again = MetricsHistory.from_json(text)
    assert again.to_json() == text
    assert again.meta == history.meta
    assert [r.round for r in again.rounds] == [1, 2, 3, 4]
    assert again.rounds[1].evaluate == history.rounds[1].evaluate
    assert again.rounds[2].seconds == history.rounds[2].seconds  # exact float
    assert again.rounds[3].train["north"]["epsilon"] == math.inf
    assert math.isnan(again.rounds[3].train["north"]["train-loss"])
    assert again.rounds[3].aggregation["applied"] is False
    path = history.write(tmp_path / "run")
    assert path == tmp_path / "run" / "metrics.json"
    assert MetricsHistory.from_json(path.read_text()).to_json() == text
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp left


def test_history_rejects_bad_input():
    history = MetricsHistory()
    with pytest.raises(ValueError):
        history.record_train(0, "north", {"epsilon": 1.0})
    with pytest.raises(ValueError):
        history.record_evaluate(1, "north", {"heart.auc": "high"})
    with pytest.raises(ValueError):
        MetricsHistory.from_json(json.dumps({"schema-version": 99, "rounds": []}))


def test_plots_are_valid_pngs(tmp_path):
    paths = write_plots(make_history(), tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {
        "heart.auc.png",
        "cancer_risk.cindex.png",
        "epsilon.png",
        "train_loss.png",
    }
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 1024


def test_summary_table_lists_tasks_sites_and_epsilon():
    history = make_history()
    table = summary_table(history)
    lines = table.splitlines()
    assert lines[0] == "Rounds completed: 3"
    header = next(line for line in lines if line.startswith("task"))
    assert header.split() == ["task", "metric", "aggregate", "north", "south"]
    heart = next(line for line in lines if line.startswith("heart"))
    assert "auc" in heart and "(n=160)" in heart and "(n=120)" in heart
    assert "0.750 (n=120)" in heart and "0.760 (n=40)" in heart
    risk = next(line for line in lines if line.startswith("cancer_risk"))
    assert "cindex" in risk and "0.640 (n=60)" in risk
    assert any(line.split() == ["north", "1.200"] for line in lines)
    assert any(line.split() == ["south", "2.200"] for line in lines)
    empty = summary_table(MetricsHistory())
    assert "Rounds completed: 0" in empty and "No evaluation" in empty
