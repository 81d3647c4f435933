"""Shared helpers and fixtures of the synth tests (imported, not a conftest)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from client.synth import synthesize_site

# profile -> (patients, seed); hospital_b injects faults and needs >= 10 exams.
SMALL = {"hospital_a": (4, 11), "hospital_b": (10, 12), "hospital_c": (5, 17)}
_SITES: dict[str, Path] = {}


def generated_site(profile: str, factory: pytest.TempPathFactory) -> Path:
    """Folder of a small generated site, generated once per test session."""
    if profile not in _SITES:
        patients, seed = SMALL[profile]
        root = factory.getbasetemp() / f"synth_{profile}"
        synthesize_site(profile, root, patients=patients, seed=seed)
        _SITES[profile] = root
    return _SITES[profile]


@pytest.fixture(params=sorted(SMALL))
def site(request: pytest.FixtureRequest, tmp_path_factory) -> tuple[str, Path]:
    """(profile, folder) of each small generated site."""
    return request.param, generated_site(request.param, tmp_path_factory)


def load_truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_excel(path)


def series_files(root: Path, entry: dict) -> list[Path]:
    return sorted(p for p in (root / entry["folder"]).iterdir() if p.is_file())


def read_canonical(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list]:
    """Read a CT series into canonical orientation the way an ingester would.

    Sort by position along the slice normal, apply slope/intercept, undo flipped
    row/column directions. Returns (HU volume, padding mask, sorted datasets).
    """
    items = []
    for path in paths:
        ds = pydicom.dcmread(path)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        depth = float(normal @ np.array(ds.ImagePositionPatient, dtype=float))
        items.append((depth * np.sign(normal[2]), ds))
    items.sort(key=lambda item: item[0])
    planes, pads = [], []
    for _, ds in items:
        raw = ds.pixel_array.astype(np.float32)
        pad = ds.get("PixelPaddingValue")
        mask = raw == pad if pad is not None else np.zeros(raw.shape, dtype=bool)
        hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        if float(ds.ImageOrientationPatient[4]) < 0:
            hu, mask = hu[::-1], mask[::-1]
        if float(ds.ImageOrientationPatient[0]) < 0:
            hu, mask = hu[:, ::-1], mask[:, ::-1]
        planes.append(hu)
        pads.append(mask)
    return np.stack(planes), np.stack(pads), [ds for _, ds in items]


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy (skips when not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, check=False
    )
    report = result.stdout + result.stderr
    lines = report.splitlines()
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )
