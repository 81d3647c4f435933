"""Build a site's preprocessed cache and its exam manifest (``m3fm-site prepare``).

Every usable exam's ROI crops go into the content-addressed cache; the manifest lists
the exams (pseudonymous IDs, split, clinical paragraph, labels, cache keys) that site
training and evaluation read. A second run reuses every cached crop.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from m3fm_model.config import preset_config

from .cache import CacheKey, ExamCache, cached_crops
from .dicom_types import CTVolume
from .labels_table import HazardTarget
from .preprocess import preprocessing_fingerprint
from .site_config import SiteConfig
from .site_index import ExamEntry, SiteIndex, build_site_index, crop_specs

MANIFEST_VERSION = 1


def manifest_path(cfg: SiteConfig, preset: str) -> Path:
    """Where the manifest of a preset's crops lives in the site's cache folder."""
    return cfg.cache_dir / f"manifest-{preset}.json"


def _label_json(value: object) -> object:
    return asdict(value) if isinstance(value, HazardTarget) else value


def _entry_json(entry: ExamEntry, crops: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "patient_id": entry.patient_id,
        "exam_id": entry.exam_id,
        "split": entry.split,
        "clinical_text": entry.clinical.text if entry.clinical else None,
        "clinical_record": entry.clinical.record if entry.clinical else None,
        "labels": {t: _label_json(v) for t, v in entry.labels.items()},
        "crops": crops,
    }


def _atomic_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=str)
    os.replace(tmp, path)


def prepare_site(
    cfg: SiteConfig,
    *,
    preset: str = "tiny",
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> tuple[SiteIndex, Path]:
    """Ingest, crop and cache every usable exam, then write the manifest.

    Args:
        cfg: the site config.
        preset: model preset whose ROI crop sizes are prepared.
        progress: wraps the exam iterator (e.g. a progress bar with an ETA).

    Returns:
        The site index and the manifest path.
    """
    specs = crop_specs(preset_config(preset))
    cache = ExamCache(cfg.cache_dir / "crops")
    crops: dict[str, dict[str, dict[str, Any]]] = {}

    fingerprints = {s.roi: preprocessing_fingerprint(s) for s in specs}

    def on_volume(entry: ExamEntry, volume: CTVolume) -> None:
        got = cached_crops(cache, volume, specs)
        crops[entry.exam_id] = {
            roi: {
                "key": asdict(CacheKey(volume.content_hash, fingerprints[roi], roi)),
                "spacing_mm": list(got[roi].spacing_mm),
            }
            for roi in fingerprints
        }

    index = build_site_index(cfg, on_volume=on_volume, progress=progress)
    payload = {
        "version": MANIFEST_VERSION,
        "site": cfg.name,
        "preset": preset,
        "fingerprint": preprocessing_fingerprint(specs),
        "tasks": list(cfg.tasks),
        "exams": [
            _entry_json(e, crops.get(e.exam_id, {}) if e.has_ct else {})
            for e in index.entries
            if e.has_ct or e.clinical is not None
        ],
    }
    path = manifest_path(cfg, preset)
    _atomic_json(path, payload)
    return index, path
