"""Measurements on generated hospitals (they read ``truth.json``, so never at a site).

``nodule_overlap``: how often the CT region that ``explain`` ranks first (the patch of
highest relevance) overlaps the generated nodule, for the nodule-presence answer, and
how often a patch drawn at random would (chance). Run as
``python -m client.evaluation.measure explain --model CKPT --site DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .exam_input import ExamInputs, load_ct_crops
from .explain_cmd import explain_exam
from .model_io import LoadedModel, load_model

NODULE_QUESTION = "Is there a lung nodule of at least 4 mm?"


def _ball_patches(
    inputs: ExamInputs, nodule: dict[str, Any], grid: tuple[int, ...]
) -> set[tuple[int, ...]]:
    """Patches of the lung crop's grid that the nodule's ball touches."""
    geom = inputs.geometry["lung"]
    spacing = np.array(inputs.crops["lung"][1])
    centre = np.array(geom.to_crop(tuple(nodule["center_voxel"])))
    radius = nodule["diameter_mm"] / 2 / spacing  # crop voxels per axis
    patch = np.array(geom.crop_size) // np.array(grid)
    axes = [np.linspace(-1, 1, 9)] * 3
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets**2).sum(1) <= 1]
    points = centre + offsets * radius
    inside = np.all((points >= 0) & (points < np.array(geom.crop_size)), axis=1)
    return {tuple(int(v) for v in p) for p in (points[inside] // patch)}


def nodule_overlap(
    loaded: LoadedModel, site_dir: Path, *, min_diameter_mm: float = 4.0
) -> dict[str, Any]:
    """Top-patch overlap with the nodule over a generated site's nodule exams.

    Args:
        loaded: The model.
        site_dir: A folder written by ``client.synth.synthesize_site``.
        min_diameter_mm: Smallest nodule counted (the task's threshold).

    Returns:
        exams, hits, rate, chance (mean share of patches the nodule touches).
    """
    truth = json.loads((site_dir / "truth.json").read_text())
    hits, chances = [], []
    for exam in truth["exams"]:
        nodules = exam["findings"].get("nodules") or []
        if not nodules or nodules[0]["diameter_mm"] < min_diameter_mm or exam["faults"]:
            continue
        folder = site_dir / exam["series"][0]["folder"]
        inputs = ExamInputs()
        inputs.crops, inputs.geometry = load_ct_crops(folder, loaded.preset)
        result = explain_exam(loaded, inputs, NODULE_QUESTION)
        grid = loaded.model.ct_encoder.scale_for(inputs.geometry["lung"].crop_size).grid
        touched = _ball_patches(inputs, nodules[0], grid)
        hits.append(tuple(result.record["ct_peak_patch"]) in touched)
        chances.append(len(touched) / int(np.prod(grid)))
    n = len(hits)
    return {
        "exams": n,
        "hits": int(sum(hits)),
        "rate": float(np.mean(hits)) if n else float("nan"),
        "chance": float(np.mean(chances)) if n else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line of the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("explain", help="top-patch overlap with generated nodules")
    e.add_argument("--model", required=True)
    e.add_argument("--site", required=True, help="generated site folder")
    e.add_argument("--preset")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    got = nodule_overlap(load_model(args.model, preset=args.preset), Path(args.site))
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
