"""Public builders: ``build_model(preset, tasks=...)`` and building from a config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import PRESETS, ModelConfig, preset_config
from .ct_encoder import CTEncoder
from .m3fm import M3FM, build_heads
from .task_attention import TaskAttention
from .tasks import TASKS, AnswerKind, TaskSpec
from .text_encoder import TextEncoder


def build_from_config(
    config: ModelConfig,
    *,
    num_outputs: Mapping[str, int],
    hazard_tasks: Sequence[str] = (),
) -> M3FM:
    """Build an M3FM from an explicit config and per-task output widths.

    Args:
        config: architecture.
        num_outputs: task -> raw output width of its head (7 for a hazard head).
        hazard_tasks: tasks whose head ends in the 6-year hazard layer.
    """
    missing = [t for t in config.tasks if t not in num_outputs]
    if missing:
        raise ValueError(f"num_outputs lacks tasks {missing}")
    ckpt = config.activation_checkpointing
    ct = CTEncoder(config.ct, activation_checkpointing=ckpt)
    text = TextEncoder(config.text)
    fusion = TaskAttention(
        config.fusion,
        image_dim=ct.dim,
        text_dim=text.dim,
        activation_checkpointing=ckpt,
    )
    heads = build_heads(config, dict(num_outputs), set(hazard_tasks))
    return M3FM(config, ct, text, fusion, heads)


def build_model(
    preset: str = "tiny",
    tasks: Sequence[str] | None = None,
    *,
    registry: Mapping[str, TaskSpec] | None = None,
    **overrides: object,
) -> M3FM:
    """Build M3FM from a named preset with one head per task.

    Args:
        preset: one of "tiny", "base", "large", "huge".
        tasks: task names from the registry (default: every task in the registry,
            the auxiliary clinical-number task included).
        registry: task registry to resolve names (default ``m3fm_model.TASKS``).
        **overrides: top-level ``ModelConfig`` fields to replace, e.g.
            ``hazard_activation="none"`` or ``activation_checkpointing=True``.

    Returns:
        The model, randomly initialised, in training mode.

    Raises:
        ValueError: unknown preset, unknown task or bad override value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    reg = TASKS if registry is None else registry
    names = tuple(reg) if tasks is None else tuple(tasks)
    unknown = [t for t in names if t not in reg]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known tasks: {sorted(reg)}")
    if not names:
        raise ValueError("at least one task is needed")
    fields = set(ModelConfig.__dataclass_fields__)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(
            f"unknown overrides {bad}; ModelConfig fields: {sorted(fields)}"
        )
    config = preset_config(preset).with_overrides(tasks=names, **overrides)
    outputs = {t: reg[t].num_outputs for t in names}
    hazard = [t for t in names if reg[t].answer_kind == AnswerKind.HAZARD6]
    return build_from_config(config, num_outputs=outputs, hazard_tasks=hazard)


def count_parameters(model: M3FM) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())
