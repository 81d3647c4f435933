"""Shared building blocks: leaf parameter modules, attention, MLP, pre-LN block, masks.

Every bare ``nn.Parameter`` lives in a small leaf module whose ``forward`` takes a
batched tensor, so Opacus can compute per-sample gradients for it without pulling its
parent into the functorch fallback.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Additive mask value of the authors' computation; exp(-1e4) underflows to exactly 0 in
# float32, and unlike -inf a fully hidden row stays finite.
MASK_VALUE = -10000.0


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a key mask (B, N) with True = attend into an additive bias (B, 1, 1, N)."""
    bias = (~keep.bool()).to(dtype) * MASK_VALUE
    return bias[:, None, None, :]


class LearnedTokens(nn.Module):
    """Learned tokens inserted into a sequence: (B, N, D) -> (B, K + N, D).

    Used for the CT CLS token (inserted at 0) and the task-attention registers
    (inserted at 1, after the task token).
    """

    def __init__(self, num_tokens: int, dim: int, *, insert_at: int = 0) -> None:
        super().__init__()
        self.insert_at = insert_at
        self.weight = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Insert the tokens into ``x`` (B, N, D) at position ``insert_at``."""
        i = self.insert_at
        tokens = self.weight.expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :i], tokens, x[:, i:]], dim=1)


class SeparablePositionEmbedding(nn.Module):
    """Separable learned 3-D position embedding for [CLS] + (slice, row, col) tokens.

    The spatial table (rows*cols entries, row-major) repeats over slices; the slice table
    repeats over each slice's tokens; the CLS token has its own entry.
    """

    def __init__(self, grid: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        slices, rows, cols = grid
        self.grid = grid
        self.spatial = nn.Parameter(torch.zeros(1, rows * cols, dim))
        self.slice = nn.Parameter(torch.zeros(1, slices, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        for p in (self.spatial, self.slice, self.cls):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the embedding to ``x`` (B, 1 + S*R*C, D)."""
        dim = x.shape[-1]
        grid = self.slice[:, :, None, :] + self.spatial[:, None, :, :]  # (1, S, R*C, D)
        pos = torch.cat([self.cls, grid.reshape(1, -1, dim)], dim=1)
        return x + pos


class Mlp(nn.Module):
    """Transformer MLP: fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to (B, N, D)."""
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v linears (bias) and an output proj.

    Uses ``F.scaled_dot_product_attention`` (fused kernels on GPU) unless the attention
    weights are requested, e.g. for explanations.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(
            1, 2
        )  # (B, H, N, Dh)

    def attend(
        self, x: torch.Tensor, bias: torch.Tensor | None, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention context before the output projection.

        Args:
            x: (B, N, D) input.
            bias: additive key bias broadcastable to (B, H, N, N), or None.
            need_weights: also return the (B, H, N, N) attention probabilities.

        Returns:
            Context (B, N, D) and the weights or None.
        """
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)
            ctx = weights @ v
        else:
            weights = None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        b, h, n, dh = ctx.shape
        return ctx.transpose(1, 2).reshape(b, n, h * dh), weights

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over (B, N, D); returns (output, weights or None)."""
        ctx, weights = self.attend(x, bias, need_weights=need_weights)
        return self.proj(ctx), weights


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, ln_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the block to (B, N, D); returns (output, attention weights or None)."""
        a, weights = self.attn(self.norm1(x), bias, need_weights=need_weights)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, weights


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    checkpointing: bool,
    need_weights: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a stack of blocks, optionally with reentrant activation checkpointing.

    Reentrant checkpointing is used because the non-reentrant variant silently yields no
    per-sample gradients under Opacus hooks. Reentrant checkpointing only back-propagates
    into parameters when its input requires grad, so a frozen prefix gets a detached
    input that does.

    Returns:
        The output (B, N, D) and the list of per-block attention weights (empty unless
        ``need_weights``).
    """
    weights: list[torch.Tensor] = []
    use_ckpt = checkpointing and torch.is_grad_enabled() and not need_weights
    if use_ckpt and not x.requires_grad:
        x = x.detach().requires_grad_()
    for block in blocks:
        if use_ckpt:
            x, _ = torch.utils.checkpoint.checkpoint(block, x, bias, use_reentrant=True)
        else:
            x, w = block(x, bias, need_weights=need_weights)
            if w is not None:
                weights.append(w)
    return x, weights
