"""Provisioning: one CA, the SuperLink's kit, one kit per site and one for the admin.

Layout under ``--out``::

    ca.pem                      consortium CA certificate (public, in every kit too)
    ca/ca-key.pem               CA private key (0600): keep it offline
    registry.json               sites, key fingerprints, status, node ids (no secrets)
    superlink/                  CA, TLS certificate and key, start script
    admin/                      CA, Flower connection config, site public keys
    <site>/                     CA, the site's auth key pair, site config template,
                                kit.json, start script

Running it again reuses the CA, creates kits only for new sites and leaves existing kits
byte-identical; a site no longer in the consortium file is revoked (its kit folder is
deleted here, its key marked revoked, and ``m3fm-admin register`` unregisters it).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.app_pin import APP_ID, APP_VERSION

from . import pki
from .consortium import Consortium, SiteEntry

REGISTRY = "registry.json"
SITE_KEY = "supernode-key"


@dataclass
class ProvisionResult:
    """What a provisioning pass did."""

    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    ca_created: bool = False


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_registry(out: Path) -> dict[str, Any]:
    """The registry of a kits folder (empty when new)."""
    path = out / REGISTRY
    if not path.is_file():
        return {"sites": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def write_registry(out: Path, registry: dict[str, Any]) -> None:
    """Write the registry atomically."""
    pki.write_file(out / REGISTRY, (json.dumps(registry, indent=2) + "\n").encode())


def _script(path: Path, body: str) -> None:
    pki.write_file(path, ("#!/bin/sh\nset -eu\n" + body).encode(), 0o755)


def _json(path: Path, value: dict[str, Any]) -> None:
    pki.write_file(path, (json.dumps(value, indent=2) + "\n").encode())


def _ca(out: Path, consortium: Consortium) -> bool:
    cert, key = out / "ca" / "ca.pem", out / "ca" / "ca-key.pem"
    created = not cert.is_file()
    if created:
        if key.exists():
            raise FileExistsError(f"{key} exists without {cert}; restore or remove it")
        pki.make_ca(cert, key, consortium.name)
    else:
        pki.load_ca(cert, key)  # a mismatched pair fails here
    if not (out / "ca.pem").is_file():
        shutil.copyfile(cert, out / "ca.pem")
    return created


def _superlink_kit(out: Path, consortium: Consortium, registry: dict[str, Any]) -> None:
    kit = out / "superlink"
    current = registry.get("superlink", {})
    if (kit / "superlink.pem").is_file() and current.get("sans") == list(
        consortium.sans
    ):
        return
    kit.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "ca.pem", kit / "ca.pem")
    pki.make_server_cert(
        out / "ca" / "ca.pem", out / "ca" / "ca-key.pem",
        kit / "superlink.pem", kit / "superlink-key.pem", consortium.sans, consortium.name,
    )  # fmt: skip
    _json(kit / "kit.json", {"kind": "superlink", "consortium": consortium.name, "address": consortium.address})  # fmt: skip
    _script(
        kit / "start-superlink.sh",
        'KIT="$(cd "$(dirname "$0")" && pwd)"\nexec m3fm-admin superlink --kit "$KIT" "$@"\n',
    )
    registry["superlink"] = {
        "address": consortium.address,
        "sans": list(consortium.sans),
    }


SITE_TEMPLATE = """\
# Site configuration of {site} in consortium {consortium}; the full format is in
# docs/site-config.md. Fill in the paths to this hospital's data, then:
#   m3fm-site validate --site-config site.toml && m3fm-site prepare --site-config site.toml
[site]
name = "{site}"
tasks = []                       # the tasks this site has labels for
state-dir = "state"              # privacy ledger, audit log, reports (keep it)

[dicom]
root = "/data/dicom"

[clinical]
path = "/data/clinical.csv"
patient-id-column = "patient_id"
exam-id-column = "exam_id"

[labels]
path = "/data/labels.csv"
patient-id-column = "patient_id"
exam-id-column = "exam_id"

[privacy]
enabled = true
epsilon = 8.0
delta = 1e-5

