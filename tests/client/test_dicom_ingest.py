"""Tests for DICOM scanning, CT series selection and volume loading."""

import logging
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from client.dicom_ingest import (
    ingest_site,
    load_ct_volume,
    scan_dicom_tree,
    select_ct_series,
    series_content_hash,
)

from .dicom_fixtures import (
    CORONAL,
    FLIPPED_BOTH,
    FLIPPED_LR,
    SENTINEL_NAME,
    STANDARD,
    TRANSPOSED,
    make_phantom,
    write_series,
)

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(24, 48, 40), spacing=(10.0, 6.0, 7.0))


def _codes(issues):
    return sorted(i.code for i in issues)


def _load_single(root: Path, **kwargs):
    """Scan + select + load, expecting exactly one exam."""
    scan = scan_dicom_tree(root, **kwargs)
    chosen, issues = select_ct_series(scan.series)
    assert len(chosen) == 1, issues
    (series,) = chosen.values()
    volume, load_issues = load_ct_volume(series)
    return volume, scan.issues + issues + load_issues


def _copy_shuffled(sources, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sources = list(sources)
    random.Random(0).shuffle(sources)
    for src in sources:
        shutil.copy(src, folder / uuid.uuid4().hex)


# --- real files bundled with pydicom ----------------------------------------------


def test_ct_small_hu_and_spacing(tmp_path):
    # Prepare: three copies of CT_small.dcm, 2.5 mm apart, written in reverse order
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)
    z0 = float(src.ImagePositionPatient[2])
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z0 - 2.5 * k]
        ds.save_as(tmp_path / f"slice{k}")
    # Execute
    scan = scan_dicom_tree(tmp_path, exam_id_tag="StudyInstanceUID")
    volume, issues = load_ct_volume(scan.series[0])
    # Assert
    assert issues == []
    assert scan.series[0].pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert scan.series[0].slices[0].intercept == -1024.0
    assert volume.hu.dtype == np.float32 and volume.hu.shape == (3, 128, 128)
    np.testing.assert_array_equal(volume.hu[1], expected.astype(np.float32))
    assert volume.spacing_mm == pytest.approx((2.5, 0.661468, 0.661468))
    assert volume.patient_id == "1CT1"


