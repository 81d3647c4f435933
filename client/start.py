"""``m3fm-site start``: the site's SuperNode, started from its provisioning kit.

Builds the ``flower-supernode`` command (the consortium CA, the site's authentication key,
the site config in the node config, the SuperNode's local port) and the environment it
runs in: runtime dependency installation and telemetry off, and a ``flwr-clientapp`` shim
first on PATH so every ClientApp process passes the site's app allow-list
(:mod:`client.app_guard`) before any app code is loaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .site_config import SiteConfig, load_site_config

SHIM = """#!/bin/sh
# flwr-clientapp with the site's app allow-list checked first (m3fm-site start).
exec "{python}" -m client.app_guard "$@"
"""
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}


def read_kit(kit: Path, kind: str = "site") -> dict[str, Any]:
    """A kit's ``kit.json``; a missing kit or one of another kind raises ValueError."""
    path = Path(kit) / "kit.json"
    if not path.is_file():
        raise ValueError(
            f"{path} not found; pass the {kind} kit folder made by provision"
        )
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("kind") != kind:
        raise ValueError(f"{kit} is a {info.get('kind')} kit, not a {kind} kit")
    return info


# glibc malloc: keep freed memory (up to 1 GiB) for reuse and serve blocks below
# 32 MiB from the heap. Every reply and model broadcast allocates fresh arrays; new
# pages cost a fault per 4 kB on first touch (~1.4 GB/s on these VMs), which made
# building a reply 3-4x slower than the conversion itself (bench/bench_transfer.py:
# 1.3 -> 4.4 GB/s). Set only when the environment does not choose already.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
}


def flower_env(*first_on_path: Path) -> dict[str, str]:
    """Environment of Flower processes: no telemetry or runtime installs, our PATH first.

    ``first_on_path`` come first on PATH, then this Python's scripts folder; the
    ``MALLOC_ENV`` defaults are added where the environment does not set them.
    """
    env = MALLOC_ENV | dict(os.environ) | FLOWER_ENV
    path = [*(str(p) for p in first_on_path), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    return env


def install_shim(site: SiteConfig) -> Path:
    """Write the ``flwr-clientapp`` shim into ``<state-dir>/bin`` and return that folder."""
    bin_dir = site.state_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(SHIM.format(python=sys.executable), encoding="utf-8")
    shim.chmod(0o755)
    return bin_dir


def supernode_command(
    kit: Path,
    site_config: Path | None = None,
    *,
    insecure: bool = False,
    superlink: str | None = None,
    max_retries: int | None = None,
) -> tuple[list[str], dict[str, str], SiteConfig]:
    """The command line, environment and parsed site config of this site's SuperNode."""
    kit = Path(kit).resolve()
    info = read_kit(kit)
    cfg_path = site_config or info.get("site-config")
    if not cfg_path:
        raise ValueError(
            "no site config: pass --site-config (start from the kit's site.toml.template)"
        )
    site = load_site_config(cfg_path)
    if site.name != info["site"]:
        raise ValueError(
            f"{site.path}: site.name is {site.name!r} but the kit is for {info['site']!r}"
        )
    cmd = [
        "flower-supernode",
        "--superlink", superlink or info["superlink"],
        "--port", str(info["runtime-port"]),
        "--node-config", f'site-config="{site.path}"',
    ]  # fmt: skip
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += [
            "--root-certificates", str(kit / "ca.pem"),
            "--auth-supernode-private-key", str(kit / "supernode-key"),
        ]  # fmt: skip
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    return cmd, flower_env(install_shim(site)), site
