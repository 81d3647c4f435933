"""Tests for the on-disk exam crop cache."""

import json
import os

import numpy as np
import pytest

from client import cache as cache_module
from client.cache import CacheKey, ExamCache, cached_crops
from client.dicom_ingest import ingest_site
from client.dicom_types import CTVolume
from client.preprocess import CropSpec

from .dicom_fixtures import SENTINEL_NAME, make_phantom, write_series

LUNG = CropSpec("lung", (16, 48, 32), (-1300.0, 150.0))
HEART = CropSpec("heart", (16, 24, 24), (-135.0, 225.0))
HASH = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def volume():
    ph = make_phantom()
    return CTVolume(ph.hu.astype(np.float32), ph.spacing, "P1", "E1", "1.2.3", HASH)


@pytest.fixture
def counting(monkeypatch):
    """Count which ROIs ``cached_crops`` had to build."""
    built = []
    real = cache_module.preprocess_exam

    def wrapper(volume, specs, boxes=None):
        built.extend(s.roi for s in specs)
        return real(volume, specs, boxes)

    monkeypatch.setattr(cache_module, "preprocess_exam", wrapper)
    return built


def test_put_get_roundtrip(tmp_path):
    store = ExamCache(tmp_path)
    key = CacheKey.for_spec(HASH, LUNG)
    crop = np.linspace(-1, 1, 2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    assert store.get(key) is None and key not in store
    store.put(key, crop, (1.5, 0.5, 0.25), {"patient_id": "P1", "exam_id": "E1"})
    hit = store.get(key)
    assert isinstance(hit.crop, np.memmap) and hit.crop.dtype == np.float16
    np.testing.assert_allclose(hit.crop, crop, atol=1e-3)
    assert hit.spacing_mm == (1.5, 0.5, 0.25)
    assert hit.meta == {"patient_id": "P1", "exam_id": "E1"}
    assert not list(tmp_path.rglob("*.tmp"))


def test_changed_spec_invalidates_only_its_roi(tmp_path, volume, counting):
    store = ExamCache(tmp_path)
    first = cached_crops(store, volume, [LUNG, HEART])
    assert sorted(counting) == ["heart", "lung"]
    again = cached_crops(store, volume, [LUNG, HEART])
    assert sorted(counting) == ["heart", "lung"]  # all hits
    np.testing.assert_array_equal(again["lung"].crop, first["lung"].crop)
    wider = CropSpec("heart", HEART.crop_size, (-200.0, 300.0))
    cached_crops(store, volume, [LUNG, wider])
    assert sorted(counting) == ["heart", "heart", "lung"]  # lung still valid
    removed = store.prune(
        [CacheKey.for_spec(HASH, LUNG), CacheKey.for_spec(HASH, wider)]
    )
    assert removed == 1
    assert store.get(CacheKey.for_spec(HASH, HEART)) is None


def test_site_boxes_are_keyed_apart(tmp_path, volume, counting):
    from client.roi import Box

    store = ExamCache(tmp_path)
    cached_crops(store, volume, [LUNG])
    cached_crops(store, volume, [LUNG], boxes={"lung": Box((0, 0, 0), (20, 40, 40))})
    assert counting == ["lung", "lung"]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate_npy", "bad_json"])
def test_corrupt_entry_is_removed_and_rebuilt(tmp_path, volume, counting, damage):
    store = ExamCache(tmp_path)
    cached_crops(store, volume, [LUNG])
    key = CacheKey.for_spec(HASH, LUNG)
    (npy,) = tmp_path.rglob("*.npy")
    sidecar = npy.with_suffix(".json")
    raw = bytearray(npy.read_bytes())
    if damage == "flip_byte":
        raw[-100] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "truncate_npy":
        npy.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        sidecar.write_text("{not json")
    assert store.get(key) is None
    assert not npy.exists() and not sidecar.exists()
    rebuilt = cached_crops(store, volume, [LUNG])
    assert counting == ["lung", "lung"] and rebuilt["lung"].crop.shape == (
        1,
        16,
        48,
        32,
    )


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    store = ExamCache(tmp_path)
    key = CacheKey.for_spec(HASH, LUNG)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", boom)
    with pytest.raises(OSError):
        store.put(key, np.zeros((1, 2, 2, 2)), (1, 1, 1), {})
    assert store.get(key) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_key_and_meta_validation(tmp_path):
    store = ExamCache(tmp_path)
    with pytest.raises(ValueError, match="roi"):
        CacheKey(HASH, HASH[:32], "../../etc")
    with pytest.raises(ValueError, match="hex"):
        CacheKey("not-a-hash", HASH[:32], "lung")
    key = CacheKey.for_spec(HASH, LUNG)
    with pytest.raises(ValueError, match="not allowed"):
        store.put(key, np.zeros((1, 2, 2, 2)), (1, 1, 1), {"patient_name": "x"})


def test_no_identifiers_reach_the_cache(tmp_path):
    # Prepare: a DICOM exam whose headers hold a sentinel name and birth date
    ph = make_phantom(shape=(24, 48, 40), spacing=(10.0, 6.0, 7.0))
    write_series(
        tmp_path / "dicom", ph.hu, ph.spacing, patient_id="PSEUDO-7", exam_id="ACC-7"
    )
    (exam,) = list(ingest_site(tmp_path / "dicom"))
    # Execute
    store = ExamCache(tmp_path / "cache")
    cached_crops(store, exam.volume, [LUNG, HEART])
    # Assert
    blob = b"".join(
        p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()
    )
    for secret in (SENTINEL_NAME, "19500101", exam.volume.series_uid):
        assert secret.encode() not in blob
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    assert {(s["patient_id"], s["exam_id"]) for s in sidecars} == {
        ("PSEUDO-7", "ACC-7")
    }


def test_hash_checked_once_per_process_until_the_file_changes(tmp_path, monkeypatch):
    store = ExamCache(tmp_path)
    key = CacheKey.for_spec(HASH, LUNG)
    store.put(key, np.zeros((1, 4, 4, 4)), (1, 1, 1), {})
    calls = []
    real = cache_module._array_sha256
    monkeypatch.setattr(
        cache_module, "_array_sha256", lambda a: calls.append(1) or real(a)
    )
    assert store.get(key) is not None and store.get(key) is not None
    assert len(calls) == 1
    (npy,) = tmp_path.rglob("*.npy")
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0x01
    npy.write_bytes(bytes(raw))
    os.utime(npy, ns=(1, 1))  # a new mtime even on coarse-clock file systems
    assert store.get(key) is None and len(calls) == 2
