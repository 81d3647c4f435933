"""RoBERTa-shaped text encoder shared by the clinical text and the question."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .layers import additive_mask


def roberta_position_ids(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """RoBERTa position ids: pad_id + running count of real tokens; pad_id for padding."""
    real = (ids != pad_id).long()
    return torch.cumsum(real, dim=1) * real + pad_id


class TextEmbeddings(nn.Module):
    """Word + single token-type row + learned position embeddings, then LayerNorm."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.pad_id = cfg.pad_id
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.dim)
        self.token_type_embeddings = nn.Embedding(1, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, D)."""
        pos = roberta_position_ids(ids, self.pad_id)
        token_type = self.token_type_embeddings(torch.zeros_like(ids))
        x = self.word_embeddings(ids) + token_type + self.position_embeddings(pos)
        return self.norm(x)


class SelfAttention(nn.Module):
    """BERT self-attention (query/key/value with bias) followed by dense + add & LN."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Post-LN attention sub-layer over (B, L, D) with additive key bias."""
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(self.query(x)),
            split(self.key(x)),
            split(self.value(x)),
            attn_mask=bias,
        )
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        return self.norm(x + self.dense(ctx))


class TextLayer(nn.Module):
    """One post-LN BERT layer: attention sub-layer, then GELU FFN + add & LN."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.intermediate = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.act = nn.GELU()
        self.output = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Apply the layer to (B, L, D)."""
        x = self.attention(x, bias)
        return self.norm(x + self.output(self.act(self.intermediate(x))))


class TextEncoder(nn.Module):
    """RoBERTa-shaped encoder; no final LayerNorm and no pooler."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(TextLayer(cfg) for _ in range(cfg.depth))

    @property
    def dim(self) -> int:
        """Output width."""
        return self.cfg.dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode token ids.

        Args:
            ids: (B, L) token ids, right-padded with ``pad_id``.
            mask: (B, L), True / 1 = real token.

        Returns:
            (B, L, D) hidden states.
        """
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"text ids and mask must both be (B, L); got {tuple(ids.shape)} and "
                f"{tuple(mask.shape)}"
            )
        if ids.shape[1] > self.cfg.max_positions - self.cfg.pad_id - 1:
            raise ValueError(
                f"text length {ids.shape[1]} exceeds the encoder's "
                f"{self.cfg.max_positions - self.cfg.pad_id - 1} positions"
            )
        x = self.embeddings(ids)
        bias = additive_mask(mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x
