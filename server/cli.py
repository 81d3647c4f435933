"""``m3fm-admin``: the consortium admin's command (reports, local simulation runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

APP_DIR = Path(__file__).resolve().parents[1]


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import MetricsHistory, summary_table, write_plots

    metrics = Path(args.run_dir) / "metrics.json"
    if not metrics.is_file():
        print(
            f"error: {metrics} not found; pass the run folder (e.g. runs/demo)",
            file=sys.stderr,
        )
        return 2
    history = MetricsHistory.from_json(metrics.read_text(encoding="utf-8"))
    print(summary_table(history))
    plots = write_plots(history, Path(args.run_dir) / "plots")
    print(f"\n{len(plots)} plots in {Path(args.run_dir) / 'plots'}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulation import flwr_run, local_superlink

    configs = [str(Path(c).resolve()) for c in args.site_config]
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        print(f"error: site configs not found: {missing}", file=sys.stderr)
        return 2
    run_config: dict[str, object] = {
        "sim-site-configs": ",".join(configs),
        "output-dir": str(Path(args.output_dir).resolve()),
    }
    for item in args.run_config or []:
        key, _, value = item.partition("=")
        run_config[key] = value
    out = Path(args.output_dir).resolve()
    with local_superlink(out / ".flwr") as env:
        rc = flwr_run(
            APP_DIR,
            env,
            num_supernodes=len(configs),
            run_config=run_config,
            log_path=out / "flwr.log",
        )
    print(f"flwr run finished with exit code {rc}; log: {out / 'flwr.log'}")
    return rc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``m3fm-admin``."""
    p = argparse.ArgumentParser(
        prog="m3fm-admin", description="Consortium admin tools for federated M3FM."
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "report", help="print a run's summary table and (re)draw its plots"
    )
    r.add_argument("--run-dir", required=True)
    r.set_defaults(func=_cmd_report)
    s = sub.add_parser(
        "simulate", help="run the app in local simulation over site configs"
    )
    s.add_argument(
        "--site-config", action="append", required=True, help="repeat once per site"
    )
    s.add_argument("--output-dir", default="runs")
    s.add_argument(
        "--run-config",
        action="append",
        help="key=value run-config override (repeatable)",
    )
    s.set_defaults(func=_cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m3fm-admin``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
