"""CT encoder: multi-scale 3-D patch tokenizer, physical-size embedding and a ViT."""

from __future__ import annotations

import torch
from torch import nn

from .config import CTConfig, ScaleSpec
from .layers import Block, LearnedTokens, SeparablePositionEmbedding, run_blocks


def size_embedding_dims(dim: int) -> tuple[int, int, int]:
    """Split of the embedding width over (slice, row, col) axes.

    Rows and columns get ``dim // 6 * 2`` dims each and slices the rest, as in the
    authors' model.
    """
    in_plane = dim // 6 * 2
    return dim - 2 * in_plane, in_plane, in_plane


def physical_size_embedding(
    spacing_mm: torch.Tensor, patch: tuple[int, int, int], dim: int
) -> torch.Tensor:
    """Fixed sin-cos embedding of a patch's physical extent in mm, one per sample.

    Per axis with d dims: omega_i = 10000^(-i / (d/2)), values = extent * omega, and the
    embedding is [sin(values), cos(values)]; the axes are concatenated slice, row, col.
    Computed in float64 for accuracy, returned in the spacing's dtype (float32 when the
    spacing is not floating point).

    Args:
        spacing_mm: (B, 3) voxel spacing after resizing, (slice, row, col) in mm.
        patch: patch size in voxels (slice, row, col).
        dim: embedding width.

    Returns:
        (B, dim) embedding.
    """
    if spacing_mm.ndim != 2 or spacing_mm.shape[1] != 3:
        raise ValueError(
            f"spacing_mm must have shape (B, 3), got {tuple(spacing_mm.shape)}"
        )
    extent = spacing_mm.to(torch.float64) * torch.tensor(
        patch, dtype=torch.float64, device=spacing_mm.device
    )
    parts = []
    for axis, d in enumerate(size_embedding_dims(dim)):
        if d % 2:
            raise ValueError(
                f"size-embedding axis width {d} (from dim {dim}) must be even"
            )
        half = d // 2
        omega = 10000.0 ** (
            -torch.arange(half, dtype=torch.float64, device=spacing_mm.device) / half
        )
        values = extent[:, axis : axis + 1] * omega[None, :]
        parts += [values.sin(), values.cos()]
    out_dtype = spacing_mm.dtype if spacing_mm.is_floating_point() else torch.float32
    return torch.cat(parts, dim=1).to(out_dtype)


class ScaleTokenizer(nn.Module):
    """Tokenizer of one crop size: Conv3d patches, CLS token, separable positions."""

    def __init__(self, scale: ScaleSpec, dim: int) -> None:
        super().__init__()
        self.scale = scale
        self.patch_embed = nn.Conv3d(
            1, dim, kernel_size=scale.patch, stride=scale.patch
        )
        self.cls_token = LearnedTokens(1, dim)
        self.pos_embed = SeparablePositionEmbedding(scale.grid, dim)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, H, W) -> (B, 1 + N, D) tokens in (slice, row, col) order."""
        x = self.patch_embed(ct).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.pos_embed(self.cls_token(x))


class CTEncoder(nn.Module):
    """Multi-scale CT tokenizer + pre-LN ViT + final LayerNorm.

    The output stays at the CT width; the projection to the fusion width belongs to the
    task-attention module.
    """

    def __init__(
        self, cfg: CTConfig, *, activation_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        # Keys are the crop sizes, e.g. "128x448x320".
        self.tokenizers = nn.ModuleDict(
            {s.key: ScaleTokenizer(s, cfg.dim) for s in cfg.scales}
        )
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.ln_eps)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    @property
    def dim(self) -> int:
        """Output width."""
        return self.cfg.dim

    def scale_for(self, crop: tuple[int, ...]) -> ScaleSpec:
        """The scale whose crop matches ``crop`` (S, H, W).

        Raises:
            ValueError: when no configured scale has this crop size.
        """
        key = "x".join(str(int(v)) for v in crop)
        if key not in self.tokenizers:
            supported = [s.crop for s in self.cfg.scales]
            raise ValueError(
                f"CT crop {tuple(crop)} is not supported; supported: {supported}"
            )
        return self.tokenizers[key].scale

    def forward(self, ct: torch.Tensor, spacing_mm: torch.Tensor) -> torch.Tensor:
        """Encode a CT crop.

        Args:
            ct: (B, 1, S, H, W) in [-1, 1]; (S, H, W) must be a configured crop size.
            spacing_mm: (B, 3) voxel spacing after resizing (slice, row, col).

        Returns:
            (B, 1 + N, D) tokens after the final LayerNorm (CLS first).
        """
        if ct.ndim != 5 or ct.shape[1] != 1:
            raise ValueError(
                f"ct must have shape (B, 1, S, H, W), got {tuple(ct.shape)}"
            )
        if spacing_mm.shape != (ct.shape[0], 3):
            raise ValueError(
                f"spacing_mm must have shape ({ct.shape[0]}, 3), got {tuple(spacing_mm.shape)}"
            )
        scale = self.scale_for(tuple(ct.shape[2:]))
        x = self.tokenizers[scale.key](ct)
        size = physical_size_embedding(spacing_mm, scale.patch, self.cfg.dim).to(
            x.dtype
        )
        x = x + size[:, None, :]
        x, _ = run_blocks(
            self.blocks, x, None, checkpointing=self.activation_checkpointing
        )
        return self.norm(x)
