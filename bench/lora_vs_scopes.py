"""The demo's test metrics and bytes per round for the trainable scopes lora, fusion-and-heads and all.

Each scope trains the same in-process federated arm (server/comparison.py: task-aware
FedAvg over the demo hospitals, no DP, same seeds, rounds and steps) and is evaluated on
the hospitals' test splits; bytes per round are the float32 arrays that travel each way
after round 1, for the tiny preset run here and for the large preset (meta device).

    python bench/lora_vs_scopes.py [--rounds 4] [--local-steps 12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from client.scope import build_for_scope, scope_names
from client.site_config import load_site_config
from server.comparison import ArmPlan, evaluate_arm, primary_metric, train_federated

ROOT = Path(__file__).resolve().parents[1]
SCOPES = ("lora-8", "fusion-and-heads", "all")


def scope_bytes(preset: str, scope: str) -> int:
    """Float32 bytes of the arrays that travel each way after round 1."""
    device = "meta" if preset != "tiny" else "cpu"
    with torch.device(device):
        model = build_for_scope(preset, scope)
    params = dict(model.named_parameters())
    return sum(params[n].numel() * 4 for n in scope_names(model, scope) if n in params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(1)
    sites = [
        load_site_config(ROOT / "site_configs" / f"hospital_{x}.toml") for x in "abc"
    ]
    rows = {}
    for scope in SCOPES:
        plan = ArmPlan("tiny", scope, args.rounds, args.local_steps, 8, 1e-3, 0, 0.2)
        with tempfile.TemporaryDirectory() as scratch:
            model = train_federated(sites, plan, dp=False, scratch=Path(scratch))
        metrics = evaluate_arm(model, sites, plan, resamples=100)
        head = {}
        for task, ci in metrics["ci"].items():
            found = primary_metric(task, metrics["aggregate"])
            if found is not None:
                head[task] = {"metric": found[0], "value": round(found[1], 3), "ci": [round(c, 3) for c in ci]}  # fmt: skip
        rows[scope] = {
            "bytes_tiny": scope_bytes("tiny", scope),
            "bytes_large": scope_bytes("large", scope),
            "test": head,
        }
        print(scope, json.dumps(rows[scope]), flush=True)
    out = ROOT / "bench" / "lora_vs_scopes.json"
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
