"""Packaged pretrained encoders: loading, integrity check, and the run-config choice."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from client.runtime import seeded_model
from client.synth.heldout import HELDOUT_TASK
from m3fm_model import pretrained
from m3fm_model.pretrained import (
    ENCODER_PREFIXES,
    PretrainedWeightsError,
    asset_info,
    check_init,
    load_encoders,
)
from server.run_config import RunConfig


def test_encoders_loaded_and_the_rest_seeded() -> None:
    plain = seeded_model("tiny", 0).state_dict()
    init = seeded_model("tiny", 0, "tiny-synthetic").state_dict()
    asset = pretrained.read_asset("tiny-synthetic")
    assert set(asset) == {k for k in plain if k.startswith(ENCODER_PREFIXES)}
    for key, value in init.items():
        if key.startswith(ENCODER_PREFIXES):
            assert torch.equal(value, asset[key]), key
        else:  # fusion layers and heads: the run's seeded initialisation
            assert torch.equal(value, plain[key]), key
    changed = [k for k in asset if not torch.equal(asset[k], plain[k])]
    assert len(changed) > len(asset) // 2  # the asset is not the random init


def test_asset_description_says_how_it_was_trained() -> None:
    info = asset_info("tiny-synthetic")
    assert info["preset"] == "tiny" and info["steps"] > 0
    assert "heart" in info["tasks"]  # the labelled tasks are recorded...
    assert HELDOUT_TASK not in info["tasks"]  # ...and never the held-out finding
    assert len(info["sha256"]) == 64


def test_altered_asset_is_refused(tmp_path, monkeypatch) -> None:
    name = pretrained.PRETRAINED["tiny-synthetic"]
    doc = json.loads((pretrained.ASSET_DIR / name).read_text())
    raw = bytearray(base64.b64decode(doc["weights"]))
    raw[-1] ^= 1
    doc["weights"] = base64.b64encode(bytes(raw)).decode()
    (tmp_path / name).write_text(json.dumps(doc))
    monkeypatch.setattr(pretrained, "ASSET_DIR", tmp_path)
    with pytest.raises(PretrainedWeightsError, match="sha256"):
        load_encoders(seeded_model("tiny", 0), "tiny-synthetic")
    (tmp_path / name).unlink()
    with pytest.raises(PretrainedWeightsError, match="missing"):
        load_encoders(seeded_model("tiny", 0), "tiny-synthetic")


def test_unknown_or_mismatched_choice_is_refused() -> None:
    with pytest.raises(PretrainedWeightsError, match="unknown"):
        check_init("imagenet", "tiny")
    with pytest.raises(PretrainedWeightsError, match="preset is 'base'"):
        check_init("tiny-synthetic", "base")
    with pytest.raises(ValueError, match="init-weights"):
        RunConfig.from_mapping({"init-weights": "tiny-synthetic", "preset": "base"})
    assert RunConfig.from_mapping({"init-weights": "tiny-synthetic"}).init_weights
