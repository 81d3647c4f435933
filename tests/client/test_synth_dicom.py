import numpy as np
import pydicom
import pytest

from client.synth.cohort import sample_cohort
from client.synth.dicom_writer import HU_RANGE
from client.synth.profiles import get
from client.synth.site import render_exam
from tests.client.synth_fixtures import (
    SMALL,
    dciodvfy_report,
    generated_site,
    load_truth,
    read_canonical,
    series_files,
    site,  # noqa: F401  (fixture)
)


def _healthy(truth: dict) -> list[dict]:
    return [e for e in truth["exams"] if not e["faults"]]


def test_dciodvfy_accepts_a_sample_of_each_site(site):  # noqa: F811
    # Prepare: a few slices of healthy primary series plus every extra series
    profile, root = site
    truth = load_truth(root)
    paths = []
    for exam in _healthy(truth)[:3]:
        files = series_files(root, exam["series"][0])
        paths += [files[0], files[len(files) // 2]]
        paths += [series_files(root, s)[0] for s in exam["series"][1:]]
    for fault in truth["faults"]:
        if "series" in fault:
            paths += series_files(root, fault["series"])
    # Execute / Assert
    for path in paths:
        errors, warnings = dciodvfy_report(path)
        assert errors == [], f"{profile} {path.name}: {errors}"
        assert warnings == [], f"{profile} {path.name}: {warnings}"


def test_round_trip_matches_phantom(site):  # noqa: F811
    # Prepare: re-render the first exam from the latent cohort
    profile, root = site
    patients, seed = SMALL[profile]
    truth = load_truth(root)
    cohort = sample_cohort(profile, patients, seed)
    exam_truth = _healthy(truth)[0]
    patient = next(p for p in cohort if p.patient_id == exam_truth["patient_id"])
    exam = next(e for e in patient.exams if e.exam_id == exam_truth["exam_id"])
    expected = np.clip(
        np.rint(render_exam(get(profile), patient, exam).volume), *HU_RANGE
    )
    # Execute
    hu, padding, datasets = read_canonical(series_files(root, exam_truth["series"][0]))
    # Assert
    assert hu.shape == tuple(exam_truth["grid"]["shape"])
    assert np.array_equal(hu[~padding], expected[~padding])
    assert padding.mean() < 0.25
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), exam_truth["grid"]["spacing_mm"][0], atol=1e-3)
    assert {ds.PatientID for ds in datasets} == {exam_truth["patient_id"]}
    assert {ds.AccessionNumber for ds in datasets} == {exam_truth["exam_id"]}
    assert str(datasets[0].PatientName) == exam_truth["patient_name"]


def test_vendor_quirks(site):  # noqa: F811
    profile, root = site
    scanner = get(profile).scanner
    exam = _healthy(load_truth(root))[0]
    files = series_files(root, exam["series"][0])
    _, padding, datasets = read_canonical(files)
    first, last = datasets[0], datasets[-1]
    assert first.Manufacturer == scanner.manufacturer
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.file_meta.TransferSyntaxUID == scanner.transfer_syntax
    assert float(first.RescaleIntercept) == scanner.rescale_intercept
    # InstanceNumber order relative to position (inferior -> superior).
    assert (first.InstanceNumber > last.InstanceNumber) == scanner.superior_first
    assert [float(v) for v in first.ImageOrientationPatient] == list(
        scanner.orientation
    )
    assert padding.any() == (scanner.padding_value is not None)
    if scanner.file_style == "numbered":
        assert all(p.name.startswith("IM") and p.suffix == "" for p in files)
    else:
        assert all(p.suffix == ".dcm" for p in files)


def test_extra_thick_series_is_consistent(tmp_path_factory):
    # hospital_c writes a thick-slice series for some exams: check every one.
    root = generated_site("hospital_c", tmp_path_factory)
    truth = load_truth(root)
    thick = [
        (e, s) for e in truth["exams"] for s in e["series"] if s["role"] == "thick"
    ]
    assert thick, "the fixture's seed draws thick series for hospital_c"
    for exam, series in thick:
        hu, _, datasets = read_canonical(series_files(root, series))
        thin, _, _ = read_canonical(series_files(root, exam["series"][0]))
        assert hu.shape[1:] == thin.shape[1:]
        assert float(datasets[0].SliceThickness) == pytest.approx(6.0)
        assert abs(float(np.median(hu)) - float(np.median(thin))) < 30.0


def test_compressed_profile_decodes_losslessly(tmp_path_factory):
    root = generated_site("hospital_b", tmp_path_factory)
    exam = _healthy(load_truth(root))[0]
    path = series_files(root, exam["series"][0])[0]
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    raw_size = ds.Rows * ds.Columns * 2
    assert path.stat().st_size < raw_size
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
