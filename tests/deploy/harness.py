"""A real consortium on 127.0.0.1: a TLS SuperLink and SuperNodes as separate processes.

Everything is started through the product's own commands (``m3fm-admin provision``,
``m3fm-admin superlink``, ``m3fm-admin register``, ``m3fm-site start``, ``flwr run``),
each in its own session, and stopped by process group id at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from server.simulation import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def consortium_toml(
    path: Path, sites: Mapping[str, Path], name: str = "testcons"
) -> Path:
    """Write a consortium file on free loopback ports for ``sites`` (name -> site.toml)."""
    lines = [
        f'[consortium]\nname = "{name}"\n',
        f'[superlink]\naddress = "127.0.0.1:{free_port()}"\nsans = ["127.0.0.1", "localhost"]\n',
    ]
    for site, cfg in sites.items():
        lines.append(
            f'[sites.{site}]\nsite-config = "{cfg}"\nruntime-port = {free_port()}\n'
        )
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


class Deployment:
    """Processes of one test consortium; use as a context manager."""

    def __init__(self, root: Path, consortium: Path) -> None:
        self.root, self.consortium = root, consortium
        self.kits = root / "kits"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ) | {
            "FLWR_HOME": str(self.kits / "admin" / "flwr"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)

    def admin(
        self, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``m3fm-admin`` and return its result (never raises on exit code)."""
        return subprocess.run(
            [str(BIN / "m3fm-admin"), *args], env=self.env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def provision(self) -> subprocess.CompletedProcess[str]:
        """``m3fm-admin provision`` of the consortium into ``kits/``."""
        return self.admin(
            "provision", "--consortium", str(self.consortium), "--out", str(self.kits)
        )

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start a long-running process in its own session, logging to ``logs/``."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.root,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_superlink(self, wait: float = 60) -> None:
        """Start the SuperLink from its kit and wait until it answers."""
        self.spawn(
            "superlink",
            [str(BIN / "m3fm-admin"), "superlink", "--kit", str(self.kits / "superlink"),
             "--state-dir", str(self.root / "superlink-state")],
        )  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            res = self.flwr("supernode", "list", "--format", "json")
            if res.returncode == 0 and '"success": true' in res.stdout.replace(
                "\n", ""
            ):
                return
            time.sleep(1)
        raise TimeoutError(f"SuperLink not up; see {self.logs / 'superlink.log'}")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against the consortium's connection."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False, cwd=self.root,
        )  # fmt: skip

    def nodes(self) -> list[dict]:
        """``flwr supernode list`` as JSON rows."""
        res = self.flwr("supernode", "list", "--format", "json")
        data = json.loads(res.stdout[res.stdout.find("{") :])
        return data.get("nodes", [])

    def start_site(
        self, name: str, kit: Path | None = None, *extra: str
    ) -> subprocess.Popen[bytes]:
        """``m3fm-site start`` for a site kit (``extra`` flags passed through)."""
        kit = kit or self.kits / name
        return self.spawn(
            name, [str(BIN / "m3fm-site"), "start", "--kit", str(kit), *extra]
        )

    def run_async(
        self, name: str, run_config: Mapping[str, object]
    ) -> subprocess.Popen[bytes]:
        """Start ``flwr run ... --stream`` in the background (logs in ``logs/<name>.log``)."""
        cfg = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        conn = json.loads((self.kits / "admin" / "kit.json").read_text())["connection"]
        cmd = [
            str(BIN / "flwr"),
            "run",
            str(ROOT),
            conn,
            "--run-config",
            cfg,
            "--stream",
        ]
        return self.spawn(name, cmd)

    def run(
        self, run_config: Mapping[str, object], timeout: float = 540
    ) -> tuple[int, str]:
        """``flwr run <app> <connection> --stream``; returns (exit code, output)."""
        cfg = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        conn = json.loads((self.kits / "admin" / "kit.json").read_text())["connection"]
        res = self.flwr(
            "run", str(ROOT), conn, "--run-config", cfg, "--stream", timeout=timeout
        )
        out = res.stdout + res.stderr
        (self.logs / "flwr-run.log").write_text(out, encoding="utf-8")
        return res.returncode, out

    def stop(self, name: str, timeout: float = 15) -> None:
        """Stop a process and its children by process group id."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        try:  # children left in the group (SuperExec, ClientApps)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self, name: str) -> str:
        """A process's captured output."""
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")
