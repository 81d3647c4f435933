"""The SuperLink host dies after a finished round and comes back: the run resumes (slow).

A real TLS + authentication consortium of two sites. The SuperLink's whole process group
(SuperLink, its SuperExec and the running ServerApp) is killed once round 1 is
checkpointed; the SuperLink restarts from the same state folder, the sites reconnect by
themselves, and ``flwr run ... resume=true`` finishes rounds 2 and 3 on top of round 1.
"""

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from client.prepare import prepare_site
from client.site_config import load_site_config
from client.synth import synthesize_site

from .harness import Deployment, consortium_toml

CFG = {
    "num-server-rounds": 3, "local-steps": 2, "batch-size": 4, "min-sites": 2,
    "round-timeout": 240.0, "node-wait-timeout": 120.0, "run-name": "restart",
}  # fmt: skip


@pytest.mark.slow
def test_superlink_killed_between_rounds_then_resumed(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sites = {}
    for name, seed in (("hospital_a", 11), ("hospital_c", 13)):
        synthesize_site(name, tmp_path / name, patients=10, seed=seed)
        prepare_site(load_site_config(tmp_path / name / "site.toml"), preset="tiny")
        sites[name] = tmp_path / name / "site.toml"
    runs = tmp_path / "runs"
    with Deployment(
        tmp_path / "dep", consortium_toml(tmp_path / "c.toml", sites)
    ) as dep:
        assert dep.provision().returncode == 0
        dep.start_superlink()
        assert dep.admin("register", "--kits", str(dep.kits)).returncode == 0
        for name in sites:
            dep.start_site(name, None, "--max-retries", "50")
        first = dep.run_async("flwr-first", CFG | {"output-dir": str(runs)})
        index = runs / "restart" / "checkpoints" / "latest.json"
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and not index.exists():
            time.sleep(0.5)
        assert index.exists(), dep.log("flwr-first")[-2000:]
        dep.stop("superlink")  # the host dies: SuperLink, SuperExec and ServerApp
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(timeout=60)  # the CLI may keep retrying the lost SuperLink
        dep.stop("flwr-first")
        done = json.loads((runs / "restart" / "metrics.json").read_text())["rounds"]
        assert [r["round"] for r in done][:1] == [1] and len(done) < 3

        dep.start_superlink()  # same --state-dir: registrations survive
        rc, out = dep.run(CFG | {"output-dir": str(runs), "resume": True})
        assert rc == 0, out[-3000:]
        rounds = json.loads((runs / "restart" / "metrics.json").read_text())["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert all(r["aggregation"]["applied"] for r in rounds)
        assert rounds[0] == done[0]  # round 1 kept from before the crash
        card = json.loads((runs / "restart" / "model_card.json").read_text())
        assert card["rounds"] == 3
