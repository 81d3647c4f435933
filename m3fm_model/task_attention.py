"""Task attention: fuses question, registers, CT tokens and clinical-text tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import FusionConfig
from .layers import Block, LearnedTokens, additive_mask, run_blocks


@dataclass(frozen=True)
class FusionLayout:
    """Where each part sits in the fused sequence (for explanations).

    Attributes:
        num_registers: register tokens after the task token.
        image_start: index of the image CLS token (== 1 + num_registers).
        num_image: image tokens including CLS (0 when no CT was given).
        text_start: index of the first clinical-text token.
        num_text: clinical-text tokens (0 when no text was given).
    """

    num_registers: int
    image_start: int
    num_image: int
    text_start: int
    num_text: int


class TaskAttention(nn.Module):
    """Projections to the fusion width, registers and pre-LN blocks over the sequence.

    The sequence is [task token, registers, image CLS + patch tokens, text tokens]; the
    output is the task-token row after the final LayerNorm.
    """

    def __init__(
        self,
        cfg: FusionConfig,
        *,
        image_dim: int,
        text_dim: int,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.image_proj = nn.Linear(image_dim, cfg.dim)
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.question_proj = nn.Linear(text_dim, cfg.dim)
        self.registers = LearnedTokens(cfg.num_registers, cfg.dim, insert_at=1)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.ln_eps)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    @property
    def dim(self) -> int:
        """Fusion width."""
        return self.cfg.dim

    def task_token(self, question_states: torch.Tensor) -> torch.Tensor:
        """Project the question's first-token state (B, Dt) to the task token (B, D)."""
        return self.question_proj(question_states)

    def forward(
        self,
        task_token: torch.Tensor,
        image: torch.Tensor | None,
        image_keep: torch.Tensor | None,
        text: torch.Tensor | None,
        text_keep: torch.Tensor | None,
        *,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], FusionLayout]:
        """Fuse the parts.

        Args:
            task_token: (B, D) projected question token.
            image: (B, 1 + N, Di) CT encoder output, or None when no sample has a CT.
            image_keep: (B,) True = this sample's CT is present (None = all present).
            text: (B, L, Dt) clinical-text states, or None when no sample has text.
            text_keep: (B, L) True = real text token.
            need_weights: also return per-block attention weights (B, H, N, N).

        Returns:
            Fused task-token embedding (B, D), attention weights, sequence layout.
        """
        b = task_token.shape[0]
        parts = [self.registers(task_token[:, None, :])]  # (B, 1 + R, D)
        keep = [
            torch.ones(
                b,
                1 + self.cfg.num_registers,
                dtype=torch.bool,
                device=task_token.device,
            )
        ]
        num_image = num_text = 0
        if image is not None:
            num_image = image.shape[1]
            parts.append(self.image_proj(image))
            present = (
                torch.ones(b, dtype=torch.bool, device=image.device)
                if image_keep is None
                else image_keep.bool()
            )
            keep.append(present[:, None].expand(b, num_image))
        if text is not None:
            if text_keep is None:
                raise ValueError(
                    "text_keep (B, L) is required when text states are given"
                )
            num_text = text.shape[1]
            parts.append(self.text_proj(text))
            keep.append(text_keep.bool())
        x = torch.cat(parts, dim=1)
        bias = additive_mask(torch.cat(keep, dim=1), x.dtype)
        x, weights = run_blocks(
            self.blocks,
            x,
            bias,
            checkpointing=self.activation_checkpointing,
            need_weights=need_weights,
        )
        image_start = 1 + self.cfg.num_registers
        layout = FusionLayout(
            self.cfg.num_registers,
            image_start,
            num_image,
            image_start + num_image,
            num_text,
        )
        return self.norm(x[:, 0]), weights, layout
