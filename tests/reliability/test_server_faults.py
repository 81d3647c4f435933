"""Server faults: killed between rounds or during a checkpoint write, damaged index.

The loop runs in-process over ``ScriptedGrid`` (deterministic per round), so a
resumed run must end with exactly the model of an uninterrupted one. The kill during
a checkpoint write is a real SIGKILL of a child process.
"""

import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from server.checkpoint import RunCheckpointer
from server.loop import FederatedLoop
from server.run_config import RunConfig

from .scripted_grid import ScriptedGrid, SyntheticSite

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4


def _sites():
    return [SyntheticSite(f"site_{i}", ("heart", "emphysema")[i % 2]) for i in range(5)]


def _cfg(out: Path, rounds: int, resume: bool = False) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "num-server-rounds": rounds,
            "min-sites": 2,
            "node-wait-timeout": 0,
            "output-dir": str(out),
            "run-name": "r",
            "resume": resume,
        }
    )


def _run(out: Path, rounds: int, resume: bool = False):
    grid = ScriptedGrid(_sites(), drop_rate=0.2, seed=5)
    loop = FederatedLoop(grid, _cfg(out, rounds, resume))
    grid.travel = set(loop.travel)
    return loop.run()


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "r" / "final_model.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(out, ROUNDS)
    return _final(out)


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(
    "damage", ["none", "torn_newest", "corrupt_index", "torn_newest_and_index"]
)
def test_resume_after_a_kill_equals_the_uninterrupted_run(
    tmp_path, uninterrupted, caplog, damage
):
    # Prepare: a run killed after round 2 (its process state is gone)
    caplog.set_level(logging.INFO, logger="server")
    _run(tmp_path, 2)
    ckpt = tmp_path / "r" / "checkpoints"
    (tmp_path / "r" / "final_model.pt").unlink()
    if damage in ("torn_newest", "torn_newest_and_index"):
        _tear(ckpt / "round-0002.pt")
    if damage in ("corrupt_index", "torn_newest_and_index"):
        (ckpt / "latest.json").write_text('{"format": 1, "latest": {"rou')
    # Execute
    ls = _run(tmp_path, ROUNDS, resume=True)
    # Assert: the torn file was detected and the previous one used; same final model
    restart = 1 if damage.startswith("torn") else 2
    assert f"resuming after round {restart}" in caplog.text
    if damage.startswith("torn"):
        assert "round-0002.pt" in caplog.text
    final = _final(tmp_path)
    assert set(final) == set(uninterrupted)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)
    assert [r.round for r in ls.history.rounds] == list(range(1, ROUNDS + 1))
    history = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [r["round"] for r in history["rounds"]] == list(range(1, ROUNDS + 1))


_KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from server.checkpoint import RunCheckpointer
    ckpt = RunCheckpointer(sys.argv[1])
    config = {"num-server-rounds": 5, "preset": "tiny"}
    state = lambda r: {"w": torch.full((256, 256), float(r))}
    for r in (1, 2):
        ckpt.save(r, state(r), {}, {"json": "{}"}, config)
    real_save = torch.save
    def save_then_die(obj, f):
        real_save(obj, f)
        f.flush()  # part of round 3 is on disk when the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save_then_die
    ckpt.save(3, state(3), {}, {"json": "{}"}, config)
    """
)


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    # Execute: a process that dies (SIGKILL) while writing round 3's checkpoint
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    # Assert: killed mid-write; round 2 is what a restart resumes from
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = tmp_path / "checkpoints"
    assert list(folder.glob(".round-0003.pt.*.tmp"))  # the torn partial file
    assert not (folder / "round-0003.pt").exists()
    ckpt = RunCheckpointer(tmp_path)
    latest = ckpt.load_latest()
    assert latest.round == 2 and float(latest.global_state["w"][0, 0]) == 2.0
    ckpt.check_resume({"num-server-rounds": 6, "preset": "tiny"})
    ckpt.save(3, {"w": torch.zeros(2)}, {}, {"json": "{}"}, {"preset": "tiny"})
    assert ckpt.load_latest().round == 3