def test_real_series_grouped_sorted_and_rejected(tmp_path):
    # Prepare: a 5-slice CT, a 2-image localizer and a 4-slice CT with a big gap
    _copy_shuffled((DICOMDIR_TESTS / "98892001" / "CT5N").iterdir(), tmp_path / "a")
    _copy_shuffled((DICOMDIR_TESTS / "98892001" / "CT2N").iterdir(), tmp_path / "a")
    _copy_shuffled((DICOMDIR_TESTS / "77654033" / "CT2").iterdir(), tmp_path / "b")
    # Execute
    scan = scan_dicom_tree(tmp_path, exam_id_tag="StudyInstanceUID")
    chosen, issues = select_ct_series(scan.series, min_slices=4)
    loaded = {exam: load_ct_volume(series) for exam, series in chosen.items()}
    # Assert
    assert scan.n_files == 11 and len(scan.series) == 3 and scan.issues == []
    assert _codes(issues) == ["localizer"]
    ct5 = next(v for v, _ in loaded.values() if v is not None)
    assert ct5.hu.shape == (5, 16, 16)
    assert ct5.spacing_mm == pytest.approx((2.5, 0.488281, 0.488281))
    by_z = sorted(
        (pydicom.dcmread(p) for p in (DICOMDIR_TESTS / "98892001/CT5N").iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    for k, ds in enumerate(by_z):
        np.testing.assert_array_equal(ct5.hu[k], ds.pixel_array - 1024.0)
    gap = next(issues for v, issues in loaded.values() if v is None)
    assert _codes(gap) == ["gap"] and gap[0].severity == "error"


def test_shared_accession_across_patients_is_reported(tmp_path):
    _copy_shuffled((DICOMDIR_TESTS / "98892001" / "CT5N").iterdir(), tmp_path)
    _copy_shuffled((DICOMDIR_TESTS / "77654033" / "CT2").iterdir(), tmp_path)
    scan = scan_dicom_tree(tmp_path)  # AccessionNumber "2" in both patients
    chosen, issues = select_ct_series(scan.series, min_slices=4)
    assert chosen == {}
    assert "mixed_patients" in _codes(issues)


# --- generated phantom series --------------------------------------------------


def test_phantom_roundtrip_and_content_hash(tmp_path, phantom):
    write_series(tmp_path / "s", phantom.hu, phantom.spacing, suffix=".dcm")
    volume, issues = _load_single(tmp_path)
    assert issues == []
    np.testing.assert_array_equal(volume.hu, phantom.hu.astype(np.float32))
    assert volume.spacing_mm == pytest.approx(phantom.spacing)
    scan = scan_dicom_tree(tmp_path)
    assert volume.content_hash == series_content_hash(scan.series[0])
    assert len(volume.content_hash) == 64


@pytest.mark.parametrize(
    ("orientation", "reverse"),
    [(FLIPPED_LR, True), (FLIPPED_BOTH, False), (TRANSPOSED, True), (STANDARD, True)],
)
def test_orientations_give_one_canonical_array(tmp_path, phantom, orientation, reverse):
    write_series(
        tmp_path,
        phantom.hu,
        phantom.spacing,
        orientation=orientation,
        reverse_order=reverse,
    )
    volume, issues = _load_single(tmp_path)
    assert issues == []
    np.testing.assert_array_equal(volume.hu, phantom.hu.astype(np.float32))
    assert volume.spacing_mm == pytest.approx(phantom.spacing)


def test_per_slice_rescale(tmp_path, phantom):
    slopes = [1.0 if k % 2 else 0.5 for k in range(phantom.hu.shape[0])]
    write_series(tmp_path, phantom.hu, phantom.spacing, slopes=slopes)
    volume, _ = _load_single(tmp_path)
    np.testing.assert_array_equal(volume.hu, phantom.hu.astype(np.float32))


def test_one_missing_slice_is_interpolated(tmp_path, phantom):
    paths = write_series(tmp_path, phantom.hu, phantom.spacing)
    paths[10].unlink()
    volume, issues = _load_single(tmp_path)
    assert _codes(issues) == ["gap_filled"]
    assert issues[0].path == str(paths[11])
    expected = phantom.hu.astype(np.float32)
    expected[10] = 0.5 * (expected[9] + expected[11])
    np.testing.assert_allclose(volume.hu, expected)
    assert volume.spacing_mm[0] == pytest.approx(phantom.spacing[0])


def test_three_missing_slices_skip_the_exam(tmp_path, phantom):
    paths = write_series(tmp_path, phantom.hu, phantom.spacing)
    for k in (9, 10, 11):
        paths[k].unlink()
    volume, issues = _load_single(tmp_path)
    assert volume is None
    assert _codes(issues) == ["gap"] and "3 slices missing" in issues[0].message


def test_duplicate_slice_and_duplicate_file(tmp_path, phantom):
    paths = write_series(tmp_path, phantom.hu, phantom.spacing)
    shutil.copy(paths[3], tmp_path / "same-sop-copy")
    ds = pydicom.dcmread(paths[5])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "same-position")
    volume, issues = _load_single(tmp_path)
    assert _codes(issues) == ["duplicate_file", "duplicate_slice"]
    np.testing.assert_array_equal(volume.hu, phantom.hu.astype(np.float32))


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PixelSpacing", [1.0, 1.0]), ("ImageOrientationPatient", list(FLIPPED_LR))],
)
def test_mixed_geometry(tmp_path, phantom, keyword, value):
    paths = write_series(tmp_path, phantom.hu, phantom.spacing)
    ds = pydicom.dcmread(paths[7])
    setattr(ds, keyword, value)
    ds.save_as(paths[7])
    volume, issues = _load_single(tmp_path)
    assert volume is None
    assert [(i.code, i.field, i.path) for i in issues] == [
        ("mixed_geometry", keyword, str(paths[7]))
    ]


def test_inconsistent_spacing(tmp_path, phantom):
    paths = write_series(tmp_path, phantom.hu, phantom.spacing)
    ds = pydicom.dcmread(paths[8])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 4.0  # 40 % step
    ds.save_as(paths[8])
    volume, issues = _load_single(tmp_path)
    assert volume is None and _codes(issues) == ["inconsistent_spacing"]


def _encoder_ready(uid) -> bool:
    try:
        return get_encoder(uid).is_available
    except Exception:
        return False


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_decode_to_same_hu(tmp_path, phantom, syntax):
    if not _encoder_ready(syntax):
        pytest.skip(f"no installed encoder for {syntax.name}")
    hu = phantom.hu[:18]
    write_series(tmp_path, hu, phantom.spacing, transfer_syntax=syntax)
    volume, issues = _load_single(tmp_path)
    assert issues == []
    assert scan_dicom_tree(tmp_path).series[0].transfer_syntax == syntax
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))


def test_undecodable_pixels_are_a_decode_error(tmp_path, phantom):
    paths = write_series(
        tmp_path, phantom.hu[:18], phantom.spacing, transfer_syntax=RLELossless
    )
    ds = pydicom.dcmread(paths[4])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # RLE bytes, wrong decoder
    ds.save_as(paths[4])
    volume, issues = _load_single(tmp_path)
    assert volume is None
    assert [(i.code, i.path, i.field) for i in issues] == [
        ("decode_error", str(paths[4]), "PixelData")
    ]


