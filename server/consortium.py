"""The consortium file: SuperLink address and certificate names, the app, the sites.

```toml
[consortium]
name = "m3fm-demo"                 # also the SuperLink connection name for `flwr run`
[superlink]
address = "127.0.0.1:9092"         # what sites and the admin dial
sans = ["localhost", "127.0.0.1"]  # names in the SuperLink's TLS certificate
[sites.hospital_a]
site-config = "hospital_a.toml"    # optional, relative to this file
runtime-port = 9094                # the SuperNode's local port (distinct per host)
```

Every error names the file, the key and the fix; unknown keys are refused.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_KEYS = {
    "consortium": {"name"},
    "superlink": {"address", "sans"},
    "sites": None,
}
_SITE_KEYS = {"site-config", "runtime-port"}
DEFAULT_RUNTIME_PORT = 9094
LOOPBACK = ("127.0.0.1",)


class ConsortiumError(ValueError):
    """The consortium file is missing, malformed or inconsistent."""

    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")


@dataclass(frozen=True)
class SiteEntry:
    """One member hospital."""

    name: str
    site_config: Path | None
    runtime_port: int


@dataclass(frozen=True)
class Consortium:
    """A parsed consortium file."""

    path: Path
    name: str
    host: str
    port: int
    sans: tuple[str, ...]
    sites: tuple[SiteEntry, ...]

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink."""
        return f"{self.host}:{self.port}"


def _port(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConsortiumError(path, key, "give a TCP port number (1-65535)")
    return value


def _site(path: Path, name: str, body: Any, index: int) -> SiteEntry:
    key = f"sites.{name}"
    if not _NAME.fullmatch(name):
        raise ConsortiumError(
            path, key, "site names use lowercase letters, digits, '_' and '-'"
        )
    if not isinstance(body, dict):
        raise ConsortiumError(path, key, "must be a table")
    unknown = set(body) - _SITE_KEYS
    if unknown:
        raise ConsortiumError(
            path, key, f"unknown keys {sorted(unknown)}; valid: {sorted(_SITE_KEYS)}"
        )
    cfg = body.get("site-config")
    if cfg is not None and not isinstance(cfg, str):
        raise ConsortiumError(path, f"{key}.site-config", "give a path string")
    port = _port(
        path,
        f"{key}.runtime-port",
        body.get("runtime-port", DEFAULT_RUNTIME_PORT + index),
    )
    return SiteEntry(name, (path.parent / cfg).resolve() if cfg else None, port)


def load_consortium(path: str | Path) -> Consortium:
    """Parse and validate a consortium file.

    Raises:
        ConsortiumError: naming the file, the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConsortiumError(path, "-", "file not found; pass --consortium FILE")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConsortiumError(path, "-", f"is not valid TOML: {err}") from err
    for section, body in raw.items():
        if section not in _KEYS:
            raise ConsortiumError(
                path, section, f"unknown section; valid: {sorted(_KEYS)}"
            )
        allowed = _KEYS[section]
        if allowed is not None and (extra := set(body) - allowed):
            raise ConsortiumError(
                path, section, f"unknown keys {sorted(extra)}; valid: {sorted(allowed)}"
            )
    name = raw.get("consortium", {}).get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConsortiumError(
            path,
            "consortium.name",
            "give a name of lowercase letters, digits, '_', '-'",
        )
    address = raw.get("superlink", {}).get("address")
    m = (
        re.fullmatch(r"([A-Za-z0-9.-]+):(\d+)", address)
        if isinstance(address, str)
        else None
    )
    if m is None:
        raise ConsortiumError(path, "superlink.address", 'give "host:port"')
    host, port = m.group(1), _port(path, "superlink.address", int(m.group(2)))
    sans = raw["superlink"].get("sans", [host])
    if (
        not isinstance(sans, list)
        or not sans
        or not all(isinstance(s, str) and s for s in sans)
    ):
        raise ConsortiumError(path, "superlink.sans", "give a non-empty list of names")
    if host not in sans:
        raise ConsortiumError(
            path, "superlink.sans", f"must include the address host {host!r}"
        )
    # flower-superlink starts the ServerApp's SuperExec against 127.0.0.1 over TLS even
    # when bound to 0.0.0.0, so the certificate always names the loopback address too.
    sans = [*sans, *(n for n in LOOPBACK if n not in sans)]
    site_tables = raw.get("sites", {})
    if not isinstance(site_tables, dict) or not site_tables:
        raise ConsortiumError(path, "sites", "add at least one [sites.NAME] table")
    sites = tuple(_site(path, n, b, i) for i, (n, b) in enumerate(site_tables.items()))
    ports = [s.runtime_port for s in sites]
    if len(set(ports)) != len(ports):
        raise ConsortiumError(
            path, "sites.*.runtime-port", "each site needs its own runtime-port"
        )
    return Consortium(path.resolve(), name, host, port, tuple(sans), sites)