[federation]
# The only app this site runs; checked before any app code is loaded.
accept-apps = ["{app}"]
"""


def _site_kit(out: Path, consortium: Consortium, site: SiteEntry) -> str:
    kit = out / site.name
    kit.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "ca.pem", kit / "ca.pem")
    fingerprint = pki.make_site_keys(
        kit / SITE_KEY, kit / f"{SITE_KEY}.pub", f"{site.name}@{consortium.name}"
    )
    app = f"{APP_ID}=={APP_VERSION}"
    pki.write_file(
        kit / "site.toml.template",
        SITE_TEMPLATE.format(
            site=site.name, consortium=consortium.name, app=app
        ).encode(),
    )
    _json(
        kit / "kit.json",
        {
            "kind": "site", "consortium": consortium.name, "site": site.name,
            "superlink": consortium.address, "runtime-port": site.runtime_port,
            "site-config": str(site.site_config) if site.site_config else None,
            "accept-apps": [app],
        },
    )  # fmt: skip
    _script(
        kit / "start-supernode.sh",
        'KIT="$(cd "$(dirname "$0")" && pwd)"\n'
        'exec m3fm-site start --kit "$KIT" "$@"\n',
    )
    return fingerprint


def _admin_kit(out: Path, consortium: Consortium, registry: dict[str, Any]) -> None:
    kit = out / "admin"
    keys = kit / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "ca.pem", kit / "ca.pem")
    active = {n for n, s in registry["sites"].items() if s["status"] == "active"}
    for name in active:
        shutil.copyfile(out / name / f"{SITE_KEY}.pub", keys / f"{name}.pub")
    for stale in keys.glob("*.pub"):
        if stale.stem not in active:
            stale.unlink()
    config = (
        f'[superlink]\ndefault = "{consortium.name}"\n\n'
        f"[superlink.{consortium.name}]\n"
        f'address = "{consortium.address}"\n'
        f'root-certificates = "{(kit / "ca.pem").resolve()}"\n'
    )
    pki.write_file(kit / "flwr" / "config.toml", config.encode())
    _json(kit / "kit.json", {"kind": "admin", "consortium": consortium.name, "connection": consortium.name, "address": consortium.address})  # fmt: skip


def provision(consortium: Consortium, out: Path) -> ProvisionResult:
    """Create or update the kits of ``consortium`` under ``out`` (see module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ProvisionResult(ca_created=_ca(out, consortium))
    registry = read_registry(out)
    if registry.get("consortium", consortium.name) != consortium.name:
        raise ValueError(
            f"{out} holds kits of consortium {registry['consortium']!r}, not "
            f"{consortium.name!r}; use another --out folder"
        )
    registry["consortium"] = consortium.name
    _superlink_kit(out, consortium, registry)
    wanted = {s.name for s in consortium.sites}
    for site in consortium.sites:
        entry = registry["sites"].get(site.name)
        if (
            entry
            and entry["status"] == "active"
            and (out / site.name / SITE_KEY).is_file()
        ):
            result.kept.append(site.name)
            continue
        fingerprint = _site_kit(out, consortium, site)
        registry["sites"][site.name] = {
            "status": "active", "key-sha256": fingerprint, "added": _now(),
            "runtime-port": site.runtime_port, "node-id": None,
        }  # fmt: skip
        result.created.append(site.name)
    for name, entry in registry["sites"].items():
        if entry["status"] == "active" and name not in wanted:
            revoke_site(out, name, registry)
            result.revoked.append(name)
    _admin_kit(out, consortium, registry)
    write_registry(out, registry)
    return result


def revoke_site(out: Path, name: str, registry: dict[str, Any] | None = None) -> None:
    """Mark a site's key revoked and delete the admin-side copy of its kit.

    The SuperLink still knows the key until ``m3fm-admin register`` unregisters it.
    """
    own = registry is None
    registry = read_registry(out) if own else registry
    entry = registry["sites"].get(name)
    if entry is None or entry["status"] != "active":
        raise ValueError(f"{name!r} is not an active site of {out}")
    entry["status"], entry["revoked"] = "revoked", _now()
    registry.setdefault("revoked-keys", []).append(
        {
            "site": name,
            "key-sha256": entry["key-sha256"],
            "node-id": entry.get("node-id"),
            "revoked": entry["revoked"],
            "unregistered": False,
        }  # fmt: skip
    )
    shutil.rmtree(out / name, ignore_errors=True)
    (out / "admin" / "keys" / f"{name}.pub").unlink(missing_ok=True)
    if own:
        write_registry(out, registry)
