"""A small prepared generated site, built once per session for the training tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from client.cli import main
from client.site_config import SiteConfig, load_site_config

_SITES: dict[str, Path] = {}


def prepared_site(factory: pytest.TempPathFactory) -> SiteConfig:
    """Config of hospital_a (10 patients, seed 1), synthesized and prepared (tiny)."""
    if "hospital_a" not in _SITES:
        root = factory.getbasetemp() / "prepared_hospital_a"
        logging.getLogger(__name__).info("preparing %s", root)
        main(
            ["synth", "--profile", "hospital_a", "--out", str(root)]
            + ["--patients", "10", "--seed", "1"]
        )
        main(["prepare", "--site-config", str(root / "site.toml")])
        _SITES["hospital_a"] = root / "site.toml"
    return load_site_config(_SITES["hospital_a"])


def saved_tiny_model(
    factory: pytest.TempPathFactory, seed: int, file_name: str = "model.pt"
) -> Path:
    """A randomly initialised tiny model saved as a site-evaluation checkpoint."""
    from client.evaluation.model_io import save_model
    from m3fm_model import build_model

    torch.manual_seed(seed)
    return save_model(
        build_model("tiny"), factory.mktemp("model"), preset="tiny",
        extra_tasks=[], card={}, file_name=file_name,
    )  # fmt: skip
