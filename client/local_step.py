"""One optimizer step over a batch split into crop-size parts, with or without DP-SGD.

Both steppers run one forward/backward per part (``client.site_batch.collate_parts``).
The private stepper gathers each part's per-sample gradients from Opacus, gives a zero
per-sample gradient to every trainable parameter a part did not reach (the tokenizer of
another crop size, the CT encoder in the part without CT, a head whose task is absent),
concatenates the parts, and lets Opacus' ``DPOptimizer`` clip, sum and noise them. An
empty Poisson batch becomes a noise-only step: skipping it would reveal that the batch
was empty, which the accountant does not cover.

Gradients that depend on no patient data are added after the privatization (DP
post-processing, no privacy cost): the FedProx term ``mu * (w - w_global)`` and the
question-routing loss, which reads only the public task registry.
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from m3fm_model.m3fm import M3FM
from m3fm_model.routing import routing_batch, routing_loss
from m3fm_model.tasks import TASKS, AnswerKind

from .site_batch import IGNORE_INDEX, M3FMBatch, collate_parts
from .site_dataset import SiteDataset

if TYPE_CHECKING:
    from .train import TrainConfig


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def per_example_loss(
    logits: Mapping[str, torch.Tensor], batch: M3FMBatch
) -> torch.Tensor:
    """(B,) loss of each row on its own task.

    ``multitask_loss`` averages each task over the rows of the batch, so one example's
    gradient would depend on which other examples were sampled; DP-SGD's sensitivity
    bound needs a per-sample gradient that depends on that sample alone. The formulas
    are the same per row: hazard BCE over the observed years, cross-entropy, the mean
    of the three digit cross-entropies.

    Args:
        logits: Task -> (B, C) head output (cumulative logits for cancer risk).
        batch: The batch (its targets and tasks).

    Returns:
        Float32 (B,) losses.
    """
    loss = torch.zeros(len(batch), device=batch.question_ids.device)
    for task in batch.tasks:
        x, tgt = logits[task].float(), batch.targets[task]
        kind = TASKS[task].answer_kind
        if kind is AnswerKind.HAZARD6:
            obs = tgt["observed"].float()
            bce = F.binary_cross_entropy_with_logits(
                x, tgt["targets"], reduction="none"
            )
            row = (bce * obs).sum(1) / obs.sum(1).clamp(min=1)
        elif kind is AnswerKind.NUMBER3:
            digits = tgt["digits"]
            ce = F.cross_entropy(
                x.reshape(-1, 10), digits.reshape(-1), reduction="none"
            ).reshape(-1, 3)
            row = ce.sum(1) / (digits != IGNORE_INDEX).sum(1).clamp(min=1)
        else:
            row = F.cross_entropy(x, tgt["target"], reduction="none")
        loss = loss + row
    return loss


class _Router:
    """Question-routing loss over random registry paraphrases (public data)."""

    def __init__(self, model: M3FM, data: SiteDataset, cfg: TrainConfig) -> None:
        registry = {t: TASKS[t] for t in model.tasks}
        self.ids, self.mask, self.labels = routing_batch(
            data.tokenizer, registry, model.config.text.question_len
        )
        self.model, self.num_tasks, self.size = model, len(registry), cfg.routing_batch
        self.params = [p for p in model.text_encoder.parameters() if p.requires_grad]
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def loss(self, device: torch.device) -> torch.Tensor:
        pick = torch.randperm(len(self.labels), generator=self.gen)[: self.size]
        ids, mask = self.ids[pick].to(device), self.mask[pick].to(device)
        return routing_loss(
            self.model, ids, mask, self.labels[pick], self.num_tasks, generator=self.gen
        )


class Stepper(abc.ABC):
    """Shared parts: part losses, data-independent gradients, loss statistics."""

    loader: DataLoader

    def __init__(
        self, model: M3FM, data: SiteDataset, cfg: TrainConfig, device: torch.device
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer: Any = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.anchor = (
            [p.detach().clone() for p in self.params] if cfg.proximal_mu > 0 else None
        )
        text_trains = any(p.requires_grad for p in model.text_encoder.parameters())
        use_router = text_trains and cfg.routing_weight > 0
        self.router = _Router(model, data, cfg) if use_router else None
        self._sums: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    def _losses(self, module: nn.Module, part: M3FMBatch) -> torch.Tensor:
        """(b,) per-example losses of one part (statistics recorded)."""
        with autocast(self.device):
            out = module(**part.model_inputs(), tasks=part.tasks)
        losses = per_example_loss(out.logits, part)
        for task, value in zip(
            part.example_tasks, losses.detach().tolist(), strict=True
        ):
            self._sums[task] += value
            self._counts[task] += 1
        return losses

    def _extra_grads(self) -> None:
        """Add the FedProx and routing gradients to ``p.grad``."""
        if self.anchor is None and self.router is None:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.anchor is not None:
            for p, w_global in zip(self.params, self.anchor, strict=True):
                p.grad.add_(p.detach() - w_global, alpha=self.cfg.proximal_mu)
        if self.router is not None:
            with autocast(self.device):
                loss = self.router.loss(self.device) * self.cfg.routing_weight
            grads = torch.autograd.grad(loss, self.router.params, allow_unused=True)
            for p, g in zip(self.router.params, grads, strict=True):
                if g is not None:
                    p.grad.add_(g.to(p.dtype))

    @abc.abstractmethod
    def step(self, parts: list[M3FMBatch]) -> None:
        """One optimizer step over the parts of a batch."""

    def loss_metrics(self) -> dict[str, float]:
        """``train-loss`` and ``loss.<task>``: mean per-example loss seen so far."""
        total = sum(self._counts.values())
        metrics = {f"loss.{t}": self._sums[t] / n for t, n in self._counts.items()}
        metrics["train-loss"] = sum(self._sums.values()) / total if total else 0.0
        return metrics

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the stepper attached to the model."""


