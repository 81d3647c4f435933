"""Structure of docker/: images, the demo consortium compose file, the build context.

No Docker engine is needed: the files are parsed and checked for what the deployment
relies on; ``docker compose config -q`` (or ``docker-compose``) and ``hadolint`` run when
installed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from client.site_config import load_site_config
from client.synth.profiles import PROFILES
from server.consortium import load_consortium

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {
    "site": DOCKER / "site" / "Dockerfile",
    "server": DOCKER / "server" / "Dockerfile",
}
CONSORTIUM = load_consortium(ROOT / "site_configs" / "consortium.toml")
SITES = tuple(s.name for s in CONSORTIUM.sites)
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset."""
    return _DEFAULT.sub(lambda m: m.group(1), value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of a service's short-syntax volumes."""
    out = []
    for entry in service.get("volumes", []):
        parts = interpolate(entry).split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def command(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return cmd if isinstance(cmd, str) else " ".join(cmd)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(
        args.split("=", 1)
        for op, args in instructions(path)
        if op == "ARG" and "=" in args
    )


def env_values(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in instructions(path):
        if op == "ENV":
            env |= dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", args))
    return env


def demo_data_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docker_demo_data", DOCKER / "site" / "demo_data.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- compose file -------------------------------------------------------------------


def test_services_of_the_demo_consortium(services: dict[str, Any]) -> None:
    assert set(services) == {"superlink", "register", "demo-data", *SITES}
    assert len(SITES) == 3


def test_every_service_disables_runtime_installs_and_telemetry(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert service["environment"] == service["environment"] | FLOWER_ENV, name


def test_no_insecure_anywhere(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "--insecure" not in command(service), name
    text = (DOCKER / "compose.yml").read_text(encoding="utf-8")
    assert not re.search(r"^\s*-?\s*-+insecure", text, re.MULTILINE)


def test_kits_and_data_are_mounted_read_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for _source, target, mode in mounts(service):
            if target.startswith("/kits") and name != "register":
                assert mode == "ro", (name, target)
            if target == "/data":
                assert mode == "ro", (name, target)
    # least privilege: each site sees its own kit and data only
    for site in SITES:
        kits = [(s, t) for s, t, _ in mounts(services[site]) if t.startswith("/kits")]
        assert kits == [(f"../kits/{site}", f"/kits/{site}")]
        assert (f"{site}-data", "/data", "ro") in mounts(services[site])
    assert [t for _, t, _ in mounts(services["superlink"]) if "kits" in t] == [
        "/kits/superlink"
    ]


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    for name in ("superlink", *SITES):
        state = [(s, m) for s, t, m in mounts(services[name]) if t == "/state"]
        assert len(state) == 1, name
        source, mode = state[0]
        assert source in volumes and mode == "rw", name
    data_sources = {s for name in SITES for s, t, _ in mounts(services[name])}
    assert {f"{site}-state" for site in SITES} <= data_sources
    assert len({s for s in data_sources if s.endswith("-state")}) == len(SITES)


def test_superlink_listens_on_all_interfaces_of_the_consortium_port(
    services: dict[str, Any],
) -> None:
    cmd = services["superlink"]["command"]
    assert cmd[:2] == ["m3fm-admin", "superlink"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    # bound to 0.0.0.0, flower-superlink's own SuperExec (which runs the ServerApp)
    # dials 127.0.0.1 over TLS: the certificate must name it
    assert "127.0.0.1" in CONSORTIUM.sans
    assert cmd[cmd.index("--kit") + 1] == "/kits/superlink"
    port = CONSORTIUM.port
    assert services["superlink"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert str(port) in " ".join(services["superlink"]["healthcheck"]["test"])


def test_sites_dial_the_superlink_by_a_certificate_name(
    services: dict[str, Any],
) -> None:
    assert "superlink" in CONSORTIUM.sans
    for site in SITES:
        cmd = command(services[site])
        assert f"--superlink superlink:{CONSORTIUM.port}" in cmd
        assert f"m3fm-site start --kit /kits/{site}" in cmd
        assert "--site-config /data/site-docker.toml" in cmd


def test_start_order(services: dict[str, Any]) -> None:
    assert services["register"]["depends_on"] == {
        "superlink": {"condition": "service_healthy"}
    }
    for site in SITES:
        deps = services[site]["depends_on"]
        assert deps["register"] == {"condition": "service_completed_successfully"}
        assert deps["demo-data"] == {"condition": "service_completed_successfully"}
    for one_shot in ("register", "demo-data"):
        assert services[one_shot]["restart"] == "no"


def test_register_reaches_the_superlink_inside_the_network(
    services: dict[str, Any],
) -> None:
    register = services["register"]
    assert register["command"] == ["m3fm-admin", "register", "--kits", "/kits"]
    config_mounts = [
        (s, t, m) for s, t, m in mounts(register) if t.endswith("config.toml")
    ]
    assert len(config_mounts) == 1
    source, target, mode = config_mounts[0]
    flwr_home = env_values(DOCKERFILES["server"])["FLWR_HOME"]
    assert target == f"{flwr_home}/config.toml" and mode == "ro"
    config = tomllib.loads((DOCKER / source).read_text(encoding="utf-8"))
    name = CONSORTIUM.name
    assert config["superlink"]["default"] == name
    assert config["superlink"][name]["address"] == f"superlink:{CONSORTIUM.port}"
    ca = config["superlink"][name]["root-certificates"]
    kits_target = [t for s, t, _ in mounts(register) if s == "../kits"]
    assert kits_target == ["/kits"]
    assert ca == "/kits/admin/ca.pem"


def test_demo_data_fills_one_volume_per_site(services: dict[str, Any]) -> None:
    module = demo_data_module()
    assert module.CONFIG_NAME == "site-docker.toml"
    assert command(services["demo-data"]) == "python /opt/m3fm/demo_data.py --out /out"
    assert sorted(mounts(services["demo-data"])) == [
        (f"{site}-data", f"/out/{site}", "rw") for site in sorted(SITES)
    ]
    assert set(SITES) == set(PROFILES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_container_site_config(tmp_path: Path, profile: str) -> None:
    # Prepare
    module = demo_data_module()
    path = tmp_path / module.CONFIG_NAME

    # Execute
    path.write_text(module.docker_site_config(profile), encoding="utf-8")
    cfg = load_site_config(path)

    # Assert: data beside the config (the read-only /data volume), state in /state
    assert cfg.name == profile
    assert cfg.state_dir == Path("/state")
    assert cfg.cache_dir == Path("/state/cache")
    assert cfg.dicom.root == tmp_path / "dicom"
    assert cfg.clinical.path.parent == tmp_path


def test_compose_config_validates() -> None:
    if shutil.which("docker") and (
        subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        base = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        base = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    for files in (["compose.yml"], ["compose.yml", "compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", f)]
        res = subprocess.run(
            [*base, *args, "config", "-q"], cwd=DOCKER, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr


def test_gpu_override_only_adds_devices_to_sites() -> None:
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yml").read_text(encoding="utf-8"))
    assert set(gpu["services"]) == set(SITES)
    for service in gpu["services"].values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


# --- Dockerfiles --------------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_pins_and_runs_as_non_root(role: str) -> None:
    path = DOCKERFILES[role]
    ops = instructions(path)
    args = arg_defaults(path)
    # a pinned Python base image
    froms = [a for op, a in ops if op == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", froms[0])
    # pinned Flower and torch, torch the same as constraints.txt
    assert args["FLWR_VERSION"] == "1.42.0"
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    torch_pin = re.search(r"^torch==(\S+)$", constraints, re.MULTILINE)
    assert torch_pin and args["TORCH_VERSION"] == torch_pin.group(1) == "2.13.0"
    runs = " ".join(a for op, a in ops if op == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    assert "-c constraints.txt" in runs and '"flwr==${FLWR_VERSION}"' in runs
    # the flwr line the build rewrites is still the one in pyproject.toml
    assert '"flwr[simulation]==1.42.0"' in (ROOT / "pyproject.toml").read_text()
    # runtime dependency installation and telemetry off for every process
    assert env_values(path).items() >= FLOWER_ENV.items()
    # the last USER is a non-root numeric user, after the last RUN
    users = [i for i, (op, _) in enumerate(ops) if op == "USER"]
    assert users and users[-1] > max(i for i, (op, _) in enumerate(ops) if op == "RUN")
    user = ops[users[-1]][1]
    uid, _, gid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user).partition(
        ":"
    )
    assert int(uid) != 0 and int(gid) != 0
    # every COPY source exists in the build context (the repo root)
    for op, a in ops:
        if op == "COPY":
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_hadolint_when_installed() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed")
    res = subprocess.run(
        [hadolint, *map(str, DOCKERFILES.values())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerignore_keeps_secrets_data_and_outputs_out_of_the_context() -> None:
    entries = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    for needed in (
        ".git", ".venv", "runs", "demo_data", "pretrain_data", "kits", "tests",
        "**/__pycache__",
        ".pytest_cache", ".ruff_cache", "**/*.pem",
    ):  # fmt: skip
        assert needed in entries, needed
    # what the images copy is not excluded
    for op, a in instructions(DOCKERFILES["site"]) + instructions(
        DOCKERFILES["server"]
    ):
        if op == "COPY":
            for source in a.split()[:-1]:
                assert source.split("/")[0] not in entries, source
