"""On-disk cache of preprocessed ROI crops, keyed by content and preprocessing config.

Key = (exam content hash, preprocessing fingerprint, ROI). The content hash is
``client.dicom_ingest.series_content_hash``: SHA-256 over the sorted
(SOPInstanceUID, SHA-256 of the file bytes) pairs of the exam's CT series, so it
does not depend on file names or folders, and it can be checked by reading bytes
without decoding. The fingerprint is ``preprocessing_fingerprint`` of that ROI's
own spec, so a changed heart window invalidates only heart crops.

Layout: ``<root>/<roi>/<fingerprint>/<content_hash>.npy`` (float16, shape
(1, S, H, W)) plus a ``.json`` sidecar holding the array's SHA-256, shape, the
spacing after resize and the pseudonymous patient/exam IDs; nothing else about the
patient is stored. Writes are atomic (temporary file in the same folder, then
``os.replace``); the sidecar is written last and marks a complete entry.

MONAI's ``PersistentDataset`` is not used: it keys entries by a hash of the input
item (file paths, not content), stores ``torch.save`` pickles (unpickling a file
from a shared disk can run code, and MetaTensor metadata would carry file paths),
does not verify entries on read and cannot invalidate one ROI's entries alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from client.dicom_types import CTVolume
from client.preprocess import CropSpec, preprocess_exam, preprocessing_fingerprint
from client.roi import Box, box_region

logger = logging.getLogger(__name__)

ALLOWED_META = frozenset({"patient_id", "exam_id", "box", "source_spacing_mm"})
_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FORMAT = 1


@dataclass(frozen=True)
class CacheKey:
    """Identifies one cached crop.

    Attributes:
        content_hash: Hex SHA-256 of the exam's series (``series_content_hash``).
        fingerprint: Hex ``preprocessing_fingerprint`` of the ROI's spec.
        roi: ROI name.
    """

    content_hash: str
    fingerprint: str
    roi: str

    def __post_init__(self) -> None:
        """Reject values that could escape the cache folder."""
        for name in ("content_hash", "fingerprint"):
            if not _HEX.match(getattr(self, name)):
                raise ValueError(f"CacheKey.{name} must be 16-64 lowercase hex digits")
        if not _NAME.match(self.roi):
            raise ValueError("CacheKey.roi must be letters, digits, '_' or '-'")

    @classmethod
    def for_spec(cls, content_hash: str, spec: CropSpec, *, salt: str = "") -> CacheKey:
        """The key of ``spec``'s crop for an exam with ``content_hash``."""
        return cls(content_hash, preprocessing_fingerprint(spec, salt=salt), spec.roi)


@dataclass(frozen=True, eq=False)
class CachedCrop:
    """A crop read from the cache.

    Attributes:
        crop: Read-only float16 memory map, shape (1, S, H, W), values in [-1, 1].
        spacing_mm: Spacing after resize (slice, row, col).
        meta: The sidecar's metadata (pseudonymous IDs, box, ...).
    """

    crop: np.ndarray
    spacing_mm: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


