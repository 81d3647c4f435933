"""Per-task losses and the multitask total (pure PyTorch, used outside the model)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from m3fm_model.tasks import AnswerKind

__all__ = [
    "HAZARD_YEARS",
    "hazard_from_outputs",
    "hazard_bce",
    "cancer_risk_targets",
    "classification_loss",
    "number3_loss",
    "multitask_loss",
]

HAZARD_YEARS = 6
_ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "softplus": F.softplus}


def _check_2d(name: str, tensor: torch.Tensor, width: int) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (B, {width})")
    if tensor.shape[1] != width:
        raise ValueError(
            f"{name} must have shape (B, {width}), got {tuple(tensor.shape)}"
        )


def hazard_from_outputs(raw: torch.Tensor, activation: str) -> torch.Tensor:
    """Turn a hazard head's 7 raw outputs into 6 cumulative logits.

    ``cum_logit[t] = base + sum_{k <= t} act(hazard[k])`` with ``base = raw[:, 6]``
    and ``hazard = raw[:, :6]``; sigmoid of it is P(cancer by year t+1).

    Args:
        raw: (B, 7) head outputs: 6 yearly hazards, then the base hazard.
        activation: "none" (identity, the authors' behaviour: the curve may
            decrease), "relu" or "softplus" (non-negative hazards, so the
            cumulative risk never decreases).

    Returns:
        (B, 6) cumulative logits.
    """
    _check_2d("raw", raw, HAZARD_YEARS + 1)
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation {activation!r} is not one of {sorted(_ACTIVATIONS)}"
        )
    hazards = _ACTIVATIONS[activation](raw[:, :HAZARD_YEARS])  # (B, 6)
    return raw[:, HAZARD_YEARS:] + torch.cumsum(hazards, dim=1)  # (B, 1) + (B, 6)


def hazard_bce(
    cum_logits: torch.Tensor, targets: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy on the observed years of the cumulative risk.

    Unobserved (censored) years are selected out, so they get exactly zero
    gradient even if their logits are extreme.

    Args:
        cum_logits: (B, 6) cumulative logits.
        targets: (B, 6) float, 1 = cancer by that year, 0 = not.
        observed: (B, 6) bool, True = the year's label is known.

    Returns:
        Scalar: summed BCE over observed entries divided by their count; 0 (still
        attached to ``cum_logits``' graph) when nothing is observed.
    """
    _check_2d("cum_logits", cum_logits, HAZARD_YEARS)
    for name, tensor in (("targets", targets), ("observed", observed)):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != cum_logits.shape:
            raise ValueError(
                f"{name} must be a tensor shaped like cum_logits "
                f"{tuple(cum_logits.shape)}"
            )
    if observed.dtype != torch.bool:
        raise ValueError(f"observed must be a bool tensor, got {observed.dtype}")
    if not observed.any():
        return cum_logits.sum() * 0.0
    return (
        F.binary_cross_entropy_with_logits(
            cum_logits[observed],
            targets[observed].to(cum_logits.dtype),
            reduction="sum",
        )
        / observed.sum()
    )


def cancer_risk_targets(
    event_year: float | None, followup_years: float
) -> tuple[list[float], list[bool]]:
    """Yearly cumulative labels and their observed mask for one exam.

    Year t (1..6) is positive when the cancer was diagnosed at or before t,
    negative when there was no diagnosis by t and follow-up reached t, and
    unobserved (censored) otherwise.

    Args:
        event_year: Years from the scan to the lung-cancer diagnosis, or None.
        followup_years: Years of follow-up after the scan (>= ``event_year``).

    Returns:
        (targets, observed), each 6 long.
    """
    followup = _check_years("followup_years", followup_years)
    event = None if event_year is None else _check_years("event_year", event_year)
    if event is not None and followup < event:
        raise ValueError(
            f"followup_years ({followup}) is shorter than event_year ({event}); "
            "follow-up must extend at least to the diagnosis"
        )
    targets: list[float] = []
    observed: list[bool] = []
    for year in range(1, HAZARD_YEARS + 1):
        positive = event is not None and event <= year
        targets.append(1.0 if positive else 0.0)
        observed.append(positive or followup >= year)
    return targets, observed


