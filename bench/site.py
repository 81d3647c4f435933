"""A generated, prepared demo hospital and one fixed training batch for the benchmarks."""

from __future__ import annotations

import logging
from pathlib import Path

from client.prepare import prepare_site
from client.site_batch import M3FMBatch, collate_parts
from client.site_config import SiteConfig, load_site_config
from client.site_dataset import SiteDataset, build_site_dataset
from client.synth import synthesize_site

logger = logging.getLogger(__name__)


def prepared_site(
    root: Path, name: str = "hospital_a", *, patients: int = 8, seed: int = 1
) -> SiteConfig:
    """Generate ``name`` under ``root`` (once) and prepare it for the tiny preset."""
    folder = root / name
    config = folder / "site.toml"
    if not config.exists():
        logger.info("generating and preparing %s (%d patients)", name, patients)
        synthesize_site(name, folder, patients=patients, seed=seed)
        prepare_site(load_site_config(config), preset="tiny")
    return load_site_config(config)


def train_data(site: SiteConfig) -> SiteDataset:
    """The site's tiny-preset training split, without augmentation or dropout."""
    data = build_site_dataset(site, "tiny", "train")
    return data.with_options(augment=False, modality_dropout=0.0)


def fixed_batch(data: SiteDataset, size: int) -> list[M3FMBatch]:
    """The first ``size`` CT examples as crop-size parts (>= 129 CT tokens each).

    Only examples with a CT crop are taken so the DP row measures the CT encoder at
    its full token count (the tiny lung crop is 256 cubes + CLS).
    """
    picked = []
    for i in range(len(data)):
        example = data[i]
        if example.ct is not None:
            picked.append(example)
        if len(picked) == size:
            break
    if len(picked) < size:
        raise ValueError(f"the site has {len(picked)} CT examples, not {size}")
    return collate_parts(picked)
