"""Hostile and late replies through the real server loop (in-process, synthetic sites).

Each hostile site breaks one rule of docs/records.md; the server must drop its reply
with a logged reason code that never echoes the site's text, and aggregate the honest
replies. A site whose reply would arrive after ``round-timeout`` is left out and the
round completes with the others.
"""

import json
import logging

import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord

from client.scope import param_group
from server.loop import FederatedLoop
from server.run_config import RunConfig

from .scripted_grid import ScriptedGrid, SyntheticSite

SECRET = "SECRET_Jane_Doe_1957"


def _trunk(arrays):
    return next(n for n in sorted(arrays) if param_group(n) == "trunk")


def _shape(a, m, s, x):
    n = _trunk(a)
    a[n] = a[n].reshape(-1)[:-1].clone()


def _nan(a, m, s, x):
    a[_trunk(a)].view(-1)[0] = float("nan")


def _inf(a, m, s, x):
    a[_trunk(a)].view(-1)[-1] = float("inf")


def _norm(a, m, s, x):
    a[_trunk(a)] += 1e6


def _dtype(a, m, s, x):
    n = _trunk(a)
    a[n] = a[n].double()


def _unknown_array(a, m, s, x):
    a[SECRET] = torch.zeros(3)


def _metric_key(a, m, s, x):
    m[f"name-{SECRET}"] = 1.0


def _metric_nan(a, m, s, x):
    m["epsilon"] = float("nan")


def _missing_status(a, m, s, x):
    del m["status"]


def _bad_count(a, m, s, x):
    m["count.trunk"] = -3


def _extra_record(a, m, s, x):
    x["notes"] = ConfigRecord({"text": SECRET})


def _extra_metric_record(a, m, s, x):
    x["debug"] = MetricRecord({"loss": 1.0})


def _extra_site_key(a, m, s, x):
    s["patient"] = SECRET


def _status_without_arrays(a, m, s, x):
    a.clear()


HOSTILE = {
    "shape": (_shape, "shape"),
    "nan": (_nan, "non-finite"),
    "inf": (_inf, "non-finite"),
    "norm": (_norm, "update-norm"),
    "dtype": (_dtype, "dtype"),
    "unknown_array": (_unknown_array, "unknown-array"),
    "metric_key": (_metric_key, "metric-key"),
    "metric_nan": (_metric_nan, "metric-value"),
    "missing_status": (_missing_status, "missing-status"),
    "bad_count": (_bad_count, "bad-count"),
    "extra_record": (_extra_record, "record-layout"),
    "extra_metric_record": (_extra_metric_record, "record-layout"),
    "extra_site_key": (_extra_site_key, "record-layout"),
    "no_arrays": (_status_without_arrays, "no-arrays"),
}


def _cfg(tmp_path, **kw):
    base = {
        "num-server-rounds": 1,
        "min-sites": 2,
        "node-wait-timeout": 0,
        "max-update-norm": 100.0,
        "output-dir": str(tmp_path),
        "run-name": "r",
    }
    return RunConfig.from_mapping(base | kw)


def _run(grid, cfg):
    loop = FederatedLoop(grid, cfg)
    grid.travel = set(loop.travel)
    return loop, loop.run()


def test_each_hostile_reply_is_rejected_with_a_logged_code(tmp_path, caplog):
    # Prepare: two honest sites and one site per broken rule
    sites = [SyntheticSite("honest_a", "heart"), SyntheticSite("honest_b", "emphysema")]
    sites += [
        SyntheticSite(f"bad_{name}", "heart", tamper=tamper)
        for name, (tamper, _) in HOSTILE.items()
    ]
    grid = ScriptedGrid(sites)
    # Execute
    with caplog.at_level(logging.INFO, logger="server.loop"):
        _, ls = _run(grid, _cfg(tmp_path))
    # Assert: every hostile reply was dropped with its code, the honest ones used
    messages = [r.getMessage() for r in caplog.records if r.name == "server.loop"]
    for name, (_, code) in HOSTILE.items():
        hits = [m for m in messages if f"bad_{name}" in m and "not used" in m]
        assert len(hits) == 1 and f": {code} (" in hits[0], (name, hits)
    assert not any(SECRET in m for m in messages)
    agg = ls.history.rounds[0].aggregation
    assert agg["applied"] and agg["sites-per-group"]["trunk"] == 2
    written = (tmp_path / "r" / "metrics.json").read_text()
    assert SECRET not in written
    assert all(s.name in json.loads(written)["rounds"][0]["train"] for s in sites[:2])


def test_hostile_replies_do_not_move_the_model(tmp_path):
    # Only hostile sites: nothing valid arrives, the model stays as it was.
    sites = [
        SyntheticSite(f"bad_{n}", "heart", tamper=t) for n, (t, _) in HOSTILE.items()
    ]
    loop, ls = _run(ScriptedGrid(sites), _cfg(tmp_path))
    assert not ls.history.rounds[0].aggregation["applied"]
    init = loop.model.state_dict()
    final = torch.load(tmp_path / "r" / "final_model.pt", weights_only=True)
    assert all(torch.equal(final[k], init[k]) for k in init)


@pytest.mark.parametrize("late", [1, 2])
def test_site_past_the_deadline_is_left_out_and_the_round_completes(tmp_path, late):
    # Prepare: `late` of four sites answer after round-timeout (never, as seen by it)
    sites = [SyntheticSite(f"site_{i}", "heart") for i in range(4)]
    for site in sites[:late]:
        site.latency = 1e9
    grid = ScriptedGrid(sites)
    # Execute
    _, ls = _run(grid, _cfg(tmp_path, **{"num-server-rounds": 2, "round-timeout": 5.0}))
    # Assert
    assert grid.timeouts and set(grid.timeouts) == {5.0}
    for rec in ls.history.rounds:
        assert set(rec.train) == {s.name for s in sites[late:]}
        assert rec.aggregation["applied"]
        assert rec.aggregation["sites-per-group"]["trunk"] == 4 - late
    assert [r.round for r in ls.history.rounds] == [1, 2]
