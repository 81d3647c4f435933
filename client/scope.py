"""Trainable scopes and parameter groups: what trains, what travels, how it aggregates.

A parameter belongs to the group ``heads.<task>`` when it is part of a task head and to
``trunk`` otherwise. A trainable scope selects parameters by name prefix, except the LoRA
scopes ``lora`` (rank ``DEFAULT_LORA_RANK``) and ``lora-<r>``: the adapters of
``m3fm_model.lora`` on the CT ViT, text encoder and fusion, plus the heads. The rank is
part of the scope name so that the server and every site build the same adapters from
the one ``trainable-scope`` value of the round instruction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from m3fm_model import build_model
from m3fm_model.lora import MARK, add_lora, has_lora

SCOPES: Mapping[str, tuple[str, ...]] = {
    "all": ("",),
    "fusion-and-heads": ("task_attention.", "heads."),
    "heads": ("heads.",),
}


DEFAULT_LORA_RANK = 8
_LORA = re.compile(r"lora(?:-([1-9][0-9]*))?")


def lora_scope_rank(scope: str) -> int | None:
    """The adapter rank of a LoRA scope (``lora`` -> 8, ``lora-16`` -> 16), else None."""
    match = _LORA.fullmatch(scope)
    if match is None:
        return None
    return int(match[1]) if match[1] else DEFAULT_LORA_RANK


def check_scope(scope: str) -> str:
    """Return ``scope`` or raise a ValueError listing the valid ones."""
    if scope not in SCOPES and lora_scope_rank(scope) is None:
        valid = [*sorted(SCOPES), "lora", "lora-<rank>"]
        raise ValueError(f"trainable scope {scope!r} is not one of {valid}")
    return scope


def prepare_scope(model: nn.Module, scope: str, *, seed: int = 0) -> nn.Module:
    """Give the model what the scope trains: LoRA adapters for a LoRA scope.

    Idempotent: a model that has adapters keeps them. The adapters are seeded, so the
    server and every site attach identical ones. Other scopes leave the model as is.

    Returns:
        The model (changed in place).
    """
    rank = lora_scope_rank(check_scope(scope))
    if rank is not None and not has_lora(model):
        add_lora(model, rank, seed=seed)
    return model


def build_for_scope(
    preset: str, scope: str, *, tasks: Iterable[str] | None = None, seed: int = 0
) -> nn.Module:
    """``build_model(preset, tasks=...)`` prepared for ``scope`` (``prepare_scope``)."""
    kwargs = {} if tasks is None else {"tasks": tuple(tasks)}
    return prepare_scope(build_model(preset, **kwargs), scope, seed=seed)


def param_group(name: str) -> str:
    """``heads.<task>`` for a head parameter, ``trunk`` otherwise."""
    if name.startswith("heads."):
        return "heads." + name.split(".")[1]
    return "trunk"


def in_scope(name: str, scope: str) -> bool:
    """Whether a parameter name is in a trainable scope."""
    if lora_scope_rank(check_scope(scope)) is not None:
        return MARK in name or name.startswith("heads.")
    return any(name.startswith(p) for p in SCOPES[scope])


def scope_names(
    model: nn.Module, scope: str, tasks: Iterable[str] | None = None
) -> list[str]:
    """Names of the parameters that train (and travel) in a scope.

    For a LoRA scope the model is first given its adapters when it has none
    (``prepare_scope``), so a freshly built model lists the adapters it will train.

    Args:
        model: the model.
        scope: trainable scope.
        tasks: if given, only these tasks' heads are included (a site trains only the
            heads of the tasks it labels).
    """
    prepare_scope(model, scope)
    keep = None if tasks is None else {f"heads.{t}" for t in tasks}
    names = []
    for name, _ in model.named_parameters():
        if not in_scope(name, scope):
            continue
        group = param_group(name)
        if keep is not None and group != "trunk" and group not in keep:
            continue
        names.append(name)
    return names


def set_trainable(model: nn.Module, names: Iterable[str]) -> None:
    """Freeze every parameter except ``names``."""
    wanted = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)


def scope_state(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the named parameters."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True) for n in names}


def group_names(names: Iterable[str]) -> dict[str, list[str]]:
    """Parameter names by group."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(param_group(n), []).append(n)
    return out
