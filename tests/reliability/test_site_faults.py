"""Site faults through the real site handlers: disk full, restart, corrupt cache.

A generated DP site (hospital_a, 6 patients) is prepared once; each test works on
its own copy. Sites run in-process behind ``tests/server/fake_grid.FakeGrid``; a
"restart" drops everything the site process holds in memory (config and model
caches, Flower context state), keeping only what is on its disk.
"""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from client import runtime
from client.prepare import prepare_site
from client.privacy_ledger import LEDGER_NAME, PrivacyLedger
from client.site_config import load_site_config
from client.site_dataset import build_site_dataset
from client.synth import synthesize_site
from server.loop import FederatedLoop
from server.run_config import RunConfig
from tests.server.fake_grid import FakeGrid

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault_site") / "hospital_a"
    synthesize_site("hospital_a", folder, patients=6, seed=1)
    toml = folder / "site.toml"
    assert re.search(r"enabled = true", toml.read_text())
    prepare_site(load_site_config(toml), preset="tiny")
    return folder


@pytest.fixture
def site(prepared, tmp_path) -> Path:
    """A private copy of the prepared site; returns its site.toml."""
    dst = tmp_path / "site"
    shutil.copytree(prepared, dst)
    _restart_site()
    return dst / "site.toml"


def _restart_site() -> None:
    """What a site process restart forgets: cached config and model."""
    runtime.cached_site.cache_clear()
    runtime._MODELS.clear()


def _cfg(out: Path, **kw) -> RunConfig:
    base = {
        "num-server-rounds": 1,
        "local-steps": 2,
        "batch-size": 4,
        "min-sites": 1,
        "node-wait-timeout": 0,
        "output-dir": str(out),
        "run-name": "r",
    }
    return RunConfig.from_mapping(base | kw)


def _grid(toml: Path, run_id: int = 1) -> FakeGrid:
    return FakeGrid([{"site-config": str(toml)}], {}, run_id=run_id)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _ledger(toml: Path) -> dict:
    return json.loads((toml.parent / "state" / LEDGER_NAME).read_text())


def test_disk_full_while_recording_the_release_refuses_the_reply(
    site, tmp_path, monkeypatch
):
    # Prepare: an existing ledger, then a disk that is full for the ledger's writes
    cfg = load_site_config(site)
    PrivacyLedger.for_site(cfg)
    ledger_path = cfg.state_dir / LEDGER_NAME
    before = ledger_path.read_bytes()
    real_fsync = os.fsync

    def full_disk_fsync(fd: int) -> None:
        if LEDGER_NAME in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    grid = _grid(site)
    # Execute
    ls = FederatedLoop(grid, _cfg(tmp_path / "a")).run()
    # Assert: a status code, no arrays, the model unchanged, the ledger as it was
    reply = grid.replies[0]  # the train reply (evaluation follows)
    assert reply.content["metrics"]["status"] == 3
    assert "arrays" not in reply.content.array_records
    assert not ls.history.rounds[0].aggregation["applied"]
    assert ledger_path.read_bytes() == before
    assert not list(cfg.state_dir.glob(f".{LEDGER_NAME}.*"))  # no temporary left
    # Once space is back the site trains and records the release.
    monkeypatch.setattr(os, "fsync", real_fsync)
    ls = FederatedLoop(_grid(site, run_id=2), _cfg(tmp_path / "b")).run()
    (train,) = ls.history.rounds[0].train.values()
    assert train["status"] == 0
    assert len(_ledger(site)["releases"]) == 1


class _ServerCrash(RuntimeError):
    pass


class _CrashingGrid(FakeGrid):
    """Raises (the server 'dies') when the round ``crash_round`` is sent."""

    def __init__(self, *args, crash_round: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.crash_round = crash_round

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == str(self.crash_round):
            raise _ServerCrash
        return super().send_and_receive(messages, timeout=timeout)


def test_restarted_site_keeps_ledger_and_cache_and_epsilon_never_decreases(
    site, tmp_path
):
    # Prepare
    cache_dir = site.parent / "cache"
    cache_before = _files(cache_dir)
    cfg = _cfg(tmp_path, **{"num-server-rounds": 3})
    grid = _CrashingGrid([{"site-config": str(site)}], {}, crash_round=2)
    # Execute: round 1, then the server dies; the site restarts; the run resumes
    with pytest.raises(_ServerCrash):
        FederatedLoop(grid, cfg).run()
    spent_after_round_1 = PrivacyLedger.for_site(load_site_config(site)).spent()[0]
    _restart_site()
    spent_after_restart = PrivacyLedger.for_site(load_site_config(site)).spent()[0]
    resumed = _cfg(tmp_path, **{"num-server-rounds": 3, "resume": True})
    ls = FederatedLoop(_grid(site, run_id=2), resumed).run()
    # Assert
    assert spent_after_restart == spent_after_round_1 > 0
    releases = _ledger(site)["releases"]
    assert [r["server_round"] for r in releases] == [1, 2, 3]
    eps = [next(iter(r.train.values()))["epsilon"] for r in ls.history.rounds]
    assert [r.round for r in ls.history.rounds] == [1, 2, 3]
    assert eps == sorted(eps) and eps[0] == pytest.approx(spent_after_round_1)
    assert eps[-1] <= load_site_config(site).privacy.epsilon
    cache_after = _files(cache_dir)
    crops = {k: v for k, v in cache_before.items() if k.startswith("crops")}
    assert crops and {k: cache_after[k] for k in crops} == crops  # nothing rebuilt


def test_corrupt_cache_entry_is_detected_skipped_and_rebuilt(site, caplog):
    # Prepare: flip one byte of one cached crop (same size)
    cfg = load_site_config(site)
    crops = site.parent / "cache" / "crops"
    before = _files(crops)
    victim = sorted((crops / "lung").rglob("*.npy"))[0]  # read by its nodule tasks
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    # Execute: training data read from the cache
    data = build_site_dataset(cfg, "tiny", "train")
    for i in range(len(data)):
        data[i]
    for i in range(len(build_site_dataset(cfg, "tiny", "val"))):
        build_site_dataset(cfg, "tiny", "val")[i]
    # Assert: detected by hash and removed (the exam is shown without that crop)
    assert "SHA-256 mismatch" in caplog.text
    assert not victim.exists()
    # Execute: prepare again rebuilds exactly that entry, the same bytes as before
    prepare_site(cfg, preset="tiny")
    after = _files(crops)
    assert set(after) == set(before)
    rel = str(victim.relative_to(crops))
    assert victim.read_bytes() != bytes(raw)
    changed = {k for k in before if after[k] != before[k]}
    assert rel in changed
    assert changed <= {rel, rel.replace(".npy", ".json")}
