"""The federated loop with real site handlers over an in-process grid."""

import json
import re
from pathlib import Path

import pytest
import torch

from client.prepare import prepare_site
from client.site_config import load_site_config
from client.synth import synthesize_site
from m3fm_model import build_model
from server.loop import FederatedLoop
from server.run_config import RunConfig

from .fake_grid import FakeGrid

torch.set_num_threads(1)


def _site(root: Path, profile: str, seed: int, dp: bool) -> Path:
    folder = root / profile
    synthesize_site(profile, folder, patients=10, seed=seed)
    toml = folder / "site.toml"
    if not dp:
        toml.write_text(re.sub(r"enabled = true", "enabled = false", toml.read_text()))
    prepare_site(load_site_config(toml), preset="tiny")
    return toml


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_sites")
    return {
        "plain": [
            _site(root / "plain", "hospital_a", 1, False),
            _site(root / "plain", "hospital_c", 3, False),
        ],
        "dp": [
            _site(root / "dp", "hospital_a", 1, True),
            _site(root / "dp", "hospital_c", 3, True),
        ],
        "root": root,
    }


def _cfg(out: Path, **kw) -> RunConfig:
    base = {
        "num-server-rounds": 2,
        "local-steps": 3,
        "batch-size": 4,
        "min-sites": 1,
        "output-dir": str(out),
        "run-name": "r",
    }
    return RunConfig.from_mapping(base | kw)


def _grid(tomls, run_id=1):
    return FakeGrid([{"site-config": str(t)} for t in tomls], {}, run_id=run_id)


def test_run_updates_model_and_writes_outputs(sites, tmp_path):
    cfg = _cfg(tmp_path)
    grid = _grid(sites["dp"])
    ls = FederatedLoop(grid, cfg).run()
    run = tmp_path / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    torch.manual_seed(0)
    init = build_model("tiny").state_dict()
    final = torch.load(run / "final_model.pt", weights_only=True)
    build_model("tiny").load_state_dict(final, strict=True)
    changed = [k for k in final if not torch.equal(final[k], init[k])]
    assert changed and all(k.startswith(("task_attention.", "heads.")) for k in changed)
    assert not torch.equal(
        final["heads.cancer_risk.decoder.weight"],
        init["heads.cancer_risk.decoder.weight"],
    )
    card = json.loads((run / "model_card.json").read_text())
    assert set(card["privacy"]) == {"hospital_a", "hospital_c"}
    assert all(0 < v["epsilon"] <= 10 for v in card["privacy"].values())
    assert list((run / "plots").glob("*.png"))
    assert ls.round == 2


def test_untrained_head_keeps_its_value(sites, tmp_path):
    FederatedLoop(_grid(sites["plain"]), _cfg(tmp_path)).run()
    torch.manual_seed(0)
    init = build_model("tiny").state_dict()
    final = torch.load(tmp_path / "r" / "final_model.pt", weights_only=True)
    trained = {
        "cancer_risk",
        "nodule_presence",
        "nodule_size",
        "emphysema",
        "heart",
        "covid19",
        "nodule_consistency",
        "atelectasis",
        "fibrosis",
        "clinical_number",
    }
    for task in ("cvd_mortality", "lung_rads", "adenopathy"):
        assert task not in trained
        assert torch.equal(
            final[f"heads.{task}.decoder.weight"], init[f"heads.{task}.decoder.weight"]
        )


