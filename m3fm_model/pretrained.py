"""Packaged pretrained tiny M3FM and the run-config ``init-weights`` choice.

``init-weights = "none"`` starts from the seeded random initialisation;
``"tiny-synthetic"`` loads the tiny preset pretrained on a generated cohort of its own
(``make pretrain`` / ``server/pretrain.py`` writes it; the description stored with the
weights says how): encoders, fusion layers and the heads of the pretraining tasks, as
the authors' released checkpoint holds encoders, task encoder and heads. Heads of tasks
that were not pretrained keep the run's seeded initialisation.
``"tiny-synthetic-encoders"`` loads only the CT and clinical-text encoders from the same
file; the fusion layers and every head are then learned from the sites' data.

The weights are ``torch.save`` bytes, base64 inside a JSON file: Flower builds the app
bundle it ships to the SuperLink from text files only (.py, .toml, .json, ...), and the
ServerApp and ClientApps import this package from that bundle.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)
ASSET_DIR = Path(__file__).resolve().parent / "assets"
ENCODER_PREFIXES = ("ct_encoder.", "text_encoder.")
HEAD_PREFIX = "heads."


@dataclass(frozen=True)
class PretrainedChoice:
    """One ``init-weights`` value and what it loads.

    ``file`` lies in ``ASSET_DIR``; ``prefixes`` are the state-dict key prefixes taken
    from it (``""`` = everything the asset holds).
    """

    file: str
    preset: str
    prefixes: tuple[str, ...]


CHOICES = {
    "tiny-synthetic": PretrainedChoice("tiny-synthetic-m3fm.json", "tiny", ("",)),
    "tiny-synthetic-encoders": PretrainedChoice(
        "tiny-synthetic-m3fm.json", "tiny", ENCODER_PREFIXES
    ),
}
INIT_CHOICES = ("none", *CHOICES)


class PretrainedWeightsError(ValueError):
    """An init-weights choice that does not exist or does not fit the model."""


def _path(name: str) -> Path:
    return ASSET_DIR / CHOICES[name].file


def check_init(name: str, preset: str) -> str:
    """Validate an ``init-weights`` value for a preset; returns it.

    Raises:
        PretrainedWeightsError: Unknown name, or weights of another preset.
    """
    if name not in INIT_CHOICES:
        raise PretrainedWeightsError(
            f"run-config init-weights = {name!r} is unknown; use one of {INIT_CHOICES}"
        )
    if name != "none" and (wanted := CHOICES[name].preset) != preset:
        raise PretrainedWeightsError(
            f"init-weights {name!r} holds {wanted!r} weights but the run's "
            f'preset is {preset!r}; set init-weights = "none" or preset = {wanted!r}'
        )
    return name


def asset_info(name: str) -> dict:
    """The description stored with the weights (how they were trained), no weights."""
    raw = json.loads(_path(name).read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if k != "weights"}


def write_asset(name: str, state: dict[str, torch.Tensor], info: dict) -> Path:
    """Write an asset: ``info`` plus the state's bytes (base64) and their SHA-256."""
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    doc = {
        **info,
        "format": "torch.save bytes, base64",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "weights": base64.b64encode(raw).decode("ascii"),
    }
    path = _path(name)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def read_asset(name: str) -> dict[str, torch.Tensor]:
    """The asset's state dict after checking its SHA-256.

    Raises:
        PretrainedWeightsError: Missing, unreadable or altered file.
    """
    path = _path(name)
    fix = "reinstall the package or rerun `make pretrain`"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        raw = base64.b64decode(doc["weights"], validate=True)
    except FileNotFoundError:
        raise PretrainedWeightsError(f"{path} is missing; {fix}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PretrainedWeightsError(
            f"{path}: field 'weights' is not base64 torch bytes ({type(err).__name__}); {fix}"
        ) from None
    if hashlib.sha256(raw).hexdigest() != doc.get("sha256"):
        raise PretrainedWeightsError(
            f"{path}: the weights do not match field 'sha256'; {fix}"
        )
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def load_pretrained(model: ModuleT, name: str) -> ModuleT:
    """Copy the named pretrained weights into ``model`` (in place; returns it).

    The weights must match the SHA-256 stored with them, so every site and the server
    start from the same bytes. Heads of tasks ``model`` does not have are skipped (a
    model built for a few tasks takes the rest); everything else must fit.

    Raises:
        PretrainedWeightsError: Missing or altered file, or keys/shapes that do not
            match the model.
    """
    if name == "none":
        return model
    path = _path(name)
    own = model.state_dict()
    state = {
        k: v
        for k, v in read_asset(name).items()
        if k.startswith(CHOICES[name].prefixes)
        and (k in own or not k.startswith(HEAD_PREFIX))
    }
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    wrong += [k for k in own if k.startswith(ENCODER_PREFIXES) and k not in state]
    if wrong:
        raise PretrainedWeightsError(
            f"{path} does not fit this model (first mismatching keys: {wrong[:3]}); "
            "build the preset it was trained for"
        )
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    return model
