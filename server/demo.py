"""``make demo``: a federated run with DP over three generated hospitals, then a comparison.

Steps: generate the demo hospitals if missing (demo_data/), prepare their caches, run
``flwr run .`` against a simulation SuperLink this script owns (stopped by PID), print
the summary table and where the plots are, then train and evaluate the comparison arms.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from client.prepare import manifest_path, prepare_site
from client.site_config import load_site_config
from client.synth import synthesize_site
from client.synth.profiles import get

from .comparison import ArmPlan, comparison_table, run_comparison, write_comparison
from .report import MetricsHistory, summary_table
from .simulation import flwr_run, local_superlink

ROOT = Path(__file__).resolve().parents[1]
# (profile, patients, seed) of the demo hospitals, from the profiles.
DEMO_SITES = tuple(
    (name, get(name).demo_patients, get(name).demo_seed)
    for name in ("hospital_a", "hospital_b", "hospital_c")
)


def _say(text: str) -> None:
    print(text, flush=True)


def ensure_sites(data_dir: Path) -> list[Path]:
    """Generate and prepare the demo hospitals that are missing; return their configs."""
    configs = []
    for name, patients, seed in DEMO_SITES:
        folder = data_dir / name
        if not (folder / "site.toml").exists():
            if folder.exists():
                shutil.rmtree(folder)  # a half-written earlier attempt
            start = time.monotonic()
            synthesize_site(name, folder, patients=patients, seed=seed)
            _say(
                f"generated {name}: {patients} patients in {time.monotonic() - start:.0f} s"
            )
        config = ROOT / "site_configs" / f"{name}.toml"
        cfg = load_site_config(config)
        if manifest_path(cfg, "tiny").exists():
            _say(f"{name}: already prepared ({manifest_path(cfg, 'tiny')})")
        else:
            index, _ = prepare_site(cfg, preset="tiny")
            _say(
                f"prepared {name}: {sum(e.has_ct for e in index.entries)} CT exams cached"
            )
        configs.append(config)
    return configs


def fresh_demo_ledgers(data_dir: Path) -> None:
    """The demo hospitals are synthetic: each demo run starts with untouched budgets.

    A real site's ledger is never reset; this removes only the ledgers under the
    generated demo_data folder.
    """
    for name, _, _ in DEMO_SITES:
        ledger = data_dir / name / "state" / "privacy_ledger.json"
        if ledger.exists():
            ledger.unlink()


def run_federated(configs: list[Path], run_dir: Path, args: argparse.Namespace) -> int:
    """The federated run in local simulation; returns flwr's exit code."""
    run_config = {
        "num-server-rounds": args.rounds,
        "local-steps": args.local_steps,
        "batch-size": args.batch_size,
        "lr": args.lr,
        "trainable-scope": args.scope,
        "modality-dropout": args.modality_dropout,
        "output-dir": str(run_dir.parent),
        "run-name": run_dir.name,
        "sim-site-configs": ",".join(str(c) for c in configs),
    }
    log = run_dir.parent / f"{run_dir.name}-flwr.log"
    with local_superlink(ROOT / ".flwr") as env:
        _say(
            f"federated run: {args.rounds} rounds, 3 sites, DP-SGD at every site (log: {log})"
        )
        return flwr_run(
            ROOT, env, num_supernodes=len(configs), run_config=run_config, log_path=log
        )


def main(argv: list[str] | None = None) -> int:
    """Run the demo."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scope", default="all")
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=0.2,
        help="share of exams shown without CT, and without text",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="comparison arms trained at the same time (one process and thread each)",
    )
    p.add_argument("--no-compare", action="store_true", help="skip the comparison arms")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    data_dir, run_dir = ROOT / "demo_data", ROOT / "runs" / "demo"
    configs = ensure_sites(data_dir)
    fresh_demo_ledgers(data_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    rc = run_federated(configs, run_dir, args)
    history_file = run_dir / "metrics.json"
    if rc != 0 or not history_file.exists():
        _say(
            f"the federated run failed (flwr exit code {rc}); see {run_dir.parent / 'demo-flwr.log'}"
        )
        return 1
    history = MetricsHistory.from_json(history_file.read_text())
    _say("\n" + summary_table(history))
    _say(
        f"\nplots: {', '.join(sorted(p.name for p in (run_dir / 'plots').glob('*.png')))} in {run_dir / 'plots'}"
    )
    if not args.no_compare:
        compare(configs, run_dir, args)
    _say(f"\ndemo finished in {time.monotonic() - start:.0f} s; outputs in {run_dir}")
    return 0


def compare(configs: list[Path], run_dir: Path, args: argparse.Namespace) -> None:
    """Train and evaluate the comparison arms; write and print comparison.json."""
    _say(
        "\ncomparison on the test splits (federated vs centralised vs each site alone):"
    )
    sites = [load_site_config(c) for c in configs]
    plan = ArmPlan(
        "tiny",
        args.scope,
        args.rounds,
        args.local_steps,
        args.batch_size,
        args.lr,
        0,
        args.modality_dropout,
    )
    result = run_comparison(
        sites,
        plan,
        flower_model=run_dir / "final_model.pt",
        progress=_say,
        workers=args.workers,
    )
    path = write_comparison(result, run_dir / "comparison.json")
    _say("\n" + comparison_table(result))
    _say(f"\ncomparison: {path}")


if __name__ == "__main__":
    sys.exit(main())
