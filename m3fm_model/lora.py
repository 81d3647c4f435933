"""Low-rank adapters (LoRA) on the linear layers of the CT ViT, text encoder and fusion.

``add_lora`` turns every ``nn.Linear`` under the adapted prefixes into a ``LoRALinear``:
the same module (same ``weight``/``bias`` names, so checkpoints of the plain model still
load) plus two bias-free ``nn.Linear`` leaves, ``lora_down`` (r x in) and ``lora_up``
(out x r), with ``y = x W^T + b + scale * up(down(x))``. ``lora_up`` starts at zero, so
an adapted model computes exactly what the plain one does until it is trained.

The adapters are plain ``nn.Linear`` leaves so Opacus computes their per-sample
gradients with its fast Linear sampler (hooks mode); the frozen base weight makes the
``LoRALinear`` itself no trainable layer for Opacus. ``merge_lora_state`` folds trained
adapters into the base weights for export (``W + scale * up @ down``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

ADAPTED_PREFIXES: tuple[str, ...] = ("ct_encoder.", "text_encoder.", "task_attention.")
MARK = ".lora_"  # in every adapter parameter name
DOWN, UP = "lora_down", "lora_up"


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank residual adapter.

    Args:
        in_features: input width.
        out_features: output width.
        rank: adapter rank r (>= 1).
        scale: factor on the adapter's output (alpha / r; 1.0 here).
        bias: whether the base layer has a bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        scale: float = 1.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, not {rank}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rank, self.scale = rank, scale
        self.lora_down = nn.Linear(
            in_features, rank, bias=False, device=device, dtype=dtype
        )
        self.lora_up = nn.Linear(
            rank, out_features, bias=False, device=device, dtype=dtype
        )

    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform ``lora_down`` (as ``nn.Linear``), zero ``lora_up``."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            if self.lora_down.weight.device.type != "meta":
                w = torch.empty(self.lora_down.weight.shape).uniform_(
                    -bound, bound, generator=generator
                )
                self.lora_down.weight.copy_(w)
            self.lora_up.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b + scale * up(down(x))``; x is (..., in_features)."""
        return super().forward(x) + self.lora_up(self.lora_down(x)) * self.scale


def has_lora(model: nn.Module) -> bool:
    """Whether the model carries adapters."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    seed: int = 0,
    prefixes: tuple[str, ...] = ADAPTED_PREFIXES,
) -> int:
    """Replace each ``nn.Linear`` under ``prefixes`` by a ``LoRALinear`` in place.

    The base weights are kept (the same tensors); adapters are drawn from a generator
    seeded with ``seed``, in module order, so every process builds identical ones.

    Args:
        model: the model (e.g. ``build_model(...)``), on any device, meta included.
        rank: adapter rank.
        seed: seed of the adapters' initial values.
        prefixes: module-name prefixes to adapt.

    Returns:
        The number of adapted layers.

    Raises:
        ValueError: the model already has adapters, or rank < 1.
    """
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    gen = torch.Generator().manual_seed(seed)
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear and name.startswith(prefixes)
    ]
    for name, base in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        w = base.weight
        lora = LoRALinear(
            base.in_features, base.out_features, rank,
            bias=base.bias is not None, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        lora.weight, lora.bias = base.weight, base.bias
        lora.reset_adapter(gen)
        setattr(parent, child, lora)
    return len(targets)


def lora_rank(state: Mapping[str, torch.Tensor]) -> int | None:
    """The adapter rank of a state dict, or None when it holds no adapters."""
    for name, t in state.items():
        if name.endswith(f"{DOWN}.weight"):
            return int(t.shape[0])
    return None


def merge_lora_state(
    state: Mapping[str, torch.Tensor], scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Fold adapters into their base weights; the result has no adapter entries.

    Args:
        state: a state dict of an adapted model.
        scale: the adapters' scale (``LoRALinear.scale``).

    Returns:
        A plain-model state dict (loads into ``build_model(...)`` with strict=True).
    """
    merged = {n: t for n, t in state.items() if MARK not in n}
    for name, down in state.items():
        if not name.endswith(f"{DOWN}.weight"):
            continue
        layer = name[: -len(f".{DOWN}.weight")]
        up = state[f"{layer}.{UP}.weight"]
        base = merged[f"{layer}.weight"]
        delta = (up.double() @ down.double()) * scale
        merged[f"{layer}.weight"] = (base.double() + delta).to(base.dtype)
    return merged
