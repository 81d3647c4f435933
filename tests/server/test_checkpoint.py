"""Tests for server.checkpoint: atomic round files, torn-file fallback, resume checks."""

import json
import logging

import pytest
import torch

from m3fm_model import build_model
from server.checkpoint import (
    ResumeMismatch,
    RunCheckpointer,
    config_differences,
    config_hash,
    export_final,
    file_sha256,
)

CONFIG = {
    "num-server-rounds": 5,
    "preset": "tiny",
    "lr": 0.001,
    "resume": False,
    "aggregation": "fedavg",
}


def _state(r):
    return {
        "w": torch.full((64, 8), float(r)),
        "b": torch.arange(5, dtype=torch.float32) + r,
    }


def _save_rounds(ckpt, rounds):
    for r in rounds:
        ckpt.save(
            r,
            _state(r),
            {"optimizer": {"m.w": torch.ones(2) * r}, "central_dp": {"n": r}},
            [{"round": r, "loss": 1.0 / r}],
            CONFIG,
        )


def test_save_and_load_round_trip(tmp_path):
    # Prepare
    ckpt = RunCheckpointer(tmp_path)
    # Execute
    _save_rounds(ckpt, [1, 2])
    got = ckpt.load_latest()
    # Assert
    assert got.round == 2 and got.path.name == "round-0002.pt"
    assert torch.equal(got.global_state["w"], _state(2)["w"])
    assert torch.equal(got.strategy_state["optimizer"]["m.w"], torch.ones(2) * 2)
    assert got.metrics_history[-1] == {"round": 2, "loss": 0.5}
    assert got.run_config == CONFIG
    index = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert index["latest"]["sha256"] == file_sha256(got.path)
    assert index["run_config_sha256"] == config_hash(CONFIG)
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_keeps_only_the_last_k(tmp_path):
    ckpt = RunCheckpointer(tmp_path, keep=3)
    _save_rounds(ckpt, range(1, 6))
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*.pt"))
    assert files == ["round-0003.pt", "round-0004.pt", "round-0005.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_torn_newest_falls_back_to_previous(tmp_path, caplog, damage):
    # Prepare: a crash tore the newest file after it was recorded
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1, 2, 3])
    newest = tmp_path / "checkpoints" / "round-0003.pt"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        newest.unlink()
    # Execute
    with caplog.at_level(logging.ERROR):
        got = ckpt.load_latest()
    # Assert
    assert got.round == 2 and torch.equal(got.global_state["b"], _state(2)["b"])
    assert "round-0003.pt" in caplog.text


def test_failed_write_leaves_the_previous_checkpoint(tmp_path):
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1])
    with pytest.raises(Exception):  # noqa: B017 - the pickling error type is torch's
        ckpt.save(2, _state(2), {"bad": lambda: None}, [], CONFIG)
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert ckpt.load_latest().round == 1


def test_without_an_index_the_newest_readable_file_is_used(tmp_path, caplog):
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1, 2])
    (tmp_path / "checkpoints" / "latest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert ckpt.load_latest().round == 2
    assert "without hash verification" in caplog.text
    assert RunCheckpointer(tmp_path / "empty").load_latest() is None


def test_resumed_run_rewrites_later_rounds(tmp_path):
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1, 2, 3])
    (tmp_path / "checkpoints" / "round-0003.pt").write_bytes(b"torn")
    assert ckpt.load_latest().round == 2
    _save_rounds(ckpt, [3])
    got = ckpt.load_latest()
    assert got.round == 3 and torch.equal(got.global_state["w"], _state(3)["w"])
    index = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert [e["round"] for e in index["checkpoints"]] == [3, 2, 1]


def test_check_resume_names_every_differing_key(tmp_path):
    # Prepare
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1])
    new = dict(CONFIG, lr=0.01, preset="base", resume=True, seed=3)
    # Execute
    with pytest.raises(ResumeMismatch) as info:
        ckpt.check_resume(new)
    # Assert
    assert info.value.differences == {
        "lr": (0.001, 0.01),
        "preset": ("tiny", "base"),
        "seed": ("<absent>", 3),
    }
    msg = str(info.value)
    assert (
        "lr: 0.001 -> 0.01" in msg
        and "preset: 'tiny' -> 'base'" in msg
        and "seed" in msg
    )


def test_check_resume_allows_more_rounds_only(tmp_path):
    ckpt = RunCheckpointer(tmp_path)
    _save_rounds(ckpt, [1])
    assert ckpt.check_resume(dict(CONFIG, resume=True)) == CONFIG
    assert ckpt.check_resume(dict(CONFIG, **{"num-server-rounds": 9})) == CONFIG
    with pytest.raises(ResumeMismatch, match="num-server-rounds: 5 -> 4"):
        ckpt.check_resume(dict(CONFIG, **{"num-server-rounds": 4}))
    with pytest.raises(FileNotFoundError):
        RunCheckpointer(tmp_path / "none").check_resume(CONFIG)


def test_config_differences_ignores_only_listed_keys():
    old = {"a": 1, "b": 2, "rounds": 3}
    new = {"a": 1, "b": 5, "rounds": 4, "c": 0}
    diffs = config_differences(old, new, ignored={"c"}, increasing={"rounds"})
    assert diffs == {"b": (2, 5)}


def test_export_final_loads_strictly(tmp_path):
    # Prepare: a state whose tensors are views of larger storages
    model = build_model("tiny", tasks=("cancer_risk", "heart"))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    big = torch.zeros(2, *state[next(iter(state))].shape)
    first = next(iter(state))
    big[1] = state[first]
    state[first] = big[1]
    # Execute
    model_path, card_path = export_final(
        tmp_path, state, {"preset": "tiny", "rounds": 3}
    )
    # Assert
    fresh = build_model("tiny", tasks=("cancer_risk", "heart"))
    loaded = torch.load(model_path, map_location="cpu", weights_only=True)
    fresh.load_state_dict(loaded, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in state)
    assert loaded[first].untyped_storage().nbytes() == state[first].numel() * 4
    card = json.loads(card_path.read_text())
    assert card["preset"] == "tiny" and card["weights"]["sha256"] == file_sha256(
        model_path
    )
    assert card["weights"]["num_parameters"] == sum(t.numel() for t in state.values())
