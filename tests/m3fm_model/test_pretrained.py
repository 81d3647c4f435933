"""Packaged pretrained tiny model: loading, integrity check, and the run-config choice."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from client.runtime import seeded_model
from client.synth.heldout import HELDOUT_TASK
from m3fm_model import pretrained
from m3fm_model.builders import build_model
from m3fm_model.pretrained import (
    ENCODER_PREFIXES,
    HEAD_PREFIX,
    PretrainedWeightsError,
    asset_info,
    check_init,
    load_pretrained,
)
from server.run_config import RunConfig


def test_whole_model_loaded_but_heads_nobody_pretrained() -> None:
    plain = seeded_model("tiny", 0).state_dict()
    init = seeded_model("tiny", 0, "tiny-synthetic").state_dict()
    asset = pretrained.read_asset("tiny-synthetic")
    tasks = set(asset_info("tiny-synthetic")["tasks"])
    trunk = {k for k in plain if not k.startswith(HEAD_PREFIX)}
    heads = {k for k in plain if k.startswith(HEAD_PREFIX) and k.split(".")[1] in tasks}
    assert set(asset) == trunk | heads
    assert any(k.startswith("task_attention.") for k in asset)  # fusion layers too
    for key, value in init.items():
        if key in asset:
            assert torch.equal(value, asset[key]), key
        else:  # heads of tasks no pretraining trained: the run's seeded values
            assert torch.equal(value, plain[key]), key
    assert len(init) > len(asset)  # some of the 17 heads were never pretrained
    changed = [k for k in asset if not torch.equal(asset[k], plain[k])]
    assert len(changed) > len(asset) // 2  # the asset is not the random init


def test_encoders_only_choice_leaves_fusion_and_heads_seeded() -> None:
    plain = seeded_model("tiny", 0).state_dict()
    init = seeded_model("tiny", 0, "tiny-synthetic-encoders").state_dict()
    asset = pretrained.read_asset("tiny-synthetic")
    for key, value in init.items():
        want = asset[key] if key.startswith(ENCODER_PREFIXES) else plain[key]
        assert torch.equal(value, want), key


def test_a_model_of_a_few_tasks_takes_the_rest_of_the_asset() -> None:
    torch.manual_seed(0)
    model = load_pretrained(build_model("tiny", ("heart",)), "tiny-synthetic")
    asset = pretrained.read_asset("tiny-synthetic")
    for key, value in model.state_dict().items():
        assert torch.equal(value, asset[key]), key


def test_asset_description_says_how_it_was_trained() -> None:
    info = asset_info("tiny-synthetic")
    assert info["preset"] == "tiny" and info["steps"] > 0
    assert "heart" in info["tasks"]  # the labelled tasks are recorded...
    assert HELDOUT_TASK not in info["tasks"]  # ...and never the held-out finding
    assert len(info["sha256"]) == 64


def test_altered_asset_is_refused(tmp_path, monkeypatch) -> None:
    name = pretrained.CHOICES["tiny-synthetic"].file
    doc = json.loads((pretrained.ASSET_DIR / name).read_text())
    raw = bytearray(base64.b64decode(doc["weights"]))
    raw[-1] ^= 1
    doc["weights"] = base64.b64encode(bytes(raw)).decode()
    (tmp_path / name).write_text(json.dumps(doc))
    monkeypatch.setattr(pretrained, "ASSET_DIR", tmp_path)
    with pytest.raises(PretrainedWeightsError, match="sha256"):
        load_pretrained(seeded_model("tiny", 0), "tiny-synthetic")
    (tmp_path / name).unlink()
    with pytest.raises(PretrainedWeightsError, match="missing"):
        load_pretrained(seeded_model("tiny", 0), "tiny-synthetic")


def test_unknown_or_mismatched_choice_is_refused() -> None:
    with pytest.raises(PretrainedWeightsError, match="unknown"):
        check_init("imagenet", "tiny")
    with pytest.raises(PretrainedWeightsError, match="preset is 'base'"):
        check_init("tiny-synthetic", "base")
    with pytest.raises(ValueError, match="init-weights"):
        RunConfig.from_mapping({"init-weights": "tiny-synthetic", "preset": "base"})
    assert RunConfig.from_mapping({"init-weights": "tiny-synthetic"}).init_weights
