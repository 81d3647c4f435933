"""Can the model learn a task from the CT alone? Against a percentile baseline.

A probe of the CT path, for presets and pretraining recipes: the model (one head, every
parameter trainable, no DP) trains on the CT crops of some prepared sites with the
clinical text always hidden, and is scored on other sites' exams every ``--every``
steps. The baseline is a logistic regression on 11 intensity statistics of the same
crops (mean, standard deviation, 1st-99th percentiles), fitted on the same training
exams. In the chest window the tiny preset stayed at chance on emphysema where the
baseline reached 0.71; from the ``parenchyma`` crop it reaches 0.86-0.90, and the
baseline falls to 0.51 there, since the clipping empties the percentiles
(docs/site-evaluation.md, "The CT path").

Usage::

    python -m server.ct_probe --train A/site.toml C/site.toml
        --eval A2/site.toml C2/site.toml --task emphysema --steps 600
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.cache import ExamCache
from client.site_config import SiteConfig, load_site_config
from client.site_dataset import SiteDataset, default_tokenizer, load_manifest
from client.train import TrainConfig
from m3fm_model import build_model
from m3fm_model.config import PRESETS, preset_config
from m3fm_model.pretrained import INIT_CHOICES, check_init, load_pretrained
from m3fm_model.tasks import TASKS, AnswerKind

from .comparison import PooledCache
from .pretrain import headline, train_in_chunks

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


class CTOnlyDataset(SiteDataset):
    """A site dataset whose examples never show the clinical text."""

    def _drops(
        self, rng: np.random.Generator, has_ct: bool, has_text: bool
    ) -> tuple[bool, bool]:
        return False, has_text


def ct_only_dataset(
    sites: Sequence[SiteConfig], task: str, preset: str, **options: Any
) -> CTOnlyDataset:
    """Every split of the sites' exams that have the task's CT crop, CT only."""
    roi = TASKS[task].roi
    exams = [
        e
        for s in sites
        for e in load_manifest(s, preset)
        if (e.get("crops") or {}).get(roi)
    ]
    cache = PooledCache([ExamCache(s.cache_dir / "crops") for s in sites])
    return CTOnlyDataset(
        exams, cache=cache, model_config=preset_config(preset), tasks=[task],  # type: ignore[arg-type]
        tokenizer=default_tokenizer(), auxiliary=False, **options,
    )  # fmt: skip


def intensity_features(ct: np.ndarray) -> np.ndarray:
    """Mean, standard deviation and the ``PERCENTILES`` of one crop's voxels."""
    v = np.asarray(ct, dtype=np.float64).ravel()
    return np.concatenate([[v.mean(), v.std()], np.percentile(v, PERCENTILES)])


def _features(data: SiteDataset) -> tuple[np.ndarray, np.ndarray]:
    view = data.with_options(augment=False)
    items = [view[i] for i in range(len(view))]
    x = np.stack([intensity_features(it.ct.numpy()) for it in items])
    return x, np.array([int(it.target) for it in items])


def baseline_auc(train: SiteDataset, held_out: SiteDataset) -> float:
    """AUC on ``held_out`` of a logistic regression on the crops' intensity statistics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _features(train)
    x_eval, y_eval = _features(held_out)
    if len(set(y.tolist())) < 2 or len(set(y_eval.tolist())) < 2:
        return math.nan
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(x, y)
    return float(roc_auc_score(y_eval, clf.predict_proba(x_eval)[:, 1]))


def run_probe(
    train_sites: Sequence[SiteConfig],
    eval_sites: Sequence[SiteConfig],
    *,
    task: str = "emphysema",
    steps: int = 600,
    every: int = 100,
    lr: float = 1e-3,
    batch_size: int = 16,
    init: str = "none",
    preset: str = "tiny",
    seed: int = 0,
    threads: int = 2,
) -> dict[str, Any]:
    """Train the CT-only model and score it and the baseline; returns the record."""
    if TASKS[task].answer_kind is not AnswerKind.BINARY:
        raise ValueError(f"the probe scores binary tasks by AUC; {task!r} is not one")
    train = ct_only_dataset(train_sites, task, preset, seed=seed)
    held_out = ct_only_dataset(eval_sites, task, preset, augment=False)
    if not len(train) or not len(held_out):
        raise ValueError(
            f"no exams with a {TASKS[task].roi} crop and a {task!r} label "
            f"(training {len(train)}, evaluation {len(held_out)}); prepare the sites"
        )
    torch.manual_seed(seed)
    model = load_pretrained(build_model(preset, (task,)), check_init(init, preset))
    cfg = TrainConfig(
        scope="all", lr=lr, local_steps=every, batch_size=batch_size, seed=seed,
        dp=False, device="cpu", threads=threads,
    )  # fmt: skip
    curve = []
    for done, loss in train_in_chunks(model, train, cfg, steps, "ct-probe"):
        auc = headline(model, held_out).get(task, math.nan)
        curve.append({"step": done, "train_loss": loss, "auc": auc})
        print(f"step {done}: train loss {loss:.3f}, AUC {auc:.3f}", flush=True)
    return {
        "task": task, "preset": preset, "init": init, "lr": lr,
        "batch_size": batch_size, "train_exams": len(train),
        "eval_exams": len(held_out),
        "baseline_auc": baseline_auc(train, held_out), "curve": curve,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", type=Path, required=True, help="site configs")
    p.add_argument("--eval", nargs="+", type=Path, required=True, help="site configs")
    p.add_argument("--task", default="emphysema")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--init", default="none", choices=INIT_CHOICES)
    p.add_argument("--preset", default="tiny", choices=PRESETS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the record as JSON here")
    args = p.parse_args(argv)
    record = run_probe(
        [load_site_config(c) for c in args.train],
        [load_site_config(c) for c in args.eval],
        task=args.task, steps=args.steps, every=args.every, lr=args.lr,
        batch_size=args.batch_size, init=args.init, preset=args.preset, seed=args.seed,
        threads=args.threads,
    )  # fmt: skip
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
