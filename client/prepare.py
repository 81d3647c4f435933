"""Build a site's preprocessed cache and its exam manifest (``m3fm-site prepare``).

Every usable exam's ROI crops go into the content-addressed cache; the manifest lists
the exams (pseudonymous IDs, split, clinical paragraph, labels, cache keys) that site
training and evaluation read. A second run reuses every cached crop.

The manifest also records digests of what its clinical data, labels and splits were read
from (``source_digests``): the two tables' bytes and the config that maps and splits them.
``client.site_dataset.load_manifest`` refuses a manifest whose sources changed, so a
site that corrects a label or a column mapping is told to prepare again instead of
training on the old values.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields
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


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fields(obj: Any, skip: str = "") -> dict[str, Any]:
    """A config dataclass's fields, one level (its read-only mappings stay as they are)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name != skip}


def _jsonable(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else str(value)


def source_digests(cfg: SiteConfig) -> dict[str, str]:
    """SHA-256 of each input the manifest's non-image content was read from.

    Keys: ``"clinical table"`` and ``"labels table"`` (the files' bytes, wherever the
    config points) and ``"table mappings"`` (column mappings, units, value maps, the
    DICOM ID tags, the split and the task list; paths left out, so a moved site folder
    stays valid).

    Raises:
        OSError: A table cannot be read.
    """
    mappings = {
        "clinical": _fields(cfg.clinical, skip="path"),
        "labels": _fields(cfg.labels, skip="path"),
        "dicom": _fields(cfg.dicom, skip="root"),
        "split": _fields(cfg.split),
        "tasks": list(cfg.tasks),
    }
    text = json.dumps(mappings, sort_keys=True, default=_jsonable)
    return {
        "clinical table": _file_sha256(cfg.clinical.path),
        "labels table": _file_sha256(cfg.labels.path),
        "table mappings": hashlib.sha256(text.encode()).hexdigest(),
    }


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
        "sources": source_digests(cfg),
        "exams": [
            _entry_json(e, crops.get(e.exam_id, {}) if e.has_ct else {})
            for e in index.entries
            if e.has_ct or e.clinical is not None
        ],
    }
    path = manifest_path(cfg, preset)
    _atomic_json(path, payload)
    return index, path