def _check_years(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of years, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0 years, got {value!r}")
    return float(value)


def _check_labels(name: str, labels: torch.Tensor, classes: int, ignore: int) -> None:
    """Raise if a non-ignored label is outside 0..classes-1 (CUDA would assert)."""
    if labels.dtype != torch.long:
        raise ValueError(f"{name} must be a long tensor, got {labels.dtype}")
    valid = labels[labels != ignore]
    if valid.numel() and (valid.min() < 0 or valid.max() >= classes):
        raise ValueError(
            f"{name} holds labels outside 0..{classes - 1} "
            f"(use {ignore} for unlabelled entries)"
        )


def classification_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross-entropy over the labelled rows.

    Args:
        logits: (B, C) class logits.
        target: (B,) long class indices, ``ignore_index`` for unlabelled rows.
        ignore_index: Label value that marks an unlabelled row.
        class_weight: Optional (C,) weights; the mean is then weighted, i.e.
            divided by the summed weights of the labelled rows (PyTorch's rule).

    Returns:
        Scalar loss; 0 (attached to the graph) when every row is unlabelled.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (B, C) and target (B,), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    _check_labels("target", target, logits.shape[1], ignore_index)
    if class_weight is not None and class_weight.shape != logits.shape[1:]:
        raise ValueError(
            f"class_weight must have shape ({logits.shape[1]},), "
            f"got {tuple(class_weight.shape)}"
        )
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    weight = None if class_weight is None else class_weight.to(logits)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def number3_loss(
    logits: torch.Tensor, digits: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of the three 10-way digit classifications.

    Args:
        logits: (B, 30): hundreds in [:, 0:10], tens in [:, 10:20], units in
            [:, 20:30].
        digits: (B, 3) long digits 0..9 (see ``tasks.encode_number3``), or
            ``ignore_index`` for unlabelled entries.
        ignore_index: Label value that marks an unlabelled digit.

    Returns:
        Scalar loss averaged over labelled digits; 0 (attached) when none.
    """
    _check_2d("logits", logits, 30)
    if digits.shape != (logits.shape[0], 3):
        raise ValueError(
            f"digits must have shape ({logits.shape[0]}, 3), got {tuple(digits.shape)}"
        )
    _check_labels("digits", digits, 10, ignore_index)
    if not (digits != ignore_index).any():
        return logits.sum() * 0.0
    per_digit = logits.reshape(-1, 3, 10).reshape(-1, 10)  # (B*3, 10)
    return F.cross_entropy(per_digit, digits.reshape(-1), ignore_index=ignore_index)


_TARGET_KEYS = {
    AnswerKind.HAZARD6: ("targets", "observed"),
    AnswerKind.BINARY: ("target",),
    AnswerKind.MULTICLASS: ("target",),
    AnswerKind.NUMBER3: ("digits",),
}


def _task_loss(
    name: str, kind: AnswerKind, logits: torch.Tensor, target: Mapping[str, object]
) -> torch.Tensor | None:
    """One task's loss, or None when the batch has no label for it."""
    missing = [key for key in _TARGET_KEYS[kind] if key not in target]
    if missing:
        raise ValueError(
            f"targets[{name!r}] lacks {missing}; a {kind.value} task needs keys "
            f"{list(_TARGET_KEYS[kind])}"
        )
    if kind is AnswerKind.HAZARD6:
        if logits.dim() == 2 and logits.shape[1] == HAZARD_YEARS + 1:
            raise ValueError(
                f"logits[{name!r}] has 7 raw outputs; pass the (B, 6) cumulative "
                "logits from hazard_from_outputs"
            )
        observed = target["observed"]
        if not observed.any():
            return None
        return hazard_bce(logits, target["targets"], observed)
    if kind is AnswerKind.NUMBER3:
        digits = target["digits"]
        return number3_loss(logits, digits) if (digits != -100).any() else None
    labels = target["target"]
    if not (labels != -100).any():
        return None
    return classification_loss(logits, labels, class_weight=target.get("class_weight"))


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, Mapping[str, torch.Tensor]],
    kinds: Mapping[str, AnswerKind],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of the per-task losses over the tasks labelled in this batch.

    A task without any label in the batch (all ignored / unobserved) is left out
    of the mean entirely, as in the authors' task-parallel training.

    Args:
        logits: Task name -> head output: (B, 6) cumulative logits for hazard6,
            (B, C) for binary/multiclass, (B, 30) for number3.
        targets: Task name -> labels: hazard6 {"targets": (B, 6) float,
            "observed": (B, 6) bool}; binary/multiclass {"target": (B,) long with
            -100 for unlabelled, optional "class_weight": (C,)}; number3
            {"digits": (B, 3) long with -100 for unlabelled}.
        kinds: Task name -> answer kind (e.g. ``{n: TASKS[n].answer_kind}``).

    Returns:
        (total, per-task losses as floats for the tasks that were labelled). When
        no task is labelled, total is 0 attached to the logits' graph.
    """
    losses: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        if name not in logits or name not in kinds:
            raise ValueError(
                f"task {name!r} has targets but no "
                f"{'logits' if name not in logits else 'answer kind'}; pass the "
                "same task names in logits, targets and kinds"
            )
        loss = _task_loss(name, AnswerKind(kinds[name]), logits[name], target)
        if loss is not None:
            losses[name] = loss
    if not losses:
        zero = sum((t.sum() * 0.0 for t in logits.values()), torch.zeros(()))
        return zero, {}
    total = torch.stack(list(losses.values())).mean()
    return total, {name: float(loss.detach()) for name, loss in losses.items()}
