"""``m3fm-admin``: the consortium admin's command (provisioning, SuperLink, runs, reports)."""

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


def _cmd_provision(args: argparse.Namespace) -> int:
    from .consortium import load_consortium
    from .provision import provision

    consortium = load_consortium(args.consortium)
    out = Path(args.out)
    result = provision(consortium, out)
    print(f"CA: {out / 'ca.pem'} ({'new' if result.ca_created else 'reused'})")
    for label, names in (("new kits", result.created), ("unchanged", result.kept), ("revoked", result.revoked)):  # fmt: skip
        if names:
            print(f"{label}: {', '.join(names)}")
    print(
        f"hand each site its folder {out}/<site>/ (private key inside: send it over a "
        f"secure channel); then `m3fm-admin register --kits {out}` once the SuperLink runs"
    )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from .provision import revoke_site

    revoke_site(Path(args.kits), args.site)
    print(
        f"{args.site} revoked; `m3fm-admin register --kits {args.kits}` unregisters it "
        "from the running SuperLink"
    )
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from .deploy import sync_keys

    done = sync_keys(Path(args.kits), args.connection)
    print(f"registered: {', '.join(done['registered']) or '-'}")
    print(f"unregistered: {', '.join(done['unregistered']) or '-'}")
    return 0


def _cmd_superlink(args: argparse.Namespace) -> int:
    import shlex

    from .deploy import INSECURE_WARNING, flower_env, superlink_command

    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    state = Path(args.state_dir)
    cmd = superlink_command(Path(args.kit), state, args.host, args.insecure)
    print(shlex.join(cmd), flush=True)
    if args.print_only:
        return 0
    state.mkdir(parents=True, exist_ok=True)
    os.execvpe(cmd[0], cmd, flower_env())
    return 1  # not reached


def _deploy_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "provision", help="make the CA and the SuperLink, site and admin kits"
    )
    p.add_argument("--consortium", required=True, help="consortium.toml")
    p.add_argument("--out", required=True, help="kits folder (reused on later runs)")
    p.set_defaults(func=_cmd_provision)
    r = sub.add_parser("register", help="register site keys on the running SuperLink")
    r.add_argument("--kits", required=True)
    r.add_argument("--connection", help="Flower connection name (default: consortium)")
    r.set_defaults(func=_cmd_register)
    v = sub.add_parser("revoke", help="revoke a site's key")
    v.add_argument("--kits", required=True)
    v.add_argument("--site", required=True)
    v.set_defaults(func=_cmd_revoke)
    s = sub.add_parser("superlink", help="start the SuperLink from its kit")
    s.add_argument("--kit", required=True, help="the superlink kit folder")
    s.add_argument(
        "--state-dir", default="superlink-state", help="state database folder"
    )
    s.add_argument("--host", help="bind address (default: the consortium address host)")
    s.add_argument(
        "--insecure", action="store_true", help="no TLS, no auth (tests only)"
    )
    s.add_argument("--print", dest="print_only", action="store_true", help="print only")
    s.set_defaults(func=_cmd_superlink)


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
    _deploy_parsers(sub)
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