class PlainStepper(Stepper):
    """Non-private AdamW step (mean loss over the batch's examples)."""

    def __init__(
        self,
        model: M3FM,
        data: SiteDataset,
        cfg: TrainConfig,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        super().__init__(model, data, cfg, device)
        self.loader = DataLoader(
            data,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_parts,
        )

    def step(self, parts: list[M3FMBatch]) -> None:
        """Backward each part with its share of the batch mean, then step."""
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(len(part) for part in parts)
        if not total:
            return
        for part in parts:
            (self._losses(self.model, part).sum() / total).backward()
        self._extra_grads()
        self.optimizer.step()

    def close(self) -> None:
        """Free the gradients."""
        self.optimizer.zero_grad(set_to_none=True)


class PrivateStepper(Stepper):
    """DP-SGD step: Opacus per-sample gradients, clipping and Gaussian noise."""

    def __init__(
        self,
        model: M3FM,
        data: SiteDataset,
        cfg: TrainConfig,
        device: torch.device,
        *,
        noise_multiplier: float,
        sample_rate: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__(model, data, cfg, device)
        sampler = UniformWithReplacementSampler(
            num_samples=len(data), sample_rate=sample_rate, generator=generator
        )
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_parts)
        noise_rng = torch.Generator(device=device).manual_seed(secrets.randbits(63))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "secure RNG off" notice
            # poisson_sampling=False: Opacus' DPDataLoader re-wraps the collate with an
            # empty-batch handler that only knows tensors, dicts and lists (TypeError on
            # our typed parts). ``loader`` already samples with the same Poisson sampler
            # (UniformWithReplacementSampler), so False only leaves it untouched.
            self.module, self.optimizer, self.loader = PrivacyEngine(
                accountant="rdp"
            ).make_private(
                module=model,
                optimizer=self.optimizer,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=cfg.max_grad_norm,
                poisson_sampling=False,
                grad_sample_mode=cfg.grad_sample_mode,
                noise_generator=noise_rng,
            )
        # Opacus scales the noisy sum by 1/expected batch; use the exact N * q.
        self.optimizer.expected_batch_size = len(data) * sample_rate

    def gather_grad_samples(self, parts: list[M3FMBatch]) -> None:
        """Backward each part and leave (B, ...) per-sample gradients on every param.

        Parameters a part did not reach get zeros for its rows; an empty batch leaves
        (0, ...) tensors, which Opacus turns into a noise-only step.
        """
        self.optimizer.zero_grad(set_to_none=True)
        stash: list[list[torch.Tensor]] = [[] for _ in self.params]
        for part in parts:
            self._losses(self.module, part).mean().backward()
            for p, kept in zip(self.params, stash, strict=True):
                g = getattr(p, "grad_sample", None)
                assert g is None or isinstance(g, torch.Tensor)
                kept.append(
                    p.new_zeros((len(part), *p.shape)) if g is None else g.to(p.dtype)
                )
                p.grad_sample = None
        for p, kept in zip(self.params, stash, strict=True):
            p.grad_sample = torch.cat(kept) if kept else p.new_zeros((0, *p.shape))

    def step(self, parts: list[M3FMBatch]) -> None:
        """Per-sample gradients -> clip, sum, noise (Opacus) -> extra grads -> AdamW."""
        with warnings.catch_warnings():
            # Opacus' full backward hooks on the first layers, whose inputs need no
            # gradient, trigger a harmless PyTorch notice on every backward.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self.gather_grad_samples(parts)
            if self.optimizer.pre_step():
                with self._hooks_off():
                    self._extra_grads()
                self.optimizer.original_optimizer.step()

    @contextlib.contextmanager
    def _hooks_off(self) -> Iterator[None]:
        self.module.disable_hooks()
        try:
            yield
        finally:
            self.module.enable_hooks()

    def close(self) -> None:
        """Remove Opacus' hooks and per-sample attributes from the model."""
        self.module.cleanup()
        for module in self.model.modules():  # captured inputs (left by an error)
            if hasattr(module, "activations"):
                del module.activations
