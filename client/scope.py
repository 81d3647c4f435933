"""Trainable scopes and parameter groups: what trains, what travels, how it aggregates.

A parameter belongs to the group ``heads.<task>`` when it is part of a task head and to
``trunk`` otherwise. A trainable scope selects parameters by name prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

SCOPES: Mapping[str, tuple[str, ...]] = {
    "all": ("",),
    "fusion-and-heads": ("task_attention.", "heads."),
    "heads": ("heads.",),
}


def check_scope(scope: str) -> str:
    """Return ``scope`` or raise a ValueError listing the valid ones."""
    if scope not in SCOPES:
        raise ValueError(f"trainable scope {scope!r} is not one of {sorted(SCOPES)}")
    return scope


def param_group(name: str) -> str:
    """``heads.<task>`` for a head parameter, ``trunk`` otherwise."""
    if name.startswith("heads."):
        return "heads." + name.split(".")[1]
    return "trunk"


def in_scope(name: str, scope: str) -> bool:
    """Whether a parameter name is in a trainable scope."""
    return any(name.startswith(p) for p in SCOPES[check_scope(scope)])


def scope_names(
    model: nn.Module, scope: str, tasks: Iterable[str] | None = None
) -> list[str]:
    """Names of the parameters that train (and travel) in a scope.

    Args:
        model: the model.
        scope: trainable scope.
        tasks: if given, only these tasks' heads are included (a site trains only the
            heads of the tasks it labels).
    """
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
