"""Per-task output heads and the 6-year hazard layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import HAZARD_ACTIVATIONS

NUM_YEARS = 6


class HazardLayer(nn.Module):
    """Turns 7 raw outputs (6 yearly hazards + a base) into 6 cumulative logits.

    cum_logit[t] = base + sum_{k <= t} act(hazard[k]). With ``activation="none"`` (the
    authors' behaviour) hazards may be negative and the risk curve can decrease; "relu"
    or "softplus" make hazards non-negative so the 6-year risk curve is monotone.
    """

    def __init__(self, activation: str) -> None:
        super().__init__()
        if activation not in HAZARD_ACTIVATIONS:
            raise ValueError(
                f"hazard activation {activation!r} is not one of {HAZARD_ACTIVATIONS}"
            )
        self.activation = activation

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 7) raw outputs -> (B, 6) cumulative logits."""
        if raw.shape[-1] != NUM_YEARS + 1:
            raise ValueError(
                f"hazard input needs {NUM_YEARS + 1} outputs, got {raw.shape[-1]}"
            )
        hazards, base = raw[..., :NUM_YEARS], raw[..., NUM_YEARS:]
        if self.activation == "relu":
            hazards = F.relu(hazards)
        elif self.activation == "softplus":
            hazards = F.softplus(hazards)
        return base + torch.cumsum(hazards, dim=-1)

    def extra_repr(self) -> str:
        """Show the activation in the module print-out."""
        return f"activation={self.activation}"


class TaskHead(nn.Module):
    """Linear(D -> hidden) -> GELU -> LayerNorm(eps 1e-12) -> Linear(hidden -> out)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_outputs: int,
        *,
        hazard: HazardLayer | None = None,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = nn.Linear(hidden, num_outputs)
        self.hazard = hazard

    @property
    def num_outputs(self) -> int:
        """Raw output width (7 for the hazard head)."""
        return self.decoder.out_features

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, D) fused embedding -> (B, C) logits (cumulative logits for hazards)."""
        raw = self.decoder(self.norm(self.act(self.dense(fused))))
        return self.hazard(raw) if self.hazard is not None else raw
