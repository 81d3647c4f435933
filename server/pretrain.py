"""Pretrain the tiny preset on a generated cohort and ship it as an asset.

The tiny preset is a CPU stand-in for M3FM; the real model starts federated training
from the authors' pretrained checkpoint (``m3fm_model.convert_weights``), which holds
the encoders, the task encoder and heads. To give the tiny preset the same footing,
this script generates its own cohort (the three demo profiles with seeds no demo, test
or bench hospital uses, no injected faults), trains the whole model on the pooled
exams, and saves the encoders, the fusion layers and the heads of the tasks it trained
as ``m3fm_model/assets/tiny-synthetic-m3fm.json``. Runs start from all of it with
run-config ``init-weights = "tiny-synthetic"``, or from its two encoders alone with
``"tiny-synthetic-encoders"`` (fusion and heads then learned from the sites' data).

The held-out finding of ``client.synth.heldout`` is never a pretraining target, so
few-shot adaptation to it stays a new task.

Usage::

    python -m server.pretrain --data pretrain_data
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from client.metrics import flatten_for_reply, task_metrics
from client.prepare import prepare_site
from client.runtime import seeded_model
from client.site_config import SiteConfig, load_site_config
from client.site_dataset import SiteDataset, manifest_is_current
from client.synth import synthesize_site
from client.synth.site import site_is_current
from client.train import TrainConfig, predict_split, train_one_round
from m3fm_model import M3FM
from m3fm_model.pretrained import HEAD_PREFIX, write_asset

from .comparison import pooled_splits, primary_metric

log = logging.getLogger(__name__)

# (profile, seed): seeds far from the demo hospitals' (1-3) and the tests' (< 100).
COHORT = (("hospital_a", 7001), ("hospital_b", 7002), ("hospital_c", 7003))


def _one_site(profile: str, seed: int, patients: int, folder: Path) -> Path:
    config = folder / "site.toml"
    if not site_is_current(folder, patients=patients, seed=seed):
        if folder.exists():
            shutil.rmtree(folder)  # half-written, or labels of an older generator
        synthesize_site(profile, folder, patients=patients, seed=seed, faults=False)
    cfg = load_site_config(config)
    if not manifest_is_current(cfg, "tiny"):
        prepare_site(cfg, preset="tiny")
    return config


def generate_cohort(
    out_dir: Path, patients_per_site: int, workers: int = 2
) -> list[SiteConfig]:
    """Generate and prepare the pretraining sites (skips those already current)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [
            pool.submit(_one_site, p, s, patients_per_site, out_dir / f"{p}-{s}")
            for p, s in COHORT
        ]
        return [load_site_config(j.result()) for j in jobs]


def headline(model: M3FM, data: SiteDataset) -> dict[str, float]:
    """Each task's headline metric (AUC, C-index or accuracy) on ``data``."""
    out = {}
    for task, pred in predict_split(model, data, "cpu").items():
        got = primary_metric(task, flatten_for_reply({task: task_metrics(task, *pred)}))
        if got is not None:
            out[task] = round(got[1], 3)
    return out


def pretrain(
    sites: Sequence[SiteConfig], *, steps: int, batch_size: int, lr: float,
    threads: int, seed: int, chunk: int = 250,
) -> tuple[M3FM, dict]:  # fmt: skip
    """Train the whole tiny model on the sites' train and test exams, no DP.

    The val exams are held out and scored every ``chunk`` steps (printed), so the
    asset's description records what the encoders learned.
    """
    torch.manual_seed(seed)
    model = seeded_model("tiny", seed)
    train = pooled_splits(
        sites, "tiny", {"train", "test"}, modality_dropout=0.2, seed=seed
    )
    val = pooled_splits(sites, "tiny", {"val"}, augment=False, auxiliary=False)
    cfg = TrainConfig(
        scope="all", lr=lr, local_steps=chunk, batch_size=batch_size, seed=seed,
        modality_dropout=0.2, dp=False, device="cpu", threads=threads,
    )  # fmt: skip
    history, done = [], 0
    for done, loss in train_in_chunks(model, train, cfg, steps, "pretrain"):
        scores = headline(model, val)
        history.append({"step": done, "loss": loss, "val": scores})
        print(
            f"step {done}: loss {history[-1]['loss']:.3f} val {scores}",
            flush=True,
        )
    meta = {
        "preset": "tiny", "steps": done, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_exams": len(train), "val_exams": len(val), "tasks": train.tasks,
        "history": history,
    }  # fmt: skip
    return model, meta


def train_in_chunks(
    model: M3FM, data: SiteDataset, cfg: TrainConfig, steps: int, run_id: str
) -> Iterator[tuple[int, float | None]]:
    """Train without DP in rounds of ``cfg.local_steps`` until ``steps`` are done.

    Yields (steps done, the round's training loss) after every round, so the caller
    can score the model in between.
    """
    done = 0
    while done < steps:
        res = train_one_round(
            model, data, cfg, None, run_id=run_id,
            server_round=done // cfg.local_steps + 1,
        )  # fmt: skip
        done += cfg.local_steps
        yield done, res.metrics.get("train-loss")


def asset_state(
    model: torch.nn.Module, tasks: Sequence[str]
) -> dict[str, torch.Tensor]:
    """What the asset holds: everything but the heads of tasks that were not trained."""
    trained = tuple(f"{HEAD_PREFIX}{t}." for t in tasks)
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(HEAD_PREFIX) or k.startswith(trained)
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the cohort, pretrain, write the asset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("pretrain_data"))
    p.add_argument("--patients", type=int, default=250, help="per generated site")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.monotonic()
    sites = generate_cohort(args.data, args.patients)
    print(f"cohort ready in {time.monotonic() - start:.0f} s", flush=True)
    model, meta = pretrain(
        sites, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        threads=args.threads, seed=args.seed,
    )  # fmt: skip
    meta |= {"patients_per_site": args.patients, "cohort": [list(c) for c in COHORT]}
    torch.save(model.state_dict(), args.data / "pretrained-full.pt")  # every head
    path = write_asset("tiny-synthetic", asset_state(model, meta["tasks"]), meta)
    print(f"wrote {path} in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
