"""A LoRA run end to end over the in-process grid: what travels, what is exported."""

import json

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


@pytest.fixture(scope="module")
def dp_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_sites")
    tomls = []
    for profile, seed in (("hospital_a", 1), ("hospital_c", 3)):
        synthesize_site(profile, root / profile, patients=6, seed=seed)
        toml = root / profile / "site.toml"
        prepare_site(load_site_config(toml), preset="tiny")
        tomls.append(toml)
    return tomls


def test_lora_scope_sends_adapters_and_heads_and_exports_merged(dp_sites, tmp_path):
    cfg = RunConfig.from_mapping(
        {"num-server-rounds": 2, "local-steps": 2, "batch-size": 4, "min-sites": 1,
         "output-dir": str(tmp_path), "run-name": "lora",
         "trainable-scope": "lora", "lora-rank": 4}
    )  # fmt: skip
    grid = FakeGrid([{"site-config": str(t)} for t in dp_sites], {})
    FederatedLoop(grid, cfg).run()
    train_replies = [r for r in grid.replies if "arrays" in r.content.array_records]
    assert len(train_replies) == 4  # 2 sites x 2 rounds, all trained
    for reply in train_replies:
        names = list(reply.content["arrays"].keys())
        assert names and all(".lora_" in n or n.startswith("heads.") for n in names)
        assert any(".lora_" in n for n in names)
    run = tmp_path / "lora"
    final = torch.load(run / "final_model.pt", weights_only=True)
    torch.manual_seed(0)
    plain = build_model("tiny")
    init = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.load_state_dict(final, strict=True)  # merged: no adapter keys left
    changed = {k for k in final if not torch.equal(final[k], init[k])}
    assert any(k.startswith("task_attention.blocks.") for k in changed)
    assert all(k.endswith(".weight") or k.startswith("heads.") for k in changed)
    adapters = torch.load(run / "lora_adapters.pt", weights_only=True)
    assert adapters and all(".lora_" in k or k.startswith("heads.") for k in adapters)
    card = json.loads((run / "model_card.json").read_text())
    assert card["lora"]["rank"] == 4 and card["trainable-scope"] == "lora-4"