def test_scan_reports_bad_files_and_skips_dicomdir(tmp_path, phantom):
    paths = write_series(tmp_path / "ct", phantom.hu, phantom.spacing)
    (tmp_path / "notes.txt").write_text("not dicom")
    raw = paths[0].read_bytes()
    (tmp_path / "cut_in_pixels").write_bytes(raw[: len(raw) - 500])
    (tmp_path / "cut_in_header").write_bytes(raw[:400])
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", tmp_path / "DICOMDIR")
    scan = scan_dicom_tree(tmp_path)
    assert scan.n_files == len(paths) + 3
    got = {Path(i.path).name: (i.code, i.field) for i in scan.issues}
    assert got == {
        "notes.txt": ("unreadable_file", ""),
        "cut_in_pixels": ("unreadable_file", "PixelData"),
        "cut_in_header": ("unreadable_file", "PixelData"),
    }
    assert len(scan.series) == 1 and len(scan.series[0].slices) == len(paths)


def test_empty_root_raises_naming_the_folder(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        scan_dicom_tree(tmp_path)
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        scan_dicom_tree(tmp_path, exam_id_tag="AccessionNr")


def _write_site(root: Path, phantom) -> None:
    """Exam E1 with one good axial CT and five series to reject; E2 too short."""
    hu, sp = phantom.hu, phantom.spacing
    write_series(root / "e1" / "ct", hu, sp, exam_id="E1")
    write_series(
        root / "e1" / "thick",
        hu[::2],
        (2 * sp[0], *sp[1:]),
        exam_id="E1",
        thickness=10.0,
        description="CHEST 10",
    )
    write_series(
        root / "e1" / "scout",
        hu[:, :, :40][:2],
        sp,
        exam_id="E1",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_series(root / "e1" / "mr", hu, sp, exam_id="E1", modality="MR")
    write_series(
        root / "e1" / "mip",
        hu,
        sp,
        exam_id="E1",
        image_type=("DERIVED", "SECONDARY", "MIP"),
    )
    write_series(root / "e1" / "cor", hu, sp, exam_id="E1", orientation=CORONAL)
    write_series(root / "e2", hu[:6], sp, exam_id="E2", patient_id="PSEUDO-P2")
    (root / "README.txt").write_text("export notes")


def test_ingest_site_reports_every_rejection(tmp_path, phantom, caplog):
    _write_site(tmp_path, phantom)
    caplog.set_level(logging.DEBUG)
    site = ingest_site(tmp_path, min_slices=10)
    exams = list(site)
    assert _codes(site.issues) == ["unreadable_file"]
    assert [e.exam_id for e in exams] == ["E1", "E2"]
    e1, e2 = exams
    assert e1.volume is not None and e1.volume.hu.shape == phantom.hu.shape
    assert _codes(e1.issues) == [
        "derived",
        "localizer",
        "non_axial",
        "not_ct",
        "not_selected",
    ]
    assert e2.volume is None and _codes(e2.issues) == ["no_ct_series", "too_few_slices"]
    assert e2.patient_id == "PSEUDO-P2"
    assert SENTINEL_NAME not in caplog.text
    assert SENTINEL_NAME not in repr(site.scan) + repr(exams)


def test_pinned_description_wins(tmp_path, phantom):
    _write_site(tmp_path, phantom)
    site = ingest_site(tmp_path, description_pattern=r"CHEST 10$", min_slices=10)
    e1 = next(iter(site))
    assert e1.volume.hu.shape[0] == phantom.hu[::2].shape[0]
    assert e1.volume.spacing_mm[0] == pytest.approx(2 * phantom.spacing[0])
    assert "not_pinned" in _codes(e1.issues)
    with pytest.raises(ValueError, match="regular expression"):
        ingest_site(tmp_path, description_pattern="(")


def test_non_image_dicom_is_ignored_with_a_warning(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.Modality, ds.PatientID = BasicTextSRStorage, "SR", "P"
    ds.save_as(tmp_path / "report", enforce_file_format=True)
    scan = scan_dicom_tree(tmp_path)
    assert [(i.code, i.severity) for i in scan.issues] == [("not_image", "warning")]


def test_plan_slices_rejects_gantry_tilt_and_sorts_by_normal():
    from client.dicom_geometry import in_plane_mapping, plan_slices

    z = np.array([4.0, 0.0, 2.0, 6.0, 8.0])
    straight = np.stack([np.zeros(5), np.zeros(5), z], axis=1)
    plan = plan_slices(straight, STANDARD, (1.0, 1.0), instance_numbers=[9, 1, 5, 3, 7])
    assert plan.order == [1, 2, 0, 3, 4] and plan.error is None
    assert plan.step_mm == pytest.approx(2.0)
    tilted = straight + np.stack([np.zeros(5), 0.5 * z, np.zeros(5)], axis=1)
    assert plan_slices(tilted, STANDARD, (1.0, 1.0)).error[0] == "sheared_geometry"
    c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
    assert in_plane_mapping((c, s, 0, -s, c, 0)).oblique_deg == pytest.approx(5.0)
