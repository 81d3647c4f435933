"""Measurements on generated hospitals (they read ``truth.json``, so never at a site).

``finding_overlap``: how often the CT region that ``explain`` ranks first (the patch of
highest relevance) overlaps the generated nodule (for the nodule-presence answer) or
consolidation (for the consolidation answer), and how often a patch drawn at random
would (chance). Only a finding-driven answer can point at the finding, so each exam is
also answered with the finding painted over (its voxels, one voxel beyond its radius,
set to the median of a shell around it): an answer is finding-driven when that lowers
P(yes) by at least ``--driven-drop``, and hits are counted among those answers too.
Run as ``python -m client.evaluation.measure explain --model CKPT --site DIR
[--finding consolidation]``.

``finding_labels``: labels of a generated finding other than the held-out one
(``severe_emphysema``), for ``adapt``: ``python -m client.evaluation.measure labels
--site DIR --finding severe_emphysema --out L.csv``.

``adapt_curve``: the adaptation's cross-validated AUC against both baselines for
several numbers of labelled exams (each drawn several times), as in the README:
``python -m client.evaluation.measure adapt --model CKPT --site-config X.toml
--task T.toml --labels L.csv --sizes 20 50 100`` (add ``--train-fusion`` to fine-tune
the fusion layers with the head in both model arms).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3fm_model.explain import CT_METHODS

from .exam_input import ExamInputs, load_ct_crops
from .explain_cmd import explain_exam
from .model_io import LoadedModel, load_model
from .predict import predict_exam

NODULE_QUESTION = "Is there a lung nodule of at least 4 mm?"
# finding -> (the task that asks about it, the question asked); the finding is
# located and painted over in the crop that task reads (``TaskSpec.roi``)
FINDINGS = {
    "nodule": ("nodule_presence", NODULE_QUESTION),
    "consolidation": ("consolidation", "Is there consolidation?"),
}


# generated findings ``finding_labels`` writes labels of
LABELLED_FINDINGS = ("severe_emphysema",)


def _shapes(exam: dict[str, Any], finding: str, min_diameter_mm: float) -> list:
    """(centre voxel, semi-axes in mm) of the exam's generated finding, [] if none."""
    if finding == "nodule":
        nodules = exam["findings"].get("nodules") or []
        if not nodules or nodules[0]["diameter_mm"] < min_diameter_mm:
            return []
        r = nodules[0]["diameter_mm"] / 2  # the largest nodule, which the label reads
        return [(nodules[0]["center_voxel"], (r, r, r))]
    return [
        (b["center_voxel"], b["radii_mm"]) for b in exam["findings"].get(finding) or []
    ]


