"""Informative data elements: attention rollout from the task token, CT gradients.

Relevance is propagated through the task-attention blocks with
R <- R + mean_heads(clamp(A, 0)) @ R, starting from the identity; the task-token row of R
scores every CT token (reshaped into the 3-D patch grid) and every clinical-text token
(summed per clinical data type when the paragraph's field spans are known).

Rollout stops at the fusion layers: a CT token has already mixed the whole crop in the
CT encoder's self-attention, so its position need not be where the evidence lies.
``ct_method="gradient"`` scores each CT patch instead by |gradient x input| of the
answer's score (``answer_score``) summed over the patch's voxels, through the whole
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .m3fm import M3FM


@dataclass
class Explanation:
    """Relevance of the inputs for one exam's answer.

    Attributes:
        task: the task whose head was evaluated.
        ct_grid: (S', R', C') relevance per CT patch, or None without CT.
        text_tokens: (L,) relevance per clinical-text token (padding gets 0), or None.
        fields: clinical data type -> summed relevance of its sentence's tokens.
        ct_share: the CT tokens' share of the rollout relevance given to CT and text
            (None without CT).
    """

    task: str
    ct_grid: torch.Tensor | None
    text_tokens: torch.Tensor | None
    fields: dict[str, float] = field(default_factory=dict)
    ct_share: float | None = None

    def ct_volume(self, crop: Sequence[int]) -> torch.Tensor:
        """The patch relevance upsampled (trilinear) to a crop size (S, H, W)."""
        if self.ct_grid is None:
            raise ValueError("this explanation has no CT relevance (no CT was given)")
        grid = self.ct_grid[None, None].float()
        return F.interpolate(
            grid, size=tuple(crop), mode="trilinear", align_corners=False
        )[0, 0]


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Roll attention out over blocks.

    Args:
        attentions: per block (B, H, N, N) attention probabilities.

    Returns:
        (B, N, N) relevance; row i says how much each token contributed to token i.
    """
    if not attentions:
        raise ValueError("no attention weights: call the model with need_weights=True")
    b, _, n, _ = attentions[0].shape
    rel = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(
        b, n, n
    )
    for a in attentions:
        rel = rel + a.clamp(min=0).mean(dim=1) @ rel
    return rel


def field_relevance(
    token_relevance: torch.Tensor,
    token_offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[str, int, int]],
) -> dict[str, float]:
    """Sum token relevance per clinical data type.

    Args:
        token_relevance: (L,) relevance per token position.
        token_offsets: character (start, end) per token ((0, 0) for special tokens).
        spans: (field name, start, end) character span of each field's sentence.

    Returns:
        Field name -> summed relevance of the tokens overlapping its sentence.
    """
    out = {name: 0.0 for name, _, _ in spans}
    for i, (start, end) in enumerate(token_offsets[: token_relevance.shape[0]]):
        if end <= start:
            continue
        for name, s, e in spans:
            if start < e and end > s:
                out[name] += float(token_relevance[i])
                break
    return out


def answer_score(model: M3FM, task: str, logits: torch.Tensor) -> torch.Tensor:
    """(B,) score of the model's own answer, whose gradient says what raised it.

    6-year risk (hazard head): the summed cumulative logits; a 3-digit number (30
    outputs): the summed log-probabilities of the predicted digits; classification:
    the log-probability of the predicted class.
    """
    if model.heads[task].hazard is not None:
        return logits.sum(-1)
    if logits.shape[1] == 30:
        logp = logits.view(logits.shape[0], 3, 10).log_softmax(-1)
        return logp.max(-1).values.sum(-1)
    return logits.log_softmax(-1).max(-1).values


def ct_gradient_relevance(
    model: M3FM, task: str, **inputs: torch.Tensor
) -> torch.Tensor:
    """(B, S', R', C') |gradient x input| of ``answer_score`` summed per CT patch."""
    ct = inputs["ct"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(**{**inputs, "ct": ct}, tasks=[task])
        (grad,) = torch.autograd.grad(
            answer_score(model, task, out.logits[task]).sum(), ct
        )
    voxels = (grad * ct).abs().sum(1)  # (B, S, H, W)
    scale = model.ct_encoder.scale_for(tuple(ct.shape[2:]))
    (g0, g1, g2), (p0, p1, p2) = scale.grid, scale.patch
    b = voxels.shape[0]
    return voxels.reshape(b, g0, p0, g1, p1, g2, p2).sum((2, 4, 6)).detach()


CT_METHODS = ("gradient", "rollout")


@torch.no_grad()
def explain(
    model: M3FM,
    task: str,
    *,
    token_offsets: Sequence[Sequence[tuple[int, int]]] | None = None,
    field_spans: Sequence[Sequence[tuple[str, int, int]]] | None = None,
    ct_method: str = "rollout",
    **inputs: torch.Tensor,
) -> tuple[list[Explanation], dict[str, torch.Tensor]]:
    """Explain the model's answers for a batch.

    Args:
        model: the model (evaluated in eval mode).
        task: task head to evaluate.
        token_offsets: per sample, character offsets of the clinical-text tokens.
        field_spans: per sample, the (field, start, end) spans of the clinical paragraph.
        ct_method: "rollout" or "gradient" (see the module docstring) for ``ct_grid``.
        **inputs: model inputs as for ``M3FM.forward`` (question, ct, text, ...).

    Returns:
        One Explanation per sample and the logits of the task.
    """
    if ct_method not in CT_METHODS:
        raise ValueError(f"ct_method must be one of {CT_METHODS}, not {ct_method!r}")
    was_training = model.training
    model.eval()
    out = model(**inputs, tasks=[task], need_weights=True)
    gradient = None
    if ct_method == "gradient" and inputs.get("ct") is not None:
        gradient = ct_gradient_relevance(model, task, **inputs)
    model.train(was_training)
    rel = attention_rollout(out.attentions)[:, 0]  # (B, N): the task-token row
    lay = out.layout
    assert lay is not None
    results = []
    ct = inputs.get("ct")
    for i in range(rel.shape[0]):
        grid, ct_total = None, 0.0
        if lay.num_image:
            assert ct is not None
            scale = model.ct_encoder.scale_for(tuple(ct.shape[2:]))
            patches = rel[i, lay.image_start + 1 : lay.image_start + lay.num_image]
            grid = patches.reshape(scale.grid)
            ct_total = float(grid.sum())
            if gradient is not None:
                grid = gradient[i]
        tokens, fields = None, {}
        if lay.num_text:
            tokens = rel[i, lay.text_start : lay.text_start + lay.num_text].clone()
            tokens[~inputs["text_mask"][i].bool()] = 0
            if token_offsets is not None and field_spans is not None:
                fields = field_relevance(tokens, token_offsets[i], field_spans[i])
        share = None
        if grid is not None:
            text_total = float(tokens.sum()) if tokens is not None else 0.0
            share = ct_total / (ct_total + text_total) if ct_total + text_total else 0.0
        results.append(Explanation(task, grid, tokens, fields, share))
    return results, out.logits
