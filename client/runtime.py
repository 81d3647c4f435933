"""Site-side runtime shared by the ClientApp handlers: site config, model, replies.

Kept free of Flower so it can be tested directly; ``client/app.py`` adapts it to
Flower messages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch

from m3fm_model import M3FM, build_model
from m3fm_model.pretrained import check_init, load_pretrained

from .site_config import SiteConfig, load_site_config

logger = logging.getLogger(__name__)


class SiteSelectionError(ValueError):
    """The node was given no usable site config."""


def site_config_path(
    node_config: Mapping[str, object], sim_site_configs: list[Path]
) -> Path:
    """The site config of this node.

    Deployment: ``--node-config "site-config='/path/site.toml'"``. Simulation: the
    ``partition-id`` indexes the run config's ``sim-site-configs`` list.
    """
    if "site-config" in node_config:
        return Path(str(node_config["site-config"])).expanduser().resolve()
    if "partition-id" in node_config:
        pid = int(node_config["partition-id"])  # type: ignore[call-overload]
        if not 0 <= pid < len(sim_site_configs):
            raise SiteSelectionError(
                f"partition {pid} has no site config: sim-site-configs lists {len(sim_site_configs)}"
            )
        return sim_site_configs[pid]
    raise SiteSelectionError(
        "start the SuperNode with --node-config \"site-config='/path/site.toml'\""
    )


@lru_cache(maxsize=8)
def cached_site(path: Path) -> SiteConfig:
    """Parse a site config once per process."""
    return load_site_config(path)


_MODELS: dict[tuple[str, str, int, str], M3FM] = {}


def seeded_model(preset: str, seed: int, init_weights: str = "none") -> M3FM:
    """The run's initial model: ``build_model(preset)`` after seeding torch with ``seed``.

    With ``init_weights`` naming packaged pretrained weights
    (``m3fm_model.pretrained``), those replace the random values they cover. The server
    and every site build it the same way, so parameters that never travel agree
    everywhere.
    """
    torch.manual_seed(seed)
    return load_pretrained(build_model(preset), check_init(init_weights, preset))


def global_model(
    run_key: str, preset: str, seed: int, init_weights: str = "none"
) -> M3FM:
    """This process's copy of the run's global model.

    Built once per (run, preset, seed, init weights) like the server's, so the
    parameters outside the trainable scope, which never change and never travel after
    round 1, equal the server's initial values even for a site process that restarted.
    """
    key = (run_key, preset, seed, init_weights)
    if key not in _MODELS:
        _MODELS.clear()  # one run at a time per process: free the previous model
        _MODELS[key] = seeded_model(preset, seed, init_weights)
    return _MODELS[key]


def load_arrays(model: M3FM, arrays: Mapping[str, torch.Tensor]) -> None:
    """Copy received parameters into the model.

    Raises:
        ValueError: an unknown name or a shape that does not match.
    """
    params = dict(model.named_parameters())
    unknown = [n for n in arrays if n not in params]
    if unknown:
        raise ValueError(f"received {len(unknown)} arrays this model does not have")
    with torch.no_grad():
        for name, value in arrays.items():
            if params[name].shape != value.shape:
                raise ValueError(
                    f"received array {name} has shape {tuple(value.shape)}"
                )
            params[name].copy_(value.to(params[name].dtype))
