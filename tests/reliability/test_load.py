"""Load: 20 sites, 20 % of them dropping at random each round, tiny preset.

The real server loop (validation, aggregation, checkpoints, evaluation, reports) runs
over ``ScriptedGrid``'s synthetic sites. The default suite runs 6 rounds; the slow
suite runs the full 30 (or set ``M3FM_LOAD_ROUNDS``). Measured on a shared 2-core
machine: ~1.2 s per round; resident memory grew 1.6 MB from round 2 to round 30
(~0.06 MB per round: the metrics history). Asserted: the least-squares slope of the
resident size over rounds 2..N stays under ``SLOPE_BOUND_MB`` per round and the total
growth under ``GROWTH_BOUND_MB``; keeping one round's replies or a model copy per
round (>= 2 MB) would break both.
"""

import json
import os

import numpy as np
import pytest
import torch

from m3fm_model.tasks import TASKS
from server.checkpoint import RunCheckpointer
from server.loop import FederatedLoop
from server.run_config import RunConfig

from .scripted_grid import ScriptedGrid, SyntheticSite

SITES = 20
DROP_RATE = 0.2
SLOPE_BOUND_MB = 0.5
GROWTH_BOUND_MB = 16.0


def _rss_mb() -> float:
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_load(tmp_path, rounds: int) -> None:
    # Prepare
    torch.set_num_threads(1)
    tasks = sorted(TASKS)[:10]
    sites = [
        SyntheticSite(f"site_{i:02d}", tasks[i % len(tasks)], examples=10 + i)
        for i in range(SITES)
    ]
    rss: list[float] = []
    grid = ScriptedGrid(
        sites, drop_rate=DROP_RATE, seed=3, on_train_round=lambda: rss.append(_rss_mb())
    )
    cfg = RunConfig.from_mapping(
        {
            "num-server-rounds": rounds,
            "min-sites": 2,
            "node-wait-timeout": 0,
            "output-dir": str(tmp_path),
            "run-name": "load",
        }
    )
    loop = FederatedLoop(grid, cfg)
    grid.travel = set(loop.travel)
    # Execute
    ls = loop.run()
    # Assert: every round completed and recorded, with exactly the sites that answered
    assert [r.round for r in ls.history.rounds] == list(range(1, rounds + 1))
    assert sum(map(len, grid.dropped)) > 0
    names = {i + 1: s.name for i, s in enumerate(sites)}
    for rec, dropped in zip(ls.history.rounds, grid.dropped, strict=True):
        answered = {names[n] for n in names if n not in dropped}
        assert set(rec.train) == answered
        assert set(rec.evaluate) == answered
        assert rec.aggregation["applied"]
        assert rec.aggregation["sites-per-group"]["trunk"] == len(answered)
    on_disk = json.loads((tmp_path / "load" / "metrics.json").read_text())
    assert len(on_disk["rounds"]) == rounds
    assert RunCheckpointer(tmp_path / "load").load_latest().round == rounds
    # Assert: server memory does not grow round over round (round 1 sends the full
    # model and warms up allocators, so it is left out)
    steady = np.asarray(rss[1:])
    slope = np.polyfit(np.arange(len(steady)), steady, 1)[0]
    print(f"rss per round (MB): {[round(x, 1) for x in rss]}; slope {slope:.3f}")
    assert slope < SLOPE_BOUND_MB
    assert steady.max() - steady[0] < GROWTH_BOUND_MB


def test_twenty_sites_with_dropouts(tmp_path):
    _run_load(tmp_path, rounds=int(os.environ.get("M3FM_LOAD_ROUNDS", "6")))


@pytest.mark.slow
def test_twenty_sites_thirty_rounds(tmp_path):
    _run_load(tmp_path, rounds=30)
