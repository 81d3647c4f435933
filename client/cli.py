"""``m3fm-site``: the hospital's command (synth, validate, prepare)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

logger = logging.getLogger("m3fm-site")


def _progress(desc: str) -> Any:
    from tqdm import tqdm

    def wrap(items: Iterable[Any], total: int) -> Iterable[Any]:
        return tqdm(items, total=total, desc=desc, unit="exam", file=sys.stderr)

    return wrap


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synthesize_site

    path = synthesize_site(
        args.profile,
        Path(args.out),
        patients=args.patients,
        seed=args.seed,
        faults=args.faults,
    )
    print(
        f"wrote {args.patients} patients of profile {args.profile}; site config: {path}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .site_config import load_site_config
    from .site_index import build_site_index
    from .validation_report import build_report, format_report, write_report

    cfg = load_site_config(args.site_config)
    index = build_site_index(cfg, progress=_progress("validating"))
    report = build_report(cfg, index)
    out = Path(args.out) if args.out else cfg.state_dir / "reports" / "validation.json"
    print(format_report(report))
    path = write_report(report, out)
    print(f"\nreport: {path}")
    return 0 if report["exams"]["usable"] else 1


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_site
    from .site_config import load_site_config

    cfg = load_site_config(args.site_config)
    index, manifest = prepare_site(
        cfg, preset=args.preset, progress=_progress("preparing")
    )
    with_ct = sum(e.has_ct for e in index.entries)
    print(
        f"prepared {with_ct} CT exams of {len(index.entries)} for preset {args.preset}"
    )
    print(f"manifest: {manifest}")
    return 0 if index.entries else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``m3fm-site``."""
    p = argparse.ArgumentParser(
        prog="m3fm-site", description="Hospital-site tools for federated M3FM."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "synth", help="generate a demo hospital (DICOM, tables, site.toml)"
    )
    s.add_argument(
        "--profile", required=True, help="hospital_a, hospital_b or hospital_c"
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--patients", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="inject the bad inputs of real exports (default: the profile's choice)",
    )
    s.set_defaults(func=_cmd_synth)
    v = sub.add_parser("validate", help="report what is usable in the site's data")
    v.add_argument("--site-config", required=True)
    v.add_argument(
        "--out", help="report JSON path (default: <state-dir>/reports/validation.json)"
    )
    v.set_defaults(func=_cmd_validate)
    r = sub.add_parser("prepare", help="preprocess and cache every usable exam")
    r.add_argument("--site-config", required=True)
    r.add_argument(
        "--preset", default="tiny", help="model preset whose crop sizes to prepare"
    )
    r.set_defaults(func=_cmd_prepare)
    from .evaluation.commands import add_site_commands

    add_site_commands(sub)
    from .deploy_commands import add_deploy_commands

    add_deploy_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m3fm-site``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ValueError as err:  # configuration errors: one clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