def _in_crop(
    inputs: ExamInputs, roi: str, shape: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (crop voxels) and semi-axes (crop voxels) of a (centre voxel, mm) shape."""
    spacing = np.array(inputs.crops[roi][1])
    centre = np.array(inputs.geometry[roi].to_crop(tuple(shape[0])))
    return centre, np.array(shape[1], dtype=float) / spacing


def paint_over(
    crop: torch.Tensor,
    ellipsoids: list[tuple[np.ndarray, np.ndarray]],
    *,
    margin: float = 1.0,
    shell: float = 2.0,
) -> torch.Tensor:
    """The crop with each ellipsoid erased: its voxels set to the median around it.

    Args:
        crop: (1, S, H, W) crop.
        ellipsoids: (centre, semi-axes), both in crop voxels.
        margin: Voxels added to every semi-axis of the erased region (partial volume).
        shell: Thickness in voxels of the shell whose median replaces it.

    Returns:
        A new crop; voxels outside the grown ellipsoids are unchanged.
    """
    out = crop.clone()
    grids = np.meshgrid(*[np.arange(n) for n in crop.shape[1:]], indexing="ij")
    for centre, axes in ellipsoids:
        region = _ellipsoid(grids, centre, axes + margin)
        ring = torch.from_numpy(
            _ellipsoid(grids, centre, axes + margin + shell) & ~region
        )
        if region.any() and ring.any():
            out[0][torch.from_numpy(region)] = float(out[0][ring].median())
    return out


def _ellipsoid(grids: list[np.ndarray], centre: np.ndarray, axes: np.ndarray) -> Any:
    """Boolean mask of the voxels inside an axis-aligned ellipsoid."""
    terms = (((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes, strict=True))
    return sum(terms) <= 1


def _p_yes(record: dict[str, Any]) -> float:
    """P(yes) of a binary answer record (``predict_exam``, ``explain_exam``)."""
    return float(record["answer"]["probabilities"]["yes"])


def _touched_patches(
    inputs: ExamInputs, roi: str, shape: tuple, grid: tuple[int, ...]
) -> set[tuple[int, ...]]:
    """Patches of the ROI crop's grid that an ellipsoid (centre voxel, mm) touches."""
    geom = inputs.geometry[roi]
    centre, radius = _in_crop(inputs, roi, shape)
    patch = np.array(geom.crop_size) // np.array(grid)
    axes = [np.linspace(-1, 1, 9)] * 3
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets**2).sum(1) <= 1]
    points = centre + offsets * radius
    inside = np.all((points >= 0) & (points < np.array(geom.crop_size)), axis=1)
    return {tuple(int(v) for v in p) for p in (points[inside] // patch)}


def finding_overlap(
    loaded: LoadedModel,
    site_dir: Path,
    *,
    finding: str = "nodule",
    min_diameter_mm: float = 4.0,
    ct_method: str = "gradient",
    driven_drop: float = 0.05,
) -> dict[str, Any]:
    """Top-patch overlap with a generated finding over a generated site's exams.

    Args:
        loaded: The model.
        site_dir: A folder written by ``client.synth.synthesize_site``.
        finding: "nodule" (the largest, asked with the nodule-presence question) or
            "consolidation" (a hit on any of the exam's consolidations, the
            consolidation question); each on the crop its task reads.
        min_diameter_mm: Smallest nodule counted (the task's threshold).
        ct_method: CT relevance method of ``explain`` ("gradient" or "rollout").
        driven_drop: Fall of P(yes), with the finding painted over, from which an
            answer counts as finding-driven.

    Returns:
        exams, hits, rate, chance (mean share of patches the finding touches), the
        median fall of P(yes) when the finding is painted over, and the same counts
        over the finding-driven answers (``driven_*``).
    """
    task, question = FINDINGS[finding]
    roi = loaded.registry[task].roi
    truth = json.loads((site_dir / "truth.json").read_text())
    hits, chances, drops = [], [], []
    for exam in truth["exams"]:
        shapes = _shapes(exam, finding, min_diameter_mm)
        if not shapes or exam["faults"]:
            continue
        folder = site_dir / exam["series"][0]["folder"]
        inputs = ExamInputs()
        inputs.crops, inputs.geometry = load_ct_crops(folder, loaded.preset)
        result = explain_exam(loaded, inputs, question, ct_method)
        grid = loaded.model.ct_encoder.scale_for(inputs.geometry[roi].crop_size).grid
        touched = set().union(*(_touched_patches(inputs, roi, s, grid) for s in shapes))
        hits.append(tuple(result.record["ct_peak_patch"]) in touched)
        chances.append(len(touched) / int(np.prod(grid)))
        crop, spacing = inputs.crops[roi]
        painted = paint_over(crop, [_in_crop(inputs, roi, s) for s in shapes])
        erased = replace(inputs, crops={**inputs.crops, roi: (painted, spacing)})
        _, erased_record = predict_exam(loaded, erased, question)
        drops.append(_p_yes(result.record) - _p_yes(erased_record))
    driven = [i for i, d in enumerate(drops) if d >= driven_drop]
    return {
        "finding": finding,
        **_counts("", hits, chances),
        "median_drop": float(np.median(drops)) if drops else float("nan"),
        "driven_drop": driven_drop,
        **_counts("driven_", [hits[i] for i in driven], [chances[i] for i in driven]),
    }


def _counts(prefix: str, hits: list[bool], chances: list[float]) -> dict[str, Any]:
    n = len(hits)
    return {
        f"{prefix}exams": n,
        f"{prefix}hits": int(sum(hits)),
        f"{prefix}rate": float(np.mean(hits)) if n else float("nan"),
        f"{prefix}chance": float(np.mean(chances)) if n else float("nan"),
    }


def finding_labels(site_dir: Path, finding: str, threshold: float) -> list[dict]:
    """Rows (patient_id, exam_id, label) of a generated finding, from ``truth.json``.

    ``severe_emphysema``: the rendered emphysema fraction (share of lung at or below
    -950 HU) is at least ``threshold``. It is a grade of a pretraining target, so
    the adaptation can test transfer from what the 12 tasks taught, where cardiomegaly
    (``heldout_labels.csv``) tests a finding none of them needs.
    """
    if finding not in LABELLED_FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; known: {LABELLED_FINDINGS}")
    truth = json.loads((site_dir / "truth.json").read_text())
    return [
        {
            "patient_id": e["patient_id"],
            "exam_id": e["exam_id"],
            finding: int(e["findings"]["emphysema_fraction"] >= threshold),
        }
        for e in truth["exams"]
    ]


def adapt_curve(
    loaded: LoadedModel,
    site_config: Path,
    task_file: Path,
    labels: Path,
    sizes: list[int],
    repeats: int,
    *,
    train_fusion: bool = False,
    fusion_steps: int = 150,
) -> list[dict[str, Any]]:
    """Cross-validated AUC of the three arms per size and draw of labelled exams.

    With ``train_fusion`` the fusion layers train with the head in both model arms.
    """
    from ..cache import ExamCache
    from ..site_config import load_site_config
    from ..site_dataset import load_manifest
    from .adapt import AdaptOptions, cross_validate, subsample
    from .adapt_data import load_labelled_exams
    from .task_spec import load_new_task

    cfg = load_site_config(site_config)
    task = load_new_task(task_file)
    data = load_labelled_exams(task, labels, load_manifest(cfg, loaded.preset))
    cache = ExamCache(cfg.cache_dir / "crops")
    rows = []
    for n in sizes:
        for draw in range(repeats):
            part = subsample(data, n, seed=draw)
            opts = AdaptOptions(
                seed=draw, train_fusion=train_fusion, fusion_steps=fusion_steps
            )
            report = cross_validate(loaded, task, part, cache, opts)
            rows.append(
                {
                    "n": len(part.labels),
                    "draw": draw,
                    "positives": int(part.labels.sum()),
                }
                | {arm: got["pooled"] for arm, got in report["arms"].items()}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line of the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("explain", help="top-patch overlap with generated nodules")
    e.add_argument("--model", required=True)
    e.add_argument("--site", required=True, help="generated site folder")
    e.add_argument("--preset")
    e.add_argument("--ct-method", choices=CT_METHODS, default="gradient")
    e.add_argument("--finding", choices=sorted(FINDINGS), default="nodule")
    e.add_argument(
        "--driven-drop", type=float, default=0.05,
        help="fall of P(yes) with the finding painted over that makes an answer "
        "finding-driven",
    )  # fmt: skip
    lab = sub.add_parser("labels", help="write a generated finding's labels (CSV)")
    lab.add_argument("--site", required=True, help="generated site folder")
    lab.add_argument("--finding", choices=LABELLED_FINDINGS, required=True)
    lab.add_argument("--threshold", type=float, default=0.10)
    lab.add_argument("--out", required=True)
    a = sub.add_parser("adapt", help="adaptation AUC vs baselines by labelled-set size")
    a.add_argument("--model", required=True)
    a.add_argument("--site-config", required=True)
    a.add_argument("--task", required=True)
    a.add_argument("--labels", required=True)
    a.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100])
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument(
        "--train-fusion", action="store_true",
        help="fine-tune the fusion layers with the head (both model arms)",
    )  # fmt: skip
    a.add_argument("--fusion-steps", type=int, default=150)
    a.add_argument("--preset")
    args = parser.parse_args(argv)
    if args.what == "labels":
        import pandas as pd

        rows = finding_labels(Path(args.site), args.finding, args.threshold)
        pd.DataFrame(rows).to_csv(args.out, index=False)
        positives = sum(r[args.finding] for r in rows)
        print(f"{args.out}: {len(rows)} exams, {positives} positive")
        return 0
    torch.set_num_threads(1)
    loaded = load_model(args.model, preset=args.preset)
    if args.what == "explain":
        found = finding_overlap(
            loaded, Path(args.site), finding=args.finding, ct_method=args.ct_method,
            driven_drop=args.driven_drop,
        )  # fmt: skip
        print(json.dumps(found | {"ct_method": args.ct_method}, indent=1))
        return 0
    rows = adapt_curve(
        loaded, Path(args.site_config), Path(args.task), Path(args.labels),
        args.sizes, args.repeats,
        train_fusion=args.train_fusion, fusion_steps=args.fusion_steps,
    )  # fmt: skip
    arms = [k for k in rows[0] if k not in ("n", "draw", "positives")]
    print(f"{'n':>5}" + "".join(f"{a[:30]:>32}" for a in arms))
    for n in sorted({r["n"] for r in rows}):
        got = [r for r in rows if r["n"] == n]
        cells = "".join(
            f"{np.mean([r[a] for r in got]):>24.3f} (sd {np.std([r[a] for r in got]):.3f})"
            for a in arms
        )
        print(f"{n:>5}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
