"""A site's side of a SecAgg+ round: what it contributes to the masked sum.

Under secure aggregation the server learns only the sum of the sites' vectors, so each
site sends a vector whose sum gives task-aware FedAvg directly: for every array of the
trainable scope, its update (trained - received) times the site's weight for that
array's parameter group, followed by one indicator per group holding that weight. With
``weighted`` mode the weight is the site's example count for the group divided by a
public normaliser (batch size x local steps); with ``clipped`` mode (central DP on) the
whole update is first clipped to L2 <= C and the weight is 1 for every group the site
trained. Summed over sites, update sums divided by indicator sums are the per-group
weighted (or uniform) mean updates — the same result as the plain task-aware average.
A site that refuses or fails sends zeros, which change no group.

Each coordinate is bounded by ``secagg-clip-range`` (SecAgg+ quantizes within that
range); the site clips to it itself and logs how many coordinates it clipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .scope import param_group

logger = logging.getLogger(__name__)


def group_order(names: Sequence[str]) -> list[str]:
    """The parameter groups of ``names`` in the fixed order both ends use."""
    return sorted({param_group(n) for n in names})


def group_weights(
    metrics: Mapping[str, float],
    groups: Sequence[str],
    normaliser: float,
    clipped: bool,
) -> dict[str, float]:
    """Each group's weight from the site's reply counts (``count.<group>``)."""
    out = {}
    for g in groups:
        n = float(metrics.get(f"count.{g}", 0.0))
        out[g] = (1.0 if n > 0 else 0.0) if clipped else n / normaliser
    return out


def contribution(
    names: Sequence[str],
    received: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor] | None,
    weights: Mapping[str, float],
    clip_range: float,
    dp_clip: float | None = None,
) -> list[np.ndarray]:
    """The site's SecAgg+ vector: weighted updates of ``names``, then group indicators.

    ``trained`` None (refusal or failure) gives zeros everywhere.
    """
    groups = group_order(names)
    if trained is None:
        zeros = [np.zeros(tuple(received[n].shape), np.float32) for n in names]
        return zeros + [np.zeros(1, np.float32) for _ in groups]
    deltas = {  # arrays of groups the site did not train stay zero (weight 0)
        n: trained[n].detach().float() - received[n].detach().float()
        if n in trained
        else torch.zeros(tuple(received[n].shape))
        for n in names
    }
    scale = 1.0
    if dp_clip is not None:
        norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas.values())))
        scale = min(1.0, dp_clip / max(norm, 1e-12))
    out, clipped = [], 0
    for n in names:
        x = deltas[n] * (scale * weights[param_group(n)])
        clipped += int((x.abs() > clip_range).sum())
        out.append(x.clamp_(-clip_range, clip_range).numpy().astype(np.float32))
    if clipped:
        logger.warning("secagg: %d coordinates clipped to +-%g", clipped, clip_range)
    return out + [np.array([weights[g]], np.float32) for g in groups]


def combine(
    names: Sequence[str], summed: Sequence[np.ndarray], min_indicator: float = 1e-9
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-group mean updates from the aggregated vector (server side).

    ``summed`` is what SecAgg+ returns (any common scaling of sum cancels). Returns the
    mean update of each array whose group has a positive indicator, and the indicators.
    """
    groups = group_order(names)
    if len(summed) != len(names) + len(groups):
        raise ValueError(
            f"secagg vector has {len(summed)} arrays, expected {len(names) + len(groups)}"
        )
    ind = {g: float(summed[len(names) + i][0]) for i, g in enumerate(groups)}
    updates = {}
    for n, arr in zip(names, summed, strict=False):
        w = ind[param_group(n)]
        if w > min_indicator:
            updates[n] = torch.from_numpy(np.asarray(arr, np.float32) / w)
    return updates, ind
