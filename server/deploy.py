"""Start the SuperLink from its kit, and sync site keys with the SuperLink.

``superlink_command`` builds the exact ``flower-superlink`` command line (TLS, SuperNode
authentication, a state database, runtime dependency installation off); ``sync_keys``
registers every active site key through ``flwr supernode register`` and unregisters the
revoked ones, recording node ids in the kits' registry.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from client.start import flower_env, read_kit

from .provision import read_registry, write_registry

logger = logging.getLogger(__name__)
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS and no SuperNode authentication. Anyone who can reach "
    "this port can join the federation and read the global model. Use only on a "
    "closed test network."
)


def superlink_command(
    kit: Path, state_dir: Path, host: str | None = None, insecure: bool = False
) -> list[str]:
    """The ``flower-superlink`` command line of a SuperLink kit."""
    kit = Path(kit).resolve()
    info = read_kit(kit, "superlink")
    addr_host, port = info["address"].rsplit(":", 1)
    cmd = [
        "flower-superlink",
        "--host", host or addr_host, "--port", port,
        "--database", str(Path(state_dir).resolve() / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if insecure:
        return [*cmd, "--insecure"]
    return [
        *cmd,
        "--ssl-ca-certfile", str(kit / "ca.pem"),
        "--ssl-certfile", str(kit / "superlink.pem"),
        "--ssl-keyfile", str(kit / "superlink-key.pem"),
        "--enable-supernode-auth",
    ]  # fmt: skip


def _flwr_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        ["flwr", *args, "--format", "json"], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    start = proc.stdout.find("{")
    try:
        data = json.loads(proc.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if proc.returncode != 0 or not data.get("success", True):
        raise RuntimeError(
            f"flwr {' '.join(args[:2])} failed: {data.get('error-message') or proc.stderr.strip()[-300:]}"
        )
    return data


def sync_keys(kits: Path, connection: str | None = None) -> dict[str, list[str]]:
    """Register active site keys and unregister revoked ones on the SuperLink."""
    kits = Path(kits).resolve()
    registry = read_registry(kits)
    conn = connection or registry.get("consortium")
    env = flower_env()
    env.setdefault("FLWR_HOME", str(kits / "admin" / "flwr"))
    done: dict[str, list[str]] = {"registered": [], "unregistered": []}
    listed = _flwr_json(["supernode", "list", conn], env).get("nodes", [])
    known = {int(n["node-id"]) for n in listed if n.get("status") != "unregistered"}
    for name, entry in registry["sites"].items():
        # a node id the SuperLink no longer lists (e.g. its state was wiped) is re-registered
        if entry["status"] != "active" or entry.get("node-id") in known:
            continue
        key = kits / "admin" / "keys" / f"{name}.pub"
        data = _flwr_json(
            ["supernode", "register", str(key), conn, "--name", name], env
        )
        entry["node-id"] = int(data["node-id"])
        done["registered"].append(name)
        write_registry(kits, registry)
    for old in registry.get("revoked-keys", []):
        if old["unregistered"] or old.get("node-id") is None:
            continue
        _flwr_json(["supernode", "unregister", str(old["node-id"]), conn], env)
        old["unregistered"] = True
        done["unregistered"].append(old["site"])
        write_registry(kits, registry)
    return done
