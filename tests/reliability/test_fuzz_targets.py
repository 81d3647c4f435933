"""Bounded runs of the fuzz targets: seeded bytes in-process, atheris in the slow suite."""

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import dicom_one_input, quiet, table_one_input

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet():
    quiet()


@pytest.mark.parametrize(
    ("target", "runs"), [(dicom_one_input, 30), (table_one_input, 150)]
)
def test_seeded_inputs_keep_the_contract(target, runs):
    rng = random.Random(8)
    for _ in range(runs):
        target(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 160))))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)
@pytest.mark.parametrize(
    ("driver", "runs"), [("fuzz_dicom.py", 60), ("fuzz_tables.py", 400)]
)
def test_bounded_atheris_run(tmp_path, driver, runs):
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / driver), f"-runs={runs}", "-seed=1",
         "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {runs} runs" in proc.stderr
