"""Run the app in local simulation with ``flwr run .`` and a SuperLink we own by PID.

``flwr run .`` starts a detached managed SuperLink when none answers on the local port
and leaves it running. We start that SuperLink ourselves (same command, private
``FLWR_HOME`` and ports), so ``flwr run .`` uses it and we stop it by its PID afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

BASE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> str:
    """The folder of this interpreter's console scripts (flwr, flower-superlink, ...)."""
    return str(Path(sys.executable).parent)


def sim_env(flwr_home: Path, http_port: int, control_port: int) -> dict[str, str]:
    """Environment for the SuperLink and ``flwr`` CLI of one private simulation.

    The interpreter's script folder goes first on PATH: the SuperLink starts Flower's
    own helper processes by name, and a venv need not be activated.
    """
    env = dict(os.environ)
    env.update(BASE_ENV)
    env["PATH"] = _bin_dir() + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    return env


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Terminate a process group we started (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def local_superlink(
    flwr_home: Path, *, startup_timeout: float = 60.0
) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink on free loopback ports; yield the env for ``flwr``.

    The SuperLink runs in its own process group and is stopped by PID on exit, also
    when the body raises.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    http_port, control_port = free_port(), free_port()
    env = sim_env(flwr_home, http_port, control_port)
    log_dir = flwr_home / "local-superlink"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(_bin_dir()) / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--control-api-address", f"127.0.0.1:{control_port}",
        "--host", "127.0.0.1", "--port", str(http_port),
        "--database", str(log_dir / "state.db"), "--log-file", str(log_dir / "superlink.log"),
    ]  # fmt: skip
    with open(log_dir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(http_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the simulation SuperLink did not start; see {log_dir}"
                )
            time.sleep(0.5)
        logger.info("simulation SuperLink pid %d on 127.0.0.1:%d", proc.pid, http_port)
        yield env
    finally:
        stop_pid(proc)


def flwr_run(
    app_dir: Path,
    env: Mapping[str, str],
    *,
    num_supernodes: int,
    run_config: Mapping[str, object],
    num_cpus: int = 1,
    timeout: float = 1800.0,
    log_path: Path | None = None,
) -> int:
    """``flwr run <app_dir> --stream`` in simulation; returns its exit code.

    Raises:
        subprocess.TimeoutExpired: the run did not finish in time (the process is killed).
    """
    overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
    cmd = [
        str(Path(_bin_dir()) / "flwr"), "run", str(app_dir), "--stream",
        "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus}",
        "--run-config", overrides,
    ]  # fmt: skip
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        finally:
            stop_pid(proc)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"
