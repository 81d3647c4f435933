"""``m3fm-site start`` and ``m3fm-site audit``: joining a consortium, and what was sent."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .start import supernode_command


def _cmd_start(args: argparse.Namespace) -> int:
    if args.insecure:
        print(
            "WARNING: --insecure: no TLS and no site authentication; the model and your "
            "updates cross the network in the clear. Use only on a closed test network.",
            file=sys.stderr,
        )
    cmd, env, site = supernode_command(
        Path(args.kit),
        Path(args.site_config) if args.site_config else None,
        insecure=args.insecure,
        superlink=args.superlink,
        max_retries=args.max_retries,
    )
    print(shlex.join(cmd), flush=True)
    if args.print_only:
        return 0
    site.state_dir.mkdir(parents=True, exist_ok=True)
    os.execvpe(cmd[0], cmd, env)  # the SuperNode takes this process (and its PID)
    return 1  # not reached


def _cmd_audit(args: argparse.Namespace) -> int:
    from .audit import AuditLog, format_table
    from .site_config import load_site_config

    site = load_site_config(args.site_config)
    records: list[dict[str, Any]] = AuditLog.for_state_dir(site.state_dir).records()
    if args.run:
        records = [r for r in records if str(r.get("run_id")) == args.run]
    if not records:
        print(f"no audit records in {site.state_dir / 'audit.jsonl'}")
        return 0
    print(format_table(records))
    return 0


def add_deploy_commands(sub: Any) -> None:
    """Register ``start`` and ``audit`` on the ``m3fm-site`` sub-parser set."""
    s = sub.add_parser("start", help="start this site's SuperNode from its kit")
    s.add_argument("--kit", required=True, help="the site kit folder from the admin")
    s.add_argument(
        "--site-config", help="site.toml (default: the one named in the kit)"
    )
    s.add_argument("--superlink", help="override the SuperLink address host:port")
    s.add_argument("--max-retries", type=int, help="give up after N reconnects")
    s.add_argument(
        "--insecure", action="store_true", help="no TLS, no authentication (tests only)"
    )
    s.add_argument(
        "--print", dest="print_only", action="store_true", help="print the command only"
    )
    s.set_defaults(func=_cmd_start)
    a = sub.add_parser("audit", help="print the site's audit log as a table")
    a.add_argument("--site-config", required=True)
    a.add_argument("--run", help="only this run id")
    a.set_defaults(func=_cmd_audit)
