"""Environment of the Flower processes a site or the admin starts."""

from pathlib import Path

from client.start import MALLOC_ENV, flower_env


def test_flower_env_defaults_and_respects_the_callers_choice(monkeypatch):
    for key in MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    env = flower_env(Path("/opt/shim"))
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].startswith("/opt/shim")
    assert all(env[k] == v for k, v in MALLOC_ENV.items())
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert flower_env()["MALLOC_TRIM_THRESHOLD_"] == "0"  # the site's own setting wins
