"""Tests of the site's privacy ledger and noise planning."""

from __future__ import annotations

import json
import logging

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from client import privacy_ledger as pl
from client.privacy_ledger import (
    PrivacyBudgetExhausted,
    PrivacyLedger,
    PrivacyLedgerError,
    plan_noise_multiplier,
)

DELTA = 1e-5


def _open(path, epsilon=8.0, delta=DELTA):
    return PrivacyLedger(
        path / "privacy_ledger.json", epsilon_budget=epsilon, delta=delta
    )


def _record(ledger, round_, sigma=1.0, rate=0.1, steps=20):
    return ledger.record(
        run_id="run-1",
        server_round=round_,
        noise_multiplier=sigma,
        sample_rate=rate,
        steps=steps,
    )


def test_releases_survive_a_restart(tmp_path):
    # Prepare
    ledger = _open(tmp_path)
    _record(ledger, 1)
    _record(ledger, 2, sigma=1.5)
    spent = ledger.spent()
    # Execute: a new process opens the same file.
    reopened = _open(tmp_path)
    # Assert
    assert reopened.releases == ledger.releases
    assert [r.server_round for r in reopened.releases] == [1, 2]
    assert reopened.spent() == spent and spent[0] > 0
    accountant = RDPAccountant()
    accountant.history = [(1.0, 0.1, 20), (1.5, 0.1, 20)]
    assert spent[0] == pytest.approx(accountant.get_epsilon(DELTA))


def test_epsilon_never_decreases(tmp_path):
    ledger = _open(tmp_path, epsilon=50.0)
    values = [ledger.spent()[0]]
    for round_, sigma in enumerate([1.0, 3.0, 0.8, 10.0], start=1):
        _record(ledger, round_, sigma=sigma)
        values.append(ledger.spent()[0])
    assert values[0] == 0.0
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_other_process_releases_count_at_once(tmp_path):
    mine, other = _open(tmp_path), _open(tmp_path)
    _record(other, 1)
    assert len(mine.releases) == 1 and mine.spent() == other.spent()


def test_refuses_a_release_past_the_budget(tmp_path):
    ledger = _open(tmp_path, epsilon=2.0)
    _record(ledger, 1, sigma=2.0)
    before = (tmp_path / "privacy_ledger.json").read_bytes()
    assert ledger.would_exceed(0.5, 0.1, 20)
    with pytest.raises(PrivacyBudgetExhausted) as err:
        _record(ledger, 2, sigma=0.5)
    assert err.value.budget == 2.0 and err.value.spent == pytest.approx(
        ledger.spent()[0]
    )
    assert (tmp_path / "privacy_ledger.json").read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_text("{not json"),
        lambda p: p.write_bytes(b"\xff\xfe\x00"),
        lambda p: p.write_text(json.dumps({"format": 1, "budget": {}})),
        lambda p: p.write_text(p.read_text().replace('"steps": 20', '"steps": -3')),
        lambda p: p.write_text(p.read_text().replace('"run_id"', '"run"')),
    ],
    ids=["syntax", "bytes", "no-releases", "bad-value", "bad-key"],
)
def test_corrupt_ledger_stops_training_and_is_not_reset(tmp_path, damage):
    ledger = _open(tmp_path)
    _record(ledger, 1)
    path = tmp_path / "privacy_ledger.json"
    damage(path)
    damaged = path.read_bytes()
    with pytest.raises(PrivacyLedgerError, match="unreadable"):
        ledger.spent()
    with pytest.raises(PrivacyLedgerError, match="unreadable"):
        _open(tmp_path)
    with pytest.raises(PrivacyLedgerError):
        _record(ledger, 2)
    assert path.read_bytes() == damaged


def test_deleted_ledger_after_opening_stops_training(tmp_path):
    ledger = _open(tmp_path)
    (tmp_path / "privacy_ledger.json").unlink()
    with pytest.raises(PrivacyLedgerError, match="disappeared"):
        ledger.spent()