class ExamCache:
    """Preprocessed crops on the site's disk (see the module docstring)."""

    def __init__(self, root: Path, *, verify: bool = True) -> None:
        """Open (and create) a cache folder.

        Args:
            root: Cache folder, e.g. the site config's ``[cache] dir``.
            verify: Check each entry's SHA-256 on its first ``get`` in this process
                and again whenever its file changes (inode, size or mtime).
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.verify = verify
        # Files verified by this process, with the (inode, size, mtime) seen then:
        # an unchanged file is not re-hashed on every epoch.
        self._verified: dict[Path, tuple[int, int, int, str]] = {}

    def _paths(self, key: CacheKey) -> tuple[Path, Path]:
        folder = self.root / key.roi / key.fingerprint
        return folder / f"{key.content_hash}.npy", folder / f"{key.content_hash}.json"

    def __contains__(self, key: CacheKey) -> bool:
        """Whether a complete entry exists (not verified)."""
        return self._paths(key)[1].is_file()

    def put(
        self,
        key: CacheKey,
        crop: np.ndarray,
        spacing: Sequence[float],
        meta: Mapping[str, Any],
    ) -> None:
        """Store one crop atomically as float16.

        Args:
            key: The entry's key.
            crop: (1, S, H, W) array in [-1, 1].
            spacing: Spacing after resize (slice, row, col) in mm.
            meta: Only keys in ``ALLOWED_META`` (pseudonymous IDs, box, source
                spacing); anything else is refused so no identifier slips in.

        Raises:
            ValueError: For an unexpected meta key or a crop that is not 4-D.
        """
        extra = set(meta) - ALLOWED_META
        if extra:
            raise ValueError(f"meta keys {sorted(extra)} are not allowed in the cache")
        if crop.ndim != 4 or len(spacing) != 3:
            raise ValueError("crop must be (1, S, H, W) and spacing 3 values")
        array = np.ascontiguousarray(crop, dtype=np.float16)
        npy, sidecar = self._paths(key)
        _atomic_write(npy, lambda f: np.save(f, array, allow_pickle=False))
        record = {
            "format": _FORMAT,
            "sha256": _array_sha256(array),
            "shape": list(array.shape),
            "spacing_mm": [float(s) for s in spacing],
            "roi": key.roi,
            "fingerprint": key.fingerprint,
            "content_hash": key.content_hash,
            **{k: _jsonable(v) for k, v in meta.items()},
        }
        text = json.dumps(record, sort_keys=True).encode()
        _atomic_write(sidecar, lambda f: f.write(text))

    def get(self, key: CacheKey) -> CachedCrop | None:
        """Memory-map a cached crop; None on a miss or a corrupt entry.

        A corrupt entry (unreadable sidecar or array, wrong shape, hash mismatch)
        is logged, removed and reported as a miss, so the caller rebuilds it.

        Args:
            key: The entry's key.

        Returns:
            The crop, or None.
        """
        npy, sidecar = self._paths(key)
        if not sidecar.is_file():
            return None
        try:
            record = json.loads(sidecar.read_text())
            array = np.load(npy, mmap_mode="r", allow_pickle=False)
            if list(array.shape) != record["shape"] or array.dtype != np.float16:
                raise ValueError("shape or dtype differs from the sidecar")
            if self.verify:
                self._check_hash(npy, array, record["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "cache entry %s/%s corrupt (%s); removed",
                key.roi,
                key.content_hash[:12],
                exc,
            )
            npy.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            return None
        meta = {k: record[k] for k in ALLOWED_META if k in record}
        spacing = tuple(record["spacing_mm"])
        return CachedCrop(array, spacing, meta)  # type: ignore[arg-type]

    def _check_hash(self, npy: Path, array: np.ndarray, expected: str) -> None:
        """Verify the array's SHA-256 unless this process already did for this file."""
        info = npy.stat()
        signature = (info.st_ino, info.st_size, info.st_mtime_ns, expected)
        if self._verified.get(npy) == signature:
            return
        if _array_sha256(array) != expected:
            self._verified.pop(npy, None)
            raise ValueError("SHA-256 mismatch")
        self._verified[npy] = signature

    def prune(self, keep: Iterable[CacheKey | str]) -> int:
        """Delete fingerprint folders not in ``keep`` (keys or fingerprints).

        Args:
            keep: Keys or fingerprints still in use.

        Returns:
            The number of folders removed.
        """
        wanted = {k.fingerprint if isinstance(k, CacheKey) else k for k in keep}
        removed = 0
        for folder in self.root.glob("*/*"):
            if folder.is_dir() and folder.name not in wanted:
                shutil.rmtree(folder)
                removed += 1
        return removed


def _jsonable(value: Any) -> Any:
    """Boxes and tuples as JSON lists."""
    if isinstance(value, Box):
        return [list(value.start), list(value.stop)]
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def cached_crops(
    cache: ExamCache,
    volume: CTVolume,
    specs: Sequence[CropSpec],
    boxes: Mapping[str, Box] | None = None,
) -> dict[str, CachedCrop]:
    """Get each ROI crop of ``volume`` from the cache, building the missing ones.

    Args:
        cache: The site's cache.
        volume: A loaded volume (its ``content_hash`` must be set).
        specs: One spec per ROI.
        boxes: Optional site-supplied boxes (their crops are keyed with the salt
            ``"site-box"`` so they never mix with automatic ones).

    Returns:
        Cached crop by ROI name.

    Raises:
        client.roi.ROINotFoundError: When an automatic ROI cannot be found.
        ValueError: When the volume has no content hash.
    """
    if not volume.content_hash:
        raise ValueError("volume.content_hash is empty; load it with load_ct_volume")
    boxes = dict(boxes or {})
    keys = {
        s.roi: CacheKey.for_spec(
            volume.content_hash,
            s,
            salt="site-box" if box_region(s.roi) in boxes else "",
        )
        for s in specs
    }
    found = {roi: cache.get(key) for roi, key in keys.items()}
    missing = [s for s in specs if found[s.roi] is None]
    if missing:
        built = preprocess_exam(volume, missing, boxes)
        for spec in missing:
            item = built[spec.roi]
            meta = {
                "patient_id": volume.patient_id,
                "exam_id": volume.exam_id,
                "box": item.box,
                "source_spacing_mm": volume.spacing_mm,
            }
            cache.put(keys[spec.roi], item.crop, item.spacing_mm, meta)
            found[spec.roi] = cache.get(keys[spec.roi])
    return {roi: crop for roi, crop in found.items() if crop is not None}