def test_resume_after_crash_equals_uninterrupted_run(sites, tmp_path):
    # Sites without DP train deterministically, so the two runs must agree exactly.
    FederatedLoop(
        _grid(sites["plain"]), _cfg(tmp_path / "a", **{"num-server-rounds": 3})
    ).run()
    FederatedLoop(
        _grid(sites["plain"]), _cfg(tmp_path / "b", **{"num-server-rounds": 2})
    ).run()
    resumed = FederatedLoop(
        _grid(sites["plain"], run_id=2),
        _cfg(tmp_path / "b", **{"num-server-rounds": 3, "resume": True}),
    )
    ls = resumed.run()
    assert ls.round == 3
    a = torch.load(tmp_path / "a" / "r" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "r" / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((tmp_path / "b" / "r" / "metrics.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2, 3]


def test_resume_with_changed_config_names_the_key(sites, tmp_path):
    FederatedLoop(
        _grid(sites["plain"]), _cfg(tmp_path, **{"num-server-rounds": 1})
    ).run()
    with pytest.raises(ValueError, match="lr"):
        FederatedLoop(
            _grid(sites["plain"]),
            _cfg(tmp_path, **{"num-server-rounds": 2, "resume": True, "lr": 0.5}),
        ).run()


def test_dropped_site_does_not_stop_the_round(sites, tmp_path):
    grid = _grid(sites["plain"])
    grid.down = {2}
    ls = FederatedLoop(grid, _cfg(tmp_path, **{"num-server-rounds": 1})).run()
    rec = ls.history.rounds[0]
    assert rec.aggregation["applied"] and set(rec.train) == {"hospital_a"}


def test_below_min_sites_leaves_model_unchanged(sites, tmp_path):
    grid = _grid(sites["plain"])
    grid.down = {2}
    ls = FederatedLoop(
        grid,
        _cfg(
            tmp_path, **{"num-server-rounds": 1, "min-sites": 2, "node-wait-timeout": 0}
        ),
    ).run()
    rec = ls.history.rounds[0]
    assert not rec.aggregation["applied"] and "min_sites" in rec.aggregation["reason"]


def test_replies_carry_no_patient_data(sites, tmp_path):
    grid = _grid(sites["dp"])
    FederatedLoop(grid, _cfg(tmp_path, **{"num-server-rounds": 1})).run()
    truth = [
        json.loads((Path(t).parent / "truth.json").read_text()) for t in sites["dp"]
    ]
    sentinels = [
        e[k]
        for t in truth
        for e in t["exams"]
        for k in ("display_name", "birth_date", "exam_id")
    ]
    sentinels += [e["patient_id"] for t in truth for e in t["exams"]]
    for reply in grid.replies:
        content = reply.content
        assert set(content.keys()) <= {"arrays", "metrics", "site"}
        assert set(content["site"].keys()) == {"name"}
        blob = repr(dict(content["metrics"])) + repr(dict(content["site"]))
        if "arrays" in content.array_records:
            blob += " ".join(content["arrays"].keys())
            for arr in content["arrays"].values():
                data = arr.data
                for s in sentinels:
                    assert s.encode() not in data
        for s in sentinels:
            assert s not in blob
        assert all(isinstance(v, int | float) for v in content["metrics"].values())


def test_dp_sample_unit_and_spent_budget_refusal(tmp_path):
    from client.site_dataset import load_manifest

    tomls = [_site(tmp_path / "sites", "hospital_a", 1, True)]
    cfg_site = load_site_config(tomls[0])
    patients = {
        e["patient_id"]
        for e in load_manifest(cfg_site, "tiny")
        if e["split"] == "train"
    }
    ls = FederatedLoop(
        _grid(tomls), _cfg(tmp_path / "a", **{"num-server-rounds": 1})
    ).run()
    sent = ls.history.rounds[0].train[cfg_site.name]
    assert sent["num-examples"] == len(patients)  # one item per patient under DP
    assert not any("loss" in k for k in sent)  # losses stay at the site under DP
    # The run planned its noise to use nearly the whole budget: a second run may only
    # add releases that keep the ledger's epsilon within the site's budget.
    again = FederatedLoop(
        _grid(tomls, run_id=2), _cfg(tmp_path / "b", **{"num-server-rounds": 1})
    ).run()
    second = again.history.rounds[0].train[cfg_site.name]
    assert sent["epsilon"] <= second["epsilon"] <= cfg_site.privacy.epsilon
    assert second["noise-multiplier"] > sent["noise-multiplier"]


def test_unprepared_site_replies_a_code_and_the_round_goes_on(sites, tmp_path):
    import shutil

    # A copy of a site whose cache was never prepared: it must answer with status 2.
    src = Path(sites["plain"][1]).parent
    dst = tmp_path / "unprepared"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "state"))
    grid = _grid([sites["plain"][0], dst / "site.toml"])
    ls = FederatedLoop(grid, _cfg(tmp_path / "run", **{"num-server-rounds": 1})).run()
    rec = ls.history.rounds[0]
    assert rec.train["hospital_c"]["status"] == 2
    assert rec.aggregation["applied"]
    for reply in grid.replies:
        assert set(reply.content.keys()) <= {"arrays", "metrics", "site"}


def test_bfloat16_transfer_halves_the_bytes_and_still_trains(sites, tmp_path):
    cfg = {"num-server-rounds": 1, "trainable-scope": "heads"}
    full = _grid(sites["plain"])
    FederatedLoop(full, _cfg(tmp_path / "f32", **cfg)).run()
    half = _grid(sites["plain"])
    FederatedLoop(
        half, _cfg(tmp_path / "bf16", **cfg, **{"transfer-precision": "bfloat16"})
    ).run()

    def train_bytes(grid):
        return sum(
            len(a.data)
            for r in grid.replies
            if "arrays" in r.content.array_records
            for a in r.content["arrays"].values()
        )

    # every reply array travels as bfloat16 bits (int16): half the float32 payload
    wire = [
        a.numpy().dtype
        for r in half.replies
        if "arrays" in r.content.array_records
        for a in r.content["arrays"].values()
    ]
    assert wire and all(d == "int16" for d in wire)
    assert train_bytes(half) < 0.55 * train_bytes(full)
    a = torch.load(tmp_path / "f32" / "r" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "bf16" / "r" / "final_model.pt", weights_only=True)
    torch.manual_seed(0)
    init = build_model("tiny").state_dict()
    name = "heads.cancer_risk.decoder.weight"
    assert not torch.equal(b[name], init[name])  # the half-precision round trained
    # same seeds, so the two runs differ only by bfloat16 rounding of what travelled
    torch.testing.assert_close(b[name], a[name], rtol=0.05, atol=2e-3)


def test_pretrained_model_starts_the_run_at_the_server_and_the_sites(sites, tmp_path):
    from client import runtime
    from m3fm_model.pretrained import ENCODER_PREFIXES, asset_info, read_asset

    cfg = _cfg(tmp_path, **{"num-server-rounds": 1, "init-weights": "tiny-synthetic"})
    FederatedLoop(_grid(sites["plain"]), cfg).run()
    asset = read_asset("tiny-synthetic")
    final = torch.load(tmp_path / "r" / "final_model.pt", weights_only=True)
    encoders = {k: v for k, v in asset.items() if k.startswith(ENCODER_PREFIXES)}
    # fusion-and-heads trained from the pretrained fusion; the encoders stayed as packaged
    assert all(torch.equal(final[k], v) for k, v in encoders.items())
    key = "task_attention.image_proj.weight"
    assert not torch.equal(final[key], asset[key])
    torch.manual_seed(0)
    seeded = build_model("tiny").state_dict()[key]
    # one round moves the weights a little from the pretrained start, not back to random
    assert (final[key] - asset[key]).norm() < 0.5 * (seeded - asset[key]).norm()
    # the sites built the same starting model (their cached copy of the run's model)
    (cached, site_model), *_ = runtime._MODELS.items()
    assert cached[-1] == "tiny-synthetic"
    state = site_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoders.items())
    card = json.loads((tmp_path / "r" / "model_card.json").read_text())
    assert card["initial-weights"] == {
        "name": "tiny-synthetic",
        "sha256": asset_info("tiny-synthetic")["sha256"],
    }
