"""What a site does for one instruction, independent of Flower (testable directly)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .metrics import flatten_for_reply, task_metrics
from .privacy_ledger import PrivacyLedger
from .records import Instruction, Status
from .runtime import cached_site, global_model, load_arrays, site_config_path
from .scope import prepare_scope
from .site_config import SiteConfig
from .site_dataset import ManifestError, build_site_dataset
from .train import TrainConfig, predict_split, train_one_round

logger = logging.getLogger(__name__)


@dataclass
class SiteRequest:
    """One instruction as the site sees it."""

    run_id: str
    node_config: dict[str, Any]
    run_config: dict[str, Any]
    instruction: dict[str, Any]
    arrays: dict[str, torch.Tensor]


@dataclass
class SiteOutcome:
    """What goes back: the site's name, numeric metrics, optional arrays."""

    site: str
    metrics: dict[str, float]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)


def site_for(req: SiteRequest) -> SiteConfig:
    """The site config named by the node config (or the simulation partition)."""
    raw = str(req.run_config.get("sim-site-configs", ""))
    sims = [Path(p.strip()).expanduser().resolve() for p in raw.split(",") if p.strip()]
    return cached_site(site_config_path(req.node_config, sims))


def _model(req: SiteRequest, instr: Instruction):  # noqa: ANN202
    model = global_model(req.run_id, instr.preset, instr.seed, instr.init_weights)
    prepare_scope(model, instr.trainable_scope)  # LoRA adapters before their arrays
    load_arrays(model, req.arrays)
    return model


def train_site(req: SiteRequest) -> SiteOutcome:
    """Train one round; a refusal or missing data gives a status and no arrays."""
    site = site_for(req)
    instr = Instruction.from_record(req.instruction)
    try:
        data = build_site_dataset(
            site,
            instr.preset,
            "train",
            modality_dropout=instr.modality_dropout,
            seed=instr.seed + instr.server_round,
            per_patient=site.privacy.enabled,
        )
    except ManifestError:
        logger.exception(
            "site %s is not prepared for preset %s", site.name, instr.preset
        )
        return SiteOutcome(site.name, {"status": int(Status.NO_DATA)})
    model = _model(req, instr)
    cfg = TrainConfig(
        scope=instr.trainable_scope, lr=instr.lr, local_steps=instr.local_steps, batch_size=instr.batch_size,
        seed=instr.seed + instr.server_round, proximal_mu=instr.proximal_mu, modality_dropout=instr.modality_dropout,
        dp=site.privacy.enabled, max_grad_norm=site.privacy.max_grad_norm, epsilon_budget=site.privacy.epsilon,
        delta=site.privacy.delta, rounds_left=max(instr.num_rounds - instr.server_round + 1, 1),
        device=site.compute.device, threads=site.compute.threads,
    )  # fmt: skip
    ledger = None
    if site.privacy.enabled:
        ledger = PrivacyLedger(
            site.state_dir / "privacy_ledger.json",
            epsilon_budget=site.privacy.epsilon,
            delta=site.privacy.delta,
        )
    result = train_one_round(
        model, data, cfg, ledger, run_id=req.run_id, server_round=instr.server_round
    )
    metrics: dict[str, float] = {
        "status": int(result.status),
        "num-examples": result.num_examples,
    }
    metrics |= {f"count.{g}": n for g, n in result.counts.items()}
    metrics |= result.metrics
    if site.privacy.enabled:
        # Training losses are exact statistics of the site's patients that DP-SGD does not
        # cover; under DP they stay in the site's log.
        logger.info(
            "round %d losses: %s",
            instr.server_round,
            {k: v for k, v in metrics.items() if "loss" in k},
        )
        metrics = {k: v for k, v in metrics.items() if "loss" not in k}
    return SiteOutcome(site.name, metrics, result.arrays if result.status == 0 else {})


def evaluate_site(req: SiteRequest) -> SiteOutcome:
    """Evaluate the received global model on the requested split."""
    start = time.perf_counter()
    site = site_for(req)
    instr = Instruction.from_record(req.instruction)
    try:
        data = build_site_dataset(
            site, instr.preset, instr.split, augment=False, auxiliary=False
        )
    except ManifestError:
        logger.exception(
            "site %s is not prepared for preset %s", site.name, instr.preset
        )
        return SiteOutcome(site.name, {"status": int(Status.NO_DATA)})
    model = _model(req, instr)
    torch.set_num_threads(site.compute.threads)
    preds = predict_split(model, data, site.compute.device)
    per_task = {t: task_metrics(t, p.outputs, p.targets) for t, p in preds.items()}
    metrics: dict[str, float] = {"status": 0, "num-examples": len(data)}
    metrics |= flatten_for_reply(per_task)
    metrics["seconds"] = time.perf_counter() - start  # the round-overhead benchmark
    return SiteOutcome(site.name, metrics)
