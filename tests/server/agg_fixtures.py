"""Shared builders for the validation and aggregation tests: a tiny model, site replies."""

from __future__ import annotations

import numpy as np
import torch

from client.scope import param_group, scope_names
from m3fm_model import build_model

TASKS = ("cancer_risk", "heart", "covid19")
SCOPE = "fusion-and-heads"


def tiny_global() -> dict[str, torch.Tensor]:
    """Travelling part of a tiny model's state (fusion + heads), float32."""
    torch.manual_seed(0)
    model = build_model("tiny", tasks=TASKS)
    names = scope_names(model, SCOPE)
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in names}


def reply_arrays(
    global_state: dict[str, torch.Tensor],
    tasks: tuple[str, ...],
    *,
    scale: float = 1e-3,
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """A site's reply: trunk plus its tasks' heads, perturbed from the global values."""
    gen = torch.Generator().manual_seed(seed)
    keep = {"trunk", *(f"heads.{t}" for t in tasks)}
    out = {}
    for name, g in global_state.items():
        if param_group(name) in keep:
            noise = torch.randn(g.shape, generator=gen) * scale
            out[name] = (g + noise).numpy()
    return out


def reply_metrics(tasks: tuple[str, ...], trunk: int = 20, head: int = 10) -> dict:
    """Allowed metrics with per-group counts."""
    metrics: dict = {"status": 0, "num-examples": trunk, "count.trunk": trunk}
    for t in tasks:
        metrics[f"count.heads.{t}"] = head
        metrics[f"loss.{t}"] = 0.5
    metrics.update({"train-loss": 0.7, "steps": 3, "epsilon": 1.2, "delta": 1e-5})
    return metrics
