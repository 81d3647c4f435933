"""Frozen architecture configs and the named presets (tiny, base, large, huge)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

HAZARD_ACTIVATIONS = ("none", "relu", "softplus")


@dataclass(frozen=True)
class ScaleSpec:
    """One supported CT crop size and the patch (cube) size used to tokenize it.

    Attributes:
        crop: (slices, rows, cols) of the crop fed to the model.
        patch: (slices, rows, cols) of one patch; each crop axis must divide evenly.
    """

    crop: tuple[int, int, int]
    patch: tuple[int, int, int]

    def __post_init__(self) -> None:
        for c, p in zip(self.crop, self.patch, strict=True):
            if p <= 0 or c <= 0 or c % p:
                raise ValueError(
                    f"crop {self.crop} is not divisible by patch {self.patch}: "
                    "every crop axis must be a positive multiple of the patch axis"
                )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of patches along (slice, row, col)."""
        return tuple(c // p for c, p in zip(self.crop, self.patch, strict=True))  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        """Image tokens without the CLS token."""
        s, r, c = self.grid
        return s * r * c

    @property
    def key(self) -> str:
        """Stable module key, e.g. ``"128x448x320"``."""
        return "x".join(str(v) for v in self.crop)


@dataclass(frozen=True)
class CTConfig:
    """CT tokenizer and ViT encoder sizes."""

    dim: int
    depth: int
    heads: int
    scales: tuple[ScaleSpec, ...]
    mlp_ratio: int = 4
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(
                f"CT dim {self.dim} must be divisible by heads {self.heads}"
            )
        if not self.scales:
            raise ValueError("CTConfig needs at least one ScaleSpec")
        crops = [s.crop for s in self.scales]
        if len(set(crops)) != len(crops):
            raise ValueError(f"duplicate crop sizes in scales: {crops}")


@dataclass(frozen=True)
class TextConfig:
    """RoBERTa-shaped text encoder sizes (shared by clinical text and question)."""

    vocab_size: int
    dim: int
    depth: int
    heads: int
    ffn_dim: int
    max_positions: int
    pad_id: int = 1
    ln_eps: float = 1e-5
    clinical_len: int = 160
    question_len: int = 50

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(
                f"text dim {self.dim} must be divisible by heads {self.heads}"
            )
        longest = max(self.clinical_len, self.question_len)
        if self.max_positions < longest + self.pad_id + 1:
            raise ValueError(
                f"max_positions {self.max_positions} is too small for {longest} tokens "
                f"(RoBERTa positions start at pad_id + 1 = {self.pad_id + 1})"
            )


@dataclass(frozen=True)
class FusionConfig:
    """Task-attention (fusion) encoder sizes."""

    dim: int
    depth: int
    heads: int
    num_registers: int = 3
    mlp_ratio: int = 4
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(
                f"fusion dim {self.dim} must be divisible by heads {self.heads}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Whole-model architecture: parts, heads and the ROI -> crop mapping.

    Attributes:
        preset: preset name this config came from (informational).
        ct: CT encoder config.
        text: text encoder config.
        fusion: task-attention config.
        head_hidden: hidden width of every task head MLP.
        tasks: task names that get a head.
        hazard_activation: "none" (authors: hazards unclamped, risk curve may decrease),
            "relu" or "softplus" (non-negative hazards, monotone risk curve).
        roi_crops: pairs (roi, crop) saying which crop size each ROI uses.
        activation_checkpointing: recompute transformer blocks in backward (reentrant,
            which keeps Opacus per-sample gradients correct).
    """

    preset: str
    ct: CTConfig
    text: TextConfig
    fusion: FusionConfig
    head_hidden: int
    tasks: tuple[str, ...]
    hazard_activation: str = "softplus"
    roi_crops: tuple[tuple[str, tuple[int, int, int]], ...] = field(default=())
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.hazard_activation not in HAZARD_ACTIVATIONS:
            raise ValueError(
                f"hazard_activation {self.hazard_activation!r} is not one of "
                f"{HAZARD_ACTIVATIONS}"
            )
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task names: {self.tasks}")
        crops = {s.crop for s in self.ct.scales}
        for roi, crop in self.roi_crops:
            if tuple(crop) not in crops:
                raise ValueError(f"ROI {roi!r} uses crop {crop}, which no CT scale has")

    def crop_for_roi(self, roi: str) -> tuple[int, int, int]:
        """The crop size a given ROI is resized to.

        Raises:
            ValueError: when the ROI has no crop in this config.
        """
        for name, crop in self.roi_crops:
            if name == roi:
                return tuple(crop)  # type: ignore[return-value]
        known = [name for name, _ in self.roi_crops]
        raise ValueError(
            f"ROI {roi!r} has no crop in preset {self.preset}; known: {known}"
        )

    def with_overrides(self, **overrides: object) -> ModelConfig:
        """A copy with top-level fields replaced (unknown names raise TypeError)."""
        return replace(self, **overrides)  # type: ignore[arg-type]


ROBERTA_BASE = TextConfig(
    vocab_size=50265, dim=768, depth=12, heads=12, ffn_dim=3072, max_positions=514
)

# The authors' four scales: a thin slab with 4x16x16 patches, then 16^3 cubes.
AUTHORS_SCALES = (
    ScaleSpec((16, 448, 320), (4, 16, 16)),
    ScaleSpec((128, 320, 448), (16, 16, 16)),
    ScaleSpec((128, 192, 224), (16, 16, 16)),
    ScaleSpec((128, 448, 320), (16, 16, 16)),
)
AUTHORS_ROI_CROPS = (
    ("lung", (128, 448, 320)),
    ("heart", (128, 192, 224)),
    ("chest", (128, 320, 448)),
    ("parenchyma", (128, 448, 320)),
)

TINY_SCALES = (
    ScaleSpec((32, 64, 64), (8, 8, 8)),
    ScaleSpec((32, 48, 48), (8, 8, 8)),
)
TINY_ROI_CROPS = (
    ("lung", (32, 64, 64)),
    ("heart", (32, 48, 48)),
    ("chest", (32, 64, 64)),
    ("parenchyma", (32, 64, 64)),
    # Tiny only: at 3 mm voxels the lung crop's edges look like nodules to the 8^3
    # patch embedding; the authors' presets resolve nodules in the lung crop itself.
    ("lung_masked", (32, 64, 64)),
)


def _authors_preset(name: str, dim: int, depth: int, heads: int) -> ModelConfig:
    return ModelConfig(
        preset=name,
        ct=CTConfig(dim=dim, depth=depth, heads=heads, scales=AUTHORS_SCALES),
        text=ROBERTA_BASE,
        fusion=FusionConfig(dim=dim, depth=4, heads=heads),
        head_hidden=1024,
        tasks=("cancer_risk",),
        roi_crops=AUTHORS_ROI_CROPS,
    )


def tiny_config(vocab_size: int = 2048) -> ModelConfig:
    """Tiny preset for CPU tests and demos (about 0.6 M parameters with 2 heads).

    Args:
        vocab_size: size of the tokenizer vocabulary in use.
    """
    return ModelConfig(
        preset="tiny",
        ct=CTConfig(dim=64, depth=2, heads=4, scales=TINY_SCALES),
        text=TextConfig(
            vocab_size=vocab_size,
            dim=64,
            depth=2,
            heads=4,
            ffn_dim=128,
            max_positions=164,
        ),
        fusion=FusionConfig(dim=64, depth=2, heads=4),
        head_hidden=64,
        tasks=("cancer_risk",),
        roi_crops=TINY_ROI_CROPS,
    )


PRESETS = ("tiny", "base", "large", "huge")


def preset_config(name: str) -> ModelConfig:
    """The config of a named preset with one cancer-risk head.

    Raises:
        ValueError: for an unknown preset name.
    """
    if name == "tiny":
        return tiny_config()
    sizes = {"base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}
    if name not in sizes:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    return _authors_preset(name, *sizes[name])
