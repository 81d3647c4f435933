"""The M3FM model: CT encoder + text encoder + task attention + per-task heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ModelConfig
from .ct_encoder import CTEncoder
from .heads import TaskHead
from .task_attention import FusionLayout, TaskAttention
from .text_encoder import TextEncoder


@dataclass
class M3FMOutput:
    """Model output.

    Attributes:
        fused: (B, D) task-token embedding after the task encoder's final LayerNorm.
        logits: task -> logits; cancer risk gives (B, 6) cumulative logits, a
            classification task (B, classes), a 3-digit number task (B, 30).
        attentions: per task-attention block (B, H, N, N) weights, when requested.
        layout: where the image and text tokens sit in the fused sequence.
    """

    fused: torch.Tensor
    logits: dict[str, torch.Tensor]
    attentions: list[torch.Tensor] = field(default_factory=list)
    layout: FusionLayout | None = None


class M3FM(nn.Module):
    """Medical multimodal multitask foundation model, composed from built parts.

    Args:
        config: the architecture config the parts were built from.
        ct_encoder: CT tokenizer + ViT.
        text_encoder: RoBERTa-shaped encoder for clinical text and questions.
        task_attention: projections, registers and fusion blocks.
        heads: task name -> head.
    """

    def __init__(
        self,
        config: ModelConfig,
        ct_encoder: CTEncoder,
        text_encoder: TextEncoder,
        task_attention: TaskAttention,
        heads: nn.ModuleDict,
    ) -> None:
        super().__init__()
        self.config = config
        self.ct_encoder = ct_encoder
        self.text_encoder = text_encoder
        self.task_attention = task_attention
        self.heads = heads

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names that have a head."""
        return tuple(self.heads.keys())

    def encode_question(
        self, question_ids: torch.Tensor, question_mask: torch.Tensor
    ) -> torch.Tensor:
        """Task token (B, D) of a question: its first-token state, projected."""
        states = self.text_encoder(question_ids, question_mask)
        return self.task_attention.task_token(states[:, 0])

    def forward_features(
        self,
        *,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        ct: torch.Tensor | None = None,
        spacing_mm: torch.Tensor | None = None,
        ct_present: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], FusionLayout]:
        """Fused task-token embedding (B, D), attention weights and sequence layout.

        See ``forward`` for the arguments.
        """
        if (ct is None) != (spacing_mm is None):
            raise ValueError(
                "ct and spacing_mm must be given together (or both omitted)"
            )
        if (text_ids is None) != (text_mask is None):
            raise ValueError("text_ids and text_mask must be given together")
        b = question_ids.shape[0]
        for name, t in (("ct", ct), ("text_ids", text_ids), ("ct_present", ct_present)):
            if t is not None and t.shape[0] != b:
                raise ValueError(
                    f"{name} has batch {t.shape[0]} but the question has {b}"
                )
        task_token = self.encode_question(question_ids, question_mask)
        image = self.ct_encoder(ct, spacing_mm) if ct is not None else None
        text = self.text_encoder(text_ids, text_mask) if text_ids is not None else None
        return self.task_attention(
            task_token, image, ct_present, text, text_mask, need_weights=need_weights
        )

    def forward_head(
        self, fused: torch.Tensor, tasks: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits of the requested tasks (all heads when ``tasks`` is None)."""
        names = self.tasks if tasks is None else tuple(tasks)
        unknown = [t for t in names if t not in self.heads]
        if unknown:
            raise ValueError(
                f"no head for tasks {unknown}; this model has {list(self.tasks)}"
            )
        return {t: self.heads[t](fused) for t in names}

    def forward(
        self,
        *,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        ct: torch.Tensor | None = None,
        spacing_mm: torch.Tensor | None = None,
        ct_present: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        tasks: Sequence[str] | None = None,
        need_weights: bool = False,
    ) -> M3FMOutput:
        """Answer the question for each exam.

        Args:
            question_ids: (B, Lq) question token ids (pad id 1, bos 0, eos 2).
            question_mask: (B, Lq), True / 1 = token.
            ct: (B, 1, S, H, W) CT crop in [-1, 1]; None when no sample has a CT.
            spacing_mm: (B, 3) voxel spacing after resizing (slice, row, col), with ct.
            ct_present: (B,) True = this sample's CT is real; False hides it (missing CT
                in a mixed batch). None = all present.
            text_ids: (B, L) clinical-text ids; None when no sample has clinical text.
            text_mask: (B, L) True / 1 = token; an all-False row = no text for that sample.
            tasks: heads to evaluate (all when None).
            need_weights: return task-attention weights (explicit attention, slower).

        Returns:
            M3FMOutput with the fused embedding and per-task logits.
        """
        fused, weights, layout = self.forward_features(
            question_ids=question_ids,
            question_mask=question_mask,
            ct=ct,
            spacing_mm=spacing_mm,
            ct_present=ct_present,
            text_ids=text_ids,
            text_mask=text_mask,
            need_weights=need_weights,
        )
        return M3FMOutput(fused, self.forward_head(fused, tasks), weights, layout)


def build_heads(
    config: ModelConfig, outputs: dict[str, int], hazard_tasks: set[str]
) -> nn.ModuleDict:
    """One head per task; tasks in ``hazard_tasks`` get the hazard layer."""
    from .heads import HazardLayer

    heads = {}
    for name in config.tasks:
        hazard = HazardLayer(config.hazard_activation) if name in hazard_tasks else None
        heads[name] = TaskHead(
            config.fusion.dim, config.head_hidden, outputs[name], hazard=hazard
        )
    return nn.ModuleDict(heads)