def test_failed_write_leaves_the_old_ledger_and_no_partial_file(tmp_path, monkeypatch):
    ledger = _open(tmp_path)
    _record(ledger, 1)
    path = tmp_path / "privacy_ledger.json"
    before = path.read_bytes()

    def crash(payload, handle, **kw):
        handle.write('{"format": 1, "releases": [')  # half written, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(pl.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        _record(ledger, 2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "privacy_ledger.json",
        "privacy_ledger.json.lock",
    ]
    assert len(_open(tmp_path).releases) == 1


def test_budget_change_is_logged_and_kept(tmp_path, caplog):
    _record(_open(tmp_path), 1)
    with caplog.at_level(logging.WARNING):
        ledger = _open(tmp_path, epsilon=4.0)
    assert "budget changed" in caplog.text
    stored = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert stored["budget"] == {"epsilon": 4.0, "delta": DELTA}
    assert len(ledger.releases) == 1


@pytest.mark.parametrize("history", [[], [(1.2, 0.1, 40)]], ids=["fresh", "spent"])
def test_planned_noise_hits_the_budget_after_the_planned_rounds(tmp_path, history):
    # Prepare
    ledger = _open(tmp_path)
    for round_, (sigma, rate, steps) in enumerate(history, start=1):
        _record(ledger, round_, sigma=sigma, rate=rate, steps=steps)
    # Execute
    sigma = plan_noise_multiplier(ledger, 0.1, 30, 4, 8.0, DELTA)
    for round_ in range(4):
        _record(ledger, 10 + round_, sigma=sigma, rate=0.1, steps=30)
    # Assert: at the budget, within the bisection's tolerance.
    epsilon = ledger.spent()[0]
    assert 8.0 * 0.99 <= epsilon <= 8.0
    # A slightly smaller noise multiplier would have overshot.
    assert pl.epsilon_of([*history, (sigma * 0.99, 0.1, 120)], DELTA) > 8.0


def test_planning_includes_the_spent_history(tmp_path):
    ledger = _open(tmp_path)
    _record(ledger, 1, sigma=1.0, rate=0.1, steps=100)
    ours = plan_noise_multiplier(ledger, 0.1, 30, 2, 8.0, DELTA)
    # Opacus' helper assumes an empty history: its sigma would overshoot the budget.
    fresh = get_noise_multiplier(
        target_epsilon=8.0, target_delta=DELTA, sample_rate=0.1, steps=60
    )
    assert ours > fresh
    assert pl.epsilon_of([*ledger.history, (fresh, 0.1, 60)], DELTA) > 8.0


def test_planning_refuses_when_no_noise_fits(tmp_path):
    ledger = _open(tmp_path, epsilon=0.05)  # below the RDP floor at any sigma
    with pytest.raises(PrivacyBudgetExhausted, match="do not fit"):
        plan_noise_multiplier(ledger, 0.1, 30, 1, 0.05, DELTA)
    # Nearly spent: a long plan does not fit even at sigma 1e3, a short one does.
    nearly = _open(tmp_path / "b", epsilon=2.3)
    _record(nearly, 1, sigma=1.5, rate=0.2, steps=5)
    assert 2.2 < nearly.spent()[0] < 2.3
    with pytest.raises(PrivacyBudgetExhausted):
        plan_noise_multiplier(nearly, 0.2, 1000, 1000, 2.3, DELTA)
    assert plan_noise_multiplier(nearly, 0.2, 10, 1, 2.3, DELTA) > 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"epsilon": 0.0}, {"epsilon": float("inf")}, {"delta": 0.0}, {"delta": 1.0}],
)
def test_invalid_budget_is_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        _open(tmp_path, **kwargs)


def test_invalid_release_is_rejected(tmp_path):
    ledger = _open(tmp_path)
    with pytest.raises(ValueError, match="sample_rate"):
        _record(ledger, 1, rate=1.5)
    with pytest.raises(ValueError, match="noise_multiplier"):
        _record(ledger, 1, sigma=0.0)
    assert ledger.releases == ()
