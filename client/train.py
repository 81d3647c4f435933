"""Local training of one federated round (framework-agnostic, no flwr).

``train_one_round`` freezes everything outside the trainable scope, then trains with
AdamW, under DP-SGD when the site config enables it: Opacus per-sample gradients
(``grad_sample_mode="hooks"``), Poisson sampling, per-sample clipping and Gaussian noise
with a noise multiplier planned from the site's privacy ledger, which records the
release before the result is returned. ``predict_split`` runs a model over a split for
the metric code.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from m3fm_model.m3fm import M3FM

from .local_step import PlainStepper, PrivateStepper, Stepper, autocast
from .privacy_ledger import PrivacyBudgetExhausted, PrivacyLedger, plan_noise_multiplier
from .records import Status
from .scope import check_scope, group_names, scope_names, scope_state, set_trainable
from .site_batch import M3FMBatch, collate_parts
from .site_config import SiteConfig
from .site_dataset import SiteDataset

logger = logging.getLogger(__name__)

# "hooks" is Opacus' default and the fastest mode measured for 3-D token models
# (1.3-1.7x a non-private step at >= 129 tokens, performance-notes §2); it is also the only
# mode that keeps per-sample gradients exact under M3FM's reentrant activation
# checkpointing. "ghost" raises with checkpointing and costs grow with tokens squared;
# "ew" fails on the model. "functorch" works but is slower.
GRAD_SAMPLE_MODES = ("hooks", "functorch")
_SITE_OWNED = ("dp", "max_grad_norm", "epsilon_budget", "delta", "device", "threads")


# The reply status codes of docs/records.md (one definition, in client/records.py).
TrainStatus = Status


@dataclass(frozen=True)
class TrainConfig:
    """Options of one local round.

    Attributes:
        scope: Trainable scope (``client.scope.SCOPES``).
        lr: AdamW learning rate.
        local_steps: Optimizer steps this round (noise-only steps of empty Poisson
            batches included).
        batch_size: Expected batch size (DP: sample rate = 1 / round(N / batch_size)).
        seed: Seed of shuffling and augmentation (without DP; under DP sampling and
            noise use secret randomness, see ``train_one_round``).
        proximal_mu: FedProx coefficient; 0 = off.
        modality_dropout: Probability of hiding CT, and of hiding the text (0..0.5).
        dp: DP-SGD on; from the site config only (``for_site``).
        max_grad_norm: Per-sample clipping norm C.
        epsilon_budget: The site's total epsilon.
        delta: The site's delta.
        rounds_left: Rounds still to come, this one included (noise planning).
        device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
        threads: torch intra-op threads.
        grad_sample_mode: Opacus per-sample gradient mode (``GRAD_SAMPLE_MODES``).
        routing_weight: Weight of the question-routing loss (text encoder in scope).
        routing_batch: Registry questions per routing-loss step.
        weight_decay: AdamW weight decay.
    """

    scope: str = "all"
    lr: float = 1e-4
    local_steps: int = 10
    batch_size: int = 8
    seed: int = 0
    proximal_mu: float = 0.0
    modality_dropout: float = 0.0
    dp: bool = True
    max_grad_norm: float = 1.0
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    rounds_left: int = 1
    device: str = "auto"
    threads: int = 1
    grad_sample_mode: str = "hooks"
    routing_weight: float = 0.1
    routing_batch: int = 64
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Reject values that cannot train."""
        check_scope(self.scope)
        for name in ("local_steps", "batch_size", "rounds_left", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1")
        if not (self.lr > 0 and self.max_grad_norm > 0 and self.proximal_mu >= 0):
            raise ValueError("lr and max_grad_norm must be > 0, proximal_mu >= 0")
        if not 0.0 <= self.modality_dropout <= 0.5:
            raise ValueError("modality_dropout must be in [0, 0.5]")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")

    @classmethod
    def for_site(cls, site: SiteConfig, **round_options: Any) -> TrainConfig:
        """Round options (from the server) + privacy and compute from the site config.

        Args:
            site: The site config; it alone decides DP, budget and device.
            **round_options: Other fields (scope, lr, local_steps, ...).

        Returns:
            The config.
        """
        owned = sorted(set(round_options) & set(_SITE_OWNED))
        if owned:
            raise ValueError(f"{owned} come from the site config, not the round")
        p, c = site.privacy, site.compute
        return cls(
            dp=p.enabled,
            max_grad_norm=p.max_grad_norm,
            epsilon_budget=p.epsilon,
            delta=p.delta,
            device=c.device,
            threads=c.threads,
            **round_options,
        )


@dataclass
class TrainResult:
    """Outcome of a local round.

    Attributes:
        status: ``TrainStatus`` code.
        arrays: Parameter name -> updated CPU tensor, every scope parameter of the
            trunk and of the heads of the site's tasks (empty unless OK).
        counts: Group (``trunk``, ``heads.<task>``) -> training examples that used it.
        num_examples: Training examples (dataset size).
        metrics: Reply metric keys of docs/records.md (train-loss, loss.<task>, steps,
            epsilon, delta, noise-multiplier, sample-rate, seconds). Without DP there is
            no epsilon or delta (no guarantee; the server accepts finite values only).
    """

    status: TrainStatus
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_device(spec: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; others as given (checked)."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return device


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson rate 1/k with k = round(N / batch_size), so an epoch is k steps."""
    return 1.0 / max(1, round(num_examples / batch_size))


def trainable_names(model: M3FM, scope: str, data: SiteDataset) -> list[str]:
    """Parameters that train: the travelling ones minus CT parts no task can reach.

    A CT tokenizer whose crop size none of the site's tasks uses is frozen: under DP it
    would otherwise receive pure noise every step. Without any CT task the CT encoder
    and the image projection are frozen for the same reason. Frozen parameters still
    travel (unchanged), since the server expects each returned group complete.
    """
    used = {"x".join(map(str, c)) for c in data.crop_sizes}
    frozen = [
        f"ct_encoder.tokenizers.{k}."
        for k in model.ct_encoder.tokenizers
        if k not in used
    ]
    if not used:
        frozen += ["ct_encoder.", "task_attention.image_proj."]
    names = travelling_names(model, scope, data)
    return [n for n in names if not n.startswith(tuple(frozen))]


def travelling_names(model: M3FM, scope: str, data: SiteDataset) -> list[str]:
    """Scope parameters of the trunk and of the heads of tasks with examples."""
    return scope_names(model, scope, tasks=data.tasks)


def _batches(loader: DataLoader, data: SiteDataset) -> Iterator[list[M3FMBatch]]:
    """Endless batches; each pass over the loader is one epoch (reseeds augmentation)."""
    epoch = 0
    while True:
        data.set_epoch(epoch)
        yield from loader
        epoch += 1


def _refusal(
    status: TrainStatus, start: float, ledger: PrivacyLedger | None
) -> TrainResult:
    metrics = {"seconds": time.perf_counter() - start}
    if ledger is not None:
        metrics["epsilon"], metrics["delta"] = ledger.spent()
    return TrainResult(status, metrics=metrics)


def train_one_round(
    model: M3FM,
    data: SiteDataset,
    cfg: TrainConfig,
    ledger: PrivacyLedger | None,
    *,
    run_id: str,
    server_round: int,
) -> TrainResult:
    """Train the site's scope for ``cfg.local_steps`` steps.

    Under DP, Poisson sampling and the noise draw from secret randomness (never from
    ``cfg.seed``, which the server chooses: knowing it would let the server remove the
    noise). The ledger entry is written before this returns; a budget refusal trains
    nothing and writes nothing. The model is trained in place and left on the device
    with only the trained parameters requiring grad.

    Args:
        model: The model holding the global weights.
        data: The site's training examples (augmentation options are taken from cfg).
        cfg: Round options.
        ledger: The site's privacy ledger (required when ``cfg.dp``).
        run_id: Federated run id (ledger).
        server_round: Server round (ledger).

    Returns:
        The result (status, arrays, counts, metrics).
    """
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    if cfg.dp and ledger is None:
        raise ValueError("DP training needs the site's privacy ledger")
    missing = [t for t in data.tasks if t not in model.heads]
    if missing:
        raise ValueError(f"model has no heads for the site's tasks {missing}")
    if len(data) == 0:
        return _refusal(TrainStatus.NO_DATA, start, ledger if cfg.dp else None)
    rate = sample_rate(len(data), cfg.batch_size)
    try:
        sigma = _plan(ledger, cfg, rate) if cfg.dp else 0.0
    except PrivacyBudgetExhausted as err:
        logger.warning("round %s refused: %s", server_round, err)
        return _refusal(TrainStatus.BUDGET_EXHAUSTED, start, ledger)
    trained = trainable_names(model, cfg.scope, data)
    metrics = _train(model, data, cfg, trained, sigma, rate, server_round)
    if cfg.dp:
        try:  # another process may have spent budget meanwhile: then nothing leaves
            ledger.record(
                run_id=run_id,
                server_round=server_round,
                noise_multiplier=sigma,
                sample_rate=rate,
                steps=cfg.local_steps,
            )
        except PrivacyBudgetExhausted as err:
            logger.warning("round %s result withheld: %s", server_round, err)
            return _refusal(TrainStatus.BUDGET_EXHAUSTED, start, ledger)
        metrics["epsilon"], metrics["delta"] = ledger.spent()
    metrics |= {"noise-multiplier": sigma, "sample-rate": rate}
    metrics["seconds"] = time.perf_counter() - start
    names = travelling_names(model, cfg.scope, data)
    counts = {
        g: len(data) if g == "trunk" else data.task_counts[g.split(".", 1)[1]]
        for g in group_names(names)
    }
    arrays = scope_state(model, names)
    return TrainResult(TrainStatus.OK, arrays, counts, len(data), metrics)


def _plan(ledger: PrivacyLedger, cfg: TrainConfig, rate: float) -> float:
    """Noise multiplier for this round from the ledger and the remaining rounds."""
    return plan_noise_multiplier(
        ledger, rate, cfg.local_steps, cfg.rounds_left, cfg.epsilon_budget, cfg.delta
    )


def _train(
    model: M3FM,
    data: SiteDataset,
    cfg: TrainConfig,
    names: list[str],
    sigma: float,
    rate: float,
    server_round: int,
) -> dict[str, float]:
    """Run the steps; returns the loss metrics and the step count."""
    device = resolve_device(cfg.device)
    model.to(device)
    set_trainable(model, names)
    model.train()
    # Round-dependent but reproducible without DP; secret under DP (see above).
    seed = (cfg.seed * 1_000_003 + server_round) % 2**63
    seed = secrets.randbits(63) if cfg.dp else seed
    view = data.with_options(
        augment=True, modality_dropout=cfg.modality_dropout, seed=seed
    )
    sampler_rng = torch.Generator().manual_seed(seed)
    stepper: Stepper
    if cfg.dp:
        stepper = PrivateStepper(
            model,
            view,
            cfg,
            device,
            noise_multiplier=sigma,
            sample_rate=rate,
            generator=sampler_rng,
        )
    else:
        stepper = PlainStepper(model, view, cfg, device, sampler_rng)
    try:
        batches = _batches(stepper.loader, view)
        for _ in range(cfg.local_steps):
            stepper.step([part.to(device) for part in next(batches)])
    finally:
        stepper.close()
    return {**stepper.loss_metrics(), "steps": float(cfg.local_steps)}


class TaskPredictions(NamedTuple):
    """Model outputs and targets of one task over a split.

    Attributes:
        outputs: (n, C) logits; (n, 6) cumulative logits for cancer risk; (n, 30)
            digit logits for number3.
        targets: As ``multitask_loss`` expects, in numpy: {"target": (n,)} for
            binary/multiclass, {"targets": (n, 6), "observed": (n, 6)} for cancer
            risk, {"digits": (n, 3)} for number3.
    """

    outputs: np.ndarray
    targets: dict[str, np.ndarray]


def predict_split(
    model: M3FM,
    data: SiteDataset,
    device: str | torch.device = "auto",
    *,
    batch_size: int = 16,
) -> dict[str, TaskPredictions]:
    """Run the model (eval mode, no grad) over every example of a split.

    Examples are read without augmentation (canonical question, no dropout).

    Args:
        model: The model.
        data: The split's examples.
        device: Where to run.
        batch_size: Examples per batch.

    Returns:
        Task -> (outputs, targets) in numpy, for the tasks with examples.
    """
    dev = resolve_device(device)
    view = data.with_options(augment=False)
    loader = DataLoader(view, batch_size=batch_size, collate_fn=collate_parts)
    outputs: dict[str, list[np.ndarray]] = {}
    targets: dict[str, dict[str, list[np.ndarray]]] = {}
    was_training = model.training
    model.to(dev).eval()
    try:
        with torch.no_grad(), autocast(dev):
            for part in (part for parts in loader for part in parts):
                out = model(**part.to(dev).model_inputs(), tasks=part.tasks)
                _collect(outputs, targets, out.logits, part)
    finally:
        model.train(was_training)
    return {
        t: TaskPredictions(
            np.concatenate(outputs[t]),
            {k: np.concatenate(v) for k, v in targets[t].items()},
        )
        for t in outputs
    }


def _collect(
    outputs: dict[str, list[np.ndarray]],
    targets: dict[str, dict[str, list[np.ndarray]]],
    logits: dict[str, torch.Tensor],
    part: M3FMBatch,
) -> None:
    """Append each task's own rows of a part's logits and targets."""
    for task in part.tasks:
        keep = torch.tensor([t == task for t in part.example_tasks])
        outputs.setdefault(task, []).append(logits[task].float().cpu()[keep].numpy())
        acc = targets.setdefault(task, {})
        for key, value in part.targets[task].items():
            acc.setdefault(key, []).append(value[keep].numpy())
