"""Load a checkpoint for site-local use and check it against the site; save adapted ones.

A checkpoint is a plain state dict (``final_model.pt`` of a federated run, or the output
of ``m3fm-site adapt``) with an optional ``model_card.json`` beside it. The card gives
the preset and, for adapted models, the specs of the added tasks; without a card the
preset must be given. The task list is read from the state dict's heads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from m3fm_model import M3FM, build_model
from m3fm_model.config import PRESETS
from m3fm_model.tasks import TaskSpec

from .task_spec import registry_with, spec_from_dict, spec_to_dict

CARD_NAME = "model_card.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (the message says why and the fix)."""


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    Attributes:
        model: The model, in eval mode on the CPU.
        name: Short display name (file stem, or its folder for ``final_model.pt``).
        path: The checkpoint file.
        preset: Architecture preset.
        tasks: Tasks with a head, in the checkpoint's order.
        registry: Task registry (built-in tasks plus the card's added tasks).
        sha256: SHA-256 of the checkpoint file.
        card: The model card (empty without one).
    """

    model: M3FM
    name: str
    path: Path
    preset: str
    tasks: tuple[str, ...]
    registry: Mapping[str, TaskSpec]
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_card(path: Path) -> dict[str, Any]:
    for candidate in (path.with_suffix(".card.json"), path.parent / CARD_NAME):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except ValueError as err:
                raise CheckpointError(
                    f"model card {candidate} is not JSON: {err}"
                ) from None
    return {}


def _state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --model FILE.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is not a readable state dict ({type(err).__name__}); "
            "pass final_model.pt of a run or the model.pt written by m3fm-site adapt"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"checkpoint {path} does not hold a plain state dict")
    return state


def _head_tasks(state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    tasks: dict[str, None] = {}
    for key in state:
        if key.startswith("heads."):
            tasks.setdefault(key.split(".")[1], None)
    return tuple(tasks)


def load_model(
    path: str | Path, *, preset: str | None = None, name: str | None = None
) -> LoadedModel:
    """Load a checkpoint strictly into a freshly built model.

    Args:
        path: State-dict file.
        preset: Architecture preset; default: the model card's.
        name: Display name (default from the path).

    Returns:
        The loaded model (eval mode, CPU).

    Raises:
        CheckpointError: missing/unreadable file, unknown preset, or weights that do
            not fit the preset (the message names the differing keys).
    """
    path = Path(path).expanduser().resolve()
    state, card = _state(path), _read_card(path)
    chosen = preset or card.get("preset")
    if chosen not in PRESETS:
        raise CheckpointError(
            f"checkpoint {path}: preset unknown ({chosen!r}); pass --preset, one of "
            f"{PRESETS} (a run's model_card.json next to the file gives it)"
        )
    if preset and card.get("preset") not in (None, preset):
        raise CheckpointError(
            f"--preset {preset} contradicts {path.parent / CARD_NAME} "
            f"(preset {card['preset']!r}); drop --preset or use the matching checkpoint"
        )
    extra = [spec_from_dict(s) for s in card.get("extra-tasks", [])]
    registry = registry_with(extra)
    tasks = _head_tasks(state)
    unknown = [t for t in tasks if t not in registry]
    if unknown or not tasks:
        raise CheckpointError(
            f"checkpoint {path} has heads {unknown or 'none'} that no task spec "
            "describes; an adapted model needs its model card (extra-tasks)"
        )
    model = build_model(chosen, tasks, registry=registry)
    result = model.load_state_dict(state, strict=False)
    shapes = [
        k for k, v in state.items()
        if k in model.state_dict() and model.state_dict()[k].shape != v.shape
    ]  # fmt: skip
    if result.missing_keys or result.unexpected_keys or shapes:
        bad = (list(result.missing_keys) + list(result.unexpected_keys) + shapes)[:5]
        raise CheckpointError(
            f"checkpoint {path} does not fit preset {chosen!r} (e.g. keys {bad}); "
            "pass the preset the model was trained with"
        )
    display = name or (path.parent.name if path.stem == "final_model" else path.stem)
    return LoadedModel(
        model.eval(), display, path, chosen, tasks, registry, _sha256(path), card
    )


def check_site_tasks(loaded: LoadedModel, site_tasks: Sequence[str]) -> None:
    """Refuse a model that lacks a head for one of the site's tasks.

    Raises:
        CheckpointError: naming the missing heads and the fix.
    """
    missing = [t for t in site_tasks if t not in loaded.tasks]
    if missing:
        raise CheckpointError(
            f"model {loaded.path} has no heads for the site's tasks {missing} "
            f"(it has {list(loaded.tasks)}); use a model trained on them or remove "
            "them from [site] tasks in the site config"
        )


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def save_model(
    model: M3FM,
    out_dir: Path,
    *,
    preset: str,
    extra_tasks: Sequence[TaskSpec],
    card: Mapping[str, Any],
    file_name: str = "model.pt",
) -> Path:
    """Write a state dict and its model card (preset, added task specs) to a folder.

    Returns:
        The state-dict path; ``load_model`` reads it back with its card.
    """
    path = Path(out_dir) / file_name
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(path, lambda fh: torch.save(state, fh))
    full = {
        **card,
        "preset": preset,
        "tasks": list(model.tasks),
        "extra-tasks": [spec_to_dict(s) for s in extra_tasks],
        "weights": {"file": file_name, "sha256": _sha256(path)},
    }
    text = json.dumps(full, indent=2, sort_keys=True, default=str).encode()
    _atomic(path.with_suffix(".card.json"), lambda fh: fh.write(text))
    return path
