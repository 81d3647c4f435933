"""End to end: `flwr run .` in local simulation with three generated hospitals (slow)."""

import json
from pathlib import Path

import pytest
import torch

from client.prepare import prepare_site
from client.runtime import seeded_model
from client.site_config import load_site_config
from client.synth import synthesize_site
from m3fm_model import build_model
from server.simulation import flwr_run, local_superlink

ROOT = Path(__file__).resolve().parents[2]
SITES = (("hospital_a", 10, 1), ("hospital_b", 10, 2), ("hospital_c", 10, 3))


def _sentinels(folder: Path) -> list[str]:
    truth = json.loads((folder / "truth.json").read_text())
    out = []
    for exam in truth["exams"]:
        out += [
            exam["display_name"],
            exam["birth_date"],
            exam["patient_id"],
            exam["exam_id"],
        ]
    return [s for s in out if len(s) >= 6]


def _all_bytes(roots: list[Path]) -> list[tuple[Path, bytes]]:
    files = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file():
                files.append((p, p.read_bytes()))
    return files


@pytest.mark.slow
def test_flwr_run_three_sites_with_dp(tmp_path):
    configs, sentinels = [], []
    for name, patients, seed in SITES:
        folder = tmp_path / name
        synthesize_site(name, folder, patients=patients, seed=seed)
        prepare_site(load_site_config(folder / "site.toml"), preset="tiny")
        configs.append(folder / "site.toml")
        sentinels += _sentinels(folder)
    out, home = tmp_path / "runs", tmp_path / "flwr_home"
    run_config = {
        "num-server-rounds": 2, "local-steps": 3, "batch-size": 4, "output-dir": str(out),
        "run-name": "e2e", "sim-site-configs": ",".join(str(c) for c in configs),
    }  # fmt: skip
    log = tmp_path / "flwr.log"
    with local_superlink(home) as env:
        rc = flwr_run(
            ROOT,
            env,
            num_supernodes=3,
            run_config=run_config,
            log_path=log,
            timeout=900,
        )
    assert rc == 0, log.read_text()[-3000:]
    run = out / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["aggregation"]["applied"] for r in metrics["rounds"])
    state = torch.load(run / "final_model.pt", weights_only=True)
    model = build_model("tiny")
    model.load_state_dict(state, strict=True)
    # the app's default: pretrained encoders (kept), fusion and heads trained
    init = seeded_model("tiny", 0, "tiny-synthetic").state_dict()
    changed = [k for k in state if not torch.equal(state[k], init[k])]
    assert changed and all(k.startswith(("task_attention.", "heads.")) for k in changed)
    card = json.loads((run / "model_card.json").read_text())
    assert set(card["privacy"]) == {"hospital_a", "hospital_b", "hospital_c"}
    # every site spent privacy budget on its own ledger, and never more than it owns
    for name, _, _ in SITES:
        ledger = json.loads(
            (tmp_path / name / "state" / "privacy_ledger.json").read_text()
        )
        assert len(ledger["releases"]) == 2
        assert (
            0
            < card["privacy"][name]["epsilon"]
            <= load_site_config(tmp_path / name / "site.toml").privacy.epsilon
        )
    # nothing the server side wrote or received holds a patient identifier
    server_side = _all_bytes([out, home, log])
    assert any(p.name == "state.db" for p, _ in server_side)
    for path, data in server_side:
        for s in sentinels:
            assert s.encode() not in data, (s, path)
