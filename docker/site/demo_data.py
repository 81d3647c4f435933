"""Generate the three demo hospitals into Docker volumes, each with a container site config.

Run by the one-shot ``demo-data`` service of ``docker/compose.yml``, which mounts one
volume per hospital at ``/out/<site>``. Every site container later mounts only its own
volume, read-only, at ``/data`` and its state volume at ``/state``; so the config written
here (``site-docker.toml``) keeps the data paths relative to ``/data`` and moves the
state folder (privacy ledger, audit log, reports) and the cache to ``/state``. The
cohort sizes and seeds are those of ``make demo`` (``server.demo.DEMO_SITES``). A site
whose config already exists is left alone, so the service can run on every ``up``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from client.synth.siteconfig import site_config_toml

CONFIG_NAME = "site-docker.toml"
STATE_DIR = "/state"
CACHE_DIR = "/state/cache"


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"expected exactly one {old!r} in the generated site config")
    return text.replace(old, new)


def docker_site_config(profile: str) -> str:
    """The site config of a generated hospital as seen from inside its container.

    Args:
        profile: "hospital_a", "hospital_b" or "hospital_c".

    Returns:
        TOML text: data paths relative to the config file (``/data``), state and cache
        under ``/state``.
    """
    text = site_config_toml(profile)
    text = _replace_once(text, 'state-dir = "state"', f'state-dir = "{STATE_DIR}"')
    return _replace_once(text, 'dir = "cache"', f'dir = "{CACHE_DIR}"')


def generate(out: Path) -> list[Path]:
    """Generate every missing demo hospital under ``out/<site>``; return the configs."""
    from client.synth import synthesize_site
    from server.demo import DEMO_SITES  # heavy imports: only when generating

    configs = []
    for name, patients, seed in DEMO_SITES:
        folder = out / name
        config = folder / CONFIG_NAME
        if config.is_file():
            print(f"{name}: already generated ({config})", flush=True)
            configs.append(config)
            continue
        # A volume mount point cannot be removed: empty it instead (half-written run).
        for child in folder.iterdir() if folder.is_dir() else ():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        start = time.monotonic()
        synthesize_site(name, folder, patients=patients, seed=seed)
        config.write_text(docker_site_config(name), encoding="utf-8")
        took = time.monotonic() - start
        print(f"{name}: {patients} patients in {took:.0f} s -> {config}", flush=True)
        configs.append(config)
    return configs


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python demo_data.py --out /out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder holding one volume per site")
    args = p.parse_args(argv)
    generate(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
